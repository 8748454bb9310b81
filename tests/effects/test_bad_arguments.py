"""Bad arguments to the effect-size and covariance helpers raise DrmError subclasses naming the argument."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

MEANS = dict(m1i="m1", sd1i="s1", n1i="n1", m2i="m2", sd2i="s2", n2i="n2")


@pytest.fixture(scope="module")
def summaries() -> pd.DataFrame:
    return pd.DataFrame({"m1": [10.0, 12, 11], "s1": [2.0, 3, 2], "n1": [20, 30, 25], "m2": [9.0, 11, 10],
                         "s2": [2.5, 2, 2], "n2": [22, 28, 20], "study": [1, 1, 2], "vi": [0.1, 0.2, 0.3]})


@pytest.mark.parametrize("data", [{"m1": [1.0]}, [1, 2], "data.csv", np.zeros((3, 6))])
def test_effect_size_data_not_a_frame(data):
    with pytest.raises(drm.DataError, match=r"`data` must be a pandas or polars DataFrame, got "):
        drm.effect_size("MD", data, **MEANS)


@pytest.mark.parametrize("var_names", [None, "yi", ("yi",), ("yi", 3)])
def test_effect_size_var_names(summaries, var_names):
    with pytest.raises(drm.DataError, match="`var_names` must be two different column names"):
        drm.effect_size("MD", summaries, var_names=var_names, **MEANS)


def test_effect_size_duplicate_column_name(summaries):
    twice = pd.concat([summaries, summaries[["m1"]]], axis=1)
    with pytest.raises(drm.DataError, match=r"`m1i`: `data` has 2 columns named `m1`"):
        drm.effect_size("MD", twice, **MEANS)


def test_sampling_covariance_empty(summaries):
    with pytest.raises(drm.DataError, match="sampling_covariance: `vi` has no rows"):
        drm.sampling_covariance(summaries.iloc[:0])
    with pytest.raises(drm.DataError, match=r"shared_control_covariance\('ROM'\): `vi` has no rows"):
        drm.shared_control_covariance(summaries.iloc[:0].assign(control=[]), "ROM", m2i="m2", sd2i="s2",
                                      n2i="n2")


def test_sampling_covariance_unhashable_cluster(summaries):
    with pytest.raises(drm.DataError, match="`cluster` has values that cannot be compared"):
        drm.sampling_covariance(summaries.assign(study=[[1], [1], [2]]))


def test_sampling_covariance_infinite_vi(summaries):
    with pytest.raises(drm.DataError, match=r"`vi` must be finite.*row 1"):
        drm.sampling_covariance(summaries.assign(vi=[0.1, np.inf, 0.2]))


def test_phylo_corr_species_not_a_collection():
    with pytest.raises(drm.DataError, match="`species` must be"):
        drm.phylo_corr("((a:1,b:1):1,c:2);", species=3)


@pytest.mark.parametrize("values", [np.array(["10", "12", "11"]), ["10", "12", "11"], pd.Series(["10", "12", "11"]),
                                    np.array([True, False, True])])
def test_effect_size_text_or_bool_array_is_not_converted(values):
    columns = dict(m1i=values, sd1i=[2.0, 3, 2], n1i=[20, 30, 25], m2i=[9.0, 11, 10], sd2i=[2.5, 2, 2],
                   n2i=[22, 28, 20])
    with pytest.raises(drm.DataError, match=r"effect_size\('MD'\): `m1i` is not numeric"):
        drm.effect_size("MD", **columns)


@pytest.mark.parametrize("vi", [["0.1", "0.2", "0.3"], np.array(["0.1", "0.2", "0.3"], dtype=object)])
def test_sampling_covariance_text_vi_is_not_converted(summaries, vi):
    with pytest.raises(drm.DataError, match="sampling_covariance: `vi` is not numeric"):
        drm.sampling_covariance(summaries.assign(vi=vi))
    with pytest.raises(drm.DataError, match="sampling_covariance: `vi` is not numeric"):
        drm.sampling_covariance(None, vi=vi, cluster=[1, 1, 2])


def test_numbers_with_missing_values_still_accepted(summaries):
    V = drm.sampling_covariance(None, vi=np.array([0.1, None, 0.3], dtype=object), cluster=[1, 2, 3])
    assert V.shape == (3, 3)
    out = drm.effect_size("MD", summaries.assign(m1=pd.array([10.0, None, 11.0], dtype="Float64")), **MEANS)
    assert np.isnan(out["yi"].iloc[1]) and np.isfinite(out["yi"].iloc[0])
