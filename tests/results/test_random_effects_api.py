"""Random-effect API: ranef(), sd(group), predict() with and without random effects, parameter
names, nested-term expansion, and recovery of sd(study) ~ habitat in a simulation."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

N_STUDY = 60
PER_STUDY = 5
TRUE_SD = (-1.0, 0.7)  # log sd(study): intercept (grassland), forest contrast
TRUE_MU = (0.3, 0.4)
TRUE_LOG_SIGMA = -2.0


def fit_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", drm.ConvergenceWarning)
        return drm.fit(*args, **kwargs)


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    rng = np.random.default_rng(20240611)
    study = np.repeat(np.arange(N_STUDY), PER_STUDY)
    forest_study = (np.arange(N_STUDY) % 2 == 1).astype(float)
    sd_study = np.exp(TRUE_SD[0] + TRUE_SD[1] * forest_study)
    u = rng.normal(0.0, sd_study)
    forest = forest_study[study]
    vi = rng.uniform(0.005, 0.05, size=study.size)
    x = rng.normal(size=study.size)
    yi = (TRUE_MU[0] + TRUE_MU[1] * forest + u[study]
          + rng.normal(0.0, np.sqrt(vi + np.exp(2 * TRUE_LOG_SIGMA))))
    return pd.DataFrame({
        "study": [f"st{s:02d}" for s in study],
        "habitat": pd.Categorical(np.where(forest == 1, "forest", "grassland"), categories=["grassland", "forest"]),
        "x": x,
        "vi": vi,
        "yi": yi,
        "district": study // 6,
        "school": study,
    })


@pytest.fixture(scope="module")
def fit(sim):
    return fit_quiet(drm.Formula("yi ~ habitat + (1|study) + meta_V(V=vi)", "sd(study) ~ habitat"), data=sim)


@pytest.fixture(scope="module")
def slope_fit(sim):
    return fit_quiet(drm.Formula("yi ~ x + (1 + x|study) + meta_V(V=vi)"), data=sim)


# --------------------------------------------------------------------------- names


def test_parameter_names(fit):
    assert list(fit.params.index) == [
        "mu:(Intercept)", "mu:habitat[T.forest]", "sigma:(Intercept)",
        "sd(study):(Intercept)", "sd(study):habitat[T.forest]",
    ]
    assert fit.dpars == ["mu", "sigma", "sd(study)"]
    coef = fit.coef("sd(study)")
    assert list(coef.index) == ["(Intercept)", "habitat[T.forest]"]
    np.testing.assert_array_equal(coef.to_numpy(), fit.params.iloc[3:].to_numpy())


def test_slope_parameter_names(slope_fit):
    assert list(slope_fit.params.index) == [
        "mu:(Intercept)", "mu:x", "sigma:(Intercept)",
        "sd(study):(Intercept)", "sd(study|x):(Intercept)", "cor(study|(Intercept),x):(Intercept)",
    ]
    assert np.all(np.isfinite(slope_fit.std_errors))


def test_uncorrelated_slope_has_no_correlation():
    f = drm.Formula("yi ~ x + (1 + x||g)")
    term = f.random_terms[0]
    assert not term.correlated
    assert term.sd_dpars() == ("sd(g)", "sd(g|x)")
    assert term.cor_dpars() == ()
    assert list(f.dpars) == ["mu", "sigma", "sd(g)", "sd(g|x)"]


def test_nested_term_expands(sim):
    f = drm.Formula("yi ~ habitat + (1|district/school) + meta_V(V=vi)")
    assert [t.group for t in f.random_terms] == ["district", "district:school"]
    assert list(f.dpars) == ["mu", "sigma", "sd(district)", "sd(district:school)"]
    nfit = fit_quiet(f, data=sim)
    assert [n for n in nfit.params.index if n.startswith("sd(")] == [
        "sd(district):(Intercept)", "sd(district:school):(Intercept)"]
    assert nfit.sd("district").shape == (10, 1)
    inner = nfit.sd("district:school")
    assert inner.shape == (60, 1)
    assert inner.index[0] == "0:0" and inner.index[-1] == "9:59"
    levels = nfit.ranef().groupby("group")["level"].nunique()
    assert levels.to_dict() == {"district": 10, "district:school": 60}


# --------------------------------------------------------------------------- ranef and sd


def test_ranef_table(fit, sim):
    tab = fit.ranef()
    assert list(tab.columns) == ["group", "level", "term", "estimate", "cond_sd", "n_rows"]
    assert len(tab) == N_STUDY
    assert (tab["group"] == "study").all() and (tab["term"] == "(Intercept)").all()
    assert list(tab["level"]) == sorted(sim["study"].unique())
    assert (tab["n_rows"] == PER_STUDY).all()
    sd = fit.sd("study")["(Intercept)"]
    # conditional SDs are positive and below the prior SD of their level
    assert (tab["cond_sd"] > 0).all()
    assert (tab["cond_sd"].to_numpy() < sd.loc[tab["level"]].to_numpy()).all()


def test_ranef_empty_without_random_effects(sim):
    plain = fit_quiet(drm.Formula("yi ~ habitat + meta_V(V=vi)"), data=sim)
    tab = plain.ranef()
    assert tab.empty and list(tab.columns) == ["group", "level", "term", "estimate", "cond_sd", "n_rows"]
    np.testing.assert_allclose(plain.predict().to_numpy(), plain.fitted().to_numpy())


def test_sd_per_level(fit, sim):
    sd = fit.sd("study")
    assert list(sd.columns) == ["(Intercept)"]
    assert sd.index.name == "study"
    assert len(sd) == N_STUDY
    level_habitat = sim.groupby("study", observed=True)["habitat"].first().astype(str)
    forest = (level_habitat.loc[sd.index] == "forest").to_numpy(dtype=float)
    a0, a1 = fit.params["sd(study):(Intercept)"], fit.params["sd(study):habitat[T.forest]"]
    np.testing.assert_allclose(sd["(Intercept)"].to_numpy(), np.exp(a0 + a1 * forest), rtol=1e-12)
    with pytest.raises(drm.DrmError, match=r"No random-effect term for group `habitat`.*study"):
        fit.sd("habitat")


def test_sd_slope_model_columns(slope_fit):
    sd = slope_fit.sd("study")
    assert list(sd.columns) == ["(Intercept)", "x"]
    np.testing.assert_allclose(sd["x"].to_numpy(), np.exp(slope_fit.params["sd(study|x):(Intercept)"]))


# --------------------------------------------------------------------------- predict


def _modes(fit) -> dict:
    tab = fit.ranef()
    return dict(zip(tab["level"], tab["estimate"]))


def test_predict_fitted_rows_includes_random_effects(fit, sim):
    pred = fit.predict()
    np.testing.assert_allclose(pred.to_numpy(), fit.fitted().to_numpy(), atol=1e-12)
    fixed = fit.params["mu:(Intercept)"] + fit.params["mu:habitat[T.forest]"] * (sim["habitat"] == "forest")
    modes = _modes(fit)
    b = sim["study"].map(modes).to_numpy()
    assert np.abs(b).max() > 0.05  # random effects are not negligible here
    np.testing.assert_allclose(pred.to_numpy(), fixed.to_numpy() + b, atol=1e-10)
    no_re = fit.predict(re_form=False)
    np.testing.assert_allclose(no_re.to_numpy(), fixed.to_numpy(), atol=1e-10)
    np.testing.assert_allclose(fit.residuals().to_numpy(), sim["yi"].to_numpy() - pred.to_numpy(), atol=1e-12)


def test_predict_newdata_excludes_random_effects_by_default(fit, sim):
    new = pd.DataFrame({
        "habitat": pd.Categorical(["forest", "grassland", "forest"], categories=["grassland", "forest"]),
        "study": ["st01", "st02", "brand_new"],
    })
    fixed = fit.params["mu:(Intercept)"] + fit.params["mu:habitat[T.forest]"] * np.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(fit.predict(new).to_numpy(), fixed, atol=1e-12)
    np.testing.assert_allclose(fit.predict(new, re_form=False).to_numpy(), fixed, atol=1e-12)
    modes = _modes(fit)
    with_re = fit.predict(new, re_form=True).to_numpy()
    np.testing.assert_allclose(with_re, fixed + np.array([modes["st01"], modes["st02"], 0.0]), atol=1e-12)
    # a fitted row predicted as newdata with re_form=True reproduces fitted()
    row = sim.iloc[[7, 123]]
    np.testing.assert_allclose(fit.predict(row, re_form=True).to_numpy(),
                               fit.fitted().to_numpy()[[7, 123]], atol=1e-12)


def test_predict_newdata_random_slopes(slope_fit, sim):
    tab = slope_fit.ranef()
    b0 = dict(zip(tab.loc[tab["term"] == "(Intercept)", "level"], tab.loc[tab["term"] == "(Intercept)", "estimate"]))
    b1 = dict(zip(tab.loc[tab["term"] == "x", "level"], tab.loc[tab["term"] == "x", "estimate"]))
    new = pd.DataFrame({"x": [0.5, -1.0], "study": ["st03", "unseen"]})
    beta = slope_fit.params[["mu:(Intercept)", "mu:x"]].to_numpy()
    fixed = beta[0] + beta[1] * new["x"].to_numpy()
    np.testing.assert_allclose(slope_fit.predict(new).to_numpy(), fixed, atol=1e-12)
    expected = fixed + np.array([b0["st03"] + b1["st03"] * 0.5, 0.0])
    np.testing.assert_allclose(slope_fit.predict(new, re_form=True).to_numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(slope_fit.predict().to_numpy(), slope_fit.fitted().to_numpy(), atol=1e-12)


# --------------------------------------------------------------------------- simulation recovery


def test_simulation_recovers_sd_study_coefficients(fit):
    assert fit.converged
    for name, truth in zip(["sd(study):(Intercept)", "sd(study):habitat[T.forest]"], TRUE_SD):
        est, se = fit.params[name], fit.std_errors[name]
        assert np.isfinite(se) and 0 < se < 0.5, (name, se)
        assert abs(est - truth) < 3 * se, (name, est, truth, se)
    for name, truth in zip(["mu:(Intercept)", "mu:habitat[T.forest]"], TRUE_MU):
        assert abs(fit.params[name] - truth) < 3 * fit.std_errors[name], name
    assert (fit.check()["status"] != "error").all()


def test_zero_study_sd_ends_converged_at_the_boundary():
    """No study-level heterogeneity: sd(study) runs toward 0, the fit converges, the logLik is
    the one of the model without (1|study), and check() notes the boundary."""
    rng = np.random.default_rng(6)
    n = 200
    study = np.repeat(np.arange(40), 5)
    vi = rng.uniform(0.02, 0.05, n)
    yi = 0.3 + rng.normal(size=n) * np.sqrt(vi + 0.2**2)
    d = pd.DataFrame({"study": study, "vi": vi, "yi": yi})
    fit = drm.fit(drm.Formula("yi ~ 1 + (1|study) + meta_V(V=vi)"), d)
    without = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), d)
    assert fit.converged
    assert fit.sd("study")["(Intercept)"].iloc[0] < 1e-4
    assert fit.loglik == pytest.approx(without.loglik, abs=1e-6)
    assert fit.params["sigma:(Intercept)"] == pytest.approx(without.params["sigma:(Intercept)"], abs=1e-4)
    checks = fit.check().set_index("check")
    assert checks.loc["sd_boundary[study]", "status"] == "note"
    assert checks.loc["boundary", "status"] == "note"
