"""Issue 23 item 2: a drawing function given a table draws with the table's own settings."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import drmpy as drm
from drmpy import plots
from _plot_asserts import artist


def _region_lines(ax):
    return [ln for ln in ax.lines if ln.get_label().endswith("pseudo-confidence region")]


def test_funnel_of_an_exp_table_draws_the_region_on_the_exp_scale(intercept_fit, restoration):
    """The reported bug: points on exp scale, triangle and centre line on the log scale."""
    table = plots.funnel_table(intercept_fit, transform="exp", level=0.9)
    ax = plots.funnel(table)
    center = intercept_fit.params["mu:(Intercept)"]
    np.testing.assert_allclose(artist(ax, "_effect sizes").get_offsets()[:, 0], np.exp(restoration["yi"]))
    np.testing.assert_allclose(artist(ax, "pooled estimate").get_xdata(), np.exp(center))
    z = stats.norm.ppf(0.95)  # the table's level (90%), not the drawing default
    lines = _region_lines(ax)
    assert [ln.get_label() for ln in lines] == ["_90% pseudo-confidence region", "90% pseudo-confidence region"]
    for ln, sign in zip(lines, (-1, 1)):
        np.testing.assert_allclose(ln.get_xdata(), np.exp(center + sign * z * ln.get_ydata()))
    assert ax.get_xlabel() == "exp(yi)"


def test_table_settings_survive_ordinary_pandas_edits(intercept_fit):
    table = plots.funnel_table(intercept_fit, transform="exp")
    edited = table.sort_values("x").loc[lambda t: t["sei"] < 1.0].round(6).reset_index(drop=True)
    ax = plots.funnel(edited)
    for ln in _region_lines(ax):
        assert np.all(ln.get_xdata() > 0)  # exp scale


def test_a_table_that_lost_its_settings_is_refused(intercept_fit, three_level_fit):
    table = plots.funnel_table(intercept_fit, transform="exp")
    with pytest.raises(drm.DrmError, match="carries no drmpy settings"):
        plots.funnel(pd.DataFrame(table.to_dict()))
    with pytest.raises(drm.DrmError, match="no column `sei`"):
        plots.funnel(table.drop(columns="sei"))
    with pytest.raises(drm.DrmError, match="given a qq_table"):
        plots.funnel(plots.qq_table(intercept_fit))
    with pytest.raises(drm.DrmError, match="transform='exp'"):
        plots.funnel(table, transform="tanh")
    with pytest.raises(drm.DrmError, match="level=0.95"):
        plots.qq(plots.qq_table(intercept_fit), level=0.9)
    orchard = plots.orchard_table(three_level_fit, "environment", transform="tanh")
    with pytest.raises(drm.DrmError, match="transform"):
        plots.orchard(orchard, points=plots.effect_sizes_table(three_level_fit, "environment"))
    with pytest.raises(drm.DrmError, match="level"):
        plots.orchard(orchard, level=0.9)


def test_every_table_draws_with_its_level_and_transform(three_level_fit, lim):
    orchard = plots.orchard_table(three_level_fit, "environment", level=0.8, transform="tanh")
    ax = plots.orchard(orchard)
    assert ax.get_xlabel() == "tanh(yi)"
    assert artist(ax, "_confidence interval").get_segments()[0][1, 0] == pytest.approx(orchard["conf_high"].iloc[0])
    cat = plots.caterpillar_table(three_level_fit, "article", level=0.8, transform="exp")
    ax = plots.caterpillar(cat)
    assert ax.lines[0].get_xdata()[0] == pytest.approx(1.0)  # no effect = exp(0)
    qq = plots.qq_table(three_level_fit, level=0.8)
    assert artist(plots.qq(qq), "80% pointwise band") is not None
