"""Robust fits and awkward data: the response's units (scale invariance), a zero sampling
variance, too few rows for the parameters, and rows with missing values (the Gaussian rule)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.inference.outlier_test import observed_statistic, replicate_statistics, run_refits

FORMULA = "yi ~ 1 + meta_V(V=vi)"
SCALES = (1e-6, 1e6)
FAMILIES = {"student": drm.student(), "normal_mixture": drm.normal_mixture()}


def _scaled(data: pd.DataFrame, c: float) -> pd.DataFrame:
    return data.assign(yi=data["yi"] * c, vi=data["vi"] * c * c)


@pytest.fixture(scope="module")
def scaled_fits(cdp):
    """{(family, c): fit of cdp with y * c and v * c^2}."""
    return {(name, c): drm.fit(FORMULA, _scaled(cdp, c), family=family)
            for name, family in FAMILIES.items() for c in SCALES}


def _base(name, cdp_t, cdp_mix):
    return cdp_t if name == "student" else cdp_mix


def _user_factor(fit, c: float) -> np.ndarray:
    """How each estimate moves when the response is multiplied by c: mu coefficients times c,
    log-SD intercepts plus log c; returned as (multiplier, shift)."""
    names = fit.params.index
    mult = np.where(names.str.startswith("mu:"), c, 1.0)
    shift = np.where(names.isin(["sigma:(Intercept)", "sigma_out:(Intercept)"]), math.log(c), 0.0)
    return np.stack([mult, shift])


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("c", SCALES)
def test_fit_is_scale_invariant(name, c, scaled_fits, cdp_t, cdp_mix):
    """y * c, v * c^2: logLik + n log c as at c = 1, mu * c, log sigma + log c, other estimates and every
    standard error (mu's times c) as at c = 1, converged at every scale."""
    base = _base(name, cdp_t, cdp_mix)
    fit = scaled_fits[(name, c)]
    assert base.converged and fit.converged
    assert fit.loglik + base.nobs * math.log(c) == pytest.approx(base.loglik, rel=1e-6, abs=1e-6)
    mult, shift = _user_factor(base, c)
    got = (fit.params.to_numpy() - shift) / mult
    # the mixture's sigma is at its zero boundary (metaplus: tau2 = 0), where the likelihood is
    # flat in log sigma (SE ~ 1e4): the solver stops where the gradient is below tolerance, a
    # point that moves with rounding; there both fits have sigma below 1e-3 of the smallest
    # sampling SD, and the other estimates are compared
    flat = (base.std_errors > 100).to_numpy()
    assert list(base.params.index[flat]) == ([] if name == "student" else ["sigma:(Intercept)"])
    assert np.all(np.exp(got[flat]) < 1e-3 * np.sqrt(base.design.known_v.diag.min()))
    np.testing.assert_allclose(got[~flat], base.params.to_numpy()[~flat], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose((fit.std_errors.to_numpy() / mult)[~flat], base.std_errors.to_numpy()[~flat],
                               rtol=1e-6)
    assert fit.normal_loglik + base.nobs * math.log(c) == pytest.approx(base.normal_loglik, rel=1e-9, abs=1e-9)
    assert observed_statistic(fit) == pytest.approx(observed_statistic(base), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("c", SCALES)
def test_outlier_probabilities_are_scale_invariant(c, scaled_fits, cdp_mix):
    np.testing.assert_allclose(scaled_fits[("normal_mixture", c)].outlier_probabilities().to_numpy(),
                               cdp_mix.outlier_probabilities().to_numpy(), atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("c", SCALES)
def test_bootstrap_refits_are_scale_invariant(c, scaled_fits, cdp_mix):
    """The outlier test's batch refits of the same replicates (drawn at c = 1, multiplied by c):
    the same LRT per replicate, and log-likelihoods shifted by -n log c (each density 1/c times)."""
    rng = np.random.default_rng(4)
    from drmpy.inference.outlier_test import simulate_normal

    Y, V = simulate_normal(cdp_mix, 6, rng, False)
    base = run_refits(cdp_mix, Y, V)
    fit = scaled_fits[("normal_mixture", c)]
    got = run_refits(fit, Y * c, V * c * c)
    n = cdp_mix.nobs
    np.testing.assert_allclose(got["normal_loglik"] + n * math.log(c), base["normal_loglik"], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(replicate_statistics(got), replicate_statistics(base), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_profile_interval_of_mu_is_scale_invariant(cdp, cdp_t):
    """The profile search runs in the optimiser's units: the interval of mu at c = 1e-6 is c
    times the interval at c = 1."""
    c = 1e-6
    fit = drm.fit(FORMULA, _scaled(cdp, c), family=drm.student())
    got = fit.conf_int(method="profile", params="mu:(Intercept)").iloc[0]
    want = cdp_t.conf_int(method="profile", params="mu:(Intercept)").iloc[0]
    assert got["lower"] / c == pytest.approx(want["lower"], rel=1e-4)
    assert got["upper"] / c == pytest.approx(want["upper"], rel=1e-4)


# ---------------------------------------------------------------- bad sampling variances
@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_zero_sampling_variance_is_refused(cdp, family):
    data = cdp.copy()
    data.loc[3, "vi"] = 0.0
    with pytest.raises(drm.DrmError, match=r"row 3.*`vi`.*grows without bound"):
        drm.fit(FORMULA, data, family=family)


def test_negative_sampling_variance_is_refused(cdp):
    data = cdp.copy()
    data.loc[3, "vi"] = -0.01
    with pytest.raises(drm.DrmError, match="row 3"):
        drm.fit(FORMULA, data, family=drm.student())


# ---------------------------------------------------------------- too few rows
@pytest.mark.parametrize("family, rows, k", [(drm.student(), 3, 3), (drm.normal_mixture(), 4, 4),
                                             (drm.student(nu=4), 1, 2)])
def test_too_few_rows_for_the_parameters_are_refused(cdp, family, rows, k):
    with pytest.raises(drm.DrmError, match=rf"{rows} row.*{k} parameters"):
        drm.fit(FORMULA, cdp.iloc[:rows], family=family)


# ---------------------------------------------------------------- missing values
@pytest.mark.parametrize("column", ["yi", "vi", "x"])
def test_missing_values_follow_the_gaussian_rule(cdp, cdp_t, column):
    """A row with a missing y, v or predictor is dropped as the Gaussian fit drops it, and
    the drop is reported in the same words: design.dropped, summary and check()."""
    data = cdp.assign(x=np.arange(len(cdp), dtype=float))
    data.loc[3, column] = np.nan
    formula = drm.Formula("yi ~ 1 + x + meta_V(V=vi)") if column == "x" else FORMULA
    gauss = drm.fit(formula, data)
    fit = drm.fit(formula, data, family=drm.student(nu=4))
    assert fit.nobs == 9 and fit.design.dropped == gauss.design.dropped and sum(fit.design.dropped.values()) == 1
    assert "1 row(s) dropped" in str(fit.summary()) and "1 row(s) dropped" in str(gauss.summary())
    robust_row = fit.check().set_index("check").loc["dropped_rows"]
    gauss_row = gauss.check().set_index("check").loc["dropped_rows"]
    assert robust_row.to_dict() == gauss_row.to_dict()
    complete = drm.fit(formula, data.drop(index=3), family=drm.student(nu=4))
    np.testing.assert_allclose(fit.params.to_numpy(), complete.params.to_numpy(), rtol=1e-10)


@pytest.mark.parametrize("family, formula", [
    ("normal_mixture", drm.Formula("yi ~ x + meta_V(V = vi)")),
    ("student", drm.Formula("yi ~ 1 + meta_V(V = vi)", sigma="~ x")),
])
def test_predictor_units_do_not_change_the_fit(family, formula):
    """A predictor in units 1e-6 of the original: the same logLik, coefficients 1e6 times
    larger, converged (before the optimiser's column scaling the mixture stopped unconverged
    at logLik -4.27 against -3.00, and the t reported convergence 0.005 below the maximum)."""
    cdp = drm.datasets.cdp()
    x = np.linspace(-1.0, 1.0, len(cdp))
    fam = {"student": drm.student, "normal_mixture": drm.normal_mixture}[family]
    base = drm.fit(formula, cdp.assign(x=x), family=fam())
    small = drm.fit(formula, cdp.assign(x=x * 1e-6), family=fam())
    assert base.converged and small.converged
    assert small.loglik == pytest.approx(base.loglik, abs=1e-8)
    scale = np.array([1e6 if name.endswith(":x") else 1.0 for name in base.params.index])
    # the mixture's sigma is at its zero boundary on cdp (check() says so), where the likelihood
    # is flat in log sigma: there both fits must only put sigma at zero (below 1e-3 of the
    # smallest sampling SD), as in the response-units tests above
    flat = np.array([name == "sigma:(Intercept)" and family == "normal_mixture" for name in base.params.index])
    assert base.check().set_index("check").loc["boundary", "status"] == ("note" if flat.any() else "ok")
    keep = ~flat
    np.testing.assert_allclose(small.params.to_numpy()[keep] / scale[keep], base.params.to_numpy()[keep],
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(small.std_errors.to_numpy()[keep] / scale[keep], base.std_errors.to_numpy()[keep],
                               rtol=1e-5)
    floor = 1e-3 * float(np.sqrt(cdp["vi"].min()))
    for fit in (base, small):
        assert np.all(np.exp(fit.params.to_numpy()[flat]) < floor)
