"""coef_test (t, Knapp-Hartung, cluster-robust CR0/CR1/CR2 with Satterthwaite df), lrt and
compare against metafor 3.8-1 / clubSandwich numbers (tests/reference_extra/inference)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import drmpy as drm

REF = Path(__file__).parents[1] / "reference_extra" / "inference"
TOL = dict(rtol=0, atol=1e-6)


def _load(name):
    case = json.loads((REF / name / "case.json").read_text())
    return case, pd.read_csv(REF / name / "data.csv")


_FITS = {}


def _fit(name, formulas=None):
    """Fit of a reference case (or its fit0 formulas), memoised across the module."""
    key = (name, tuple(formulas) if formulas else None)
    if key not in _FITS:
        case, data = _load(name)
        f = drm.Formula(*(formulas or case["formulas"]))
        _FITS[key] = (case, data, drm.fit(f, data=data, method=case["method"]))
    return _FITS[key]


UNI = ["molloy2014_ml", "molloy2014_reml", "raudenbush1985_ml", "raudenbush1985_reml",
       "bangertdrowns2004_ml", "normand1999_reml"]


@pytest.mark.parametrize("name", UNI)
def test_t_and_knha_equal_metafor(name):
    case, _, fit = _fit(name)
    e = case["expected"]
    assert fit.nobs == e["k"]
    for test, key in [("t", "coef_t"), ("knha", "coef_knha"), ("z", "coef_z")]:
        out = fit.coef_test(test=test, vcov="gls")
        ref = e[key]
        np.testing.assert_allclose(out["estimate"], ref["beta"], **TOL)
        np.testing.assert_allclose(out["std_error"], ref["se"], **TOL)
        np.testing.assert_allclose(out["statistic"], ref["zval"], rtol=1e-6)
        np.testing.assert_allclose(out["p_value"], ref["pval"], rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(out["lower"], ref["ci_lb"], **TOL)
        np.testing.assert_allclose(out["upper"], ref["ci_ub"], **TOL)
        if test != "z":
            assert (out["df"] == ref["ddf"]).all()
    # knha with the default vcov is the same (Knapp-Hartung is defined on the GLS quantities)
    pd.testing.assert_frame_equal(fit.coef_test(test="knha"), fit.coef_test(test="knha", vcov="gls"),
                                  check_like=True)


def test_bangertdrowns_drops_missing_rows_as_metafor():
    case, data, fit = _fit("bangertdrowns2004_ml")
    assert len(data) == 47 and fit.nobs == case["expected"]["k"] == 45


def test_observed_vcov_and_t_by_hand():
    _, _, fit = _fit("molloy2014_reml")
    out = fit.coef_test(test="t", level=0.9)
    se = np.sqrt(np.diag(fit.vcov().to_numpy())[:2])
    df = fit.nobs - 2
    np.testing.assert_allclose(out["std_error"], se, rtol=1e-12)
    np.testing.assert_allclose(out["p_value"], 2 * stats.t.sf(np.abs(out["estimate"] / se), df), rtol=1e-10)
    np.testing.assert_allclose(out["upper"], out["estimate"] + stats.t.ppf(0.95, df) * se, rtol=1e-12)
    assert list(out.index) == ["mu:(Intercept)", "mu:meanage"]
    assert list(out.columns) == ["estimate", "std_error", "statistic", "df", "p_value", "lower", "upper"]


ROBUST = [("curtis1998_ml", "robust"), ("curtis1998_reml", "robust"),
          ("konstantopoulos_ml", "robust_district"), ("konstantopoulos_reml", "robust_district"),
          ("assink2016_ml", "robust")]


@pytest.mark.parametrize("name,key", ROBUST)
def test_cluster_robust_equals_clubsandwich(name, key):
    case, data, fit = _fit(name)
    cluster = case.get("cluster", "district")
    e = case["expected"][key]
    for vtype in ("CR0", "CR1", "CR2"):
        out = fit.coef_test(test="satterthwaite", vcov=vtype, cluster=cluster)
        V = drm.inference.robust.cluster_robust(fit, cluster, vtype).vcov
        np.testing.assert_allclose(V, np.array(e[vtype]["vcov"]), rtol=1e-6, atol=1e-10)
        np.testing.assert_allclose(out["std_error"], e[vtype]["se"], **TOL)
        np.testing.assert_allclose(out["df"], e[vtype]["df"], rtol=1e-6)
        np.testing.assert_allclose(out["p_value"], e[vtype]["p"], rtol=1e-5, atol=1e-12)
    # metafor's robust(fit, cluster, clubSandwich = TRUE) is CR2 with Satterthwaite df
    out = fit.coef_test(test="satterthwaite", vcov="CR2", cluster=data[cluster].to_numpy())
    m = e["metafor_robust"]
    np.testing.assert_allclose(out["std_error"], m["se"], **TOL)
    np.testing.assert_allclose(out["df"], m["df"], rtol=1e-6)
    np.testing.assert_allclose(out["lower"], m["ci_lb"], **TOL)
    np.testing.assert_allclose(out["upper"], m["ci_ub"], **TOL)


def test_cluster_forms_agree_and_bad_clusters():
    _, data, fit = _fit("curtis1998_ml")
    by_name = fit.coef_test(vcov="CR2", cluster="paper")
    by_series = fit.coef_test(vcov="CR2", cluster=data["paper"].astype(str))
    pd.testing.assert_frame_equal(by_name, by_series)
    with pytest.raises(drm.DrmError, match="needs cluster"):
        fit.coef_test(vcov="CR2")
    holes = data["paper"].astype(float).copy()
    holes.iloc[5] = np.nan
    with pytest.raises(drm.DrmError, match="missing value at row 5"):
        fit.coef_test(vcov="CR2", cluster=holes)
    with pytest.raises(drm.DrmError, match="not a column"):
        fit.coef_test(vcov="CR2", cluster="journal")
    with pytest.raises(drm.DrmError, match="one per row"):
        fit.coef_test(vcov="CR2", cluster=[1, 2, 3])
    with pytest.raises(drm.DrmError, match="single cluster"):
        fit.coef_test(vcov="CR1", cluster=np.ones(fit.nobs))
    with pytest.raises(drm.DrmError, match="satterthwaite"):
        fit.coef_test(test="satterthwaite", vcov="gls")
    with pytest.raises(drm.DrmError, match="cluster= is used"):
        fit.coef_test(vcov="gls", cluster="paper")
    with pytest.raises(drm.DrmError, match="test"):
        fit.coef_test(test="wald")
    with pytest.raises(drm.DrmError, match="vcov"):
        fit.coef_test(vcov="HC3")


def test_cluster_column_with_missing_values_in_the_data():
    case, data, _ = _fit("molloy2014_ml")
    holes = data.assign(lab=np.where(np.arange(len(data)) == 3, np.nan, np.arange(len(data)) // 4))
    fit = drm.fit(drm.Formula(*case["formulas"]), data=holes)
    with pytest.raises(drm.DrmError, match="`lab` has a missing value at row 3"):
        fit.coef_test(vcov="CR2", cluster="lab")


def test_knha_refuses_random_effects_and_crossed_clusters():
    _, data, fit = _fit("konstantopoulos_ml")
    with pytest.raises(drm.DrmError, match="random effects"):
        fit.coef_test(test="knha")
    with pytest.raises(drm.DrmError, match="nested within the clusters"):
        fit.coef_test(vcov="CR2", cluster="school")


# ------------------------------------------------------------------ likelihood-ratio tests
@pytest.mark.parametrize("name,key", [("molloy2014_ml", "anova_mods"), ("bangertdrowns2004_ml", "anova_mods"),
                                      ("bcg_ls_ml", "anova_scale")])
def test_lrt_equals_metafor_anova(name, key):
    case, _, fit1 = _fit(name)
    _, _, fit0 = _fit(name, case["fit0"]["formulas"])
    e = case["expected"][key]
    out = drm.lrt(fit0, fit1)
    assert list(out.index) == ["statistic", "df", "p_value", "boundary"]
    np.testing.assert_allclose(out["statistic"], e["LRT"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["p_value"], e["pval"], rtol=0, atol=1e-6)
    assert out["df"] == e["df_full"] - e["df_reduced"] and out["boundary"] is False


@pytest.mark.parametrize("name,key", [("konstantopoulos_ml", "anova_district"), ("assink2016_ml", "anova_study")])
def test_lrt_added_sd_is_half_metafor_p(name, key):
    case, _, fit1 = _fit(name)
    _, _, fit0 = _fit(name, case["fit0"]["formulas"])
    e = case["expected"][key]
    out = drm.lrt(fit0, fit1)
    np.testing.assert_allclose(out["statistic"], e["LRT"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["p_value"], 0.5 * e["pval"], rtol=0, atol=1e-6)
    assert out["df"] == 1 and out["boundary"] is True


def test_boundary_detection_from_names():
    from drmpy.inference.lrt import added_variance_components as added

    base = ["mu:(Intercept)", "sigma:(Intercept)"]
    assert added(base, base + ["sd(study):(Intercept)"]) == ["sd(study)"]
    assert added(base, base + ["sd(study):(Intercept)", "sd(study):habitat[T.forest]"]) == ["sd(study)"]
    assert added(base, base + ["sigma:x"]) == []
    # the common-effect model sigma ~ 0 has no sigma parameter
    assert added(["mu:(Intercept)"], base) == ["sigma"]
    assert added(base + ["sd(g):(Intercept)"], base + ["sd(g):(Intercept)", "sd(g|x):(Intercept)",
                                                       "cor(g|(Intercept),x):(Intercept)"]) == ["sd(g|x)"]


def test_boundary_mixture_by_hand(monkeypatch):
    """Two added parameters with one on the boundary: 0.5 chi2(1) + 0.5 chi2(2)."""
    import drmpy.inference.lrt as L

    case, _, fit1 = _fit("konstantopoulos_ml")
    _, _, fit0 = _fit("konstantopoulos_ml", case["fit0"]["formulas"])
    monkeypatch.setattr(L, "added_variance_components", lambda a, b: ["sd(x)"])
    out = L.lrt(fit0, fit1)
    assert out["df"] == 1
    np.testing.assert_allclose(out["p_value"], 0.5 * stats.chi2.sf(out["statistic"], 1), rtol=1e-12)


def test_lrt_bad_calls():
    case, data, fit1 = _fit("molloy2014_ml")
    _, _, fit0 = _fit("molloy2014_ml", case["fit0"]["formulas"])
    other = drm.fit(drm.Formula("yi ~ quality + meta_V(V=vi)"), data=data)
    with pytest.raises(drm.DrmError, match="not nested.*mu:quality"):
        drm.lrt(other, fit1)
    with pytest.raises(drm.DrmError, match="adds no parameter"):
        drm.lrt(fit1, fit1)
    fewer = drm.fit(drm.Formula(*case["formulas"]), data=data.iloc[1:])
    with pytest.raises(drm.DrmError, match="different rows"):
        drm.lrt(fit0, fewer)
    with pytest.raises(drm.DrmError, match="different response"):
        drm.lrt(fit0, drm.fit(drm.Formula(*case["formulas"]), data=data.assign(yi=data["yi"] + 1)))
    case_r, data_r, fit1_r = _fit("molloy2014_reml")
    _, _, fit0_r = _fit("molloy2014_reml", case["fit0"]["formulas"])
    with pytest.raises(drm.DrmError, match="different methods"):
        drm.lrt(fit0, fit1_r)
    with pytest.raises(drm.DrmError, match="REML fits with different mu designs"):
        drm.lrt(fit0_r, fit1_r)
    with pytest.raises(drm.DrmError, match="univariate"):
        drm.lrt(fit0, object.__new__(drm.BivariateFit))


def test_compare():
    case, _, fit1 = _fit("molloy2014_ml")
    _, _, fit0 = _fit("molloy2014_ml", case["fit0"]["formulas"])
    out = drm.compare(fit0, fit1, names=["null", "meanage"])
    assert list(out.index) == ["null", "meanage"]
    assert list(out.columns) == ["loglik", "df", "aic", "aicc", "bic", "delta_aic", "aic_weight"]
    for f, (_, row) in zip([fit0, fit1], out.iterrows()):
        k, n = f.df, f.nobs
        assert row["aic"] == pytest.approx(-2 * f.loglik + 2 * k)
        assert row["bic"] == pytest.approx(-2 * f.loglik + np.log(n) * k)
        assert row["aicc"] == pytest.approx(row["aic"] + 2 * k * (k + 1) / (n - k - 1))
    w = np.exp(-0.5 * (out["aic"] - out["aic"].min()))
    np.testing.assert_allclose(out["aic_weight"], w / w.sum())
    assert out["delta_aic"].min() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drm.compare(fit0, fit1)
    _, _, fit1_r = _fit("molloy2014_reml")
    _, _, fit0_r = _fit("molloy2014_reml", case["fit0"]["formulas"])
    with pytest.warns(drm.DrmWarning, match="REML fits with different mu designs"):
        drm.compare(fit0_r, fit1_r)
    with pytest.raises(drm.DrmError, match="names"):
        drm.compare(fit0, fit1, names=["a"])


def test_summary_t():
    _, _, fit = _fit("molloy2014_ml")
    z = fit.summary().coefficients
    t = fit.summary(test="t").coefficients
    assert "t" in t.columns and "df" in t.columns and "z" not in t.columns
    ref = fit.coef_test(test="t")
    np.testing.assert_allclose(t["p"].iloc[:2], ref["p_value"], rtol=1e-12)
    np.testing.assert_allclose(t["ci_lower"].iloc[:2], ref["lower"], rtol=1e-12)
    assert np.isinf(t["df"].iloc[2]) and t["p"].iloc[2] == pytest.approx(z["p"].iloc[2])
    assert "t tests for mu" in str(fit.summary(test="t"))
    with pytest.raises(drm.DrmError, match="summary"):
        fit.summary(test="knha")
    with pytest.raises(drm.DrmError, match="bivariate"):
        object.__new__(drm.BivariateFit).coef_test()


def test_knha_factor_by_hand_with_a_block_diagonal_v():
    """Knapp-Hartung's q = r' S^-1 r / (k - p) with a full (block-diagonal) V, against dense algebra."""
    _, data, _ = _fit("molloy2014_ml")
    n = len(data)
    V = np.diag(data["vi"].to_numpy())
    for i in range(0, n - 1, 2):  # pairs of rows share a sampling covariance
        V[i, i + 1] = V[i + 1, i] = 0.5 * np.sqrt(V[i, i] * V[i + 1, i + 1])
    fit = drm.fit(drm.Formula("yi ~ meanage + meta_V(V=Vmat)"), data=data, env={"Vmat": V})
    X = np.column_stack([np.ones(n), data["meanage"]])
    S = V + np.diag(fit.sigma().to_numpy() ** 2)
    Si = np.linalg.inv(S)
    beta = np.linalg.solve(X.T @ Si @ X, X.T @ Si @ data["yi"].to_numpy())
    r = data["yi"].to_numpy() - X @ beta
    q = r @ Si @ r / (n - 2)
    out = fit.coef_test(test="knha")
    np.testing.assert_allclose(out["std_error"], np.sqrt(q * np.diag(np.linalg.inv(X.T @ Si @ X))), rtol=1e-6)
    assert (out["df"] == n - 2).all()


def test_weighted_fit_refuses_robust_and_knha():
    case, data, _ = _fit("molloy2014_ml")
    fit = drm.fit(drm.Formula(*case["formulas"]), data=data, weights=np.full(len(data), 2.0))
    with pytest.raises(drm.DrmError, match="weights"):
        fit.coef_test(test="knha")
    with pytest.raises(drm.DrmError, match="weights"):
        fit.coef_test(vcov="CR2", cluster=np.arange(len(data)) // 2)


def test_compare_bivariate_fits():
    ref = Path(__file__).parents[1] / "reference" / "berkey_bivariate_reml"
    spec = json.loads((ref / "case.json").read_text())
    data = pd.read_csv(ref / "data.csv")
    V = np.loadtxt(ref / "V.csv", delimiter=",")
    fits = [drm.fit(drm.Formula(**spec["formulas"]), data=data, method=m, env={"V": V},
                    family=drm.biv_gaussian()) for m in ("ML", "REML")]
    with pytest.warns(drm.DrmWarning, match="mix ML and REML"):
        out = drm.compare(*fits, names=["ml", "reml"])
    np.testing.assert_allclose(out["aic"], [f.aic for f in fits])
    with pytest.raises(drm.DrmError, match="univariate"):
        drm.lrt(fits[0], fits[0])
