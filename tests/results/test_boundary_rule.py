"""check()'s zero-boundary rule is scale-free (drmpy.results.boundary): the same statuses
whatever the units of y, and a 2-study REML fit whose sigma the data cannot tell from zero
is reported at the boundary."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.results.boundary import sd_at_boundary

REF = Path(__file__).parents[1] / "reference"
BCG = pd.read_csv(REF / "bcg_ablat_ml" / "data.csv")
SCALES = (1e-4, 1e-8)


def _fit(formula, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", drm.ConvergenceWarning)
        return drm.fit(formula, data, **kw)


def _statuses(fit) -> pd.Series:
    return fit.check().set_index("check")["status"]


def _zero_het() -> pd.DataFrame:
    """bcg's sampling variances with y drawn from N(0, v): tau^2_ML = 0 (sigma at the boundary)."""
    rng = np.random.default_rng(4)
    y = rng.normal(0.0, np.sqrt(BCG["vi"]))
    w = 1 / BCG["vi"]
    mu = np.sum(w * y) / np.sum(w)
    assert np.sum(w**2 * (y - mu) ** 2 - w) < 0  # the ML score at tau^2 = 0 points outwards
    return BCG.assign(yi=y)


def _random_data(sd_study: float) -> pd.DataFrame:
    rng = np.random.default_rng(6)  # sd_study = 0: the ML estimate of sd(study) is at zero
    study = np.repeat(np.arange(30), 4)
    vi = rng.uniform(0.02, 0.05, study.size)
    u = sd_study * np.random.default_rng(7).normal(size=30)
    yi = 0.3 + u[study] + rng.normal(size=study.size) * np.sqrt(vi + 0.1**2)
    return pd.DataFrame({"study": study, "vi": vi, "yi": yi})


CASES = {
    "sigma_slope": (drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ ablat"), lambda: BCG),
    "intercept": (drm.Formula("yi ~ ablat + meta_V(V=vi)"), lambda: BCG),
    "zero_het": (drm.Formula("yi ~ 1 + meta_V(V=vi)"), _zero_het),
    "random_real": (drm.Formula("yi ~ 1 + (1|study) + meta_V(V=vi)"), lambda: _random_data(0.4)),
    "random_null": (drm.Formula("yi ~ 1 + (1|study) + meta_V(V=vi)"), lambda: _random_data(0.0)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    formula, make = CASES[request.param]
    data = make()
    fits = {c: _fit(formula, data.assign(yi=data["yi"] * c, vi=data["vi"] * c**2)) for c in (1.0,) + SCALES}
    return request.param, fits


@pytest.mark.parametrize("c", SCALES)
def test_units_of_y_do_not_change_any_check_status(case, c):
    name, fits = case
    base, scaled = fits[1.0], fits[c]
    # the optimiser stops relative to max(1, |f|), and f grows by n log(1/c)
    assert scaled.loglik == pytest.approx(base.loglik - base.nobs * np.log(c), rel=1e-8, abs=1e-6)
    pd.testing.assert_series_equal(_statuses(scaled), _statuses(base), obj=name)


def test_boundary_cases_are_reported_and_interior_ones_are_not(case):
    name, fits = case
    table = fits[1.0].check().set_index("check")
    expected = "note" if name in ("zero_het", "random_null") else "ok"
    assert table.loc["boundary", "status"] == expected, table.loc["boundary"].to_dict()
    if name.startswith("random"):
        assert table.loc["sd_boundary[study]", "status"] == expected


def test_two_study_reml_fit_reports_its_boundary():
    fit = _fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), BCG.iloc[:2], method="REML")
    sigma, se = fit.sigma().iloc[0], fit.std_errors["sigma:(Intercept)"]
    # the case of the issue: sigma ~1.5e-4 next to sampling SDs ~0.5, its log-SD's SE ~9e3
    assert sigma < 1e-3 and se > 1e3
    row = fit.check().set_index("check").loc["boundary"]
    assert row["status"] == "note" and "sigma ran toward a zero SD" in row["message"]


def test_bivariate_units_do_not_change_any_check_status():
    spec = json.loads((REF / "berkey_bivariate_ml" / "case.json").read_text())
    data = pd.read_csv(REF / "berkey_bivariate_ml" / "data.csv")
    V = np.loadtxt(REF / "berkey_bivariate_ml" / "V.csv", delimiter=",")
    base = _fit(drm.Formula(**spec["formulas"]), data, env={"V": V})
    c = 1e-4
    scaled = _fit(drm.Formula(**spec["formulas"]), data.assign(y1=data["y1"] * c, y2=data["y2"] * c),
                  env={"V": V * c**2})
    pd.testing.assert_series_equal(_statuses(scaled), _statuses(base))


def test_rule_on_its_own():
    ref = 0.5
    # tiny next to the reference: at zero whatever its SE
    assert sd_at_boundary(np.log([1e-5 * ref]), np.array([0.1]), ref).all()
    # small and undetermined (SE far beyond its distance below the reference)
    assert sd_at_boundary(np.log([1.5e-4 / 0.51 * ref]), np.array([8937.0]), ref).all()
    assert sd_at_boundary(np.log([0.01 * ref]), np.array([np.nan]), ref).all()
    # small but well determined, or comparable to the reference: interior
    assert not sd_at_boundary(np.log([0.01 * ref]), np.array([1.0]), ref).any()
    assert not sd_at_boundary(np.log([0.5 * ref]), np.array([1e3]), ref).any()
    # no other variance in play: an SD cannot reach zero
    assert not sd_at_boundary(np.log([1e-12]), np.array([1e6]), 0.0).any()
    # invariant to units
    for c in (1e-8, 1e8):
        assert sd_at_boundary(np.log([1.5e-4 * c]), np.array([8937.0]), 0.51 * c).all()
        assert not sd_at_boundary(np.log([0.01 * ref * c]), np.array([1.0]), ref * c).any()
