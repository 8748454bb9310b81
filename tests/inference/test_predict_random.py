"""Prediction intervals with correlated random slopes and a relatedness matrix, by hand."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import drmpy as drm

Z975 = stats.norm.ppf(0.975)


@pytest.fixture(scope="module")
def slope_fit():
    rng = np.random.default_rng(7)
    n_study, per = 30, 4
    study = np.repeat(np.arange(n_study), per)
    x = rng.normal(size=study.size)
    b0 = rng.normal(0.0, 0.3, n_study)
    b1 = 0.5 * b0 + rng.normal(0.0, 0.2, n_study)
    vi = rng.uniform(0.01, 0.04, study.size)
    yi = 0.2 + 0.4 * x + b0[study] + b1[study] * x + rng.normal(0.0, np.sqrt(vi + 0.01))
    data = pd.DataFrame({"study": [f"s{s}" for s in study], "x": x, "vi": vi, "yi": yi})
    return drm.fit(drm.Formula("yi ~ x + (1 + x|study) + meta_V(V=vi)"), data=data)


def test_correlated_random_slope_prediction_interval(slope_fit):
    fit = slope_fit
    prm = fit.params
    sd = np.exp([prm["sd(study):(Intercept)"], prm["sd(study|x):(Intercept)"]])
    rho = 0.999999 * np.tanh(prm["cor(study|(Intercept),x):(Intercept)"])
    G = np.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])
    new = pd.DataFrame({"x": [-1.0, 0.0, 2.0]})
    ci = fit.predict(new, interval="confidence")
    pi = fit.predict(new, interval="prediction")
    z = np.column_stack([np.ones(3), new["x"]])
    var = ci["se"] ** 2 + fit.sigma().iloc[0] ** 2 + np.einsum("ia,ab,ib->i", z, G, z)
    np.testing.assert_allclose(pi["upper"] - pi["estimate"], Z975 * np.sqrt(var), rtol=1e-12)
    # on the fitted rows z is each row's own x
    own = fit.predict(interval="prediction")
    own_ci = fit.predict(interval="confidence")
    xs = fit.design.random[0].z
    var = own_ci["se"] ** 2 + fit.sigma() ** 2 + np.einsum("ia,ab,ib->i", xs, G, xs)
    np.testing.assert_allclose(own["upper"] - own["estimate"], Z975 * np.sqrt(var.to_numpy()), rtol=1e-12)


def test_relmat_prediction_interval():
    ref = Path(__file__).parents[1] / "reference_extra" / "relmat_ml"
    data = pd.read_csv(ref / "data.csv")
    K = pd.read_csv(ref / "K.csv", index_col=0)
    fit = drm.fit(drm.Formula("yi ~ x + relmat(1|species, K=K) + meta_V(V=vi)"), data=data, env={"K": K})
    assert np.allclose(np.diag(K), 1.0)
    tau2 = np.exp(2 * fit.params["sd(species):(Intercept)"])
    new = pd.DataFrame({"x": [0.0, 1.0], "species": ["sp01", "new_species"]})
    ci = fit.predict(new, interval="confidence")
    pi = fit.predict(new, interval="prediction")
    var = ci["se"] ** 2 + fit.sigma().iloc[0] ** 2 + tau2  # K_ii = 1 for seen and new species
    np.testing.assert_allclose(pi["upper"] - pi["estimate"], Z975 * np.sqrt(var), rtol=1e-12)
