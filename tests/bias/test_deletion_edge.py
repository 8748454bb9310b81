"""Deletions that leave the model unidentified (issue 22, items 2 and 7): a deleted row or
cluster that was the only one of a moderator level, and a refit to fewer rows than location
coefficients, give a NaN row and a ``status`` column that says why, in ``leave_one_out`` and
in both ``influence`` paths, instead of a numpy LinAlgError or a 'converged' refit."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

HERE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bcg():
    d = pd.read_csv(HERE / "reference_extra" / "bias" / "data_bcg.csv")
    d["grp"] = ["a"] * 6 + ["b"] * 6 + ["c"]  # level c has one row (row 12)
    d["cl"] = np.arange(len(d)) // 2  # cluster 6 = row 12 alone
    return d


@pytest.fixture(scope="module")
def grp_fit(bcg):
    return drm.fit(drm.Formula("yi ~ grp + meta_V(V = vi)"), bcg)


def _unidentified(status) -> np.ndarray:
    return np.asarray([s != "ok" for s in status])


def test_influence_rows_one_row_level(grp_fit):
    inf = grp_fit.influence()
    assert "status" in inf.columns
    bad = _unidentified(inf["status"])
    assert list(np.flatnonzero(bad)) == [12]
    assert "mu:grp[T.c]" in inf["status"].iloc[12]
    deletion_stats = ["rstudent", "dffits", "cooks_distance", "cov_ratio", "sigma2_deleted",
                      *[c for c in inf.columns if c.startswith("dfbetas:")]]
    assert inf.loc[12, deletion_stats].isna().all()
    assert not inf.loc[12, "is_influential"]
    assert np.isfinite(inf.loc[12, ["hat", "weight"]].to_numpy(dtype=float)).all()  # full-fit values
    assert np.isfinite(inf.loc[:11, deletion_stats].to_numpy(dtype=float)).all()


def test_influence_cluster_one_cluster_level(grp_fit):
    inf = grp_fit.influence(cluster="cl")
    bad = _unidentified(inf["status"])
    assert list(inf.index[bad]) == [6]
    assert inf.loc[6, ["cooks_distance", "cov_ratio", "x2"]].isna().all()
    assert np.isfinite(inf.loc[:5, ["cooks_distance", "cov_ratio", "x2"]].to_numpy(dtype=float)).all()
    rows = inf.attrs["rows"]
    assert rows.iloc[12][["resid", "se", "rstudent"]].isna().all()
    assert np.isfinite(rows.iloc[:12][["resid", "se", "rstudent"]].to_numpy(dtype=float)).all()


def test_leave_one_out_status(grp_fit):
    loo = grp_fit.leave_one_out()
    assert "status" in loo.columns
    bad = _unidentified(loo["status"])
    assert list(np.flatnonzero(bad)) == [12]
    assert not loo.loc[12, "converged"]
    assert loo.loc[12, list(grp_fit.params.index) + ["loglik", "I2", "H2"]].isna().all()
    assert (loo.loc[:11, "status"] == "ok").all() and loo.loc[:11, "converged"].all()


@pytest.mark.slow
def test_sigma_level_removed(bcg):
    """A sigma moderator level whose only row is deleted: the sigma coefficient is unidentified."""
    f = drm.fit(drm.Formula("yi ~ 1 + meta_V(V = vi)", "sigma ~ grp"), bcg)
    loo = f.leave_one_out()
    assert "sigma:grp[T.c]" in loo.loc[12, "status"]
    assert loo.loc[12, list(f.params.index)].isna().all()
    inf = f.influence()
    assert inf.loc[12, ["rstudent", "cooks_distance"]].isna().all()


@pytest.mark.slow
def test_random_effects_cluster_deletion(bcg):
    """The curtis1998 pattern: a moderator level held by one cluster of a (1|cluster) model."""
    d = bcg.assign(paper=np.arange(len(bcg)) // 2)
    f = drm.fit(drm.Formula("yi ~ grp + (1|paper) + meta_V(V = vi)"), d)
    inf = f.influence(cluster="paper")
    assert list(inf.index[_unidentified(inf["status"])]) == [6]
    loo = f.leave_one_out(by="paper")
    assert list(loo["omitted"][_unidentified(loo["status"])]) == [6]
    assert np.isfinite(inf.loc[:5, "cooks_distance"].to_numpy(dtype=float)).all()


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_two_studies(bcg, method):
    """Two studies: each refit has one row for one location coefficient, so no variance is
    estimable: NaN estimates, I2 and H2, and a status, not 'converged' with I2 = 100."""
    f = drm.fit(drm.Formula("yi ~ 1 + meta_V(V = vi)"), bcg.iloc[:2], method=method)
    loo = f.leave_one_out()
    assert not loo["converged"].any()
    assert loo[["mu:(Intercept)", "sigma:(Intercept)", "loglik", "I2", "H2"]].isna().all().all()
    assert all("1 row" in s for s in loo["status"])


@pytest.mark.slow
def test_random_term_left_with_one_level(bcg):
    """Leaving one of two clusters out leaves (1|half) with one level: its SD is not identified."""
    d = bcg.assign(half=np.where(np.arange(len(bcg)) < 7, "h1", "h2"))
    f = drm.fit(drm.Formula("yi ~ 1 + (1|half) + meta_V(V = vi)"), d)
    loo = f.leave_one_out(by="half")
    assert all("sd(half)" in s and "1 level" in s for s in loo["status"])
    assert loo[list(f.params.index)].isna().all().all()
    inf = f.influence(cluster="half")
    assert all("sd(half)" in s for s in inf["status"])
    assert (f.leave_one_out()["status"] == "ok").all()
