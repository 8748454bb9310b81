"""BivariateFit.simulate and parametric_bootstrap of bivariate fits.

Simulated moments are compared with the fitted covariance built here from the estimates
and V (V_i + B_i per study; the whole V + blockdiag B_i when V correlates studies); the
vmapped bootstrap refits are compared with single drm.fit calls on the same draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.simulation.bootstrap import _Refitter, simulated_responses

FORMULA = dict(mu1="y1 ~ x + meta_V(V=V)", mu2="y2 ~ 1", sigma1="~ 1", sigma2="~ 1", rho12="~ 1")
RHO_GUARD = 0.999999


def _data(n=14, seed=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    v1, v2 = rng.uniform(0.02, 0.08, n), rng.uniform(0.02, 0.08, n)
    cov = 0.4 * np.sqrt(v1 * v2)
    y = np.empty((n, 2))
    for i in range(n):
        S = np.array([[v1[i] + 0.09, cov[i] + 0.6 * 0.3 * 0.4], [cov[i] + 0.6 * 0.3 * 0.4, v2[i] + 0.16]])
        y[i] = rng.multivariate_normal([0.2 + 0.5 * x[i], -0.3], S)
    d = pd.DataFrame({"y1": y[:, 0], "y2": y[:, 1], "x": x}, index=[f"s{i}" for i in range(n)])
    d.loc["s2", "y2"] = np.nan  # one study with y1 only
    d.loc["s5", "x"] = np.nan  # x is in mu1: y1 dropped, y2 kept alone
    V = drm.meta_vcov_bivariate(v1, v2, cov12=cov).toarray()
    return d, V


def _cross(V):
    W = V.copy()
    W[0, 2] = W[2, 0] = 0.3 * np.sqrt(W[0, 0] * W[2, 2])
    W[3, 7] = W[7, 3] = 0.2 * np.sqrt(W[3, 3] * W[7, 7])
    return W


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def pair_fit(data):
    d, V = data
    return drm.fit(drm.Formula(**FORMULA), data=d, env={"V": V})


@pytest.fixture(scope="module")
def dense_fit(data):
    d, V = data
    return drm.fit(drm.Formula(**FORMULA), data=d, env={"V": _cross(V)})


def _fitted_covariance(fit, V):
    """Dense covariance of the kept row-paired entries: V + blockdiag_i B_i, from the estimates."""
    th = fit.params
    s1, s2 = np.exp(th["sigma1:(Intercept)"]), np.exp(th["sigma2:(Intercept)"])
    r = RHO_GUARD * np.tanh(th["rho12:(Intercept)"])
    n = fit.nobs
    assert n == len(V) // 2  # every study keeps a response, so V's rows are the fit's
    kept = fit.design.kept.reshape(-1)
    S = V.copy()
    for i in range(n):
        S[2 * i, 2 * i] += s1**2
        S[2 * i + 1, 2 * i + 1] += s2**2
        if fit.design.pair[i]:
            S[2 * i, 2 * i + 1] += r * s1 * s2
            S[2 * i + 1, 2 * i] += r * s1 * s2
    mean = np.column_stack([th["mu1:(Intercept)"] + th["mu1:x"] * fit.design.fixed["mu1"].matrix[:, 1],
                            np.full(n, th["mu2:(Intercept)"])]).reshape(-1)
    return mean[kept], S[np.ix_(kept, kept)]


def test_simulate_layout_and_seed(pair_fit, data):
    d, _ = data
    a = pair_fit.simulate(3, seed=11)
    b = pair_fit.simulate(3, seed=11)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["sim_1_y1", "sim_1_y2", "sim_2_y1", "sim_2_y2", "sim_3_y1", "sim_3_y2"]
    assert a.index.equals(pair_fit.row_labels) and len(a) == len(d)
    kept = pair_fit.design.kept
    for j in (1, 2, 3):
        np.testing.assert_array_equal(a[f"sim_{j}_y1"].notna().to_numpy(), kept[:, 0])
        np.testing.assert_array_equal(a[f"sim_{j}_y2"].notna().to_numpy(), kept[:, 1])
    assert np.isnan(a.loc["s2", "sim_1_y2"]) and np.isnan(a.loc["s5", "sim_1_y1"])
    assert not np.allclose(np.nan_to_num(a.to_numpy()), np.nan_to_num(pair_fit.simulate(3, seed=12).to_numpy()))
    with pytest.raises(drm.DrmError, match="nsim must be a positive integer"):
        pair_fit.simulate(0)
    # the engine's row-paired order used by the bootstrap
    Y = simulated_responses(pair_fit, 3, 11)
    np.testing.assert_array_equal(Y[0::2, 1], a["sim_2_y1"].to_numpy())
    np.testing.assert_array_equal(Y[1::2, 2], a["sim_3_y2"].to_numpy())


@pytest.mark.parametrize("which", ["pair", "dense"])
def test_simulated_moments_match_fitted_covariance(which, pair_fit, dense_fit, data):
    fit = pair_fit if which == "pair" else dense_fit
    _, V = data
    V = V if which == "pair" else _cross(V)
    assert fit.structure == which
    nsim = 40000
    Y = simulated_responses(fit, nsim, 5)
    kept = fit.design.kept.reshape(-1)
    Y = Y[kept]
    assert np.isfinite(Y).all()
    mean, S = _fitted_covariance(fit, V)
    se = np.sqrt(np.diag(S) / nsim)
    assert np.max(np.abs(Y.mean(axis=1) - mean) / se) < 4.5
    C = np.cov(Y)
    assert np.max(np.abs(C - S)) < 0.04 * np.max(np.diag(S))
    # the within-study covariance of study s0 (a correlated pair) and a cross-study one
    assert C[0, 1] == pytest.approx(S[0, 1], abs=0.03 * np.sqrt(S[0, 0] * S[1, 1]))
    if which == "dense":
        assert C[0, 2] == pytest.approx(S[0, 2], abs=0.03 * np.sqrt(S[0, 0] * S[2, 2]))
        assert abs(S[0, 2]) > 0.005


@pytest.mark.slow
@pytest.mark.parametrize("which", ["pair", "dense"])
def test_bootstrap_refits_equal_single_fits(which, pair_fit, dense_fit, data):
    """The vmapped engine program refits bivariate draws as drm.fit does (weights carried)."""
    d, V = data
    V = V if which == "pair" else _cross(V)
    weights = None
    if which == "pair":
        weights = np.ones(len(d))
        weights[[1, 4]] = 2.0
        fit = drm.fit(drm.Formula(**FORMULA), data=d, env={"V": V}, weights=weights)
    else:
        fit = dense_fit
    sims = fit.simulate(3, seed=2)
    Y = simulated_responses(fit, 3, 2)
    refit = _Refitter(fit)
    out = refit.run(refit.centred(Y), np.tile(refit.phi_hat, (3, 1)), 200, 1e-8)
    p = refit.struct.p
    for j in range(3):
        dj = d.assign(y1=sims[f"sim_{j + 1}_y1"], y2=sims[f"sim_{j + 1}_y2"])
        single = drm.fit(drm.Formula(**FORMULA), data=dj, env={"V": V}, weights=weights)
        assert single.structure == which and single.converged
        np.testing.assert_allclose(out["beta"][j], single.params.to_numpy()[:p], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out["phi"][j], single.params.to_numpy()[p:], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(-out["f"][j], single.loglik, rtol=0, atol=1e-8)
        np.testing.assert_allclose(np.sqrt(out["var"][j]), single.std_errors.to_numpy(), rtol=1e-4)


@pytest.mark.slow
def test_parametric_bootstrap_bivariate(pair_fit):
    bt = drm.parametric_bootstrap(pair_fit, nsim=200, seed=3, progress=False, chunk_size=64)
    assert list(bt["parameter"]) == list(pair_fit.params.index)
    assert (bt["n_converged"] >= 195).all()
    assert ((bt["lower"] < bt["estimate"]) & (bt["estimate"] < bt["upper"])).all()
    mu = bt["parameter"].str.startswith("mu")
    np.testing.assert_allclose(bt.loc[mu, "boot_se"], pair_fit.std_errors[mu.to_numpy()].to_numpy(), rtol=0.25)
    with pytest.raises(drm.DrmError, match="nsim must be an integer >= 2"):
        drm.parametric_bootstrap(pair_fit, nsim=1)
