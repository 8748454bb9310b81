"""Confidence and prediction intervals of fit.predict against metafor's predict() and by hand."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import drmpy as drm

REF = Path(__file__).parents[1] / "reference_extra" / "inference"
REF_CORE = Path(__file__).parents[1] / "reference"


def _load(name, root=REF):
    case = json.loads((root / name / "case.json").read_text())
    return case, pd.read_csv(root / name / "data.csv")


@pytest.fixture(scope="module")
def fits():
    """One fit per reference case, shared by every test of this module."""
    out = {}
    for name in ("bcg_ls_ml", "bcg_ls_reml", "konstantopoulos_ml", "konstantopoulos_reml", "assink2016_ml"):
        case, data = _load(name)
        out[name] = (case, data, drm.fit(drm.Formula(*case["formulas"]), data=data, method=case["method"]))
    return out


@pytest.mark.parametrize("name", ["bcg_ls_ml", "bcg_ls_reml", "konstantopoulos_ml", "konstantopoulos_reml",
                                  "assink2016_ml"])
@pytest.mark.parametrize("test", ["z", "t"])
def test_intervals_equal_metafor_predict(fits, name, test):
    case, _, fit = fits[name]
    newdata = pd.DataFrame(case["newdata"])
    e = case["expected"][f"predict_{test}"]
    ci = fit.predict(newdata, interval="confidence", test=test, vcov="gls")
    pi = fit.predict(newdata, interval="prediction", test=test, vcov="gls")
    assert list(ci.columns) == ["estimate", "se", "lower", "upper"]
    assert ci.index.equals(newdata.index) and pi.index.equals(newdata.index)
    tol = dict(rtol=0, atol=1e-6)
    np.testing.assert_allclose(ci["estimate"], e["pred"], **tol)
    np.testing.assert_allclose(ci["se"], e["se"], **tol)
    np.testing.assert_allclose(ci["lower"], e["ci.lb"], **tol)
    np.testing.assert_allclose(ci["upper"], e["ci.ub"], **tol)
    np.testing.assert_allclose(pi["se"], e["se"], **tol)
    np.testing.assert_allclose(pi["lower"], e["pi.lb"], **tol)
    np.testing.assert_allclose(pi["upper"], e["pi.ub"], **tol)


def test_fitted_rows_equal_metafor(fits):
    case, data, fit = fits["bcg_ls_ml"]
    e = case["expected"]["predict_fitted_z"]
    out = fit.predict(interval="prediction", vcov="gls")
    assert out.index.equals(fit.design.row_labels)
    for col, key in [("estimate", "pred"), ("se", "se"), ("lower", "pi.lb"), ("upper", "pi.ub")]:
        np.testing.assert_allclose(out[col], e[key], rtol=0, atol=1e-6)


def test_observed_vcov_and_vi_by_hand(fits):
    """se from fit.vcov(); the PI variance adds sigma_new^2 (from sigma ~ yearc) and vi."""
    case, _, fit = fits["bcg_ls_reml"]
    newdata = pd.DataFrame(case["newdata"]).assign(vnew=[0.01, 0.02, 0.03, 0.04])
    X = np.column_stack([np.ones(len(newdata)), newdata["ablat"]])
    C = fit.vcov().iloc[:2, :2].to_numpy()
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, C, X))
    est = X @ fit.params.iloc[:2].to_numpy()
    gamma = fit.params[["sigma:(Intercept)", "sigma:yearc"]].to_numpy()
    sigma_new = np.exp(gamma[0] + gamma[1] * newdata["yearc"].to_numpy())
    q = stats.t.ppf(0.95, fit.nobs - 2)
    out = fit.predict(newdata, interval="prediction", level=0.9, test="t", vi="vnew")
    np.testing.assert_allclose(out["se"], se, rtol=1e-12)
    half = q * np.sqrt(se**2 + sigma_new**2 + newdata["vnew"].to_numpy())
    np.testing.assert_allclose(out["lower"], est - half, rtol=1e-12)
    np.testing.assert_allclose(out["upper"], est + half, rtol=1e-12)
    same = fit.predict(newdata, interval="prediction", level=0.9, test="t", vi=newdata["vnew"].to_numpy())
    pd.testing.assert_frame_equal(out, same)


def test_interval_none_unchanged(fits):
    case, _, fit = fits["konstantopoulos_ml"]
    newdata = pd.DataFrame(case["newdata"], index=[10, 20, 30])
    plain = fit.predict(newdata)
    assert isinstance(plain, pd.Series) and plain.name == "mu"
    ci = fit.predict(newdata, interval="confidence")
    pd.testing.assert_series_equal(plain, ci["estimate"], check_names=False)
    assert ci.index.equals(newdata.index)
    # on the fitted rows the plain prediction keeps the conditional modes; the interval's
    # estimate is the fixed-effect mean
    own = fit.predict()
    np.testing.assert_allclose(own, fit.fitted())
    fixed = fit.predict(interval="confidence")["estimate"]
    np.testing.assert_allclose(fixed, fit.predict(re_form=False))


def test_three_level_prediction_interval_by_hand(fits):
    _, _, fit = fits["konstantopoulos_ml"]
    newdata = pd.DataFrame({"yearc": [0.0, 3.0]})
    out = fit.predict(newdata, interval="prediction")
    ci = fit.predict(newdata, interval="confidence")
    tau2 = np.exp(2 * fit.params["sd(district):(Intercept)"]) + np.exp(2 * fit.params["sigma:(Intercept)"])
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(out["upper"] - out["estimate"], z * np.sqrt(ci["se"] ** 2 + tau2), rtol=1e-12)


@pytest.fixture(scope="module")
def modelled_sd_fit():
    case, data = _load("sd_study_habitat_ml", REF_CORE)
    return data, drm.fit(drm.Formula(*case["formulas"]), data=data, method=case["method"])


def test_modelled_sd_uses_the_new_rows_predictors(modelled_sd_fit):
    data, fit = modelled_sd_fit
    sd = fit.sd("study")["(Intercept)"]
    new = pd.DataFrame({"treatment": [0.5, 0.5], "habitat": ["forest", "grassland"]})
    out = fit.predict(new, interval="prediction")
    se = fit.predict(new, interval="confidence")["se"].to_numpy()
    # the SD of a new study is the fitted SD of its habitat (every study of a habitat shares it)
    first = data.drop_duplicates("study").set_index("study")["habitat"]
    level_sd = pd.Series(sd.to_numpy(), index=sd.index.astype(str))
    habitat_of = first.reindex(level_sd.index.astype(type(first.index[0]))).to_numpy()
    sd_forest = level_sd[habitat_of == "forest"].iloc[0]
    sd_grass = level_sd[habitat_of == "grassland"].iloc[0]
    sigma = fit.sigma().iloc[0]
    z = stats.norm.ppf(0.975)
    expected = z * np.sqrt(se**2 + sigma**2 + np.array([sd_forest, sd_grass]) ** 2)
    np.testing.assert_allclose(out["upper"] - out["estimate"], expected, rtol=1e-12)
    # without habitat but with a fitted study: that study's SD; with neither: an error naming habitat
    row = data.iloc[[0]][["treatment", "study"]]
    got = fit.predict(row, interval="prediction")
    se0 = fit.predict(row, interval="confidence")["se"].iloc[0]
    sd0 = level_sd[str(data["study"].iloc[0])]
    np.testing.assert_allclose(got["upper"].iloc[0] - got["estimate"].iloc[0],
                               z * np.sqrt(se0**2 + sigma**2 + sd0**2), rtol=1e-12)
    with pytest.raises(drm.DrmError, match="`habitat`"):
        fit.predict(new[["treatment"]], interval="prediction")


def test_bad_calls(fits):
    case, _, fit = fits["bcg_ls_ml"]
    newdata = pd.DataFrame(case["newdata"])
    with pytest.raises(drm.DrmError, match="dpar='mu' only"):
        fit.predict(newdata, dpar="sigma", interval="confidence")
    with pytest.raises(drm.DrmError, match="`yearc`.*sigma"):
        fit.predict(newdata[["ablat"]], interval="prediction")
    with pytest.raises(drm.DrmError, match="`ablat`.*mu"):
        fit.predict(newdata[["yearc"]], interval="confidence")
    with pytest.raises(drm.DrmError, match="interval must be"):
        fit.predict(newdata, interval="credible")
    with pytest.raises(drm.DrmError, match="test"):
        fit.predict(newdata, interval="confidence", test="knha")
    with pytest.raises(drm.DrmError, match="vcov must be"):
        fit.predict(newdata, interval="confidence", vcov="CR2")
    with pytest.raises(drm.DrmError, match="only applies"):
        fit.predict(newdata, interval="confidence", vi=0.1)
    with pytest.raises(drm.DrmError, match="`vnew`"):
        fit.predict(newdata, interval="prediction", vi="vnew")
    with pytest.raises(drm.DrmError, match="4 rows"):
        fit.predict(newdata, interval="prediction", vi=[0.1, 0.2])
    with pytest.raises(drm.DrmError, match="level"):
        fit.predict(newdata, interval="confidence", level=95)
    # a confidence interval does not need the sigma predictors
    assert len(fit.predict(newdata[["ablat"]], interval="confidence")) == 4


def test_bivariate_fit_has_no_interval():
    # the guard raises before the fit's state is read, so an empty instance suffices
    biv = object.__new__(drm.BivariateFit)
    with pytest.raises(drm.DrmError, match="bivariate"):
        biv.predict(interval="confidence")
    with pytest.raises(drm.DrmError, match="bivariate"):
        biv.predict(level=0.9)


def test_unseen_level_and_missing_values(fits):
    case, _, fit = fits["assink2016_ml"]
    new = pd.DataFrame({"deltype": ["overt", "violent"]})
    with pytest.raises(drm.DrmError, match="level the fit did not see.*violent"):
        fit.predict(new, interval="prediction")
    with pytest.raises(drm.DrmError, match="violent"):
        fit.predict(new)
    # a missing value gives a NaN row, never a dropped one
    holes = pd.DataFrame({"deltype": ["overt", None, "covert"]})
    out = fit.predict(holes, interval="prediction")
    assert len(out) == 3 and out.iloc[1].isna().all() and out.drop(index=1).notna().all().all()


def test_positional_order_is_the_issues(fits):
    case, _, fit = fits["bcg_ls_ml"]
    newdata = pd.DataFrame(case["newdata"])
    by_position = fit.predict(newdata, "mu", "response", "prediction", 0.9, None, "t", "gls")
    by_name = fit.predict(newdata, interval="prediction", level=0.9, test="t", vcov="gls")
    pd.testing.assert_frame_equal(by_position, by_name)
