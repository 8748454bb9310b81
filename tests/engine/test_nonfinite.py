"""A degenerate covariance is refused; a non-finite result is never ``converged`` (issue 22, item 1).

``sigma ~ 0`` (the common-effect model) leaves only V and the random effects to give the
responses variance: a zero sampling variance, or a singular V that no random effect makes
positive definite, has no likelihood (metafor's ``rma(method = "EE")`` refuses such data
too).  Where the covariance is positive definite (sigma estimated, or a random effect that
covers the zero row) the fit goes ahead.  Every path that reports ``converged`` (single
fits, fit_batch and its (1|study) and tau^2 programs, parametric_bootstrap) reports False
for a non-finite log-likelihood or estimate.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.engine.optimize import CONVERGED, NONFINITE
from drmpy.errors import ConvergenceWarning, CovarianceError

COMMON = drm.Formula("yi ~ 1 + meta_V(V=vi)", "sigma ~ 0")


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    """12 rows, 6 studies of 2 rows, labelled r0..r11 (so messages name labels, not positions)."""
    rng = np.random.default_rng(1)
    n = 12
    return pd.DataFrame(
        {"yi": rng.normal(size=n), "vi": rng.uniform(0.05, 0.2, n),
         "study": np.repeat(list("abcdef"), 2), "x": rng.normal(size=n)},
        index=[f"r{i}" for i in range(n)],
    )


def _quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return drm.fit(*args, **kwargs)


# --------------------------------------------------------------------------- sigma ~ 0 with a degenerate V


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_common_effect_zero_vi_raises_naming_the_row(small, method):
    d = small.copy()
    d.loc["r3", "vi"] = 0.0
    with pytest.raises(CovarianceError, match=r"meta_V\(V = vi\).*sigma ~ 0.*'r3'"):
        drm.fit(COMMON, d, method=method)


def test_common_effect_zero_vi_names_every_row(small):
    d = small.copy()
    d.loc[["r3", "r7"], "vi"] = 0.0
    with pytest.raises(CovarianceError, match=r"2 rows: 'r3', 'r7'"):
        drm.fit(COMMON, d)


def test_common_effect_zero_vi_with_zero_weight_still_raises(small):
    """A zero weight does not remove the row from the covariance: still refused, not NaN."""
    d = small.copy()
    d.loc["r3", "vi"] = 0.0
    w = np.ones(len(d))
    w[3] = 0.0
    with pytest.raises(CovarianceError, match="'r3'"):
        drm.fit(COMMON, d, weights=w)


def test_common_effect_singular_full_v_raises(small):
    vi = small["vi"].to_numpy()
    V = np.diag(vi)
    V[0, 1] = V[1, 0] = np.sqrt(vi[0] * vi[1])  # perfectly correlated pair: rank n - 1
    f = drm.Formula("yi ~ 1 + meta_V(V=Vm)", "sigma ~ 0")
    with pytest.raises(CovarianceError, match=r"meta_V\(V = Vm\).*singular.*rank 11 of 12.*'r0', 'r1'"):
        drm.fit(f, small, env={"Vm": V})


def test_common_effect_two_zero_rows_in_one_study_not_rescued(small):
    """(1|study) gives rows r2 and r3 (study b) only a shared variance: their difference has
    variance 0 whatever sd(study) is, so the covariance is singular everywhere."""
    d = small.copy()
    d.loc[["r2", "r3"], "vi"] = 0.0
    f = drm.Formula("yi ~ 1 + meta_V(V=vi) + (1|study)", "sigma ~ 0")
    with pytest.raises(CovarianceError, match=r"'r2', 'r3'.*random effects \(`\(1\|study\)`\)"):
        drm.fit(f, d)


def _pair_correlated_v(vi: np.ndarray) -> np.ndarray:
    """Diagonal V with rows 0 and 1 (study a) perfectly correlated: rank n - 1."""
    V = np.diag(vi)
    V[0, 1] = V[1, 0] = np.sqrt(vi[0] * vi[1])
    return V


def test_common_effect_singular_full_v_rescued_by_random_effect(small):
    """V's null direction (sqrt(v1), -sqrt(v0)) on rows r0, r1 has a non-zero sum when
    v0 != v1, so (1|study) gives it variance: S is positive definite and the fit goes ahead."""
    f = drm.Formula("yi ~ 1 + meta_V(V=Vm) + (1|study)", "sigma ~ 0")
    fit = _quiet_fit(f, small, env={"Vm": _pair_correlated_v(small["vi"].to_numpy())})
    assert fit.converged and np.isfinite(fit.loglik) and np.all(np.isfinite(fit.params))


def test_common_effect_singular_full_v_not_rescued_when_contrast_sums_to_zero(small):
    """With v0 == v1 the null direction is (1, -1)/sqrt(2): within-study contrasts get no
    variance from (1|study), so S is singular whatever sd(study) is."""
    vi = small["vi"].to_numpy().copy()
    vi[1] = vi[0]
    f = drm.Formula("yi ~ 1 + meta_V(V=Vm) + (1|study)", "sigma ~ 0")
    with pytest.raises(CovarianceError, match=r"rank 11 of 12\) on 2 rows: 'r0', 'r1'.*`\(1\|study\)`"):
        drm.fit(f, small, env={"Vm": _pair_correlated_v(vi)})


def test_common_effect_zero_vi_rescued_by_random_effect_fits(small):
    d = small.copy()
    d.loc["r3", "vi"] = 0.0
    fit = _quiet_fit(drm.Formula("yi ~ 1 + meta_V(V=vi) + (1|study)", "sigma ~ 0"), d)
    assert fit.converged and np.isfinite(fit.loglik)
    assert np.all(np.isfinite(fit.params)) and np.all(np.isfinite(fit.std_errors))


@pytest.mark.parametrize("sigma", ["sigma ~ 1", "sigma ~ x"])
def test_zero_vi_with_sigma_estimated_fits(small, sigma):
    d = small.copy()
    d.loc["r3", "vi"] = 0.0
    fit = _quiet_fit(drm.Formula("yi ~ 1 + meta_V(V=vi)", sigma), d)
    assert fit.converged and np.isfinite(fit.loglik) and np.all(np.isfinite(fit.params))


def test_singular_full_v_with_sigma_estimated_fits(small):
    vi = small["vi"].to_numpy()
    V = np.diag(vi)
    V[0, 1] = V[1, 0] = np.sqrt(vi[0] * vi[1])
    fit = _quiet_fit(drm.Formula("yi ~ 1 + meta_V(V=Vm)"), small, env={"Vm": V})
    assert fit.converged and np.isfinite(fit.loglik)


# --------------------------------------------------------------------------- single fits: non-finite is not converged


def test_nonfinite_common_effect_fit_is_not_converged(small):
    """Responses of 1e200 overflow y'V^-1y: the closed-form common-effect fit used to report
    converged with logLik -inf."""
    d = small.assign(yi=small["yi"] * 1e200)
    with pytest.warns(ConvergenceWarning, match="non-finite"):
        fit = drm.fit(COMMON, d)
    assert not fit.converged
    assert fit._raw.status == NONFINITE
    rows = fit.check().set_index("check")
    assert rows.loc["finite_objective", "status"] == "error"
    assert rows.loc["optimizer_convergence", "status"] == "warning"


def test_nonfinite_estimate_is_an_error_row(small):
    """A finite log-likelihood beside a non-finite estimate: check() says which estimate."""
    import dataclasses

    fit = _quiet_fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), small)
    theta = fit._raw.theta.copy()
    theta[0] = np.nan
    bad = drm.DrmFit(fit.design, dataclasses.replace(fit._raw, theta=theta), fit.method, fit._control,
                     fit._clusters)
    row = bad.check().set_index("check").loc["finite_objective"]
    assert row["status"] == "error" and "mu:(Intercept)" in row["message"]


def test_run_fit_marks_nonfinite_results(small, monkeypatch):
    """Whatever the compiled program reports, run_fit never returns a converged non-finite fit
    (this is what single and bivariate fits read ``converged`` from)."""
    from drmpy.engine import program

    real = program._run_once

    def nan_estimate(*args, **kwargs):
        out = dict(real(*args, **kwargs))
        out["beta"] = np.full_like(np.asarray(out["beta"]), np.nan)
        return out

    monkeypatch.setattr(program, "_run_once", nan_estimate)
    with pytest.warns(ConvergenceWarning):
        fit = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), small)
    assert fit._raw.status == NONFINITE and not fit.converged


# --------------------------------------------------------------------------- fit_batch


def test_fit_batch_tau2_nonfinite_group_says_nonfinite(small):
    """The tau^2 program stops a NaN group at its iteration limit; the result says why."""
    d = small.assign(g=np.repeat([1, 2], 6))
    d.loc[d.g == 1, "yi"] *= 1e200
    r = drm.fit_batch(drm.Formula("yi ~ 1 + meta_V(V=vi)"), d, by="g", progress=False)
    g1, g2 = r[r.g == 1], r[r.g == 2]
    assert not g1["converged"].any()
    assert str(g1["message"].iloc[0]).startswith("not converged: the objective")
    assert "non-finite" in str(g1["message"].iloc[0])
    assert g2["converged"].all() and np.isfinite(g2["estimate"]).all()


def test_fit_batch_result_frame_never_converged_when_nonfinite():
    """The shared result table of fit_batch: a NaN log-likelihood or location estimate (or a
    NaN variance parameter outside the boundary rule's sigma = 0) is not converged."""
    from drmpy.engine.tau2_batch import BOUNDARY_BETTER
    from drmpy.batch.batch import _Groups, _result_frame

    G = 4
    gr = _Groups(labels=pd.Index([0, 1, 2, 3]), names=["mu:(Intercept)", "sigma:(Intercept)"], p=1, k=1,
                 y=np.zeros(8), X=np.ones((8, 1)), Z=np.ones((8, 1)), v=np.ones(8), row_pos=np.arange(8),
                 index=pd.RangeIndex(8), offsets=np.arange(0, 10, 2), sizes=np.full(G, 2), notes={})
    res = dict(beta=np.array([[0.1], [np.nan], [0.2], [0.3]]),
               phi=np.array([[-1.0], [-1.0], [np.nan], [-np.inf]]),
               f=np.array([1.0, 1.0, 1.0, 1.0]), var=np.ones((G, 2)), max_gradient=np.zeros(G),
               status=np.array([CONVERGED, CONVERGED, CONVERGED, BOUNDARY_BETTER]),
               iterations=np.ones(G, dtype=np.int64))
    out = _result_frame(gr, "g", res, np.ones(G, dtype=bool)).drop_duplicates("g").set_index("g")
    assert out["converged"].tolist() == [True, False, False, True]
    assert "non-finite" in str(out.loc[1, "message"]) and "non-finite" in str(out.loc[2, "message"])
    res["f"][0] = np.nan
    out = _result_frame(gr, "g", res, np.ones(G, dtype=bool)).drop_duplicates("g").set_index("g")
    assert not out.loc[0, "converged"]


def test_fit_batch_random_common_effect_zero_vi_groups(small):
    """(1|study) batch, sigma ~ 0: two zero variances in one study is the single fit's
    CovarianceError (not fitted, rows named); one zero variance, which the single fit
    handles, is not fitted with the reason (the batch program needs v + sigma^2 > 0), not a
    non-finite 'not converged'; other groups are unaffected."""
    d = pd.concat([small.assign(g=1), small.assign(g=2), small.assign(g=3)])
    d.index = [f"{g}-{i}" for g, i in zip(d.g, range(len(d)))]
    d.loc["1-2", "vi"] = 0.0
    d.loc["1-3", "vi"] = 0.0
    d.loc["2-15", "vi"] = 0.0
    f = drm.Formula("yi ~ 1 + meta_V(V=vi) + (1|study)", "sigma ~ 0")
    r = drm.fit_batch(f, d, by="g", progress=False).drop_duplicates("g").set_index("g")
    m1, m2 = str(r.loc[1, "message"]), str(r.loc[2, "message"])
    assert m1.startswith("not fitted:") and "'1-2', '1-3'" in m1 and "singular" in m1
    assert m2.startswith("not fitted:") and "'2-15'" in m2 and "drm.fit" in m2
    assert not r.loc[1, "converged"] and not r.loc[2, "converged"]
    assert r.loc[3, "converged"]


# --------------------------------------------------------------------------- parametric_bootstrap


def test_bootstrap_counts_only_finite_refits(small, monkeypatch):
    from drmpy.simulation import bootstrap

    fit = _quiet_fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), small)
    real = bootstrap._Refitter.run

    def one_nan(self, Yc, phi0, max_iter, gtol):
        out = dict(real(self, Yc, phi0, max_iter, gtol))
        out["beta"] = np.array(out["beta"], dtype=float)
        out["beta"][0] = np.nan  # lane 0: a NaN estimate that says it converged
        out["status"] = np.array(out["status"])
        out["status"][0] = CONVERGED
        return out

    monkeypatch.setattr(bootstrap._Refitter, "run", one_nan)
    bt = drm.parametric_bootstrap(fit, nsim=20, seed=1, progress=False, chunk_size=32)
    assert bt["n_converged"].iloc[0] <= 19
    assert np.all(np.isfinite(bt[["boot_mean", "boot_se", "lower", "upper"]].to_numpy()))


