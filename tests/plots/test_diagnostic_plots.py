"""QQ, funnel and caterpillar plots: tables against hand computations, artists against tables."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.linalg import solve_triangular

import drmpy as drm
from drmpy import plots
from _plot_asserts import artist, hline_segments


def _fixed_mean(fit, frame, terms):
    """x_i' beta from fit.params, the design written by hand for the models used here."""
    beta = fit.coef("mu")
    out = np.full(len(frame), beta["(Intercept)"])
    for term, column in terms.items():
        out = out + beta[term] * column(frame)
    return out


def test_qq_table_whitens_by_the_hand_built_marginal_covariance(three_level_fit, lim, tmp_path):
    fit = three_level_fit
    r = lim["yi"].to_numpy() - _fixed_mean(fit, lim, {"environment[T.wild]": lambda d: (d["environment"] == "wild").to_numpy(float)})
    sigma = np.exp(fit.params["sigma:(Intercept)"])
    sd = np.exp(fit.params["sd(article):(Intercept)"])
    same_article = (lim["article"].to_numpy()[:, None] == lim["article"].to_numpy()[None, :]).astype(float)
    S = np.diag(lim["vi"].to_numpy() + sigma**2) + sd**2 * same_article
    e = solve_triangular(np.linalg.cholesky(S), r, lower=True)
    table = plots.qq_table(fit, residuals="whitened")
    np.testing.assert_allclose(table["sample"], np.sort(e), rtol=1e-9, atol=1e-12)
    assert "row" not in table.columns  # a whitened residual mixes rows: no study label
    n = len(e)
    np.testing.assert_allclose(table["theoretical"], stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n))
    # band: P(i-th order statistic <= band_low) = P(Binomial(n, Phi(band_low)) >= i) = 2.5%
    i = np.arange(1, n + 1)
    np.testing.assert_allclose(stats.binom.sf(i - 1, n, stats.norm.cdf(table["band_low"])), 0.025, rtol=1e-6)
    np.testing.assert_allclose(stats.binom.sf(i - 1, n, stats.norm.cdf(table["band_high"])), 0.975, rtol=1e-6)
    ax = plots.qq(table)
    ax.figure.savefig(tmp_path / "qq.png")
    drawn = artist(ax, "_residuals").get_offsets()
    np.testing.assert_array_equal(drawn[:, 0], table["theoretical"])
    np.testing.assert_array_equal(drawn[:, 1], table["sample"])
    band = artist(ax, "95% pointwise band").get_paths()[0].vertices
    assert np.isclose(band[:, 1].min(), table["band_low"].min())
    assert np.isclose(band[:, 1].max(), table["band_high"].max())


def test_qq_of_a_location_scale_fit_divides_by_each_rows_sd(restoration_fit, restoration):
    fit = restoration_fit
    forest = (restoration["habitat"] == "forest").to_numpy(float)
    r = restoration["yi"].to_numpy() - _fixed_mean(
        fit, restoration, {"habitat[T.forest]": lambda d: forest, "duration": lambda d: d["duration"].to_numpy()})
    e = r / np.sqrt(restoration["vi"].to_numpy() + fit.sigma().to_numpy() ** 2)
    np.testing.assert_allclose(plots.qq_table(fit, residuals="whitened")["sample"], np.sort(e), rtol=1e-9)
    ax = plots.qq(fit, level=0.9)
    assert artist(ax, "90% pointwise band") is not None


