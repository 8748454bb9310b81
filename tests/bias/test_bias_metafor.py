"""Agreement with metafor 3.8-1 (regtest, trimfill, selmodel, leave1out, influence; rma.mv's
multilevel Egger test and case-deletion methods).  Numbers: tests/reference_extra/bias/
(make_bias.R); metafor fitted with tight control, location uncertainty as vcov="gls"."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

pytestmark = pytest.mark.slow  # compiles refit and deletion programs for six data-set sizes

REF_DIR = Path(__file__).resolve().parents[1] / "reference_extra" / "bias"
REF = json.loads((REF_DIR / "bias_reference.json").read_text())
UNI = {k: v for k, v in REF["uni"].items() if not v["mods"]}


def data(name: str) -> pd.DataFrame:
    return pd.read_csv(REF_DIR / f"data_{name}.csv")


def close(actual, expected, tol, what=""):
    """assert_allclose where metafor has a value (None: metafor's own refit failed there)."""
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray([np.nan if e is None else e for e in np.atleast_1d(expected)], dtype=float)
    actual = actual.reshape(expected.shape)
    have = np.isfinite(expected)
    np.testing.assert_allclose(actual[have], expected[have], rtol=tol, atol=tol, err_msg=what)


@pytest.fixture(scope="module")
def fits():
    return {key: drm.fit("yi ~ 1 + meta_V(V = vi)", data(e["data"]), method=e["method"]) for key, e in UNI.items()}


@pytest.mark.parametrize("key", sorted(UNI))
def test_fit_matches(fits, key):
    e = UNI[key]
    f = fits[key]
    close(f.params.iloc[0], e["beta"], 1e-6)
    close(math.exp(2 * f.params.iloc[1]), e["tau2"], 1e-6 * max(1.0, e["tau2"]))


@pytest.mark.parametrize("key", sorted(UNI))
def test_regtest(fits, key):
    e = UNI[key]
    d = data(e["data"])
    for predictor, r in e["regtest"].items():
        if r is None:  # metafor's own refit failed to converge
            continue
        ni = "ni" if predictor in ("ni", "ninv", "sqrtni", "sqrtninv") else None
        out, refit = drm.egger_test(fits[key], predictor, ni=ni, vcov="gls", return_fit=True)
        what = f"{key} {predictor}"
        close(out["statistic"], r["zval"], 1e-6, what)
        close(out["p_value"], r["pval"], 1e-6, what)
        if predictor in ("ni", "sqrtni"):
            assert np.isnan(out["limit_estimate"]) and not r["est"]  # NULL in regtest
            continue
        scale = max(1.0, abs(r["est"]))
        close(out["limit_estimate"], r["est"], 1e-6 * scale, what)
        close(out["limit_lower"], r["ci_lb"], 1e-6 * scale, what)
        close(out["limit_upper"], r["ci_ub"], 1e-6 * scale, what)
        assert refit.params.index[1] == f"mu:{predictor}"
    # the sample-size columns may be given as an array with one value per data row
    if "ni" in e["regtest"] and e["regtest"]["ni"] is not None:
        a = drm.egger_test(fits[key], "ni", ni=d["ni"].to_numpy(), vcov="gls")
        close(a["statistic"], e["regtest"]["ni"]["zval"], 1e-6)


@pytest.mark.parametrize("key", sorted(UNI))
@pytest.mark.parametrize("estimator", ["L0", "R0"])
def test_trimfill(fits, key, estimator):
    r = UNI[key]["trimfill"][estimator]
    t = drm.trim_and_fill(fits[key], estimator=estimator)
    assert t.k0 == r["k0"] and t.side == r["side"]
    close(t.se_k0, r["se_k0"], 1e-6)
    scale = max(1.0, abs(r["beta"]))
    close(t.fit.params.iloc[0], r["beta"], 1e-6 * scale)
    # metafor's trimfill refits the trimmed data with rma's default control (threshold 1e-5),
    # so its mirror point carries that error; k0 and the final (tight) estimate do not
    close(t.filled["yi"], r["filled_yi"] if r["filled_yi"] else np.zeros(0), 1e-5 * scale)
    close(t.filled["vi"], r["filled_vi"] if r["filled_vi"] else np.zeros(0), 1e-12)
    assert t.fit.nobs == fits[key].nobs + t.k0


# bcg and normand (negative effects): no one-sided p-value <= 0.025, so delta of the second
# interval is not estimable (metafor warns and returns a boundary estimate; drmpy refuses)
NO_SMALL_P = ("bcg_ML", "normand_ML")
SEL = [(k, which) for k, e in UNI.items() if "selmodel" in e and k not in NO_SMALL_P for which in e["selmodel"]]


@pytest.mark.parametrize("key", NO_SMALL_P)
def test_selmodel_empty_interval(fits, key):
    with pytest.raises(drm.DrmError, match=r"No observed p-value falls in the interval \(0, 0.025\]"):
        drm.selection_model(fits[key])


@pytest.mark.parametrize("key,which", SEL)
def test_selmodel(fits, key, which):
    r = UNI[key]["selmodel"][which]
    s = drm.selection_model(fits[key], steps=r["steps"])
    assert s.converged
    close(s.params.iloc[0], r["beta"], 1e-5)
    close(s.params["sigma"] ** 2, r["tau2"], 1e-5)
    close(s.params.iloc[2:], r["delta"], 1e-5)
    close(s.loglik, r["ll"], 1e-5)
    close(s.lrt["statistic"], r["LRT"], 1e-5)
    assert s.lrt["df"] == r["LRTdf"]
    close(s.lrt["p_value"], r["LRTp"], 1e-5)
    close(s.std_errors.iloc[0], r["se"], 1e-3)  # metafor's SEs: numerical Hessian


def test_selmodel_refits_reml_by_ml(fits):
    r = REF["uni"]["hackshaw_REML"]["selmodel_from_reml"]
    s = drm.selection_model(fits["hackshaw_REML"], steps=r["steps"])
    assert s.unselected.method == "ML"
    close(s.loglik, r["ll"], 1e-5)
    close(s.lrt["statistic"], r["LRT"], 1e-5)


@pytest.mark.parametrize("key", sorted(UNI))
def test_leave1out(fits, key):
    r = UNI[key]["leave1out"]
    out = fits[key].leave_one_out()
    assert out["converged"].all()
    scale = max(1.0, max(abs(x) for x in r["estimate"] if x is not None))
    close(out["mu:(Intercept)"], r["estimate"], 1e-6 * scale)
    tau2 = np.exp(2 * out["sigma:(Intercept)"])
    close(tau2, r["tau2"], 1e-6 * max(1.0, max(x for x in r["tau2"] if x is not None)))
    assert list(out["omitted"]) == list(fits[key].design.row_labels)
    close(out["Q"], r["Q"], 1e-6 * max(1.0, max(x for x in r["Q"] if x is not None)))
    close(out["I2"], r["I2"], 1e-6 * 100)


def check_influence(inf, r, p, tol=1e-6):
    close(inf["rstudent"], r["rstudent"], tol)
    close(inf["dffits"], r["dffits"], tol)
    close(inf["cooks_distance"], r["cook_d"], tol)
    close(inf["cov_ratio"], r["cov_r"], tol)
    close(inf["sigma2_deleted"], r["tau2_del"], tol * max(1.0, max(x for x in r["tau2_del"] if x is not None)))
    close(inf["hat"], r["hat"], tol)
    close(inf["weight"], r["weight"], tol)
    dfb = [c for c in inf.columns if c.startswith("dfbetas:")]
    assert len(dfb) == p
    refs = [v for k, v in r["dfbs"].items() if k not in ("slab", "digits")]
    assert len(refs) == p
    for c, ref in zip(dfb, refs):
        close(inf[c], ref, tol)
    have = [x is not None for x in r["is_infl"]]
    assert list(inf["is_influential"][have]) == [x for x in r["is_infl"] if x is not None]


@pytest.mark.parametrize("key", sorted(UNI))
def test_influence(fits, key):
    check_influence(fits[key].influence(), UNI[key]["influence"], 1)


@pytest.fixture(scope="module")
def bcg_ablat():
    return drm.fit("yi ~ ablat + meta_V(V = vi)", data("bcg"), method="REML")


def test_meta_regression(bcg_ablat):
    r = REF["uni"]["bcg_ablat_REML"]
    close(bcg_ablat.params.iloc[:2], r["beta"], 1e-6)
    eg = drm.egger_test(bcg_ablat, vcov="gls")
    close(eg["statistic"], r["regtest"]["sei"]["zval"], 1e-6)
    close(eg["p_value"], r["regtest"]["sei"]["pval"], 1e-6)
    assert np.isnan(eg["limit_estimate"]) and np.isnan(eg["limit_lower"])
    check_influence(bcg_ablat.influence(), r["influence"], 2)
    loo = bcg_ablat.leave_one_out()
    ref = np.asarray(r["leave1out_beta"])
    close(loo[["mu:(Intercept)", "mu:ablat"]], ref[:, :2], 1e-6)
    close(np.exp(2 * loo["sigma:(Intercept)"]), ref[:, 2], 1e-6)


# ---------------------------------------------------------------- three-level model (rma.mv)
MV = REF["mv"]


@pytest.fixture(scope="module")
def mv_fit():
    return drm.fit("yi ~ 1 + (1|district) + meta_V(V = vi)", data("konstantopoulos"), method="REML")


def test_mv_fit(mv_fit):
    close(mv_fit.params.iloc[0], MV["beta"], 1e-6)
    close(np.exp(2 * mv_fit.params.iloc[[2, 1]]), MV["sigma2"], 1e-6)


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_multilevel_egger(mv_fit, method):
    r = MV["egger"] if method == "REML" else MV["egger_ml"]
    f = mv_fit if method == "REML" else drm.fit("yi ~ 1 + (1|district) + meta_V(V = vi)",
                                                  data("konstantopoulos"), method="ML")
    eg, refit = drm.egger_test(f, vcov="gls", return_fit=True)
    close(eg["estimate"], r["beta"][1], 1e-6)
    close(eg["std_error"], r["se"][1], 1e-6)
    close(eg["statistic"], r["zval"][1], 1e-6)
    close(eg["p_value"], r["pval"][1], 1e-6)
    close(eg["limit_estimate"], r["beta"][0], 1e-6)
    close(eg["limit_lower"], r["ci_lb"][0], 1e-6)
    close(eg["limit_upper"], r["ci_ub"][0], 1e-6)
    close(np.exp(2 * refit.params[["sd(district):(Intercept)", "sigma:(Intercept)"]]), r["sigma2"], 1e-6)


def test_mv_influence_rows(mv_fit):
    inf = mv_fit.influence()
    close(inf["cooks_distance"], MV["cooks"], 1e-5)
    close(inf["dfbetas:(Intercept)"], MV["dfbetas"], 1e-5)
    close(inf["hat"], MV["hat"], 1e-5)
    close(inf["rstudent"], MV["rstudent"]["z"], 1e-5)


def test_mv_influence_district(mv_fit):
    inf = mv_fit.influence(cluster="district")
    assert list(inf.index) == MV["districts"]
    close(inf["cooks_distance"], MV["cooks_district"], 1e-5)
    close(inf["dfbetas:(Intercept)"], MV["dfbetas_district"], 1e-5)
    close(inf["x2"], MV["rstudent_district"]["X2"], 1e-5)
    close(inf["k"], MV["rstudent_district"]["k"], 0)
    rows = inf.attrs["rows"]
    close(rows["resid"], MV["rstudent_district"]["resid"], 1e-5)
    close(rows["se"], MV["rstudent_district"]["se"], 1e-5)
    close(rows["rstudent"], MV["rstudent_district"]["z"], 1e-5)


def test_mv_leave_district_out(mv_fit):
    loo = mv_fit.leave_one_out(by="district")
    ref = np.asarray(MV["leave_district"])
    assert list(loo["omitted"]) == MV["districts"]
    close(loo["mu:(Intercept)"], ref[:, 0], 1e-6)
    close(np.exp(2 * loo["sd(district):(Intercept)"]), ref[:, 1], 1e-6)
    close(np.exp(2 * loo["sigma:(Intercept)"]), ref[:, 2], 1e-6)
