"""Issue 22, items 9 and 10: raw exceptions become DrmErrors naming the argument; drm.lrt's
result has numeric fields and prints its p-value like summary() does."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import drmpy as drm


@pytest.fixture(scope="module")
def restoration_fits():
    d = drm.datasets.restoration()
    fit0 = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), d)
    fit1 = drm.fit(drm.Formula("yi ~ habitat + meta_V(V=vi)"), d)
    return fit0, fit1


@pytest.mark.parametrize("seed", ["abc", 1.5, -1, [1, "a"], {"a": 1}, np.float64(2.0)])
def test_simulate_bad_seed(restoration_fits, seed):
    with pytest.raises(drm.DrmError, match=r"simulate: `seed` must be"):
        restoration_fits[1].simulate(2, seed=seed)


def test_simulate_good_seeds_reproduce(restoration_fits):
    fit = restoration_fits[1]
    a = fit.simulate(2, seed=7)
    pd.testing.assert_frame_equal(a, fit.simulate(2, seed=np.random.default_rng(7)))
    pd.testing.assert_frame_equal(fit.simulate(2, seed=[1, 2]), fit.simulate(2, seed=[1, 2]))


@pytest.mark.parametrize("names,match", [(3, "`names` must be a list"), ("ab", "`names` must be a list"),
                                         (["a", "a"], "`names` must be different")])
def test_compare_bad_names(restoration_fits, names, match):
    with pytest.raises(drm.DrmError, match=match):
        drm.compare(*restoration_fits, names=names)


@pytest.mark.parametrize("other", [3, None, "fit"])
def test_compare_non_fit(restoration_fits, other):
    with pytest.raises(drm.DrmError, match=r"compare: argument 2 is not a fit"):
        drm.compare(restoration_fits[0], other)


def test_formula_error_has_no_ansi_codes():
    d = drm.datasets.restoration()
    for rhs in ("yi ~ habitat +* 1 + meta_V(V=vi)", "yi ~ habitat $ 2 + meta_V(V=vi)"):
        with pytest.raises(drm.FormulaError) as info:
            drm.fit(drm.Formula(rhs), d)
        text = str(info.value)
        assert "Cannot parse the mu formula" in text
        assert "\x1b" not in text and not re.search(r"\[[0-9;]*m", text)


@pytest.fixture(scope="module")
def strong_moderator_fits():
    """A moderator whose LRT p-value is about 1e-27 (far below the 6 digits a float shows as 0.0)."""
    rng = np.random.default_rng(3)
    x = np.repeat([0.0, 1.0], 15)
    d = pd.DataFrame({"x": x, "vi": 0.04, "yi": 1.2 * x + rng.normal(0.0, 0.2, x.size)})
    fit0 = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), d)
    fit1 = drm.fit(drm.Formula("yi ~ x + meta_V(V=vi)"), d)
    return fit0, fit1


def test_lrt_fields_are_numbers(strong_moderator_fits):
    out = drm.lrt(*strong_moderator_fits)
    assert list(out.index) == ["statistic", "df", "p_value", "boundary"]
    assert isinstance(out["statistic"], float) and isinstance(out["p_value"], float)
    assert isinstance(out["df"], int) and out["boundary"] is False
    assert 0.0 < out["p_value"] < 1e-15
    frame = out.to_frame()
    assert frame.shape == (1, 4)
    assert frame.dtypes.to_dict() == {"statistic": np.float64, "df": np.int64, "p_value": np.float64,
                                      "boundary": np.bool_}
    assert frame["p_value"].iloc[0] == out["p_value"]


def test_lrt_prints_p_like_summary(strong_moderator_fits):
    out = drm.lrt(*strong_moderator_fits)
    text = str(out)
    assert f"{out['p_value']:.6g}" in text          # e.g. 3.7e-27, never 0.0
    assert f"{out['statistic']:.6g}" in text
    assert "0.0 " not in text.replace("\n", " ") + " "
    assert repr(out) == text
    assert "<table" in out._repr_html_()


def test_fit_batch_unhashable_by_values():
    d = drm.datasets.restoration()
    with pytest.raises(drm.DataError, match=r"by: column `rep` has values that cannot be group labels"):
        drm.fit_batch(drm.Formula("yi ~ 1 + meta_V(V=vi)"), d.assign(rep=[[1]] * len(d)), by="rep", progress=False)


@pytest.mark.parametrize("cls", [drm.DrmError, drm.DataError, drm.CovarianceError, drm.RandomEffectsError])
def test_every_drm_error_is_plain_text(cls):
    err = cls("term \x1b[1;31mx + *\x1b[0m here")
    assert str(err) == "term x + * here" and err.args == ("term x + * here",)
