"""fit.variance_components(): metafor's tau2 / sigma2 on the variance scale, with intervals.

References: metafor 3.8-1 in tests/reference/*/case.json (tau2, sigma2) and the profile
intervals of confint(..., type = "PL") / confint(rma.mv, sigma2 = k) in
tests/reference_extra/inference_profile/references.json (make_references.R there).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

TESTS = Path(__file__).resolve().parents[1]
PROFILE = json.loads((TESTS / "reference_extra" / "inference_profile" / "references.json").read_text())


def _case(name: str):
    folder = TESTS / "reference" / name
    case = json.loads((folder / "case.json").read_text())
    return case, pd.read_csv(folder / "data.csv")


def _fit_case(name: str):
    case, data = _case(name)
    return drm.fit(drm.Formula(*case["formulas"]), data=data, method=case["method"]), case["expected"]["metafor"]


@pytest.fixture(scope="module")
def bcg():
    return pd.read_csv(TESTS / "reference_extra" / "inference_profile" / "bcg.csv")


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_bcg_tau2_and_profile_interval_equal_metafor(bcg, method):
    fit = drm.fit("yi ~ 1 + meta_V(V=vi)", data=bcg, method=method)
    vc = fit.variance_components(level=0.95)
    assert vc[["component", "metafor", "method"]].values.tolist() == [["sigma", "tau2", "profile"]]
    assert vc.loc[0, "level"] is None
    ref = PROFILE[f"bcg_tau_{method.lower()}"]
    np.testing.assert_allclose(vc.loc[0, "estimate"], ref["tau2"], rtol=1e-5)
    # metafor confint(type = "PL") gives tau's interval; tau2's is its square
    np.testing.assert_allclose(np.log(vc.loc[0, ["lower", "upper"]].to_numpy(float)),
                               2 * np.log(ref["tau_ci"]), atol=2e-6)
    assert list(fit.variance_components().columns) == ["component", "level", "metafor", "estimate"]


def test_bcg_wald_interval_is_exp_twice_the_log_sd_interval(bcg):
    fit = drm.fit("yi ~ 1 + meta_V(V=vi)", data=bcg, method="REML")
    vc = fit.variance_components(level=0.9, method="wald")
    wald = fit.conf_int(level=0.9).loc["sigma:(Intercept)"]
    np.testing.assert_allclose(vc.loc[0, ["estimate", "lower", "upper"]].to_numpy(float),
                               np.exp(2 * wald[["estimate", "lower", "upper"]].to_numpy(float)), rtol=1e-12)
    assert vc.loc[0, "method"] == "wald"


@pytest.mark.slow
def test_three_level_sigma2_and_profile_intervals_equal_rma_mv():
    kon = pd.read_csv(TESTS / "reference_extra" / "inference_profile" / "konstantopoulos.csv")
    fit = drm.fit(drm.Formula("yi ~ 1 + (1|district) + meta_V(V=vi)"), data=kon, method="REML")
    vc = fit.variance_components(level=0.95).set_index("metafor")
    ref = PROFILE["three_level_reml"]  # rma.mv(random = ~ 1 | district/school): sigma2 = (district, school)
    assert vc.loc["sigma2[1]", "component"] == "sd(district)" and vc.loc["sigma2[2]", "component"] == "sigma"
    np.testing.assert_allclose(vc.loc[["sigma2[1]", "sigma2[2]"], "estimate"], ref["sigma2"], rtol=1e-4)
    for name, key in (("sigma2[1]", "sigma2_district_ci"), ("sigma2[2]", "sigma2_school_ci")):
        np.testing.assert_allclose(np.log(vc.loc[name, ["lower", "upper"]].to_numpy(float)),
                                   np.log(ref[key]), atol=2e-4)


def test_modelled_sd_gives_metafor_diag_tau2_per_level_with_wald_intervals():
    fit, metafor = _fit_case("sd_study_habitat_ml")  # sd(study) ~ habitat: metafor ~ habitat | study, "DIAG"
    vc = fit.variance_components(level=0.95, method="wald")  # (profiles: the tests above)
    assert vc["component"].tolist() == ["sigma", "sd(study)", "sd(study)"]
    assert vc["metafor"].tolist() == ["sigma2", "tau2[1]", "tau2[2]"]
    by_level = vc.set_index("level")["estimate"]
    tau2 = dict(zip(["grassland", "forest"], metafor["tau2"]))  # metafor's level order (case notes)
    assert set(by_level.index) == {None, "habitat=grassland", "habitat=forest"}
    for lev, value in tau2.items():
        np.testing.assert_allclose(by_level[f"habitat={lev}"], value, rtol=1e-5)
    np.testing.assert_allclose(vc.loc[0, "estimate"], metafor["sigma2"], rtol=1e-4)
    # the Wald interval of a level is exp(2 (z'gamma +- q se(z'gamma))), z its sd design row
    intercept, contrast = [n for n in fit.params.index if n.startswith("sd(study):")]
    other = contrast.split("[T.")[1].rstrip("]")  # the non-reference level
    cov = fit.vcov().loc[[intercept, contrast], [intercept, contrast]].to_numpy()
    gamma = fit.params[[intercept, contrast]].to_numpy()
    q = NormalDist().inv_cdf(0.975)
    for _, row in vc.iloc[1:].iterrows():
        z = np.array([1.0, 1.0 if row["level"] == f"habitat={other}" else 0.0])
        eta, se = z @ gamma, np.sqrt(z @ cov @ z)
        np.testing.assert_allclose([row["estimate"], row["lower"], row["upper"]],
                                   np.exp(2 * (eta + np.array([0.0, -q, q]) * se)), rtol=1e-10)
        assert row["method"] == "wald"


def test_location_scale_tau2_per_allocation_equal_metafor():
    fit, metafor = _fit_case("bcg_scale_alloc_ml")  # rma(..., scale = ~ alloc): one tau2 per row
    case, data = _case("bcg_scale_alloc_ml")
    vc = fit.variance_components()
    expected = pd.Series(metafor["tau2"], index=data["alloc"]).groupby(level=0).first()
    assert vc["level"].tolist() == [f"alloc={a}" for a in sorted(expected.index)]
    np.testing.assert_allclose(vc["estimate"], expected.sort_index().to_numpy(), rtol=1e-4)
    assert vc["metafor"].tolist() == ["tau2 (per row)"] * 3  # metafor's tau2: one value per trial


def test_common_effect_has_no_components_and_bad_arguments_raise(bcg):
    fit = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)", "sigma ~ 0"), data=bcg)
    assert fit.variance_components(level=0.95).empty
    with pytest.raises(drm.DrmError, match="method"):
        fit.variance_components(method="bootstrap")
    with pytest.raises(drm.DrmError, match="level"):
        fit.variance_components(level=95)


@pytest.mark.slow
def test_bivariate_sigma1_sigma2_equal_metafor_un_tau2():
    case, data = _case("berkey_bivariate_ml")
    V = np.loadtxt(TESTS / "reference" / "berkey_bivariate_ml" / "V.csv", delimiter=",")
    fit = drm.fit(drm.Formula(**case["formulas"]), data=data, env={"V": V}, family=drm.biv_gaussian())
    vc = fit.variance_components().set_index("component")
    tau2_al, tau2_pd = case["expected"]["metafor"]["tau2"]  # metafor's outcome order: AL, PD; y1 is PD
    np.testing.assert_allclose(vc.loc[["sigma1", "sigma2"], "estimate"], [tau2_pd, tau2_al], rtol=1e-4)
