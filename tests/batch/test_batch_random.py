"""fit_batch with one random intercept (1|study) per group against one-by-one drm.fit.

The reference for every group is drmpy's single ``fit`` on that group's rows (itself tested
against drmTMB and metafor's rma.mv): log-likelihood to 1e-8, estimates to 1e-6 (an SD at
its zero boundary compared on the response scale), standard errors to 1e-5.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

COLUMNS = ["gene", "parameter", "estimate", "std_error", "loglik", "converged", "max_gradient", "message"]


def _make(seed: int = 3) -> pd.DataFrame:
    """Nine genes of 4 or 6 studies with 1 to 3 effect sizes each, 5 to 12 rows (study labels
    s0, s1, ... repeated in every gene, unrelated across genes), plus special genes.  Two
    study counts only: a single fit compiles one program per number of levels."""
    rng = np.random.default_rng(seed)
    parts = []
    for g in range(9):
        n_study = 4 if g % 2 else 6
        tau = [0.3, 0.0, 0.5][g % 3]  # every third gene: no between-study spread (sd at zero)
        rows = []
        for s in range(n_study):
            u = tau * rng.normal()
            for _ in range(int(rng.integers(1, 4 if n_study == 4 else 3))):
                vi = rng.uniform(0.01, 0.08)
                x = rng.normal()
                z = float(s % 2)
                rows.append(dict(gene=f"g{g}", study=f"s{s}", x=x, z=z, vi=vi,
                                 yi=0.2 + 0.3 * x + u + rng.normal() * np.sqrt(vi + 0.03)))
        parts.append(pd.DataFrame(rows))
    d = pd.concat(parts, ignore_index=True)
    single = d[d.gene == "g0"].copy()  # every study one row: sd(study) confounded with sigma
    single = single.drop_duplicates("study").assign(gene="z_single")
    missing = d[d.gene == "g2"].copy().assign(gene="z_missing")
    repeated = np.flatnonzero(missing.duplicated("study", keep=False).to_numpy())
    missing.iloc[repeated[[0, -1]], missing.columns.get_loc("yi")] = np.nan  # two studies keep a row
    bad = d[d.gene == "g4"].copy().assign(gene="z_badV")
    bad.iloc[1, bad.columns.get_loc("vi")] = -0.01
    return pd.concat([d, single, missing, bad], ignore_index=True)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return _make()


def _single(formula, d: pd.DataFrame, method: str):
    """The single fit; the dense structure (S formed in full, padded to 16 rows) so that genes
    with the same number of studies share one compiled program (the block structure
    compiles one per level layout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return drm.fit(formula, d.drop(columns="gene"), method=method, control={"structure": "dense"})


def _compare(res: pd.DataFrame, data: pd.DataFrame, formula, method: str) -> int:
    """Assert agreement of every fitted gene with its single fit; returns how many SDs were at zero."""
    at_zero = 0
    for gene, sub in data.groupby("gene"):
        r = res[res["gene"] == gene]
        if str(gene) == "z_badV":
            continue
        if str(r["message"].iloc[0]).startswith("not fitted: every level of `study` has a single row"):
            with pytest.raises(drm.RandomEffectsError, match="every level of `study` has a single row"):
                _single(formula, sub, method)
            continue
        fit = _single(formula, sub, method)
        assert list(r["parameter"]) == list(fit.params.index)
        assert bool(r["converged"].iloc[0]) == fit.converged
        assert abs(float(r["loglik"].iloc[0]) - fit.loglik) < 1e-8
        est, ref = r["estimate"].to_numpy(), fit.params.to_numpy()
        se, se_ref = r["std_error"].to_numpy(), fit.std_errors.to_numpy()
        for j, name in enumerate(fit.params.index):
            if name.startswith(("sigma:", "sd(")) and np.exp(ref[j]) < 1e-3:
                at_zero += 1  # at the zero boundary: the SD (not its log) is determined
                assert np.exp(est[j]) < 1e-3
                continue
            assert abs(est[j] - ref[j]) < 1e-6, (gene, name, est[j], ref[j])
            assert abs(se[j] - se_ref[j]) < 1e-5 * max(1.0, abs(se_ref[j])), (gene, name, se[j], se_ref[j])
    return at_zero


F_MOD = drm.Formula("yi ~ x + (1|study) + meta_V(V = vi)")
F_INT = drm.Formula("yi ~ 1 + (1|study) + meta_V(V = vi)")


@pytest.fixture(scope="module")
def reml_mod(data):
    return drm.fit_batch(F_MOD, data, by="gene", method="REML", progress=False)


@pytest.mark.slow  # compiles a batch program (about 30 s cold on the loaded 2-core machine)
def test_reml_moderator_matches_single_fits(reml_mod, data):
    assert list(reml_mod.columns) == COLUMNS
    assert list(reml_mod["parameter"].unique()) == ["mu:(Intercept)", "mu:x", "sigma:(Intercept)", "sd(study):(Intercept)"]
    at_zero = _compare(reml_mod, data, F_MOD, "REML")
    assert at_zero >= 1  # the boundary rule is exercised


@pytest.mark.slow
def test_groups_that_cannot_be_fitted(reml_mod):
    msg = reml_mod.groupby("gene", observed=True)["message"].first().astype(str)
    assert msg["z_single"].startswith("not fitted: every level of `study` has a single row")
    assert msg["z_badV"].startswith("not fitted: meta_V(V = vi): sampling variances must be >= 0")
    assert "2 rows dropped (missing values in model variables)" in msg["z_missing"]
    bad = reml_mod[reml_mod["gene"].isin(["z_single", "z_badV"])]
    assert bad["estimate"].isna().all() and not bad["converged"].any()


@pytest.mark.slow
def test_ml_intercept_only_matches_single_fits(data):
    res = drm.fit_batch(F_INT, data, by="gene", method="ML", progress=False)
    _compare(res, data, F_INT, "ML")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_modelled_sigma_and_sd_match_single_fits(data, method):
    f = drm.Formula("yi ~ x + (1|study) + meta_V(V = vi)", "sigma ~ x", "sd(study) ~ z")
    res = drm.fit_batch(f, data, by="gene", method=method, progress=False, chunk_size=4)
    _compare(res, data, f, method)


def test_unsupported_random_structures(data):
    with pytest.raises(drm.FormulaError, match=r"one random-intercept term per group; the formula has 2"):
        drm.fit_batch(drm.Formula("yi ~ 1 + (1|study/x) + meta_V(V = vi)"), data, by="gene")
    with pytest.raises(drm.FormulaError, match=r"`\(1\|study\)`, `\(1\|z\)`"):
        drm.fit_batch(drm.Formula("yi ~ 1 + (1|study) + (1|z) + meta_V(V = vi)"), data, by="gene")
    with pytest.raises(drm.FormulaError, match=r"`\(1 \+ x\|study\)` has random slope\(s\) x"):
        drm.fit_batch(drm.Formula("yi ~ 1 + (1 + x|study) + meta_V(V = vi)"), data, by="gene")
    V = np.eye(len(data)) * 0.05  # noqa: F841  (meta_V(V=V) finds it in this namespace)
    with pytest.raises(drm.FormulaError, match=r"diagonal V with `\(1\|study\)`: meta_V\(V = V\)"):
        drm.fit_batch(drm.Formula("yi ~ 1 + (1|study) + meta_V(V = V)"), data, by="gene")
    with pytest.raises(drm.RandomEffectsError, match=r"Column `lab` of the random-effect term"):
        drm.fit_batch(drm.Formula("yi ~ 1 + (1|lab) + meta_V(V = vi)"), data, by="gene")


@pytest.mark.slow
def test_random_intercept_without_sigma_matches_single_fits(data):
    """``sigma ~ 0``: the two-level random-effects model (metafor's rma.mv(random = ~ 1 | study))."""
    f = drm.Formula("yi ~ x + (1|study) + meta_V(V = vi)", "sigma ~ 0")
    res = drm.fit_batch(f, data, by="gene", method="REML", progress=False)
    assert list(res["parameter"].unique()) == ["mu:(Intercept)", "mu:x", "sd(study):(Intercept)"]
    assert res.loc[res["gene"] == "z_single", "converged"].all()  # one row per study is fine without sigma
    _compare(res, data, f, "REML")
