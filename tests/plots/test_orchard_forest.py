"""Orchard and bubble plots: tables against dense hand computations and fit.predict, artists
against tables (the forest plot: test_forest.py)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import drmpy as drm
from drmpy import plots
from _plot_asserts import artist, hline_segments

Z975 = stats.norm.ppf(0.975)


def _expected(fit, c, tau2, level=0.95):
    """Mean c'beta, its CI and PI from fit.params / fit.vcov() (no predict, no plots code)."""
    z = stats.norm.ppf(0.5 + level / 2)
    names = [n for n in fit.params.index if n.startswith("mu:")]
    beta = fit.params[names].to_numpy()
    V = fit.vcov().loc[names, names].to_numpy()
    est = c @ beta
    se = np.sqrt(c @ V @ c)
    half_pi = z * np.sqrt(se**2 + tau2)
    return np.array([est, est - z * se, est + z * se, est - half_pi, est + half_pi])


TABLE = ["estimate", "conf_low", "conf_high", "pred_low", "pred_high"]


def test_orchard_table_location_scale_levels(restoration_fit, restoration):
    fit = restoration_fit
    table = plots.orchard_table(fit, "habitat")
    assert list(table["level"]) == ["grassland", "forest"]
    dur = restoration["duration"].mean()
    g = fit.coef("sigma")
    for i, forest in enumerate((0.0, 1.0)):
        sigma = np.exp(g["(Intercept)"] + forest * g["habitat[T.forest]"])
        expected = _expected(fit, np.array([1.0, forest, dur]), sigma**2)
        np.testing.assert_allclose(table.loc[i, TABLE].to_numpy(float), expected, rtol=1e-10)
    # the same numbers as predict() at the level with duration at its mean
    new = pd.DataFrame({"habitat": pd.Categorical(["grassland", "forest"], categories=["grassland", "forest"]),
                        "duration": dur})
    conf = fit.predict(new, interval="confidence")
    pred = fit.predict(new, interval="prediction")
    np.testing.assert_allclose(table["conf_low"], conf["lower"], rtol=1e-12)
    np.testing.assert_allclose(table["pred_high"], pred["upper"], rtol=1e-12)
    counts = restoration["habitat"].value_counts()
    assert list(table["k"]) == [counts["grassland"], counts["forest"]]
    assert table["n_studies"].isna().all()  # no random effects: studies unknown
    table_s = plots.orchard_table(fit, "habitat", group="study", data=restoration)
    assert list(table_s["n_studies"]) == list(table["k"])  # one effect size per study


def test_orchard_table_overall_averages_variances_over_the_factor(restoration_fit, restoration):
    fit = restoration_fit
    table = plots.orchard_table(fit)
    share_forest = (restoration["habitat"] == "forest").mean()
    c = np.array([1.0, share_forest, restoration["duration"].mean()])
    tau2 = np.mean(fit.sigma().to_numpy() ** 2)  # variances, not SDs, averaged
    np.testing.assert_allclose(table.loc[0, TABLE].to_numpy(float), _expected(fit, c, tau2), rtol=1e-10)
    assert table.loc[0, "level"] == "overall" and table.loc[0, "k"] == len(restoration)


@pytest.mark.slow  # compiles the three-level location-scale fit
def test_orchard_table_three_level_location_scale(three_level_scale_fit, lim):
    fit = three_level_scale_fit
    table = plots.orchard_table(fit, "environment", level=0.9)
    g = fit.coef("sigma")
    sd = np.exp(fit.params["sd(article):(Intercept)"])
    for i, wild in enumerate((0.0, 1.0)):
        sigma = np.exp(g["(Intercept)"] + wild * g["environment[T.wild]"])
        expected = _expected(fit, np.array([1.0, wild]), sigma**2 + sd**2, level=0.9)
        np.testing.assert_allclose(table.loc[i, TABLE].to_numpy(float), expected, rtol=1e-10)
    studies = lim.groupby("environment", observed=True)["article"].nunique()
    assert list(table["n_studies"]) == [studies["captive"], studies["wild"]]