def test_funnel_points_triangle_and_contours(intercept_fit, restoration, tmp_path):
    fit = intercept_fit
    ax = plots.funnel(fit, contour=True)
    ax.figure.savefig(tmp_path / "funnel.png")
    offsets = artist(ax, "_effect sizes").get_offsets()
    np.testing.assert_array_equal(offsets[:, 0], restoration["yi"].to_numpy())
    np.testing.assert_allclose(offsets[:, 1], np.sqrt(restoration["vi"].to_numpy()))
    center = fit.params["mu:(Intercept)"]
    estimate_line = artist(ax, "pooled estimate").get_xdata()
    assert np.allclose(estimate_line, center)
    lines = [ln for ln in ax.lines if ln.get_label().endswith("95% pseudo-confidence region")]
    assert len(lines) == 2
    for ln, sign in zip(lines, (-1, 1)):
        x, y = ln.get_xdata(), ln.get_ydata()
        np.testing.assert_allclose(x, center + sign * stats.norm.ppf(0.975) * y)
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # inverted: precise studies on top
    # three labelled contour regions (.10-.05, .05-.01, < .01), each mirrored on the left
    regions = [c for c in ax.collections if c.get_label() in ("0.05 < p < 0.10", "0.01 < p < 0.05", "p < 0.01")]
    assert sorted(c.get_label() for c in regions) == ["0.01 < p < 0.05", "0.05 < p < 0.10", "p < 0.01"]
    bounds = {"0.05 < p < 0.10": (1.6449, 1.9600), "0.01 < p < 0.05": (1.9600, 2.5758), "p < 0.01": (2.5758, np.inf)}
    for c in regions:
        v = c.get_paths()[0].vertices
        v = v[(v[:, 1] > 0.05) & (np.abs(v[:, 0]) < 49)]
        ratio = np.abs(v[:, 0]) / v[:, 1]
        lo, hi = bounds[c.get_label()]
        assert ratio.min() >= lo - 1e-3 and ratio.max() <= hi + 1e-3
        assert np.all(v[:, 0] > 0)  # the labelled copy is the right-hand region
    assert len(ax.collections) == 3 * 2 + 1  # six shaded regions and the points


def test_funnel_of_a_meta_regression_draws_residuals(restoration_fit, restoration):
    ax = plots.funnel(restoration_fit, yaxis="vi")
    offsets = artist(ax, "_effect sizes").get_offsets()
    residual = restoration["yi"].to_numpy() - restoration_fit.predict(re_form=False).to_numpy()
    np.testing.assert_allclose(offsets[:, 0], residual)
    np.testing.assert_allclose(offsets[:, 1], restoration["vi"].to_numpy())
    assert ax.get_xlabel() == "Residual of yi"
    with pytest.raises(drm.DrmError, match="mu ~ 1"):
        plots.funnel_table(restoration_fit, xaxis="yi")
    with pytest.raises(drm.DrmError, match="yaxis"):
        plots.funnel_table(restoration_fit, yaxis="ni")


def test_caterpillar_equals_ranef(three_level_fit, tmp_path):
    fit = three_level_fit
    ranef = fit.ranef()
    ranef = ranef[ranef["group"] == "article"].sort_values("estimate", kind="stable")
    ax = plots.caterpillar(fit, group="article", level=0.9)
    ax.figure.savefig(tmp_path / "caterpillar.png")
    offsets = artist(ax, "_conditional modes").get_offsets()
    assert len(offsets) == 220
    np.testing.assert_array_equal(offsets[:, 0], ranef["estimate"].to_numpy())
    np.testing.assert_array_equal(offsets[:, 1], np.arange(220))
    y, lo, hi = hline_segments(artist(ax, "_intervals"))
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(lo, ranef["estimate"] - z * ranef["cond_sd"])
    np.testing.assert_allclose(hi, ranef["estimate"] + z * ranef["cond_sd"])
    with pytest.raises(drm.DrmError, match="groups in this model: article"):
        plots.caterpillar_table(fit, "study")


def test_transform_back_transforms_drawn_values(three_level_fit, lim):
    table = plots.caterpillar_table(three_level_fit, "article", transform="exp")
    raw = plots.caterpillar_table(three_level_fit, "article")
    np.testing.assert_allclose(table["conf_high"], np.exp(raw["conf_high"]))
    ax = plots.funnel(plots.funnel_table(three_level_fit, transform="tanh"), transform="tanh")
    np.testing.assert_allclose(artist(ax, "_effect sizes").get_offsets()[:, 0],
                               np.tanh(lim["yi"] - three_level_fit.predict(re_form=False)).to_numpy())
    with pytest.raises(drm.DrmError, match="transform"):
        plots.caterpillar_table(three_level_fit, "article", transform="log10")


def test_new_figure_or_given_axes(intercept_fit):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    assert plots.qq(intercept_fit, ax=axes[1]) is axes[1]
    assert plots.qq(intercept_fit).figure is not fig


def test_bivariate_fit_is_refused():
    w = pd.DataFrame({"y1": [0.1, 0.3, 0.2, 0.5, 0.4, 0.0], "y2": [0.2, 0.1, 0.4, 0.3, 0.6, 0.2],
                      "v1": 0.05, "v2": 0.04})
    V = drm.meta_vcov_bivariate(v1=w.v1, v2=w.v2, cor12=0.3)
    fit = drm.fit(drm.Formula(mu1="y1 ~ 1 + meta_V(V=V)", mu2="y2 ~ 1"), data=w,
                  family=drm.biv_gaussian(), env={"V": V})
    for draw in (plots.orchard, plots.forest, plots.funnel, plots.qq):
        with pytest.raises(drm.DrmError, match="bivariate"):
            draw(fit)


