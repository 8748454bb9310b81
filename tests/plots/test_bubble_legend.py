"""Issue 23 item 5: bubble k, size legend, a second moderator, and 'averaged over' in the legend."""

import numpy as np
import pytest

import drmpy as drm
from drmpy import plots
from drmpy.plots._common import legends_of


def _legend_titled(ax, title):
    found = [lg for lg in legends_of(ax) if lg.get_title().get_text() == title]
    assert len(found) == 1, [lg.get_title().get_text() for lg in legends_of(ax)]
    return found[0]


def test_bubble_k_size_legend_and_averaged_over(sigma_duration_fit):
    ax = plots.bubble(sigma_duration_fit, mod="duration")
    main = _legend_titled(ax, "k = 80 effect sizes")
    texts = [t.get_text() for t in main.get_texts()]
    assert texts == ["95% confidence band", "95% prediction band", "mean (averaged over habitat)"]
    sizes = _legend_titled(ax, "precision (1/SE)")
    assert len(sizes.get_texts()) >= 2
    ax.figure.canvas.draw()  # every legend inside the figure (the layout made room)
    fig_box = ax.figure.bbox
    for legend in legends_of(ax):
        box = legend.get_window_extent()
        assert box.x0 >= fig_box.x0 - 1 and box.x1 <= fig_box.x1 + 1 and box.y1 <= fig_box.y1 + 1


def test_bubble_without_other_moderators_says_nothing_averaged(restoration):
    fit = drm.fit("yi ~ duration + meta_V(V=vi)", data=restoration)
    ax = plots.bubble(fit, mod="duration")
    assert [t.get_text() for t in _legend_titled(ax, "k = 80 effect sizes").get_texts()][-1] == "mean"


def test_bubble_split_by_a_second_moderator(sigma_duration_fit, restoration):
    table = plots.bubble_table(sigma_duration_fit, "duration", by="habitat", n=11)
    assert list(dict.fromkeys(table["by"])) == ["grassland", "forest"]
    forest = table[table["by"] == "forest"]
    direct = sigma_duration_fit.predict(
        restoration.iloc[:1].assign(habitat="forest").loc[[restoration.index[0]] * 11]
        .assign(duration=forest["mod"].to_numpy()), interval="confidence")
    np.testing.assert_allclose(forest["estimate"], direct["estimate"], rtol=1e-10)
    np.testing.assert_allclose(forest["conf_high"], direct["upper"], rtol=1e-10)
    ax = plots.bubble(sigma_duration_fit, mod="duration", by="habitat", palette={"grassland": "red", "forest": "blue"})
    levels = _legend_titled(ax, "habitat")
    assert [t.get_text() for t in levels.get_texts()] == ["grassland", "forest"]
    means = [ln for ln in ax.lines if ln.get_label().startswith("_mean ")]
    assert [ln.get_color() for ln in means] == ["red", "blue"]
    points = [c for c in ax.collections if c.get_label() == "_effect sizes"][0]
    blue = np.all(points.get_facecolors()[:, :3] == [0, 0, 1], axis=1)
    np.testing.assert_array_equal(blue, (restoration["habitat"] == "forest").to_numpy())
    assert "mean" in [t.get_text() for t in _legend_titled(ax, "k = 80 effect sizes").get_texts()]


def test_bubble_colour_by_a_column_the_model_does_not_use(restoration):
    fit = drm.fit("yi ~ duration + meta_V(V=vi)", data=restoration)
    table = plots.bubble_table(fit, "duration", by="habitat", data=restoration)
    assert "by" not in table.columns  # one line: the model does not use habitat
    ax = plots.bubble(fit, mod="duration", by="habitat", data=restoration)
    # levels in the column's order (a string column read from data=: sorted)
    assert [t.get_text() for t in _legend_titled(ax, "habitat").get_texts()] == ["forest", "grassland"]
    with pytest.raises(drm.DrmError, match="categorical"):
        plots.bubble_table(fit, "duration", by="duration")


def test_split_table_with_points_lacking_the_split_column_names_it(sigma_duration_fit):
    table = plots.bubble_table(sigma_duration_fit, "duration", by="habitat", n=11)
    points = plots.effect_sizes_table(sigma_duration_fit)
    points["mod"] = sigma_duration_fit.design.fixed["mu"].matrix[:, 2] * 0 + 1.0
    with pytest.raises(drm.DrmError, match="split by `habitat`; the points need a `by` column"):
        plots.bubble(table, points=points)