def test_orchard_table_by_a_column_outside_the_model(three_level_fit, lim):
    """mod from data=: environment (in mu) is marginalised by its share in every level."""
    fit = three_level_fit
    table = plots.orchard_table(fit, "amniotes", data=lim)
    c = np.array([1.0, (lim["environment"] == "wild").mean()])
    tau2 = np.exp(2 * fit.params["sigma:(Intercept)"]) + np.exp(2 * fit.params["sd(article):(Intercept)"])
    for i in range(2):
        np.testing.assert_allclose(table.loc[i, TABLE].to_numpy(float), _expected(fit, c, tau2), rtol=1e-10)
    assert list(table["k"]) == list(lim["amniotes"].value_counts().sort_index())
    with pytest.raises(drm.DrmError, match="amniotes"):
        plots.orchard_table(fit, "amniotes")  # not a model column, and no data=


@pytest.mark.slow  # compiles the three-level location-scale fit
def test_orchard_draws_the_table(three_level_scale_fit, lim, tmp_path):
    fit = three_level_scale_fit
    ax = plots.orchard(fit, mod="environment", transform="tanh", xlab="Correlation r")
    ax.figure.savefig(tmp_path / "orchard.png")
    table = plots.orchard_table(fit, "environment", transform="tanh")
    positions = np.array([1.0, 0.0])  # captive on top
    points = artist(ax, "_effect sizes").get_offsets()
    assert len(points) == len(lim)
    np.testing.assert_allclose(points[:, 0], np.tanh(lim["yi"].to_numpy()), rtol=1e-14)
    level_y = np.where(lim["environment"] == "captive", 1.0, 0.0)
    assert np.all(np.abs(points[:, 1] - level_y) <= 0.3)
    sizes = artist(ax, "_effect sizes").get_sizes()
    assert np.all(np.diff(sizes[np.argsort(1 / np.sqrt(lim["vi"].to_numpy()))]) >= -1e-12)  # area grows with precision
    for label, lo, hi in (("_prediction interval", "pred_low", "pred_high"),
                          ("_confidence interval", "conf_low", "conf_high")):
        y, x0, x1 = hline_segments(artist(ax, label))
        np.testing.assert_array_equal(y, positions)
        np.testing.assert_allclose(x0, table[lo])
        np.testing.assert_allclose(x1, table[hi])
    est = artist(ax, "_estimate").get_offsets()
    np.testing.assert_allclose(est[:, 0], table["estimate"])
    texts = [t.get_text() for t in ax.texts]
    assert texts == [f"k = {k} ({g} studies)" for k, g in zip(table["k"], table["n_studies"])]
    for t in ax.texts:  # x in axes fraction (inside the right edge), whatever the data range
        assert t.get_position()[0] == pytest.approx(0.99)
        x_display = t.get_transform().transform(t.get_position())[0]
        assert x_display == pytest.approx(ax.transAxes.transform((0.99, 0.0))[0])
    assert ax.get_xlabel() == "Correlation r"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["captive", "wild"]
    # the prediction interval ends equal predict() on the z (untransformed) scale
    raw = plots.orchard_table(fit, "environment")
    new = pd.DataFrame({"environment": pd.Categorical(["captive", "wild"], categories=["captive", "wild"])})
    pred = fit.predict(new, interval="prediction")
    _, _, pi_high = hline_segments(artist(ax, "_prediction interval"))
    np.testing.assert_allclose(np.arctanh(pi_high), pred["upper"], rtol=1e-10)
    np.testing.assert_allclose(raw["pred_low"], pred["lower"], rtol=1e-12)


def test_orchard_size_by_column_and_given_table(three_level_fit, lim):
    fit = three_level_fit
    ax = plots.orchard(fit, mod="environment", size_by="ni", data=lim)
    sizes = artist(ax, "_effect sizes").get_sizes()
    ni = lim["ni"].to_numpy(float)
    np.testing.assert_allclose(sizes, 6 + 104 * (ni - ni.min()) / (ni.max() - ni.min()))
    table = plots.orchard_table(fit, "environment")
    ax2 = plots.orchard(table)
    y, x0, x1 = hline_segments(artist(ax2, "_confidence interval"))
    np.testing.assert_allclose(x0, table["conf_low"])
    assert not [c for c in ax2.collections if c.get_label() == "_effect sizes"]


