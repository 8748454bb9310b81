"""The family seam (issue 24 item 2): families name their parameters, the formula layer accepts
the registered ones, parameter names come from the family, the Gaussian family is unchanged."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import drmpy as drm
from drmpy.families import Family, Gaussian, NormalMixture, Student
from drmpy.model.design import build_design
from drmpy.results.fit import parameter_names


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    n = 12
    return pd.DataFrame({"yi": rng.normal(0.3, 0.4, n), "vi": rng.uniform(0.02, 0.2, n),
                         "x": rng.normal(size=n)})


def test_families_name_their_parameters():
    assert Gaussian().dpars == ("mu", "sigma")
    assert Student().dpars == ("mu", "sigma", "nu")
    assert Student(nu=4).dpars == ("mu", "sigma")
    assert Student(nu=4).fixed_values == {"nu": 4.0}
    assert NormalMixture().dpars == ("mu", "sigma", "sigma_out", "p_out")
    assert NormalMixture().link("p_out") == "logit" and Student().link("nu") == "log"
    assert drm.gaussian() == Gaussian() and repr(drm.gaussian()) == "gaussian()"
    assert isinstance(drm.student(), Family) and repr(drm.student(nu=3)) == "student(nu=3)"


def test_gaussian_logpdf_is_the_normal_marginal():
    r, v, s = np.array([0.3, -1.2]), np.array([0.1, 0.5]), np.array([0.2, 0.7])
    got = np.asarray(Gaussian().logpdf(r, v, s, {}))
    np.testing.assert_allclose(got, stats.norm.logpdf(r, scale=np.sqrt(v + s**2)), rtol=1e-14)


def test_mixture_logpdf_is_its_two_components():
    r, v, s = np.array([0.3, -1.2]), np.array([0.1, 0.5]), np.array([0.2, 0.7])
    extra = {"sigma_out": np.array([1.5, 1.5]), "p_out": np.array([0.1, 0.1])}
    want = np.log(0.9 * stats.norm.pdf(r, scale=np.sqrt(v + s**2)) + 0.1 * stats.norm.pdf(r, scale=np.sqrt(v + 2.25)))
    np.testing.assert_allclose(np.asarray(NormalMixture().logpdf(r, v, s, extra)), want, rtol=1e-13)


def test_formula_accepts_registered_family_parameters_after_sigma():
    f = drm.Formula("yi ~ x + meta_V(V=vi)", "nu ~ x", "sigma ~ x")
    assert list(f.dpars) == ["mu", "sigma", "nu"]
    assert f.family_dpars == ("nu",)
    g = drm.Formula("yi ~ 1 + meta_V(V=vi)", p_out="~ 1").with_dpar_defaults({"sigma_out": "1", "p_out": "1"})
    assert list(g.dpars) == ["mu", "sigma", "sigma_out", "p_out"]
    with pytest.raises(drm.FormulaError, match="nu \\(student\\)"):
        drm.Formula("yi ~ 1", nuu="~ 1")


def test_parameter_names_come_from_the_family(data):
    f = drm.Formula("yi ~ x + meta_V(V=vi)", "nu ~ 1")
    design = build_design(f, data)
    assert parameter_names(design, Student()) == ["mu:(Intercept)", "mu:x", "sigma:(Intercept)", "nu:(Intercept)"]
    with pytest.raises(drm.DrmError, match="no formula for sigma_out"):
        parameter_names(design, NormalMixture())
    plain = build_design(drm.Formula("yi ~ x + meta_V(V=vi)"), data)
    assert parameter_names(plain) == parameter_names(plain, Gaussian()) == ["mu:(Intercept)", "mu:x", "sigma:(Intercept)"]


def test_gaussian_fit_refuses_a_family_parameter(data):
    with pytest.raises(drm.DrmError, match="nu is a parameter of family student"):
        drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)", "nu ~ 1"), data)


def test_a_fixed_family_parameter_takes_no_formula(data):
    with pytest.raises(drm.DrmError, match="fixed"):
        drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)", "nu ~ 1"), data, family=drm.student(nu=4))


def test_robust_families_refuse_reml(data):
    with pytest.raises(drm.DrmError, match="maximum likelihood only"):
        drm.fit("yi ~ 1 + meta_V(V=vi)", data, family=drm.student(), method="REML")


def test_robust_families_refuse_models_they_do_not_fit(data):
    d = data.assign(g=["a", "b", "c"] * 4, h=["u", "v"] * 6)
    with pytest.raises(drm.DrmError, match="sigma ~ 0"):
        drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)", "sigma ~ 0"), d, family=drm.student())
    with pytest.raises(drm.DrmError, match="at most one random-effect term"):
        drm.fit("yi ~ 1 + (1|g) + (1|h) + meta_V(V=vi)", d, family=drm.normal_mixture())
    V = np.diag(d["vi"].to_numpy()) + 0.001
    with pytest.raises(drm.DrmError, match="diagonal V"):
        drm.fit("yi ~ 1 + meta_V(V=V)", d, family=drm.student(), env={"V": V})
    with pytest.raises(drm.DrmError, match="sigma_out is a parameter of family normal_mixture"):
        drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)", "sigma_out ~ 1"), d, family=drm.student())
    with pytest.raises(drm.DrmError, match="positive finite"):
        drm.student(nu=0)
