"""Issue 23 item 9: one calling convention for every drawing function (forest is tested with its owner)."""

import inspect

import pytest

from drmpy import plots

DRAWING = [plots.orchard, plots.funnel, plots.bubble, plots.qq, plots.profile, plots.caterpillars,
           plots.ranef_plot]


@pytest.mark.parametrize("draw", DRAWING, ids=lambda f: f.__name__)
def test_arguments_after_the_first_are_keyword_only(draw):
    params = list(inspect.signature(draw).parameters.values())
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for p in params[1:]:
        assert p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD), p.name
    names = {p.name for p in params}
    assert {"xlab", "ylab", "ax"} <= names
    assert not names & {"colors", "color", "colours", "cmap"}  # colours are `palette` (seaborn's name)


def test_xlab_and_ylab_reach_the_axes(intercept_fit, three_level_fit):
    for ax in (plots.funnel(intercept_fit, xlab="X", ylab="Y"), plots.qq(intercept_fit, xlab="X", ylab="Y"),
               plots.orchard(intercept_fit, xlab="X", ylab="Y"), plots.caterpillars(intercept_fit, xlab="X", ylab="Y"),
               plots.ranef_plot(three_level_fit, group="article", xlab="X", ylab="Y")):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("X", "Y")
