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

# SNP 239981 of benchmarks/bench_batch.py's snp_data(1_000_000): the other bimodal shape.  The
# REML criterion has a local maximum at tau^2 = 0 (where the climb from the moment start
# stops) and a higher interior one (logLik -5.11763 at tau^2 = 0.00306 against -5.11968 at 0;
# found by PyMARE).
INTERIOR_Y = [
    0.10528697623014048, 0.2565394708767835, 0.16907391479741601, -0.05376000644202181, 0.0992300084320828,
    -0.031564455308118924, 0.9052176034528584, -0.16166771908382876, 0.9504478510702052, 0.13959330817268292,
    0.0013009553373210733, 0.1524123526216548, -0.28857701529241697, 0.34320663171877225, 0.055912530055733274,
    0.29055878544431807, -0.43985622759144727, 0.35034973695497545, 0.13668016243804026, 0.031025787926938567,
    0.2467862167157584, 0.22093670486564065, -0.17284509161675615, 0.30852111653361575, -0.06697416185700072,
    -0.40764627373692014, -0.029809692123319548, 0.004634563541825995, -0.20656159726441542
]
INTERIOR_V = [
    0.005113812948562927, 0.022490663955046765, 0.038983123421576886, 0.040020912043694165,
    0.019466350636197206, 0.0934109047713636, 0.09445885492449331, 0.058742541605035864, 0.07968397537122553,
    0.06120552070003452, 0.03344050177682094, 0.060542148258063894, 0.08760643020169284, 0.06795662605154222,
    0.03581700044884667, 0.07627365479587009, 0.05038975850958888, 0.06615235596926983, 0.0567851332813311,
    0.040156229848052026, 0.021188874923796338, 0.035797446149098584, 0.042261831480017095,
    0.020809997942466484, 0.06033312699453685, 0.06024385933970722, 0.08077729393924234, 0.07249785359097642,
    0.07658751576187166
]


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


def test_boundary_stop_with_a_higher_interior_maximum_is_left():
    """Global optimum rule, other side: the climb stops at tau^2 = 0 while an interior maximum
    is higher; fit_batch's logLik must reach the maximum of a dense grid of the criterion."""
    grid = np.concatenate([[0.0], np.geomspace(1e-7, 1.0, 4001)])
    ll = np.array([dense_loglik(INTERIOR_Y, INTERIOR_V, t) for t in grid])
    assert ll.max() > ll[0] + 1e-3  # the group is what it says: the interior is higher
    d = pd.DataFrame({"snp": 0, "yi": INTERIOR_Y, "vi": INTERIOR_V})
    out = drm.fit_batch(drm.Formula("yi ~ 1 + meta_V(V=vi)"), d, by="snp", method="REML", progress=False)
    assert out["converged"].all()
    assert out["loglik"].iloc[0] >= ll.max() - 1e-10
    tau2 = math.exp(2.0 * out["estimate"].iloc[1])
    assert tau2 == pytest.approx(grid[ll.argmax()], rel=2e-3)
    assert out["loglik"].iloc[0] == pytest.approx(dense_loglik(INTERIOR_Y, INTERIOR_V, tau2), abs=1e-10)
