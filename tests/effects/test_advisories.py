"""Issue 22, item 11: a non-PSD sampling covariance, missing variances passed into V, and
ROM/CVR effect sizes that are undefined (negative means) each warn, naming the rows."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import drmpy as drm


def _no_warning(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", drm.DrmWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def three_outcomes() -> pd.DataFrame:
    return pd.DataFrame({"study": ["a", "a", "b", "b", "b", "c"], "vi": [0.1, 0.2, 0.1, 0.2, 0.3, 0.1]})


def test_negative_rho_not_psd_warns_with_cluster_and_rows(three_outcomes):
    with pytest.warns(drm.DrmWarning, match=r"not positive semidefinite in 1 of 3 clusters: "
                                            r"cluster 'b' \(rows 2, 3, 4; smallest eigenvalue -0\.\d+"):
        V = drm.sampling_covariance(three_outcomes, rho=-0.9)
    assert np.linalg.eigvalsh(V.toarray()[2:5, 2:5])[0] < 0  # the warning is about a real defect
    # -0.4 >= -1/(3 - 1): every block is PSD, no warning
    _no_warning(drm.sampling_covariance, three_outcomes, rho=-0.4)


def test_not_psd_many_clusters_is_vectorised_and_counts():
    d = pd.DataFrame({"study": np.repeat(np.arange(2000), 4), "vi": 0.05})
    with pytest.warns(drm.DrmWarning, match=r"in 2000 of 2000 clusters: cluster 0 \(rows 0, 1, 2, 3;"):
        drm.sampling_covariance(d, rho=-0.5)
    _no_warning(drm.sampling_covariance, d, rho=-0.3)


def test_missing_vi_in_v_warns_with_rows(three_outcomes):
    d = three_outcomes.assign(vi=[0.1, np.nan, 0.1, 0.2, np.nan, 0.1])
    with pytest.warns(drm.DrmWarning, match=r"`vi` is missing at rows 1, 4"):
        V = drm.sampling_covariance(d, rho=0.5)
    assert np.isnan(V.toarray()[1, 0])


def test_shared_control_missing_vi_warns():
    d = pd.DataFrame({"study": [1, 1], "control": [1, 1], "vi": [0.1, np.nan], "m2i": [5.0, 5.0],
                      "sd2i": [1.0, 1.0], "n2i": [10, 10]})
    with pytest.warns(drm.DrmWarning, match=r"`vi` is missing at row 1"):
        drm.shared_control_covariance(d, "ROM")


def test_rom_negative_means_warn_with_rows():
    d = pd.DataFrame({"m1": [-1.0, 2.0, 3.0, 4.0], "m2": [2.0, 2.0, -3.0, 0.0], "s": 1.0, "n": 10})
    cols = dict(m1i="m1", sd1i="s", n1i="n", m2i="m2", sd2i="s", n2i="n")
    with pytest.warns(drm.DrmWarning, match=r"effect_size\('ROM'\): yi and vi are NaN at rows 0, 2, 3"
                                            r".*m1i/m2i"):
        out = drm.effect_size("ROM", d, **cols)
    assert np.isnan(out["yi"].to_numpy()[[0, 2, 3]]).all() and np.isfinite(out["yi"].iloc[1])
    with pytest.warns(drm.DrmWarning, match=r"effect_size\('CVR'\): yi and vi are NaN at rows 0, 2, 3"):
        drm.effect_size("CVR", d, **cols)
    # a missing input is a missing result, not a warning
    _no_warning(drm.effect_size, "ROM", d.assign(m1=[np.nan, 2.0, 3.0, 4.0], m2=2.0), **cols)