# --------------------------------------------------------------------------- deletion refits


def test_leave_one_out_nonfinite_refits_are_not_converged(small):
    """Common-effect model with one response of 1e200 (y'V^-1y overflows): the refits'
    log-likelihoods are -inf (the deletion program works in the full fit's centred
    coordinates, so even the refit without that row overflows), and none is converged."""
    d = small.copy()
    d.loc["r5", "yi"] = 1e200
    with pytest.warns(ConvergenceWarning):
        fit = drm.fit(COMMON, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        loo = fit.leave_one_out()
    nonfinite = ~np.isfinite(loo["loglik"]) | ~np.isfinite(loo["mu:(Intercept)"])
    assert nonfinite.any()
    assert not loo.loc[nonfinite, "converged"].any()


def test_zero_vi_with_tau2_estimated_matches_metafor():
    """metafor's rma(method = "REML", threshold 1e-12) on a zero sampling variance
    (reference_degenerate/make.R): estimate 0.05951495918, tau^2 0.06482567554; its
    method = "EE" refuses the data (division by zero)."""
    d = pd.DataFrame({"yi": [0.1, 0.3, -0.2, 0.5], "vi": [0.1, 0.05, 0.0, 0.2]})
    fit = _quiet_fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), d, method="REML")
    assert fit.params["mu:(Intercept)"] == pytest.approx(0.05951495918, abs=1e-8)
    assert np.exp(2 * fit.params["sigma:(Intercept)"]) == pytest.approx(0.06482567554, abs=1e-8)
    with pytest.raises(CovarianceError, match="row 2"):
        drm.fit(COMMON, d)


@pytest.mark.parametrize("x3, refused", [(0.0, True), (0.7, False)])
def test_common_effect_zero_vi_and_random_slope_only(small, x3, refused):
    """``(0 + x|study)`` gives row r3 the variance x3^2 sd^2: none when x3 = 0."""
    from drmpy.model.design import build_design

    d = small.copy()
    d.loc["r3", "vi"] = 0.0
    d.loc["r3", "x"] = x3
    f = drm.Formula("yi ~ 1 + meta_V(V=vi) + (0 + x|study)", "sigma ~ 0")
    if refused:
        with pytest.raises(CovarianceError, match=r"a zero sampling variance on row 'r3', and the random effects"):
            build_design(f, d)
    else:
        assert build_design(f, d).nobs == 12