@pytest.mark.slow  # compiles the profile programs
def test_profile_plot_draws_fit_profile_and_conf_int(three_level_fit, tmp_path):
    fit = three_level_fit
    param = "sd(article):(Intercept)"
    ax = plots.profile(fit, param=param, n=15)
    ax.figure.savefig(tmp_path / "profile.png")
    ci = fit.conf_int(method="profile", params=[param]).iloc[0]
    critical = stats.chi2.ppf(0.95, 1)
    # evaluated: 15 values over the 99% interval and 15 over the 95% one (ends on the cut)
    wide, narrow = fit.profile(param, n=15, level=0.99), fit.profile(param, n=15, level=0.95)
    table = plots.profile_table(fit, param, n=15)
    curve = table[table["kind"] == "curve"]
    np.testing.assert_allclose(np.sort(curve["value"]), np.sort(np.r_[wide["value"], narrow["value"]]))
    np.testing.assert_allclose(narrow["value"].to_numpy()[[0, -1]], [ci["lower"], ci["upper"]], rtol=1e-8)
    np.testing.assert_allclose(narrow["statistic"].to_numpy()[[0, -1]], critical, atol=1e-3)
    # the smooth line passes through every evaluated point and is denser than them
    line = artist(ax, "_profile")
    x, y = line.get_xdata(), line.get_ydata()
    assert len(x) > 300
    np.testing.assert_allclose(np.interp(curve["value"], x, y), curve["statistic"], atol=1e-10)
    segs = artist(ax, "_interval ends").get_segments()
    np.testing.assert_allclose([s[0, 0] for s in segs], [ci["lower"], ci["upper"]])
    np.testing.assert_allclose(artist(ax, "_cut").get_ydata(), critical)
    # interval ends printed beside their lines
    ends = {t.get_gid(): t for t in ax.texts if t.get_gid() in ("lower end", "upper end")}
    assert float(ends["lower end"].get_text()) == pytest.approx(ci["lower"], rel=1e-3)
    assert float(ends["upper end"].get_text()) == pytest.approx(ci["upper"], rel=1e-3)
    est = artist(ax, "_estimate")
    assert est.get_offsets()[0, 0] == pytest.approx(fit.params[param]) and est.get_offsets()[0, 1] == 0.0
    assert not est.get_clip_on() and ax.get_ylim()[0] < 0.0  # the dot at 0 is not cut in half
    assert ax.get_xlabel() == f"{param} (link scale)"
    assert ax.get_ylabel().startswith("Likelihood-ratio statistic")
    assert plots.profile(plots.profile_table(fit, param, n=15, transform="exp")).get_xlabel() == f"exp({param})"


@pytest.mark.slow
def test_profile_table_on_the_sd_scale(restoration_fit):
    table = plots.profile_table(restoration_fit, "sigma:(Intercept)", level=0.9, n=9, transform="exp")
    np.testing.assert_allclose(table["value"], np.exp(table["link_value"]))
    marks = table.set_index("kind").loc[["estimate", "lower", "upper"]]
    assert marks.loc["estimate", "link_value"] == pytest.approx(restoration_fit.params["sigma:(Intercept)"])
    assert marks.loc["lower", "statistic"] == pytest.approx(stats.chi2.ppf(0.9, 1))
    assert (table["kind"] == "curve").sum() == 18  # 9 over the 99% interval, 9 over the 90% one
    with pytest.raises(drm.DrmError):
        plots.profile_table(restoration_fit, "sigma:nonsense")


def test_transforms_and_polars_data(three_level_fit, lim):
    from drmpy.plots._common import resolve_transform

    x = np.array([-0.5, 0.0, 0.7])
    np.testing.assert_allclose(resolve_transform("percent")(x), 100 * (np.exp(x) - 1))
    np.testing.assert_allclose(resolve_transform(lambda v: 2 * v)(x), 2 * x)
    pl = pytest.importorskip("polars")
    from_pandas = plots.orchard_table(three_level_fit, "amniotes", data=lim)
    frame = pl.DataFrame({"amniotes": lim["amniotes"].astype(str).tolist(), "yi": lim["yi"].to_numpy()})
    from_polars = plots.orchard_table(three_level_fit, "amniotes", data=frame)
    pd.testing.assert_frame_equal(from_pandas, from_polars)
