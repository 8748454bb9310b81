"""After the fit, every stage works on row positions: a data frame whose index has duplicate
labels (``pd.concat`` without ``ignore_index``) or a shuffled non-default index gives the
same results as the default RangeIndex, for every public method that takes a column of the
data (``cluster=``, ``by=``, ``data=``, ``ni=``)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

HERE = Path(__file__).parent
FORMULA = drm.Formula("yi ~ ablat + meta_V(V = vi)")


def _bcg() -> pd.DataFrame:
    d = pd.read_csv(HERE / "reference_extra" / "bias" / "data_bcg.csv")
    d["grp"] = np.where(np.arange(len(d)) % 3 == 0, "a", "b")
    d["cl"] = np.arange(len(d)) // 2
    return d


def _duplicated(d: pd.DataFrame) -> pd.DataFrame:
    out = pd.concat([d.iloc[:7], d.iloc[7:].reset_index(drop=True)])  # labels 0..6, 0..5
    assert not out.index.is_unique
    return out


def _shuffled(d: pd.DataFrame) -> pd.DataFrame:
    out = d.copy()
    out.index = np.random.default_rng(1).permutation(np.arange(100, 100 + len(d)))
    return out


@pytest.fixture(scope="module")
def fits():
    d = _bcg()
    out = {"default": (d, drm.fit(FORMULA, d, method="REML"))}
    for name, make in (("duplicated", _duplicated), ("shuffled", _shuffled)):
        dd = make(d)
        out[name] = (dd, drm.fit(FORMULA, dd, method="REML"))
    return out


CALLS = {
    "coef_test_CR2_column": lambda f, d: f.coef_test(test="satterthwaite", vcov="CR2", cluster="cl"),
    "coef_test_CR2_series": lambda f, d: f.coef_test(vcov="CR1", cluster=d["cl"]),
    "coef_test_CR2_array": lambda f, d: f.coef_test(vcov="CR0", cluster=d["cl"].to_numpy()),
    "i2_by_data": lambda f, d: f.i2(by="grp", data=d),
    "i2_by_series": lambda f, d: f.i2(by=d["grp"]),
    "leave_one_out_by": lambda f, d: f.leave_one_out(by="grp").drop(columns="omitted"),
    "leave_one_out": lambda f, d: f.leave_one_out().drop(columns="omitted"),
    "influence": lambda f, d: f.influence().reset_index(drop=True),
    "influence_cluster": lambda f, d: f.influence(cluster="cl"),
    "influence_cluster_rows": lambda f, d: f.influence(cluster="cl").attrs["rows"].reset_index(drop=True),
    "predict_newdata": lambda f, d: f.predict(newdata=d, interval="prediction"),
    "predict_newdata_vi": lambda f, d: f.predict(newdata=d, interval="prediction", vi="vi"),
    "egger_ni": lambda f, d: drm.bias.egger_test(f, "ni", ni="ni"),
    "egger_ni_array": lambda f, d: drm.bias.egger_test(f, "ni", ni=d["ni"].to_numpy()),
}


@pytest.mark.parametrize("kind", ["duplicated", "shuffled"])
@pytest.mark.parametrize("call", list(CALLS))
def test_same_results_as_default_index(fits, kind, call):
    d0, f0 = fits["default"]
    d1, f1 = fits[kind]
    expected = CALLS[call](f0, d0)
    got = CALLS[call](f1, d1)
    if isinstance(expected, pd.DataFrame):
        assert got.shape == expected.shape
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True),
                                      check_exact=False, rtol=1e-7, atol=1e-9, check_dtype=False)
    else:
        pd.testing.assert_series_equal(got, expected, check_exact=False, rtol=1e-7)


def test_row_labels_kept(fits):
    """Per-row outputs keep the user's (duplicated) labels, in the data's order."""
    d1, f1 = fits["duplicated"]
    assert list(f1.influence().index) == list(d1.index)
    assert list(f1.influence(cluster="cl").attrs["rows"].index) == list(d1.index)
    assert list(f1.leave_one_out()["omitted"]) == list(d1.index)
    assert list(f1.predict(newdata=d1, interval="confidence").index) == list(d1.index)


def test_series_that_cannot_be_aligned_is_refused(fits):
    """A Series whose duplicated index differs from the data's cannot be aligned by label."""
    d1, f1 = fits["duplicated"]
    s = d1["cl"].iloc[::-1]
    with pytest.raises(drm.DrmError, match="cluster"):
        f1.coef_test(vcov="CR2", cluster=s)
    with pytest.raises(drm.DrmError, match="by"):
        f1.i2(by=d1["grp"].iloc[::-1])


def test_other_data_with_other_labels_is_refused(fits):
    d1, f1 = fits["shuffled"]
    with pytest.raises(drm.DrmError, match="data"):
        f1.i2(by="grp", data=d1.reset_index(drop=True))


def test_plot_table_with_duplicated_index(fits):
    from drmpy.plots import forest_table

    d0, f0 = fits["default"]
    d1, f1 = fits["duplicated"]
    expected = forest_table(f0, label="cl", data=d0)
    pd.testing.assert_frame_equal(forest_table(f1, label="cl", data=d1).reset_index(drop=True),
                                  expected.reset_index(drop=True))


@pytest.mark.slow
def test_random_effects_model_with_duplicated_index():
    """A (1|cl) model: cluster-robust CR2 with the random effects nested in the clusters, I2 by
    a data column, cluster deletion and predictions with the random effects' levels."""
    d0 = _bcg()
    d1 = _duplicated(d0)
    formula = drm.Formula("yi ~ ablat + (1|cl) + meta_V(V = vi)")
    f0, f1 = drm.fit(formula, d0), drm.fit(formula, d1)
    for call in (lambda f, d: f.coef_test(test="satterthwaite", vcov="CR2", cluster="cl"),
                 lambda f, d: f.i2(by="grp", data=d),
                 lambda f, d: f.influence(cluster="cl"),
                 lambda f, d: f.predict(newdata=d, interval="prediction").reset_index(drop=True)):
        pd.testing.assert_frame_equal(call(f1, d1), call(f0, d0), check_exact=False, rtol=1e-7, atol=1e-10)


def test_other_data_with_unique_labels_is_aligned_by_label(fits):
    """data= with the fit's (unique) labels in another order is aligned by label, as before."""
    d1, f1 = fits["shuffled"]
    pd.testing.assert_frame_equal(f1.i2(by="grp", data=d1.iloc[::-1]), f1.i2(by="grp", data=d1))
    d2, f2 = fits["duplicated"]
    with pytest.raises(drm.DrmError, match="repeated row label"):
        f2.i2(by="grp", data=d2.iloc[::-1])
