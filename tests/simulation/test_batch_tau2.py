"""fit_batch's Newton path in tau^2 (``sigma ~ 1``) and the boundary rule (global optimum at sigma = 0).

References: single ``drm.fit`` per group (itself tested against drmTMB and metafor) and the
REML/ML log-likelihood of the zero-variance model written densely here.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

# Group 44573 of benchmarks/bench_batch.py's snp_data(100_000): the REML likelihood in tau^2
# is bimodal; Newton (and drm.fit) from the DerSimonian-Laird start climbs to the interior
# local maximum (logLik -4.4853 at tau^2 = 0.0456), lower than the value at tau^2 = 0 (-4.3756).
BIMODAL_Y = [-0.14988253478817393, 0.13909509334973974, -0.04268869648812626, -0.06697737649740394,
             -0.6127549729439659, 0.968030912362754, -0.2687856932694442, -0.174179878273065]
BIMODAL_V = [0.008460668873635346, 0.09297896427968426, 0.008673572167874863, 0.010181709818683642,
             0.08121454061947, 0.09232156733470169, 0.04711710331862109, 0.033981417015796565]


def dense_loglik(y, v, tau2, X=None, reml=True):
    """Log-likelihood of y ~ N(X beta, diag(v) + tau2 I), beta by GLS; REML in drmTMB's convention."""
    y = np.asarray(y, float)
    X = np.ones((len(y), 1)) if X is None else np.asarray(X, float)
    S = np.diag(np.asarray(v, float) + tau2)
    Si = np.linalg.inv(S)
    A = X.T @ Si @ X
    beta = np.linalg.solve(A, X.T @ Si @ y)
    r = y - X @ beta
    n, p = X.shape
    ll = -0.5 * (np.linalg.slogdet(S)[1] + r @ Si @ r)
    if reml:
        return ll - 0.5 * ((n - p) * math.log(2 * math.pi) + np.linalg.slogdet(A)[1])
    return ll - 0.5 * n * math.log(2 * math.pi)


