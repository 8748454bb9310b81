"""Prediction intervals, weights, quantile residuals and figures of robust fits, each against an
independent computation: scipy's quad of the t-plus-normal convolution, simulation, the
weighted-mean identity of the estimate, and the Gaussian model at the boundary."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

import drmpy as drm
from drmpy.inference.robust_prediction import mixture_half_width, student_cdf, student_half_width
from drmpy.families.student_marginal import posterior_precision_mean
from drmpy.inference.robust_residuals import quantile_residuals, robust_weights

FORMULA = "yi ~ 1 + meta_V(V = vi)"


def quad_student_cdf(x: float, s: float, sigma: float, nu: float) -> float:
    """P(z + u <= x), z ~ N(0, s^2), u ~ t_nu(0, sigma): quad over z of the t CDF."""
    def f(z):
        return stats.norm.pdf(z, scale=s) * stats.t.cdf((x - z) / sigma, nu)

    edges = [-np.inf, -10 * s, -s, 0.0, s, 10 * s, np.inf]
    return sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-12, limit=400)[0] for a, b in zip(edges[:-1], edges[1:]))


@pytest.fixture(scope="module")
def t_fit(cdp_t):
    return cdp_t  # tests/robust/conftest.py


@pytest.fixture(scope="module")
def mix_fit(cdp_mix):
    return cdp_mix


# ---------------------------------------------------------------- distributions
@pytest.mark.parametrize("s, sigma, nu", [(0.1, 0.3, 0.5), (0.3, 0.05, 4.0), (0.05, 1.0, 30.0), (1.0, 1e-3, 2.0)])
def test_student_half_width_is_the_quantile_of_the_convolution(s, sigma, nu):
    x = float(student_half_width(s * s, sigma, nu, 0.95))
    assert abs(quad_student_cdf(x, s, sigma, nu) - 0.975) < 1e-10


def test_student_half_width_limits():
    # no normal part: the t quantile itself; nu -> inf: the normal interval
    assert float(student_half_width(0.0, 0.3, 2.5, 0.9)) == pytest.approx(0.3 * stats.t.ppf(0.95, 2.5), rel=1e-10)
    got = student_half_width([0.04, 0.04], 0.3, [np.inf, 1e9], 0.95)
    np.testing.assert_allclose(got, np.sqrt(0.13) * stats.norm.ppf(0.975), rtol=1e-8)


def test_student_cdf_in_both_tails():
    x = np.array([-40.0, -3.0, -0.2, 0.0, 0.7])
    got = student_cdf(x, 0.09, 0.4, 1.5)
    want = [quad_student_cdf(v, 0.3, 0.4, 1.5) for v in x]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_mixture_half_width_covers_level_of_simulated_effects():
    x = float(mixture_half_width(0.01, 0.1, 0.8, 0.12, 0.95))
    rng = np.random.default_rng(20261205)
    n = 400_000
    draws = rng.normal(0.0, 0.1, n) + np.where(rng.random(n) < 0.12, rng.normal(0.0, 0.8, n), rng.normal(0.0, 0.1, n))
    # binomial SE of the coverage: 3.4e-4; four of them
    assert abs(np.mean(np.abs(draws) <= x) - 0.95) < 4 * np.sqrt(0.95 * 0.05 / n)
    # p_out = 0 is the normal interval
    assert float(mixture_half_width(0.01, 0.1, 0.8, 0.0, 0.95)) == pytest.approx(np.sqrt(0.02) * stats.norm.ppf(0.975))


# ---------------------------------------------------------------- prediction intervals of fits
def test_prediction_interval_is_the_fitted_t_quantile(t_fit):
    pi = t_fit.predict(pd.DataFrame(index=[0]), interval="prediction").iloc[0]
    sigma = float(np.exp(t_fit.params["sigma:(Intercept)"]))
    nu = float(np.exp(t_fit.params["nu:(Intercept)"]))
    assert quad_student_cdf(pi["upper"] - pi["estimate"], pi["se"], sigma, nu) == pytest.approx(0.975, abs=1e-10)
    assert pi["estimate"] - pi["lower"] == pytest.approx(pi["upper"] - pi["estimate"], rel=1e-12)
    ci = t_fit.predict(interval="confidence").iloc[0]
    assert ci["lower"] == pytest.approx(t_fit.tidy().iloc[0]["conf_low"], rel=1e-10)


def test_prediction_interval_at_the_boundary_is_the_normal_models():
    mag = drm.datasets.mag()
    robust = drm.fit(FORMULA, mag, family=drm.student())
    assert robust.at_boundary
    normal = drm.fit(FORMULA, mag, method="ML")
    got = robust.predict(interval="prediction").iloc[0]
    want = normal.predict(interval="prediction").iloc[0]
    np.testing.assert_allclose(got[["estimate", "lower", "upper"]].to_numpy(dtype=float),
                               want[["estimate", "lower", "upper"]].to_numpy(dtype=float), rtol=1e-6)


def test_prediction_interval_refuses_gaussian_only_options(t_fit):
    with pytest.raises(drm.DrmError, match="Wald"):
        t_fit.predict(interval="prediction", test="t")
    with pytest.raises(drm.DrmError, match="gls"):
        t_fit.predict(interval="confidence", vcov="gls")


# ---------------------------------------------------------------- weights and residuals
@pytest.mark.parametrize("which", ["t_fit", "mix_fit"])
def test_weights_reproduce_the_estimate_as_a_weighted_mean(which, request, cdp):
    fit = request.getfixturevalue(which)
    w = robust_weights(fit).to_numpy()
    assert w.sum() == pytest.approx(100.0)
    assert float(w @ cdp["yi"].to_numpy() / w.sum()) == pytest.approx(float(fit.params["mu:(Intercept)"]), abs=1e-8)
    assert cdp["study"].iloc[int(np.argmin(w))] == "Bonavita 1983"


def test_precision_mean_is_the_score_over_the_residual():
    """E[1/q | r] = -(d/dr log f) / r; the derivative by central differences of the quad oracle."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_student_marginal import oracle_logpdf

    for r, v, sigma, nu in [(1.3, 0.4, 0.3, 2.0), (-0.2, 0.05, 0.5, 0.7), (6.0, 0.1, 0.2, 5.0)]:
        h = 1e-4
        score = (oracle_logpdf(r + h, v, sigma, nu) - oracle_logpdf(r - h, v, sigma, nu)) / (2 * h)
        assert float(posterior_precision_mean(r, v, sigma, nu)) == pytest.approx(-score / r, rel=1e-6)
    assert float(posterior_precision_mean(0.5, 0.1, 0.2, np.inf)) == pytest.approx(1.0 / 0.14)


