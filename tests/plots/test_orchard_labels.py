"""Issue 23 item 4: orchard says which interval is which, keeps k inside, labels x from the fit."""

import pytest

from drmpy import plots
from drmpy.plots._common import legends_of


def _texts(legend):
    return [t.get_text() for t in legend.get_texts()]


def test_orchard_legend_says_thick_ci_thin_pi(three_level_scale_fit):
    ax = plots.orchard(three_level_scale_fit, mod="environment", level=0.9)
    entries = [t for legend in legends_of(ax) for t in _texts(legend)]
    assert "90% CI (thick)" in entries and "90% PI (thin)" in entries and "mean" in entries
    assert any(legend.get_title().get_text() == "precision (1/SE)" for legend in legends_of(ax))
    # the thick line is the CI, the thin one the PI (widths as drawn)
    ci = [c for c in ax.collections if c.get_label() == "_confidence interval"][0]
    pi = [c for c in ax.collections if c.get_label() == "_prediction interval"][0]
    assert ci.get_linewidth()[0] > pi.get_linewidth()[0]


def test_orchard_k_annotation_inside_the_axes(three_level_scale_fit):
    ax = plots.orchard(three_level_scale_fit, mod="environment")
    labels = [t for t in ax.texts if t.get_gid() == "k label"]
    assert [t.get_text() for t in labels] == ["k = 130 (77 studies)", "k = 227 (145 studies)"]
    ax.figure.canvas.draw()
    box = ax.get_window_extent()
    for t in labels:
        extent = t.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 + 0.5
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1 + 0.5


@pytest.mark.parametrize("transform, label", [(None, "yi"), ("tanh", "tanh(yi)"), ("exp", "exp(yi)"),
                                              ("percent", "100 (exp(yi) - 1), %")])
def test_orchard_default_x_label_from_the_fit(three_level_fit, transform, label):
    table = plots.orchard_table(three_level_fit, transform=transform)
    assert plots.orchard(table).get_xlabel() == label
    assert plots.orchard(table, xlab="r").get_xlabel() == "r"
