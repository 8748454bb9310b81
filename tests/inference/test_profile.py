"""Profile-likelihood and bootstrap intervals (conf_int, profile) against drmTMB and metafor.

metafor references: tests/reference_extra/inference_profile/make_references.R (tight fits,
confint(..., control = list(tol = 1e-12))).  metafor's scale coefficients (log tau^2) are twice
drmpy's log-SD ones; metafor's sigma2 of rma.mv are drmpy's sd(district)^2 and sigma^2.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

import drmpy as drm

HERE = Path(__file__).resolve().parents[1] / "reference_extra" / "inference_profile"
REF = json.loads((HERE / "references.json").read_text())
RE = drm.Formula("yi ~ 1 + meta_V(V=vi)")


@pytest.fixture(scope="module")
def bcg():
    return pd.read_csv(HERE / "bcg.csv")


@pytest.fixture(scope="module")
def bcg_fits(bcg):
    return {m: drm.fit(RE, data=bcg, method=m) for m in ("ML", "REML")}


@pytest.mark.parametrize("method, expected", [("ML", [0.3241566, 0.9131881]),
                                              ("REML", [0.3395088, 0.9821891])])
def test_bcg_sigma_profile_interval_equals_drmTMB_and_metafor(bcg_fits, method, expected):
    ci = bcg_fits[method].conf_int(method="profile", params="sigma:(Intercept)", scale="response")
    row = ci.loc["sigma:(Intercept)"]
    assert row["status"] == "ok" and row["method"] == "profile"
    np.testing.assert_allclose([row["lower"], row["upper"]], expected, atol=5e-7)  # drmTMB's 7 digits
    tau_ci = REF[f"bcg_tau_{method.lower()}"]["tau_ci"]  # metafor type = "PL"
    np.testing.assert_allclose(np.log([row["lower"], row["upper"]]), np.log(tau_ci), atol=1e-6)


def _lrt_fixed(fit, name, value):
    """2 (l_hat - l) with ``name`` held at ``value``, by an independent route: an ML/REML fit
    with the parameter moved into an offset (mu) or a dense grid-free optimisation (SDs)."""
    from scipy.optimize import minimize_scalar

    d = fit.design
    y, v, X = d.y, d.known_v.diag, d.fixed["mu"].matrix

    def nll(tau2, beta=None):
        s = v + tau2
        w = 1 / s
        if beta is None:
            A = X.T @ (X * w[:, None])
            b = np.linalg.solve(A, X.T @ (w * y))
        else:
            b = np.atleast_1d(beta)
            A = X.T @ (X * w[:, None])
        r = y - X @ b
        out = 0.5 * (len(y) * np.log(2 * np.pi) + np.sum(np.log(s)) + np.sum(w * r**2))
        if fit.method == "REML":
            out += 0.5 * (np.linalg.slogdet(A)[1] - X.shape[1] * np.log(2 * np.pi))
        return out

    if name.startswith("mu"):
        res = minimize_scalar(lambda lt: nll(np.exp(lt), beta=value), bounds=(-30, 5), method="bounded",
                              options={"xatol": 1e-12})
        f = res.fun
    else:
        f = nll(np.exp(2 * value))
    return 2 * (f + fit.loglik)


@pytest.mark.parametrize("method, names", [("ML", ["mu:(Intercept)", "sigma:(Intercept)"]),
                                           ("REML", ["sigma:(Intercept)"])])
def test_profile_endpoints_give_lrt_p_of_one_minus_level(bcg_fits, method, names):
    fit = bcg_fits[method]
    for level in (0.9, 0.95):
        ci = fit.conf_int(level=level, method="profile", params=names)
        for name in names:
            for end in ("lower", "upper"):
                stat = _lrt_fixed(fit, name, ci.loc[name, end])
                assert 1 - chi2.cdf(stat, 1) == pytest.approx(1 - level, abs=2e-6)


def test_reml_profile_of_a_location_coefficient_is_refused(bcg_fits):
    with pytest.raises(drm.DrmError, match="REML profile for the location coefficient"):
        bcg_fits["REML"].conf_int(method="profile", params=["mu:(Intercept)", "sigma:(Intercept)"])


@pytest.mark.parametrize("scale", ["link", "response"])
def test_reml_default_profiles_variances_and_gives_wald_for_mu(bcg_fits, scale):
    """Issue 22 item 8: every REML fit's default profile table works: the variance parameters
    profiled (REML criterion), the location coefficients Wald, as the method column says."""
    fit = bcg_fits["REML"]
    ci = fit.conf_int(method="profile", scale=scale)
    assert list(ci.index) == list(fit.params.index)
    assert ci.loc["mu:(Intercept)", "method"] == "wald"
    assert ci.loc["sigma:(Intercept)", "method"] == "profile"
    wald = fit.conf_int(scale=scale)
    pd.testing.assert_series_equal(ci.loc["mu:(Intercept)"], wald.loc["mu:(Intercept)"])
    prof = fit.conf_int(method="profile", params=["sigma:(Intercept)"], scale=scale)
    pd.testing.assert_series_equal(ci.loc["sigma:(Intercept)"], prof.loc["sigma:(Intercept)"])
    assert ci.attrs["note"].startswith("REML")


@pytest.mark.slow
def test_reml_default_profile_with_random_effects_and_moderators():
    """A three-level REML meta-regression: sd(g) and sigma profiled, every mu coefficient Wald."""
    d = pd.read_csv(Path(__file__).resolve().parents[1] / "reference_extra" / "bias" / "data_konstantopoulos.csv")
    fit = drm.fit("yi ~ year + (1|district) + meta_V(V = vi)", data=d.assign(year=d["year"] - 1980),
                  method="REML")
    ci = fit.conf_int(method="profile")
    kinds = {n: ("wald" if n.startswith("mu:") else "profile") for n in fit.params.index}
    assert ci["method"].to_dict() == kinds
    assert (ci.loc[[n for n in kinds if kinds[n] == "profile"], "status"] == "ok").all()
    np.testing.assert_allclose(ci.loc["mu:year", ["lower", "upper"]].to_numpy(float),
                               fit.conf_int().loc["mu:year", ["lower", "upper"]].to_numpy(float))


def test_unknown_parameter_is_refused(bcg_fits):
    with pytest.raises(drm.DrmError, match="Unknown parameter `sigma:x`"):
        bcg_fits["ML"].profile("sigma:x")
    with pytest.raises(drm.DrmError, match="Unknown parameter"):
        bcg_fits["ML"].conf_int(params=["tau"])
    with pytest.raises(drm.DrmError, match="method must be one of"):
        bcg_fits["ML"].conf_int(method="score")


def test_profile_curve_spans_the_interval(bcg_fits):
    fit = bcg_fits["ML"]
    curve = fit.profile("sigma:(Intercept)", n=9, level=0.99)
    assert list(curve.columns) == ["value", "loglik", "statistic"]
    q = chi2.ppf(0.99, 1)
    np.testing.assert_allclose(curve["statistic"].iloc[[0, -1]], q, atol=1e-6)
    assert (curve["statistic"] >= -1e-9).all() and curve["statistic"].min() < 0.2
    np.testing.assert_allclose(curve["statistic"], [_lrt_fixed(fit, "sigma:(Intercept)", x) for x in curve["value"]],
                               atol=1e-7)


def test_wald_is_the_summary_interval(bcg_fits):
    fit = bcg_fits["ML"]
    ci = fit.conf_int()
    tab = fit.summary().coefficients
    np.testing.assert_allclose(ci["lower"], tab["ci_lower"])
    np.testing.assert_allclose(ci["upper"], tab["ci_upper"])
    resp = fit.conf_int(scale="response")
    np.testing.assert_allclose(resp.loc["sigma:(Intercept)", ["estimate", "lower", "upper"]].to_numpy(float),
                               np.exp(ci.loc["sigma:(Intercept)", ["estimate", "lower", "upper"]].to_numpy(float)))
    assert resp.loc["mu:(Intercept)", "lower"] == ci.loc["mu:(Intercept)", "lower"]


def test_open_lower_side_at_a_zero_variance():
    data = pd.read_csv(HERE / "boundary_reml.csv")
    fit = drm.fit(RE, data=data, method="REML")
    ci = fit.conf_int(method="profile", params=["sigma:(Intercept)"])
    row = ci.iloc[0]
    assert row["lower"] == -np.inf and np.isfinite(row["upper"])
    assert row["status"].startswith("open lower") and "SD goes to 0" in row["status"]
    assert fit.conf_int(method="profile", params=["sigma:(Intercept)"], scale="response").iloc[0]["lower"] == 0.0
    # the upper end is still where the criterion has fallen by qchisq(0.95, 1)/2
    assert _lrt_fixed(fit, "sigma:(Intercept)", row["upper"]) == pytest.approx(chi2.ppf(0.95, 1), abs=1e-6)


METAFOR_ARTEFACTS = {("scale_alloc_ml", "sigma:alloc[T.random]", "upper")}


@pytest.mark.slow
@pytest.mark.parametrize("case, method", [("scale_ablat_ml", "ML"), ("scale_ablat_reml", "REML"),
                                          ("scale_alloc_ml", "ML")])
def test_scale_coefficient_profiles_equal_metafor(bcg, case, method):
    ref = REF[case]
    scale = "ablat" if "ablat" in case else "alloc"
    fit = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)", f"sigma ~ {scale}"), data=bcg, method=method)
    assert fit.loglik >= ref["loglik"] - 1e-6 - (0 if method == "ML" else 10)  # REML: constant shift
    names = [n for n in fit.params.index if n.startswith("sigma")]
    ci = fit.conf_int(method="profile", params=names)
    compared = 0
    for j, name in enumerate(names):
        for end, key, sign in (("lower", "alpha_ci_lb", "lb_sign"), ("upper", "alpha_ci_ub", "ub_sign")):
            value = ref[key][j]
            if value == "NA" or ref[sign][j] != "":  # metafor did not find this bound
                continue
            if (case, name, end) in METAFOR_ARTEFACTS:
                # the profile plateaus at 2 (l_hat - l) = 0.4165 < 3.84 as this SD grows (the
                # intercept falls to keep the other groups' SDs), so the side is open; metafor's
                # bound there is where its inner optimiser stopped following the plateau
                assert ci.loc[name, end] == np.inf and ci.loc[name, "status"].startswith("open upper")
                curve = fit.profile(name, n=3)
                assert curve["statistic"].iloc[-1] < 0.42
                continue
            assert ci.loc[name, end] == pytest.approx(value / 2, abs=1e-4), (name, end)
            compared += 1
    assert compared >= 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_three_level_profiles_equal_rma_mv(method):
    kon = pd.read_csv(HERE / "konstantopoulos.csv")
    ref = REF[f"three_level_{method.lower()}"]
    fit = drm.fit(drm.Formula("yi ~ 1 + (1|district) + meta_V(V=vi)"), data=kon, method=method)
    ci = fit.conf_int(method="profile", params=["sd(district):(Intercept)", "sigma:(Intercept)"])
    assert (ci["status"] == "ok").all()
    np.testing.assert_allclose(ci.loc["sd(district):(Intercept)", ["lower", "upper"]].to_numpy(float),
                               np.log(ref["sigma_district_ci"]), atol=1e-4)
    np.testing.assert_allclose(ci.loc["sigma:(Intercept)", ["lower", "upper"]].to_numpy(float),
                               np.log(ref["sigma_school_ci"]), atol=1e-4)


@pytest.fixture(scope="module")
def restoration():
    dat = drm.datasets.restoration()
    return dat, drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=dat)


@pytest.mark.slow
def test_location_profile_equals_a_fit_with_the_coefficient_as_offset(restoration):
    # independent route: hold mu:duration at c by moving c * duration into the response
    dat, fit = restoration
    ci = fit.conf_int(method="profile", params=["mu:duration", "sigma:habitat[T.forest]"])
    assert (ci["status"] == "ok").all()
    for end in ("lower", "upper"):
        c = ci.loc["mu:duration", end]
        fixed = drm.fit(drm.Formula("y_off ~ habitat + meta_V(V=vi)", "sigma ~ habitat"),
                        data=dat.assign(y_off=dat["yi"] - c * dat["duration"]))
        assert 2 * (fit.loglik - fixed.loglik) == pytest.approx(chi2.ppf(0.95, 1), abs=1e-6)


@pytest.mark.slow
def test_bootstrap_interval_is_parametric_bootstraps(restoration):
    _, fit = restoration
    ci = fit.conf_int(method="bootstrap", nsim=200, seed=3, scale="response")
    boot = drm.parametric_bootstrap(fit, nsim=200, seed=3, progress=False).set_index("parameter")
    np.testing.assert_allclose(ci["lower"].iloc[:3], boot["lower"].iloc[:3])
    np.testing.assert_allclose(ci["upper"].iloc[3:], np.exp(boot["upper"].iloc[3:]))
    assert (ci["method"] == "bootstrap").all()


def test_common_effect_profile_is_wald_and_bootstrap_is_gls(bcg):
    # no variance parameter: the log-likelihood is quadratic in beta, so profile = Wald exactly
    fit = drm.fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ 0"), data=bcg)
    wald, prof = fit.conf_int(), fit.conf_int(method="profile")
    np.testing.assert_allclose(prof[["lower", "upper"]], wald[["lower", "upper"]], rtol=1e-7)
    boot = fit.conf_int(method="bootstrap", nsim=4000, seed=1)
    np.testing.assert_allclose(boot[["lower", "upper"]], wald[["lower", "upper"]], rtol=0.05)


@pytest.mark.slow
def test_bivariate_profile_equals_a_fit_with_mu1_fixed():
    ref = Path(__file__).resolve().parents[1] / "reference" / "berkey_bivariate_ml"
    d = pd.read_csv(ref / "data.csv")
    V = pd.read_csv(ref / "V.csv", header=None).to_numpy()
    fit = drm.fit(drm.Formula(mu1="y1 ~ 1 + meta_V(V=V)", mu2="y2 ~ 1"), data=d, env={"V": V})
    ci = fit.conf_int(method="profile", params=["mu1:(Intercept)", "rho12:(Intercept)"])
    assert ci.loc["rho12:(Intercept)", "status"].startswith("open lower")
    for end in ("lower", "upper"):
        c = ci.loc["mu1:(Intercept)", end]
        fixed = drm.fit(drm.Formula(mu1="y1c ~ 0 + meta_V(V=V)", mu2="y2 ~ 1"), data=d.assign(y1c=d["y1"] - c),
                        env={"V": V})
        assert 2 * (fit.loglik - fixed.loglik) == pytest.approx(chi2.ppf(0.95, 1), abs=1e-6)
    with pytest.raises(drm.DrmError, match="bootstrap.*BivariateFit"):
        fit.conf_int(method="bootstrap")