def _single(d, formula, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return drm.fit(formula, d, method=method)


def _snp_like(G: int, seed: int, moderator: bool = False) -> pd.DataFrame:
    """G meta-analyses of 5 to 16 studies, half with tau^2 = 0 (benchmark's generator, smaller)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(5, 17, G)
    snp = np.repeat(np.arange(G), k)
    n = int(k.sum())
    tau2 = np.where(rng.uniform(size=G) < 0.5, 0.0, rng.uniform(0.0, 0.05, G))
    x = rng.normal(size=n)
    vi = rng.uniform(0.005, 0.1, n)
    yi = rng.normal(0.0, 0.05, G)[snp] + (0.2 * x if moderator else 0.0) + rng.normal(size=n) * np.sqrt(vi + tau2[snp])
    return pd.DataFrame({"snp": snp, "yi": yi, "vi": vi, "x": x})


def test_bimodal_group_returns_the_better_boundary():
    grid = np.linspace(1e-4, 0.3, 3000)
    ll = np.array([dense_loglik(BIMODAL_Y, BIMODAL_V, t) for t in grid])
    interior = np.flatnonzero((ll[1:-1] > ll[:-2]) & (ll[1:-1] > ll[2:])) + 1
    ll0 = dense_loglik(BIMODAL_Y, BIMODAL_V, 0.0)
    # the case is what it claims: an interior local maximum below the value at zero
    assert len(interior) == 1 and abs(grid[interior[0]] - 0.0456) < 2e-4
    assert ll[interior[0]] == pytest.approx(-4.4853, abs=1e-4) and ll0 == pytest.approx(-4.3756, abs=1e-4)
    d = pd.DataFrame({"g": 1, "yi": BIMODAL_Y, "vi": BIMODAL_V})
    out = drm.fit_batch("yi ~ 1 + meta_V(V=vi)", d, by="g", method="REML", progress=False)
    assert out["loglik"].iloc[0] == pytest.approx(ll0, abs=1e-10)
    assert out["converged"].all()
    assert "fits better than the interior local optimum" in out["message"].iloc[0]
    w = 1.0 / np.asarray(BIMODAL_V)
    assert out["estimate"].iloc[0] == pytest.approx(np.sum(w * BIMODAL_Y) / np.sum(w), abs=1e-12)
    assert out["std_error"].iloc[0] == pytest.approx(1.0 / np.sqrt(np.sum(w)), rel=1e-10)
    assert out["estimate"].iloc[1] == -np.inf and np.isnan(out["std_error"].iloc[1])
    # never below the single fit (which today stops at the interior maximum)
    assert out["loglik"].iloc[0] >= _single(d.drop(columns="g"), "yi ~ 1 + meta_V(V=vi)", "REML").loglik - 1e-10


def test_boundary_rule_on_the_trust_region_path():
    """sigma ~ 0 + c with c = 2 is the same model on the trust-region pool (Z is not 1)."""
    d = pd.DataFrame({"g": 1, "yi": BIMODAL_Y, "vi": BIMODAL_V, "c": 2.0})
    out = drm.fit_batch(drm.Formula("yi ~ 1 + meta_V(V=vi)", "sigma ~ 0 + c"), d, by="g", method="REML",
                        progress=False)
    assert out["loglik"].iloc[0] == pytest.approx(dense_loglik(BIMODAL_Y, BIMODAL_V, 0.0), abs=1e-10)
    assert "fits better than the interior local optimum" in out["message"].iloc[0]
    assert np.isnan(out["estimate"].iloc[1])  # no intercept: the coefficient is undetermined


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_newton_path_matches_single_fits(method):
    d = _snp_like(40, seed=3)
    out = drm.fit_batch("yi ~ 1 + meta_V(V=vi)", d, by="snp", method=method, progress=False)
    n_boundary = 0
    for g, dd in d.groupby("snp"):
        fit = _single(dd, "yi ~ 1 + meta_V(V=vi)", method)
        rows = out[out["snp"] == g]
        ll = rows["loglik"].iloc[0]
        assert rows["converged"].all()
        assert ll >= fit.loglik - 1e-10  # never below the single fit
        est, se = rows["estimate"].to_numpy(), rows["std_error"].to_numpy()
        if est[1] == -np.inf:
            n_boundary += 1
            # drm.fit stops where the log-SD is about -11 (tau^2 ~ 1e-10): within 1e-7 of the limit
            assert ll - fit.loglik <= 1e-7
            assert ll == pytest.approx(dense_loglik(dd.yi, dd.vi, 0.0, reml=method == "REML"), abs=1e-10)
            assert abs(est[0] - fit.params.iloc[0]) <= 1e-4 * se[0]  # drm.fit sits at tau^2 ~ 1e-10, not 0
            # (X'V^-1X)^-1 at tau^2 = 0 (drm.fit near zero adds J Cov(log sigma) J', which
            # vanishes at the boundary when the score there is negative)
            assert se[0] == pytest.approx(1.0 / np.sqrt(np.sum(1.0 / dd.vi)), rel=1e-10)
            assert np.isnan(se[1])
            assert rows["message"].iloc[0] == "converged: heterogeneity variance at its zero boundary (sigma = 0)"
        else:
            assert abs(ll - fit.loglik) <= 1e-8
            tau2 = math.exp(2 * est[1])
            assert ll == pytest.approx(dense_loglik(dd.yi, dd.vi, tau2, reml=method == "REML"), abs=1e-10)
            np.testing.assert_allclose(est, fit.params.to_numpy(), rtol=0, atol=2e-5 * max(1.0, se[1]))
            np.testing.assert_allclose(se, fit.std_errors.to_numpy(), rtol=1e-4)
            assert rows["max_gradient"].iloc[0] < 1e-8
    assert 5 <= n_boundary <= 35


def test_newton_path_with_a_moderator_and_zero_variance_rows():
    d = _snp_like(12, seed=5, moderator=True)
    d.loc[d["snp"] == 3, "vi"] = np.where(np.arange((d["snp"] == 3).sum()) == 0, 0.0, d.loc[d["snp"] == 3, "vi"])
    out = drm.fit_batch("yi ~ x + meta_V(V=vi)", d, by="snp", method="REML", progress=False)
    for g, dd in d.groupby("snp"):
        fit = _single(dd, "yi ~ x + meta_V(V=vi)", "REML")
        rows = out[out["snp"] == g]
        assert rows["loglik"].iloc[0] >= fit.loglik - 1e-10
        assert rows["loglik"].iloc[0] - fit.loglik <= 1e-7
        np.testing.assert_allclose(rows["estimate"].to_numpy()[:2], fit.params.to_numpy()[:2], atol=2e-6)