def test_quantile_residuals(t_fit, mix_fit, cdp):
    # t: Phi^-1 of the quad CDF of two rows
    e = quantile_residuals(t_fit)
    sigma = float(np.exp(t_fit.params["sigma:(Intercept)"]))
    nu = float(np.exp(t_fit.params["nu:(Intercept)"]))
    mu = float(t_fit.params["mu:(Intercept)"])
    for i in (1, 2):  # Barbagallo (below mu), Bonavita (far above)
        r, s = cdp["yi"].iloc[i] - mu, cdp["sei"].iloc[i]
        want = -stats.norm.ppf(quad_student_cdf(-r, s, sigma, nu)) if r > 0 else stats.norm.ppf(quad_student_cdf(r, s, sigma, nu))
        assert e[i] == pytest.approx(want, rel=1e-8)
    # mixture: closed-form CDF
    p = {d: float(mix_fit.dpar_values(d).iloc[0]) for d in ("mu", "sigma", "sigma_out", "p_out")}
    r = cdp["yi"].to_numpy() - p["mu"]
    F = ((1 - p["p_out"]) * stats.norm.cdf(r, scale=np.sqrt(cdp["vi"] + p["sigma"] ** 2))
         + p["p_out"] * stats.norm.cdf(r, scale=np.sqrt(cdp["vi"] + p["sigma_out"] ** 2)))
    np.testing.assert_allclose(quantile_residuals(mix_fit), stats.norm.ppf(F), rtol=1e-9, atol=1e-12)
    # boundary: the normal model's r / sqrt(v + sigma^2)
    mag = drm.datasets.mag()
    b = drm.fit(FORMULA, mag, family=drm.student())
    r = mag["yi"].to_numpy() - float(b.params["mu:(Intercept)"])
    np.testing.assert_allclose(quantile_residuals(b), r / np.sqrt(mag["vi"] + np.exp(2 * b.params["sigma:(Intercept)"])),
                               rtol=1e-10)


