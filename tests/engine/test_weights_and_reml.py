"""Row weights and REML with modelled random-effect SDs, against independent computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

import drmpy as drm

REF = Path(__file__).parents[1] / "reference"


@pytest.fixture(scope="module")
def restoration():
    return drm.datasets.restoration()


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_integer_weights_equal_duplicated_rows(restoration, method):
    """A weight of 2 multiplies a row's log-likelihood by 2: the same as the row appearing twice."""
    d = restoration
    w = np.where(np.arange(len(d)) % 3 == 0, 2.0, 1.0)
    f = drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat")
    weighted = drm.fit(f, d, weights=w, method=method)
    duplicated = pd.concat([d, d[w == 2.0]], ignore_index=True)
    plain = drm.fit(f, duplicated, method=method)
    assert weighted.loglik == pytest.approx(plain.loglik, abs=1e-8)
    assert np.allclose(weighted.params, plain.params, atol=1e-7)


def test_weights_column_name_equals_array(restoration):
    d = restoration.copy()
    d["w"] = np.linspace(0.5, 1.5, len(d))
    f = drm.Formula("yi ~ duration + meta_V(V=vi)")
    a = drm.fit(f, d, weights="w")
    b = drm.fit(f, d, weights=d["w"].to_numpy())
    assert a.loglik == pytest.approx(b.loglik, abs=1e-12)
    c = drm.fit(f, d)
    assert abs(a.loglik - c.loglik) > 1e-3


def _dense_reml(phi, y, X, v, sd_design, level):
    """-l_R(phi) with phi = (log sigma, alpha), S = diag(v + sigma^2) + Z diag(tau^2) Z'."""
    sigma2 = np.exp(2 * phi[0])
    tau = np.exp(sd_design @ phi[1:])
    S = np.diag(v + sigma2) + (level[:, None] == level[None, :]) * (tau[level][:, None] * tau[level][None, :])
    L = np.linalg.cholesky(S)
    Xs = np.linalg.solve(L, X)
    ys = np.linalg.solve(L, y)
    A = Xs.T @ Xs
    beta = np.linalg.solve(A, Xs.T @ ys)
    r = ys - Xs @ beta
    n, p = X.shape
    return 0.5 * ((n - p) * np.log(2 * np.pi) + 2 * np.sum(np.log(np.diag(L)))
                  + np.linalg.slogdet(A)[1] + r @ r)


def test_reml_with_modelled_sd_matches_dense_optimum():
    """drmTMB refuses REML with sd(g) ~ x; drmpy fits it. Check against a dense numpy REML
    maximised by scipy from a perturbed start."""
    data = pd.read_csv(REF / "sd_study_habitat_ml" / "data.csv")
    data["habitat"] = pd.Categorical(data["habitat"], ["grassland", "forest"])
    f = drm.Formula("yi ~ treatment + (1|study) + meta_V(V=vi)", "sd(study) ~ habitat")
    fit = drm.fit(f, data, method="REML")
    assert fit.converged
    level = fit.design.random[0].level_index
    W = fit.design.random[0].sd_designs[0].matrix
    X = fit.design.fixed["mu"].matrix
    args = (fit.design.y, X, fit.design.known_v.diag, W, level)
    phi_hat = fit.params[["sigma:(Intercept)", "sd(study):(Intercept)", "sd(study):habitat[T.forest]"]].to_numpy()
    res = minimize(_dense_reml, phi_hat + 0.2, args=args, method="BFGS", options={"gtol": 1e-9})
    assert -res.fun == pytest.approx(fit.loglik, abs=1e-7)
    assert np.allclose(res.x, phi_hat, atol=1e-4)
    assert -_dense_reml(phi_hat, *args) == pytest.approx(fit.loglik, abs=1e-9)
    # REML location coefficients are the GLS estimate at the REML variance parameters
    sigma2 = np.exp(2 * phi_hat[0])
    tau = np.exp(W @ phi_hat[1:])
    S = np.diag(args[2] + sigma2) + (level[:, None] == level[None, :]) * np.outer(tau[level], tau[level])
    Si = np.linalg.inv(S)
    beta = np.linalg.solve(X.T @ Si @ X, X.T @ Si @ args[0])
    assert np.allclose(fit.coef("mu").to_numpy(), beta, atol=1e-9)
    # and their SEs include the variance parameters' uncertainty (larger than the GLS ones)
    gls_se = np.sqrt(np.diag(np.linalg.inv(X.T @ Si @ X)))
    assert np.all(fit.std_errors[["mu:(Intercept)", "mu:treatment"]].to_numpy() > gls_se)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_model_without_location_coefficients(restoration, method):
    """``yi ~ 0``: mu is 0, nothing to profile; ML and REML coincide with the direct likelihood."""
    fit = drm.fit("yi ~ 0 + meta_V(V=vi)", restoration, method=method)
    assert fit.converged and list(fit.params.index) == ["sigma:(Intercept)"]
    y, v = restoration["yi"].to_numpy(), restoration["vi"].to_numpy()
    direct = lambda ls: -0.5 * np.sum(np.log(2 * np.pi * (v + np.exp(2 * ls))) + y**2 / (v + np.exp(2 * ls)))
    res = minimize(lambda x: -direct(x[0]), [0.0], method="BFGS", options={"gtol": 1e-10})
    assert fit.loglik == pytest.approx(direct(fit.params.iloc[0]), abs=1e-10)
    assert fit.params.iloc[0] == pytest.approx(res.x[0], abs=1e-5)