def test_bubble_band_follows_sigma_of_the_moderator(sigma_duration_fit, restoration, tmp_path):
    fit = sigma_duration_fit
    ax = plots.bubble(fit, mod="duration")
    ax.figure.savefig(tmp_path / "bubble.png")
    table = plots.bubble_table(fit, "duration")
    x = table["mod"].to_numpy()
    np.testing.assert_allclose(x[[0, -1]], [restoration["duration"].min(), restoration["duration"].max()])
    share_forest = (restoration["habitat"] == "forest").mean()
    g = fit.coef("sigma")
    for j in (0, 37, 100):
        sigma = np.exp(g["(Intercept)"] + g["duration"] * x[j])
        expected = _expected(fit, np.array([1.0, share_forest, x[j]]), sigma**2)
        np.testing.assert_allclose(table.loc[j, TABLE].to_numpy(float), expected, rtol=1e-10)
    width = table["pred_high"] - table["pred_low"]
    assert width.max() / width.min() > 1.2  # the band widens with sigma(x)
    mean_line = artist(ax, "mean (averaged over habitat)")
    np.testing.assert_allclose(mean_line.get_ydata(), table["estimate"])
    np.testing.assert_allclose(artist(ax, "95% prediction band").get_ydata(), table["pred_low"])
    np.testing.assert_allclose(artist(ax, "_prediction band upper").get_ydata(), table["pred_high"])
    band = artist(ax, "95% confidence band").get_paths()[0].vertices
    assert np.isclose(band[:, 1].max(), table["conf_high"].max())
    points = artist(ax, "_effect sizes").get_offsets()
    np.testing.assert_array_equal(points, restoration[["duration", "yi"]].to_numpy())
    with pytest.raises(drm.DrmError, match="numeric"):
        plots.bubble_table(fit, "habitat")


def test_orchard_on_a_given_axes_with_styling(restoration_fit):
    """A table and points drawn on a given Axes: the same Axes comes back, nothing else drawn."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    out = plots.orchard(restoration_fit, mod="habitat", ax=ax, alpha=0.9)
    assert out is ax and len(fig.axes) == 1
    assert artist(ax, "_effect sizes").get_alpha() == 0.9


def _metafor_reference():
    import json
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "reference_extra" / "plots" / "orchard_reference.json"
    return json.loads(path.read_text())


def test_orchard_tables_equal_metafor_predict(restoration_fit, three_level_fit):
    """metafor's predict(newmods=, newscale=) of the same ML fits (vcov="gls" is metafor's vb);
    the two optimisers agree on the variances to about 1e-7, hence rtol 1e-5."""
    ref = _metafor_reference()
    r = ref["restoration_by_habitat"]
    assert restoration_fit.loglik == pytest.approx(r["loglik"], abs=1e-7)
    table = plots.orchard_table(restoration_fit, "habitat", vcov="gls")
    for column in TABLE:
        np.testing.assert_allclose(table[column], r[column], rtol=1e-5, atol=1e-6)
    lim = ref["lim_by_environment_then_overall"]
    assert three_level_fit.loglik == pytest.approx(lim["loglik"], abs=1e-7)
    by_level = plots.orchard_table(three_level_fit, "environment", vcov="gls")
    overall = plots.orchard_table(three_level_fit, vcov="gls")  # environment weighted by its share
    for column in TABLE:
        got = np.r_[by_level[column].to_numpy(float), overall[column].to_numpy(float)]
        np.testing.assert_allclose(got, lim[column], rtol=1e-5, atol=1e-6)


def test_orchard_averages_variances_over_a_numeric_scale_predictor(sigma_duration_fit, restoration):
    """sigma ~ duration: each level's PI uses the mean of sigma_i^2 over the rows (not sigma at
    the mean duration); the mean is c'beta with duration at its mean."""
    fit = sigma_duration_fit
    table = plots.orchard_table(fit, "habitat")
    tau2 = np.mean(fit.sigma().to_numpy() ** 2)
    assert tau2 > np.exp(2 * (fit.coef("sigma") @ [1.0, restoration["duration"].mean()])) * 1.01
    for i, forest in enumerate((0.0, 1.0)):
        expected = _expected(fit, np.array([1.0, forest, restoration["duration"].mean()]), tau2)
        np.testing.assert_allclose(table.loc[i, TABLE].to_numpy(float), expected, rtol=1e-10)


def test_common_effect_orchard_has_no_heterogeneity_in_its_prediction_interval(restoration):
    fit = drm.fit(drm.Formula("yi ~ habitat + meta_V(V=vi)", "sigma ~ 0"), data=restoration)
    table = plots.orchard_table(fit, "habitat")
    np.testing.assert_allclose(table["pred_low"], table["conf_low"], rtol=1e-12)
    np.testing.assert_allclose(table["pred_high"], table["conf_high"], rtol=1e-12)
    ax = plots.orchard(fit, mod="habitat")
    assert [t.get_text() for t in ax.texts] == ["k = 40", "k = 40"]
