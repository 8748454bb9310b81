"""Issue 23 item 3: funnel defaults (equal points, legend, light p < .01 shade) and overlays."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba

import drmpy as drm
from drmpy import plots
from _plot_asserts import artist


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_funnel_defaults_equal_points_and_legend(intercept_fit):
    ax = plots.funnel(intercept_fit, contour=True)
    sizes = artist(ax, "_effect sizes").get_sizes()
    assert np.unique(sizes).size == 1  # metafor: every point the same size
    texts = _legend_texts(ax)
    for entry in ("95% pseudo-confidence region", "pooled estimate", "p > 0.10", "p < 0.01"):
        assert entry in texts
    # the p < .01 region is the lightest, lighter than the region nearer the triangle
    shade = {c.get_label(): to_rgba(c.get_facecolor()[0])[0] for c in ax.collections
             if c.get_label() in ("0.05 < p < 0.10", "0.01 < p < 0.05", "p < 0.01")}
    assert shade["p < 0.01"] > shade["0.01 < p < 0.05"] > shade["0.05 < p < 0.10"]
    sized = plots.funnel(intercept_fit, size_by="precision")
    assert np.unique(artist(sized, "_effect sizes").get_sizes()).size > 1
    custom = plots.funnel(intercept_fit, contour=True, palette=["red", "green", "blue"])
    assert [c for c in custom.collections if c.get_label() == "p < 0.01"][0].get_facecolor()[0][2] == 1.0


def test_funnel_overlays_trim_and_fill_and_egger(intercept_fit):
    tf_result = drm.trim_and_fill(intercept_fit)
    egger = drm.egger_test(intercept_fit)
    ax = plots.funnel(intercept_fit, transform="exp", trim_and_fill=tf_result, egger=egger)
    texts = _legend_texts(ax)
    assert tf_result.k0 == 19  # restoration: drm.trim_and_fill imputes 19 on the right
    filled = [c for c in ax.collections if c.get_label().startswith("imputed")][0]
    np.testing.assert_allclose(filled.get_offsets()[:, 0], np.exp(tf_result.filled["yi"]))
    np.testing.assert_allclose(filled.get_offsets()[:, 1], np.sqrt(tf_result.filled["vi"]))
    assert "imputed (trim and fill, k0 = 19)" in texts
    assert ax.get_xlim()[1] > np.exp(tf_result.filled["yi"]).max()  # the filled points are in view
    line = [ln for ln in ax.lines if ln.get_label().startswith("Egger")][0]
    se = line.get_ydata()
    np.testing.assert_allclose(line.get_xdata(), np.exp(egger["limit_estimate"] + egger["estimate"] * se))
    assert any(t.startswith("Egger regression on SE (p = ") for t in texts)
    with pytest.raises(drm.DrmError, match="egger_test"):
        plots.funnel(intercept_fit, egger=egger.to_frame())


def test_funnel_trim_and_fill_needs_effect_sizes_on_x(restoration_fit, intercept_fit):
    with pytest.raises(drm.DrmError, match="xaxis='yi'"):
        plots.funnel(restoration_fit, trim_and_fill=drm.trim_and_fill(intercept_fit))
