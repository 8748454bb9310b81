"""The robust fit as a result object: names, fixed nu, location-scale sigma ~ x, weights,
predictions, and Gaussian-only methods refusing with the family's name."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.families.student_marginal import student_normal_logpdf

FORMULA = "yi ~ 1 + meta_V(V=vi)"


def test_fixed_nu_has_no_nu_parameter_and_its_loglik_is_the_sum_of_marginals(cdp):
    fit = drm.fit(FORMULA, cdp, family=drm.student(nu=3))
    assert list(fit.params.index) == ["mu:(Intercept)", "sigma:(Intercept)"]
    mu, sigma = fit.params["mu:(Intercept)"], np.exp(fit.params["sigma:(Intercept)"])
    direct = float(np.sum(student_normal_logpdf(cdp["yi"] - mu, cdp["vi"], np.full(10, sigma), np.full(10, 3.0))))
    assert fit.loglik == pytest.approx(direct, abs=1e-10)
    assert fit.converged and np.abs(fit._raw.gradient).max() < 1e-6


def test_estimated_nu_beats_every_fixed_nu(cdp, cdp_t):
    for nu in (1.0, 5.0):
        assert cdp_t.loglik >= drm.fit(FORMULA, cdp, family=drm.student(nu=nu)).loglik


def test_weights_are_row_multipliers(cdp):
    doubled = pd.concat([cdp, cdp.iloc[[2]]], ignore_index=True)
    w = np.ones(10)
    w[2] = 2.0
    a = drm.fit(FORMULA, cdp, family=drm.student(nu=3), weights=w)
    b = drm.fit(FORMULA, doubled, family=drm.student(nu=3))
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), atol=1e-6)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)


def test_wald_intervals_and_predictions(cdp_t):
    ci = cdp_t.conf_int(scale="response")
    assert ci.loc["nu:(Intercept)", "estimate"] == pytest.approx(float(np.exp(cdp_t.params["nu:(Intercept)"])))
    assert ci.loc["nu:(Intercept)", "lower"] < ci.loc["nu:(Intercept)", "estimate"] < ci.loc["nu:(Intercept)", "upper"]
    nu = cdp_t.predict(dpar="nu")
    assert len(nu) == 10 and np.allclose(nu, np.exp(cdp_t.params["nu:(Intercept)"]))
    new = cdp_t.predict(pd.DataFrame({"z": [1.0, 2.0]}), dpar="sigma")
    assert np.allclose(new, np.exp(cdp_t.params["sigma:(Intercept)"]))
    assert np.allclose(cdp_t.fitted(), cdp_t.params["mu:(Intercept)"])


@pytest.mark.parametrize("call", ["i2()", "h2()", "q_test()", "heterogeneity()", "variance_components()",
                                  "conf_int(method='bootstrap')", "residuals('pearson')", "influence()",
                                  "predict(re_form=True)", "coef_test()", "leave_one_out()"])
def test_gaussian_only_methods_name_the_family(cdp_t, call):
    with pytest.raises(drm.DrmError, match=r"assumes a Gaussian random-effects model; this fit's family is student\(\)"):
        eval(f"cdp_t.{call}")


def test_raw_fit_is_a_raw_fit_with_the_location_information(cdp_t, cdp_mix):
    """The robust raw result is an engine RawFit: n_location, structure and information answer
    (information: the inverse of mu's variance, the other parameters profiled out)."""
    from drmpy.engine.program import RawFit

    for fit in (cdp_t, cdp_mix):
        assert isinstance(fit._raw, RawFit) and fit.structure == "robust" and fit.n_location == 1
        assert fit.information.shape == (1, 1)
        assert fit.information[0, 0] == pytest.approx(1.0 / fit.std_errors["mu:(Intercept)"] ** 2, rel=1e-12)


def test_summary_and_check(cdp_t):
    text = str(cdp_t.summary())
    assert "student() random effects with known V, ML" in text and "nu: log" in text
    check = cdp_t.check().set_index("check")
    assert check.loc["optimizer_convergence", "status"] == "ok"
    assert check.loc["versus_normal", "value"] == pytest.approx(cdp_t.loglik - cdp_t.normal_loglik, abs=1e-6)


@pytest.mark.slow
def test_location_scale_student():
    """sigma ~ x: the t scale modelled; better than (or equal to) the normal location-scale fit."""
    rng = np.random.default_rng(5)
    n = 40
    x = rng.uniform(-1, 1, n)
    vi = rng.uniform(0.01, 0.1, n)
    u = np.exp(-1.5 + 0.8 * x) * rng.standard_t(3.0, n)
    data = pd.DataFrame({"yi": 0.3 + 0.2 * x + u + rng.normal(0, np.sqrt(vi)), "vi": vi, "x": x})
    formula = drm.Formula("yi ~ x + meta_V(V=vi)", "sigma ~ x")
    fit = drm.fit(formula, data, family=drm.student())
    assert fit.converged
    assert list(fit.params.index) == ["mu:(Intercept)", "mu:x", "sigma:(Intercept)", "sigma:x", "nu:(Intercept)"]
    assert fit.loglik >= drm.fit(formula, data).loglik - 1e-9
    assert fit.params["sigma:x"] > 0
