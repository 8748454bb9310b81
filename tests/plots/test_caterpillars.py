"""Issue 23 item 8: orchaRd's caterpillars() (sorted effect sizes, pooled CI/PI per level)."""

import numpy as np
import pytest
from scipy import stats

import drmpy as drm
from drmpy import plots
from _plot_asserts import artist, hline_segments


def test_caterpillars_table_sorts_effect_sizes_within_levels(restoration_fit, restoration):
    table = plots.caterpillars_table(restoration_fit, "habitat", level=0.9)
    pooled = table[table["kind"] == "pooled"]
    assert list(pooled["level"]) == ["grassland", "forest"]  # the moderator's order, top to bottom
    orchard = plots.orchard_table(restoration_fit, "habitat", level=0.9)
    np.testing.assert_allclose(pooled[["estimate", "conf_low", "pred_high"]].to_numpy(float),
                               orchard[["estimate", "conf_low", "pred_high"]].to_numpy(float))
    z = stats.norm.ppf(0.95)
    for level in ("grassland", "forest"):
        rows = restoration[restoration["habitat"] == level]
        block = table[(table["kind"] == "effect") & (table["level"] == level)]
        # top to bottom: decreasing estimate, all above the level's pooled row
        np.testing.assert_allclose(block["estimate"], np.sort(rows["yi"].to_numpy())[::-1])
        vi = restoration.loc[block["label"].astype(int), "vi"].to_numpy()  # label = the row's label
        np.testing.assert_allclose(block["conf_high"] - block["estimate"], z * np.sqrt(vi))
        below = pooled.loc[pooled["level"] == level, "position"].iloc[0]
        # the mean sits under its block with 1 + ceil(1% of the 80 effect sizes) = 2 rows of space
        assert block["position"].min() == below + 2
    assert np.all(np.diff(table["position"]) < 0)


def test_caterpillars_draws_its_table(three_level_fit, lim):
    table = plots.caterpillars_table(three_level_fit, "environment", transform="tanh")
    ax = plots.caterpillars(table)
    effects = table[table["kind"] == "effect"]
    pooled = table[table["kind"] == "pooled"]
    drawn = artist(ax, "_effect sizes").get_offsets()
    np.testing.assert_allclose(drawn[:, 0], effects["estimate"])
    np.testing.assert_allclose(drawn[:, 0], np.tanh(np.concatenate(
        [np.sort(lim.loc[lim["environment"] == lv, "yi"].to_numpy())[::-1] for lv in ("captive", "wild")])))
    y, lo, hi = hline_segments(artist(ax, "_prediction interval"))
    np.testing.assert_allclose(y, pooled["position"])
    np.testing.assert_allclose(lo, pooled["pred_low"])
    np.testing.assert_allclose(hi, pooled["pred_high"])
    headings = [t.get_text() for t in ax.texts if t.get_gid() == "level heading"]
    assert headings == ["captive: k = 130, 77 studies", "wild: k = 227, 145 studies"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["effect size, CI", "mean", "95% CI (thick)", "95% PI (thin)"]
    assert ax.get_xlabel() == "tanh(yi)"
    with pytest.raises(drm.DrmError, match="transform"):
        plots.caterpillars(table, transform="exp")


def test_caterpillars_without_moderator_and_ranef_plot_is_not_it(three_level_fit):
    ax = plots.caterpillars(three_level_fit)
    assert [t.get_text() for t in ax.texts if t.get_gid() == "level heading"] == ["k = 357, 220 studies"]
    assert not hasattr(plots, "caterpillar")  # the BLUP plot is ranef_plot now