def test_group_sd_of_a_robust_fit_reads_its_own_parameter(cdp):
    data = cdp.assign(g=np.arange(len(cdp)) // 2)
    fit = drm.fit("yi ~ 1 + (1|g) + meta_V(V = vi)", data, family=drm.normal_mixture())
    assert fit.sd("g").iloc[0, 0] == pytest.approx(float(np.exp(fit.params["sd(g):(Intercept)"])), rel=1e-12)
    with pytest.raises(drm.DrmError, match="group"):
        robust_weights(fit)


# ---------------------------------------------------------------- figures
def test_forest_table_of_a_t_fit(t_fit, cdp):
    table = drm.plots.forest_table(t_fit, label="study", data=cdp)
    effects = table[table["kind"] == "effect"]
    np.testing.assert_allclose(effects["weight"].to_numpy(), robust_weights(t_fit).to_numpy())
    pooled = table[table["kind"] == "overall"].iloc[0]
    pi = t_fit.predict(pd.DataFrame(index=[0]), interval="prediction").iloc[0]
    assert (pooled["pred_low"], pooled["pred_high"]) == pytest.approx((pi["lower"], pi["upper"]), rel=1e-10)
    note = table[table["kind"] == "note"].iloc[0]["label"]
    assert "t random effects" in note and "ν = 0.49" in note and "Q =" not in note
    with pytest.raises(drm.DrmError, match="aggregate"):
        drm.plots.forest_table(t_fit, aggregate="study", data=cdp)


def test_figures_of_robust_fits_draw(t_fit, mix_fit, cdp):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for fit in (t_fit, mix_fit):
        for draw in (lambda: drm.plots.forest(fit, label="study", data=cdp), lambda: drm.plots.orchard(fit),
                     lambda: drm.plots.qq(fit)):
            out = draw()
            plt.close(getattr(out, "figure", out))
    ax = drm.plots.qq(t_fit)
    assert ax.get_ylabel().startswith("Quantile residual")
    plt.close(ax.figure)
    assert drm.plots.qq_table(mix_fit).attrs["drmpy"].values[1] == ("residuals", "quantile")


# ---------------------------------------------------------------- simulation
def test_simulated_rows_follow_the_fitted_marginal(t_fit, mix_fit, cdp):
    """Draws of one row against the quadrature CDF (t: numpy's chi-square construction of T is
    independent of the quadrature) and the closed-form mixture CDF: Kolmogorov-Smirnov."""
    from drmpy.inference.robust_prediction import mixture_cdf

    for fit in (t_fit, mix_fit):
        sims = fit.simulate(4000, seed=11)
        assert sims.shape == (10, 4000) and list(sims.columns[:2]) == ["sim_1", "sim_2"]
        mu = float(fit.params["mu:(Intercept)"])
        row = 7  # Senin 2003, the most precise study
        v = float(cdp["vi"].iloc[row])
        sigma = float(fit.dpar_values("sigma").iloc[row])
        if fit is t_fit:
            nu = float(fit.dpar_values("nu").iloc[row])

            def cdf(x):
                return student_cdf(np.asarray(x) - mu, v, sigma, nu)
        else:
            so, p = float(fit.dpar_values("sigma_out").iloc[row]), float(fit.dpar_values("p_out").iloc[row])

            def cdf(x):
                return mixture_cdf(np.asarray(x) - mu, v, sigma, so, p)

        assert stats.kstest(sims.iloc[row].to_numpy(), cdf).pvalue > 1e-3
    assert t_fit.simulate(3, seed=5).equals(t_fit.simulate(3, seed=5))


def test_simulated_group_effects_share_their_level():
    rng = np.random.default_rng(26)
    g = np.repeat(np.arange(30), 3)
    y = 0.3 + rng.normal(0, 0.5, 30)[g] + rng.normal(0, 0.1, 90) + rng.normal(0, np.sqrt(0.02), 90)
    fit = drm.fit("yi ~ 1 + (1|g) + meta_V(V = vi)", pd.DataFrame({"yi": y, "vi": 0.02, "g": g}),
                  family=drm.normal_mixture())
    sd = float(fit.sd("g").iloc[0, 0])
    assert sd > 0.3
    sims = fit.simulate(20000, seed=3).to_numpy()
    # rows 0 and 1 share level 0: covariance sd^2; rows 0 and 3 do not (SE of a covariance
    # about sqrt((var^2 + cov^2) / nsim))
    cov = np.cov(sims[[0, 1, 3]])
    se = np.sqrt((cov[0, 0] * cov[1, 1] + cov[0, 1] ** 2) / 20000)
    assert abs(cov[0, 1] - sd**2) < 4 * se and abs(cov[0, 2]) < 4 * se


def test_forest_of_a_multilevel_robust_fit_sizes_by_precision():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(26)
    g = np.repeat(np.arange(8), 3)
    y = 0.3 + rng.normal(0, 0.5, 8)[g] + 0.2 * rng.standard_t(3, 24) + rng.normal(0, np.sqrt(0.02), 24)
    fit = drm.fit("yi ~ 1 + (1|g) + meta_V(V = vi)", pd.DataFrame({"yi": y, "vi": 0.02, "g": g}),
                  family=drm.student())
    table = drm.plots.forest_table(fit)
    assert table["weight"].isna().all() and table.attrs["drmpy"].values[4] == ("size_by", "precision")
    assert f"σ²(g) = {float(fit.sd('g').iloc[0, 0]) ** 2:.2f}" in table.iloc[-1]["label"]
    ax = drm.plots.forest(fit)
    texts = [t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Weight" not in texts and any("precision 1/SE" in t for t in texts)
    plt.close(ax.figure)


def test_keyword_sigma_formula_fits_the_robust_and_normal_models():
    """drm.Formula(mu, sigma='~ x'): the normal model beside the robust fit is the Gaussian ML
    fit of the same formula."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=40)
    data = pd.DataFrame({"yi": 0.2 + np.exp(-1.0 + 0.5 * x) * rng.standard_t(4, 40) + rng.normal(0, 0.1, 40),
                         "vi": 0.01, "x": x})
    formula = drm.Formula("yi ~ 1 + meta_V(V = vi)", sigma="~ x")
    fit = drm.fit(formula, data, family=drm.student())
    normal = drm.fit(formula, data, method="ML")
    np.testing.assert_allclose(fit.normal_theta, normal.params.to_numpy(), rtol=1e-5, atol=1e-7)
    assert list(fit.params.index) == ["mu:(Intercept)", "sigma:(Intercept)", "sigma:x", "nu:(Intercept)"]


def test_check_names_an_sd_at_its_zero_boundary(t_fit, mix_fit):
    """cdp: the mixture's main component has sigma -> 0 (metaplus: tau2 = 0), the t's scale
    (0.0067, SE of its log 4.1) is small but estimated; the Gaussian fit's scale-free rule."""
    mix = mix_fit.check().set_index("check")
    assert mix.loc["boundary", "status"] == "note" and mix.loc["boundary", "message"].startswith("sigma ran toward")
    assert t_fit.check().set_index("check").loc["boundary", "status"] == "ok"


def test_gaussian_variance_summaries_refuse_robust_fits(mix_fit):
    """Called as module functions (not the fit's methods, which refuse too), the heterogeneity
    summaries would read the Gaussian parameter layout: they refuse."""
    from drmpy.heterogeneity import statistics

    for call in (statistics.row_variances, statistics.i2, statistics.h2, statistics.variance_components):
        with pytest.raises(drm.DrmError, match="normal_mixture"):
            call(mix_fit)


def test_fixed_nu_is_a_row_parameter_for_new_data_too(cdp):
    """student(nu=4): predict(dpar='nu') on new rows gives 4 (as dpar_values on the fitted ones),
    and the prediction interval is the t_4 convolution's quantile (quad)."""
    fit = drm.fit(FORMULA, cdp, family=drm.student(nu=4))
    new = pd.DataFrame(index=[7, 8])
    assert fit.predict(new, dpar="nu").tolist() == [4.0, 4.0]
    assert fit.predict(new, dpar="nu", type="link").tolist() == pytest.approx([np.log(4.0)] * 2)
    pi = fit.predict(new, interval="prediction").iloc[0]
    sigma = float(fit.dpar_values("sigma").iloc[0])
    assert quad_student_cdf(pi["upper"] - pi["estimate"], pi["se"], sigma, 4.0) == pytest.approx(0.975, abs=1e-10)


def test_marginal_means_over_another_factor_are_refused(cdp):
    data = cdp.assign(g=["a", "b"] * 5, h=["u"] * 5 + ["w"] * 5)
    fit = drm.fit("yi ~ g + h + meta_V(V = vi)", data, family=drm.normal_mixture())
    with pytest.raises(drm.DrmError, match="reference grid assumes normal random effects"):
        drm.plots.orchard_table(fit, "g", data=data)
