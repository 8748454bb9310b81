"""Forest plot: the table against metafor 3.8-1 (forest(res, showweights = TRUE), weights()),
the drawn artists against the table.

References: tests/reference_extra/plots/make_forest_reference.R (forest_bcg.csv,
forest_reference.json).  dat.bcg is read from that CSV.
"""

import json
import pathlib
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import drmpy as drm
from drmpy import plots
from drmpy.inference.marginal import gls_weights, marginal_covariance
from _plot_asserts import artist, hline_segments

REF_DIR = pathlib.Path(__file__).resolve().parents[1] / "reference_extra" / "plots"
REF = json.loads((REF_DIR / "forest_reference.json").read_text())
BCG_REF = REF["bcg_reml"]
Z975 = stats.norm.ppf(0.975)


@pytest.fixture(scope="module")
def bcg():
    return pd.read_csv(REF_DIR / "forest_bcg.csv")


@pytest.fixture(scope="module")
def bcg_fit(bcg):
    """metafor's rma(yi, vi) on dat.bcg: random effects, REML."""
    return drm.fit("yi ~ 1 + meta_V(V=vi)", data=bcg, method="REML")


def texts(ax, gid):
    """(y, text) of the Text artists with this gid, top to bottom."""
    found = [(t.get_position()[1], t.get_text()) for t in ax.texts if t.get_gid() == gid]
    return sorted(found, key=lambda p: -p[0])


def estimate_column(ax):
    """The drawn "est [low, high]" per row (y -> string), joined from its three columns."""
    parts = [dict(texts(ax, f"forest:{c}")) for c in ("estimate", "conf_low", "conf_high")]
    return {y: f"{parts[0][y]} {parts[1][y]} {parts[2][y]}" for y in parts[0]}


# ------------------------------------------------------------------ weights
def test_gls_weights_equal_metafor_weights_rma_uni(bcg_fit):
    w = gls_weights(bcg_fit)
    np.testing.assert_allclose(w, BCG_REF["weights"], atol=2e-5)  # tau^2 to optimiser tolerance
    assert w.sum() == pytest.approx(100.0)
    tau2 = bcg_fit.i2().loc["sigma", "variance"]
    v = bcg_fit.design.known_v.diag
    np.testing.assert_allclose(w, 100 * (1 / (v + tau2)) / np.sum(1 / (v + tau2)), rtol=1e-12)


