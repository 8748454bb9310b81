"""The design cache of ``drm.fit``: a refit of unchanged data re-uses the design; any change
to the values the model reads (in place, in unsampled rows, in a dropped row) is seen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy import api

FORMULA = drm.Formula("yi ~ x + meta_V(V=vi)", "sigma ~ g")


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    n = 200
    return pd.DataFrame(dict(yi=rng.normal(size=n), x=rng.normal(size=n), g=rng.choice(list("ab"), n),
                             vi=rng.uniform(0.1, 0.2, n)))


def _fresh_fit(data):
    """The same fit with every cache emptied: the reference a cached refit must equal."""
    api.clear_cache()
    return drm.fit(FORMULA, data=data)


def test_unchanged_data_reuses_the_design(data):
    first = drm.fit(FORMULA, data=data)
    again = drm.fit(FORMULA, data=data.copy())
    assert again.design is first.design


@pytest.mark.parametrize("row", [1, 100, 199])  # 1 and 199 are not among the hashed sample rows
def test_in_place_changes_are_seen(data, row):
    drm.fit(FORMULA, data=data)
    data.loc[row, "yi"] = 5.0
    assert drm.fit(FORMULA, data=data).loglik == _fresh_fit(data).loglik
    drm.fit(FORMULA, data=data)
    data.loc[row, "g"] = "b" if data.loc[row, "g"] == "a" else "a"
    assert drm.fit(FORMULA, data=data).loglik == _fresh_fit(data).loglik


def test_designs_with_dropped_rows_compare_every_value(data):
    data.loc[7, "x"] = np.nan
    first = drm.fit(FORMULA, data=data)
    assert first.nobs == len(data) - 1
    assert drm.fit(FORMULA, data=data).design is first.design
    data.loc[101, "yi"] = 1.0
    changed = drm.fit(FORMULA, data=data)
    assert changed.design is not first.design
    assert changed.loglik == _fresh_fit(data).loglik
    data.loc[7, "x"] = 0.5  # the dropped row becomes usable
    assert drm.fit(FORMULA, data=data).nobs == len(data)


def test_a_new_index_is_a_new_design(data):
    first = drm.fit(FORMULA, data=data)
    relabelled = data.set_index(pd.Index(np.arange(len(data)) * 2))
    refit = drm.fit(FORMULA, data=relabelled)
    assert refit.design is not first.design
    assert list(refit.design.row_labels[:3]) == [0, 2, 4]
