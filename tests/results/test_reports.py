"""Reports: fit.tidy (broom's columns) and the summary's HTML, markdown and LaTeX renderings.

Expected numbers are computed here from ``fit.params`` and ``fit.vcov()`` with scipy's normal
distribution, independently of the summary code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import drmpy as drm

REF = Path(__file__).parents[1] / "reference"
TIDY_COLUMNS = ["dpar", "term", "estimate", "std_error", "statistic", "p_value", "conf_low", "conf_high"]


@pytest.fixture(scope="module")
def ls_fit():
    dat = drm.datasets.restoration()
    return drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=dat)


@pytest.fixture(scope="module")
def biv_fit():
    spec = json.loads((REF / "berkey_bivariate_ml" / "case.json").read_text())
    data = pd.read_csv(REF / "berkey_bivariate_ml" / "data.csv")
    V = np.loadtxt(REF / "berkey_bivariate_ml" / "V.csv", delimiter=",")
    return drm.fit(drm.Formula(**spec["formulas"]), data=data, env={"V": V}, family=drm.biv_gaussian())


def _expected_tidy(fit, level):
    est = fit.params.to_numpy()
    se = np.sqrt(np.diag(fit.vcov().to_numpy()))
    q = stats.norm.ppf(0.5 + level / 2)
    return est, se, est / se, 2 * stats.norm.sf(np.abs(est / se)), est - q * se, est + q * se


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_tidy_equals_wald_formulas(ls_fit, level):
    t = ls_fit.tidy(level=level)
    assert list(t.columns) == TIDY_COLUMNS
    assert list(t["dpar"]) == ["mu", "mu", "mu", "sigma", "sigma"]
    assert list(t["term"]) == ["(Intercept)", "habitat[T.forest]", "duration", "(Intercept)",
                               "habitat[T.forest]"]
    assert [f"{d}:{term}" for d, term in zip(t["dpar"], t["term"])] == list(ls_fit.params.index)
    for got, want in zip([t[c].to_numpy() for c in TIDY_COLUMNS[2:]], _expected_tidy(ls_fit, level)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_tidy_random_and_bivariate_names(biv_fit):
    t = biv_fit.tidy()
    assert list(t["dpar"]) == ["mu1", "mu2", "sigma1", "sigma2", "rho12"]
    assert set(t["term"]) == {"(Intercept)"}
    for got, want in zip([t[c].to_numpy() for c in TIDY_COLUMNS[2:]], _expected_tidy(biv_fit, 0.95)):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    d = pd.read_csv(REF / "konstantopoulos_3level_ml" / "data.csv")
    spec = json.loads((REF / "konstantopoulos_3level_ml" / "case.json").read_text())
    t3 = drm.fit(drm.Formula(*spec["formulas"]), data=d).tidy()
    assert "sd(district)" in set(t3["dpar"])
    assert t3.loc[t3["dpar"] == "sd(district)", "term"].tolist() == ["(Intercept)"]


@pytest.mark.parametrize("level", [0, 1, 1.5, "0.95"])
def test_tidy_rejects_bad_level(ls_fit, level):
    with pytest.raises(drm.DrmError, match="level must be"):
        ls_fit.tidy(level=level)