def test_gls_weights_equal_metafor_weights_rma_mv(three_level_fit):
    """Three-level model: diag(S^-1) as a share, metafor's weights.rma.mv (type = "diagonal")."""
    w = gls_weights(three_level_fit)
    ref = np.asarray(REF["lim_three_level_ml"]["weights"])
    np.testing.assert_allclose(w, ref, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(w, 100 * np.diag(np.linalg.inv(marginal_covariance(three_level_fit)))
                               / np.trace(np.linalg.inv(marginal_covariance(three_level_fit))), rtol=1e-9)
    # not the diagonal-model formula: the study effect couples rows of an article
    sigma2 = three_level_fit.i2().loc["sigma", "variance"]
    naive = 1 / (three_level_fit.design.known_v.diag + sigma2)
    assert np.max(np.abs(w - 100 * naive / naive.sum())) > 0.05


# ------------------------------------------------------------------ dat.bcg against forest(res, showweights = TRUE)
def test_bcg_table_prints_metafors_strings(bcg_fit, bcg):
    table = plots.forest_table(bcg_fit, label="{author} ({year})", data=bcg, vcov="gls")
    effects = table[table["kind"] == "effect"]
    assert list(effects["estimate_text"]) == BCG_REF["estimate_text"]
    assert list(effects["weight_text"]) == BCG_REF["weight_text"]
    # metafor's own drawn strings, padding collapsed: "  5.06%   -0.89 [-2.01,  0.23]"
    drawn = [" ".join(s.split()).replace("[ ", "[") for s in BCG_REF["forest_study_text"]]
    assert [f"{w} {e}" for w, e in zip(effects["weight_text"], effects["estimate_text"])] == drawn
    assert effects["weight"].sum() == pytest.approx(100.0)
    assert list(effects["label"])[:2] == ["Aronson (1948)", "Ferguson & Simes (1949)"]
    overall = table[table["kind"] == "overall"].iloc[0]
    assert overall["estimate_text"] == BCG_REF["pooled_text"]
    assert overall["weight_text"] == "100.00%"
    assert " ".join(BCG_REF["forest_pooled_text"].split()) == f"100.00% {BCG_REF['pooled_text']}"
    np.testing.assert_allclose(overall[["estimate", "conf_low", "conf_high", "pred_low", "pred_high"]].astype(float),
                               [BCG_REF[k] for k in ("estimate", "conf_low", "conf_high", "pred_low", "pred_high")],
                               atol=2e-5)
    note = table[table["kind"] == "note"]["label"].iloc[0]
    assert note == (f"Q = {BCG_REF['QE']:.2f}, df = {BCG_REF['df']}, p < .001; I² = {BCG_REF['I2']:.1f}%; "
                    f"τ² = {BCG_REF['tau2']:.2f}")
    # drmTMB's observed-information SE (0.1804 vs 0.1798) prints the same two decimals here
    default = plots.forest_table(bcg_fit, data=bcg)
    assert default[default["kind"] == "overall"]["estimate_text"].iloc[0] == BCG_REF["pooled_text"]


def test_bcg_figure_draws_the_strings_headers_and_legend(bcg_fit, bcg, tmp_path):
    table = plots.forest_table(bcg_fit, label="{author} ({year})", data=bcg, vcov="gls")
    ax = plots.forest(table)
    ax.figure.savefig(tmp_path / "forest.png")
    shown = table[table["kind"].isin(["effect", "overall"])]
    estimates = estimate_column(ax)
    assert [estimates[y] for y in shown["position"]] == list(shown["estimate_text"])
    weights = dict(texts(ax, "forest:weight"))
    assert [weights[y] for y in shown["position"]] == list(shown["weight_text"])
    assert [t for _, t in texts(ax, "forest:header")] == ["Study", "Weight", "Estimate [95% CI]"]
    labels = texts(ax, "forest:label:effect")
    assert [t for _, t in labels] == list(table.loc[table["kind"] == "effect", "label"])
    assert [t for _, t in texts(ax, "forest:note")] == list(table.loc[table["kind"] == "note", "label"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["effect size and 95% CI (square area ∝ weight)", "pooled mean and 95% CI (diamond)",
                      "95% prediction interval (dotted line)"]
    # right-hand columns sit right of the plotting area, labels left of it (no overlap with data)
    fig = ax.figure
    fig.canvas.draw()
    box = ax.get_window_extent()
    for t in ax.texts:
        extent = t.get_window_extent()
        if t.get_gid() in ("forest:weight", "forest:estimate", "forest:conf_high"):
            assert extent.x0 > box.x1
        if t.get_gid() == "forest:label:effect":
            assert extent.x1 < box.x0
    assert ax.get_xlabel() == "yi"  # the response's name, from the fit


def test_squares_by_weight_and_lines_on_the_exp_scale(bcg_fit, bcg):
    table = plots.forest_table(bcg_fit, data=bcg, transform="exp")
    ax = plots.forest(table)
    effects = table[table["kind"] == "effect"]
    squares = artist(ax, "_effect sizes")
    np.testing.assert_allclose(squares.get_offsets()[:, 0], np.exp(bcg["yi"]))
    areas = squares.get_sizes()
    np.testing.assert_allclose(areas / areas.max(), effects["weight"] / effects["weight"].max())
    y, lo, hi = hline_segments(artist(ax, "_sampling intervals"))
    np.testing.assert_allclose(lo, np.exp(bcg["yi"] - Z975 * np.sqrt(bcg["vi"])))
    np.testing.assert_allclose(hi, np.exp(bcg["yi"] + Z975 * np.sqrt(bcg["vi"])))
    np.testing.assert_array_equal(y, effects["position"])
    diamond = artist(ax, "overall mean").get_xy()[:4, 0]
    np.testing.assert_allclose(diamond, np.exp([BCG_REF["conf_low"], BCG_REF["estimate"], BCG_REF["conf_high"],
                                                BCG_REF["estimate"]]), rtol=2e-3)
    _, p0, p1 = hline_segments(artist(ax, "_prediction interval"))
    np.testing.assert_allclose([p0[0], p1[0]], np.exp([BCG_REF["pred_low"], BCG_REF["pred_high"]]), rtol=2e-3)
    assert artist(ax, "_prediction interval").get_linestyle()[0][1] is not None  # dotted, as metafor
    no_effect = artist(ax, "_no effect").get_segments()[0]
    assert no_effect[0, 0] == pytest.approx(1.0)
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "exp(yi)"
    texts_exp = [f"{np.exp(e):.2f} [{np.exp(e - Z975 * np.sqrt(v)):.2f}, {np.exp(e + Z975 * np.sqrt(v)):.2f}]"
                 for e, v in zip(bcg["yi"], bcg["vi"])]
    assert list(effects["estimate_text"]) == texts_exp
    assert plots.forest(table, log_x=False).get_xscale() == "linear"


def test_heterogeneity_line_with_a_moderator_common_effect_and_weights(bcg):
    """metafor's numbers for rma(yi, vi, mods = ~ ablat); the line never breaks the table."""
    ref = REF["bcg_ablat_reml"]
    mods = drm.fit("yi ~ ablat + meta_V(V=vi)", data=bcg, method="REML")
    # metafor stops its Fisher scoring at a change in tau^2 of 1e-5: weights agree to ~2e-4 and as printed
    np.testing.assert_allclose(gls_weights(mods), ref["weights"], atol=5e-4)
    table = plots.forest_table(mods, data=bcg)
    assert list(table.loc[table["kind"] == "effect", "weight_text"]) == [f"{w:.2f}%" for w in ref["weights"]]
    note = table["label"].iloc[-1]
    assert note == (f"residual heterogeneity: Q = {ref['QE']:.2f}, df = {ref['df']}, p = {ref['QEp']:.3f}; "
                    f"I² = {ref['I2']:.1f}%; τ² = {ref['tau2']:.2f}")
    common = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)", "sigma ~ 0"), data=bcg)
    w = 1 / bcg["vi"]
    np.testing.assert_allclose(gls_weights(common), 100 * w / w.sum())
    assert plots.forest_table(common, data=bcg)["label"].iloc[-1].startswith("common-effect model: Q = 152.23")
    # likelihood weights a_i: the row's weight in its own GLS estimate, a_i / (v_i + sigma^2)
    weighted = bcg.assign(n=np.arange(1.0, 14.0))
    fit = drm.fit("yi ~ 1 + meta_V(V=vi)", data=weighted, weights="n")
    sigma2 = np.exp(2 * fit.params["sigma:(Intercept)"])
    a = weighted["n"] / (weighted["vi"] + sigma2)
    np.testing.assert_allclose(gls_weights(fit), 100 * a / a.sum())
    assert fit.params["mu:(Intercept)"] == pytest.approx((a * weighted["yi"]).sum() / a.sum(), abs=1e-8)
    assert plots.forest_table(fit, data=weighted)["label"].iloc[-1].startswith("Q and I² not shown")


# ------------------------------------------------------------------ subgroups
def test_subgroups_headings_means_and_overall(restoration_fit, restoration, tmp_path):
    fit = restoration_fit
    table = plots.forest_table(fit, label="study", mod="habitat", sort="estimate", data=restoration, max_rows=None)
    counts = restoration["habitat"].value_counts()
    headings = table[table["kind"] == "heading"]
    assert list(headings["label"]) == [f"grassland (k = {counts['grassland']})", f"forest (k = {counts['forest']})"]
    assert list(table["kind"][:1]) == ["heading"] and list(table["kind"][-2:]) == ["overall", "note"]
    effects = table[table["kind"] == "effect"]
    assert effects["weight"].sum() == pytest.approx(100.0)
    np.testing.assert_allclose(effects["weight"], pd.Series(gls_weights(fit), index=restoration["study"].astype(str).to_numpy())
                               .loc[effects["label"]].to_numpy())
    pooled = table[table["kind"] == "pooled"]
    orchard = plots.orchard_table(fit, "habitat")
    for (_, row), (_, expected) in zip(pooled.iterrows(), orchard.iterrows()):
        block = effects[effects["level"] == row["level"]]
        assert row["weight"] == pytest.approx(block["weight"].sum())
        assert np.all(np.diff(block["estimate"]) >= 0)
        np.testing.assert_allclose(row[["estimate", "conf_low", "conf_high", "pred_low", "pred_high"]].astype(float),
                                   expected[["estimate", "conf_low", "conf_high", "pred_low", "pred_high"]].astype(float))
    overall = table[table["kind"] == "overall"].iloc[0]
    expected = plots.orchard_table(fit).iloc[0]
    assert overall["estimate"] == pytest.approx(expected["estimate"])
    assert "residual heterogeneity: Q = " in table["label"].iloc[-1]
    assert "(mean over rows)" in table["label"].iloc[-1]  # sigma ~ habitat
    ax = plots.forest(table)
    ax.figure.savefig(tmp_path / "forest.png")
    diamonds = [p for p in ax.patches if p.get_label() == "pooled mean"]
    assert len(diamonds) == 2 and len([p for p in ax.patches if p.get_label() == "overall mean"]) == 1
    for patch, (_, row) in zip(diamonds, pooled.iterrows()):
        xy = patch.get_xy()[:4]
        np.testing.assert_allclose(xy[:, 0], [row["conf_low"], row["estimate"], row["conf_high"], row["estimate"]])
        np.testing.assert_allclose(xy[[0, 2], 1], row["position"])
    assert [t for _, t in texts(ax, "forest:label:heading")] == list(headings["label"])
    # a blank row after each level's mean (metafor's layout)
    positions = table["position"].to_numpy()
    after_mean = np.flatnonzero(table["kind"].to_numpy() == "pooled")[:-1] + 1
    assert np.all(positions[after_mean - 1] - positions[after_mean] == 2)


def test_palette_colours_each_level(restoration_fit, restoration):
    ax = plots.forest(restoration_fit, mod="habitat", data=restoration, palette=["tab:blue", "tab:orange"],
                      max_rows=None)
    from matplotlib.colors import to_rgba

    diamonds = [p for p in ax.patches if p.get_label() == "pooled mean"]
    assert [p.get_facecolor() for p in diamonds] == [to_rgba("tab:blue"), to_rgba("tab:orange")]
    with pytest.raises(drm.DrmError, match="palette"):
        plots.forest(restoration_fit, data=restoration, palette="not-a-colour", max_rows=None)


# ------------------------------------------------------------------ long tables: pages and clusters
def test_pages_of_at_most_max_rows(three_level_fit, lim):
    table = plots.forest_table(three_level_fit, mod="environment", max_rows=60)
    n_pages = table["page"].max() + 1
    assert n_pages > 1
    for _, rows in table.groupby("page"):
        assert rows["position"].max() - rows["position"].min() + 1 <= 60
    assert table.groupby("page")["kind"].last().ne("heading").all()
    assert table["kind"].iloc[-1] == "note" and table["page"].iloc[-1] == table["page"].iloc[-2]
    with pytest.warns(drm.DrmWarning, match=f"{n_pages} pages"):
        ax = plots.forest(table)
    assert len(artist(ax, "_effect sizes").get_offsets()) == ((table["page"] == 0) & (table["kind"] == "effect")).sum()
    height = ax.figure.get_size_inches()[1]
    assert height < 11.7  # an A4 page
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax1 = plots.forest(table, page=1)
    assert ax1.get_xlim() == ax.get_xlim()  # pages share the x range and the square scale
    effects = table[table["kind"] == "effect"]
    page1 = effects[effects["page"] == 1]
    np.testing.assert_allclose(artist(ax1, "_effect sizes").get_sizes(),
                               np.clip(70 * page1["size_value"] / effects["size_value"].max(), 3, None))
    first = table[table["page"] == 1].iloc[0]
    if first["kind"] == "effect":
        assert texts(ax1, "forest:label:heading")[0][1] == f"{first['level']} (continued)"
    with pytest.raises(drm.DrmError, match="page"):
        plots.forest(table, page=n_pages)


def test_aggregate_one_row_per_cluster(three_level_fit, lim):
    fit = three_level_fit
    table = plots.forest_table(fit, aggregate="article", max_rows=None)
    effects = table[table["kind"] == "effect"]
    articles = lim["article"].to_numpy()
    assert len(effects) == len(pd.unique(articles))
    assert effects["weight"].sum() == pytest.approx(100.0)
    w = pd.Series(gls_weights(fit)).groupby(articles, sort=False).sum()
    np.testing.assert_allclose(effects["weight"], w.to_numpy())
    assert list(effects["k"]) == list(pd.Series(articles).value_counts(sort=False).loc[w.index])
    # an article's row: its GLS mean with S_j = V_j + sigma^2 I (dense, by hand)
    sigma2 = fit.i2().loc["sigma", "variance"]
    many = w.index[pd.Series(articles).value_counts(sort=False).loc[w.index].to_numpy() > 1][0]
    rows = np.flatnonzero(articles == many)
    S = np.diag(lim["vi"].to_numpy()[rows] + sigma2)
    Si = np.linalg.inv(S)
    mean = Si.sum(axis=0) @ lim["yi"].to_numpy()[rows] / Si.sum()
    row = effects[effects["label"] == f"{many} (k = {len(rows)})"].iloc[0]
    assert row["estimate"] == pytest.approx(mean)
    assert row["conf_high"] - row["estimate"] == pytest.approx(Z975 / np.sqrt(Si.sum()))
    assert row["k"] == len(rows)
    with pytest.raises(drm.DrmError, match="several levels of `environment`"):
        plots.forest_table(fit, mod="environment", aggregate="article")


# ------------------------------------------------------------------ API
def test_keyword_only_errors_and_export(bcg_fit, bcg, tmp_path):
    with pytest.raises(TypeError):
        plots.forest(bcg_fit, "author")
    with pytest.raises(TypeError):
        plots.forest_table(bcg_fit, "author")
    table = plots.forest_table(bcg_fit, data=bcg)
    with pytest.raises(drm.DrmError, match="weight_text"):
        plots.forest(table.drop(columns="weight_text"))
    stripped = table.copy()
    stripped.attrs = {}
    with pytest.raises(drm.DrmError, match="settings"):
        plots.forest(stripped)
    with pytest.raises(drm.DrmError, match="level=0.95"):  # settings come from the table
        plots.forest(table, level=0.9)
    with pytest.raises(drm.DrmError, match="orchard_table"):
        plots.forest(plots.orchard_table(bcg_fit))
    assert plots.forest(table, level=0.95, transform=None).get_xlabel() == "yi"
    edited = table.copy()  # an ordinary pandas edit keeps the settings
    edited.loc[edited["kind"] == "effect", "label"] = "x"
    assert plots.forest(edited, xlab="log risk ratio", ylab="Trial").get_xlabel() == "log risk ratio"
    assert texts(plt.gca(), "forest:header")[0][1] == "Trial"
    with pytest.raises(drm.DrmError, match="label format"):
        plots.forest_table(bcg_fit, label="{year:d}{author:d}", data=bcg)
    ax = plots.forest(bcg_fit, label="{author} ({year})", data=bcg)
    with plt.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        ax.figure.savefig(tmp_path / "forest.svg")
        ax.figure.savefig(tmp_path / "forest.pdf")
    svg = (tmp_path / "forest.svg").read_text()
    assert "Aronson (1948)" in svg and "100.00%" in svg
    assert (tmp_path / "forest.pdf").read_bytes()[:4] == b"%PDF"
