"""The shared GLS quantities against metafor's se(beta) and a dense covariance built here."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.inference.marginal import gls, location_vcov, marginal_covariance

REF = Path(__file__).parents[1] / "reference"


def _case(name):
    case = json.loads((REF / name / "case.json").read_text())
    return case, pd.read_csv(REF / name / "data.csv")


@pytest.mark.parametrize("name", ["bcg_random_ml", "konstantopoulos_3level_ml"])
def test_gls_se_equals_metafor(name):
    case, data = _case(name)
    f = drm.Formula(*case["formulas"])
    fit = drm.fit(f, data=data, method=case["method"])
    se = np.sqrt(np.diag(location_vcov(fit, "gls")))
    expected = np.array(list(case["expected"]["metafor"]["se_beta"].values()))
    np.testing.assert_allclose(se, expected, rtol=2e-6)
    # the observed-information SE is the other convention, and differs
    assert abs(np.sqrt(location_vcov(fit, "observed")[0, 0]) - se[0]) > 1e-5


def test_marginal_covariance_three_level_by_hand():
    case, data = _case("konstantopoulos_3level_ml")
    fit = drm.fit(drm.Formula(*case["formulas"]), data=data)
    S = marginal_covariance(fit)
    d = fit.design
    sd = float(np.exp(fit.params["sd(district):(Intercept)"]))
    same = d.random[0].level_index[:, None] == d.random[0].level_index[None, :]
    expected = np.diag(d.known_v.diag + fit.sigma().to_numpy() ** 2) + sd**2 * same
    np.testing.assert_allclose(S, expected, rtol=1e-12, atol=1e-15)
    X, y = d.fixed["mu"].matrix, d.y
    Si = np.linalg.inv(expected)
    vb = np.linalg.inv(X.T @ Si @ X)
    g = gls(fit)
    np.testing.assert_allclose(g.vcov, vb, rtol=1e-10)
    np.testing.assert_allclose(g.estimate, vb @ X.T @ Si @ y, rtol=1e-10)


def test_location_scale_gls_estimate_is_the_fitted_mu():
    dat = drm.datasets.restoration()
    fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=dat, method="REML")
    p = fit.design.fixed["mu"].matrix.shape[1]
    np.testing.assert_allclose(gls(fit).estimate, fit.params.to_numpy()[:p], atol=1e-10)
    with pytest.raises(drm.DrmError, match="vcov must be"):
        location_vcov(fit, "sandwich")


@pytest.mark.parametrize("case_name,weighted", [
    (None, True),                              # location-scale, diagonal S: the closed form's A
    ("konstantopoulos_3level_ml", False),      # random effects: the fit program's own A
])
def test_gls_information_without_compiling_equals_dense(case_name, weighted):
    """X'S^-1X read from the fit (no gram program) equals the dense X' diag(w) S^-1 X."""
    if case_name is None:
        data = drm.datasets.restoration()
        formula = drm.Formula("yi ~ habitat + meta_V(V = vi)", "sigma ~ habitat")
    else:
        case, data = _case(case_name)
        formula = drm.Formula(*case["formulas"])
    w = np.linspace(0.5, 2.0, len(data)) if weighted else None
    fit = drm.fit(formula, data=data, weights=w)
    assert fit._raw.information is not None
    X = fit.design.fixed["mu"].matrix
    S = marginal_covariance(fit) if not weighted else np.diag(fit.design.known_v.diag + fit.sigma().to_numpy() ** 2)
    W = np.diag(w) if weighted else np.eye(len(X))
    expected = X.T @ W @ np.linalg.solve(S, X)
    np.testing.assert_allclose(gls(fit).information, expected, rtol=1e-9)
    # and equals the engine's gram at the fitted variances (the route bivariate fits take)
    from drmpy.inference.marginal import _gram_program, prepared_arrays, variance_parameters

    arrs, struct, _ = prepared_arrays(fit, None)
    _, M = _gram_program(struct)(variance_parameters(fit), arrs)
    np.testing.assert_allclose(gls(fit).information, np.asarray(M)[:struct.p, :struct.p], rtol=1e-9)


@pytest.mark.parametrize("mu", [
    "yi ~ habitat + meta_V(V = vi)",                                   # column layout (p <= 6)
    "yi ~ habitat * (duration + I(duration**2) + I(duration**3)) + meta_V(V = vi)",  # matrix form (p = 8)
])
def test_closed_form_diagonal_program_returns_information(mu):
    """The closed-form diagonal program (location-scale, diagonal V) returns X' W S^-1 X
    itself, at its optimum: equal to the weighted cross product in numpy."""
    data = drm.datasets.restoration()
    w = np.linspace(0.5, 2.0, len(data))
    fit = drm.fit(drm.Formula(mu, "sigma ~ habitat"), data=data, weights=w)
    assert fit._raw.structure.kind == "diag" and fit._raw.information is not None
    X = fit.design.fixed["mu"].matrix
    s = fit.design.known_v.diag + fit.sigma().to_numpy() ** 2
    np.testing.assert_allclose(fit._raw.information, (X * (w / s)[:, None]).T @ X, rtol=1e-10)
