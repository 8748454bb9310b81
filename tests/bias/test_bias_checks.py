"""Bias/sensitivity checks without metafor: location-scale influence against brute-force
refits, deletion refits of other structures against drm.fit on the subset, and errors."""

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.inference.marginal import gls

FORMULA = drm.Formula("yi ~ habitat + duration + meta_V(V = vi)", "sigma ~ habitat")


@pytest.fixture(scope="module")
def restoration():
    return drm.datasets.restoration()


@pytest.fixture(scope="module")
def ls_fit(restoration):
    return drm.fit(FORMULA, data=restoration)


def test_location_scale_influence_against_refits(ls_fit, restoration):
    """Each row's own fitted sigma_i: deletion statistics recomputed from refits of drm.fit."""
    inf = ls_fit.influence()
    d = ls_fit.design
    X, y, v = d.fixed["mu"].matrix, d.y, d.known_v.diag
    Zs = d.fixed["sigma"].matrix
    p = X.shape[1]
    b = ls_fit.params.to_numpy()[:p]
    vb = gls(ls_fit).vcov
    s_full = v + ls_fit.sigma().to_numpy() ** 2
    hat = np.einsum("ip,pq,iq->i", X, vb, X) / s_full
    np.testing.assert_allclose(inf["hat"], hat, rtol=1e-10)
    np.testing.assert_allclose(inf["weight"], 100 * (1 / s_full) / np.sum(1 / s_full), rtol=1e-10)
    for i in (0, 17, 55):
        sub = restoration.drop(index=restoration.index[i])
        r = drm.fit(FORMULA, data=sub)
        b_i = r.params.to_numpy()[:p]
        gamma_i = r.params.to_numpy()[p:]
        s_i = v + np.exp(2 * Zs @ gamma_i)  # every row, each with its own sigma_i at the refit
        vb_i = gls(r).vcov
        vb_all = np.linalg.inv((X / s_i[:, None]).T @ X)
        diff = b - b_i
        row = inf.iloc[i]
        np.testing.assert_allclose(row["rstudent"], (y[i] - X[i] @ b_i) / np.sqrt(s_i[i] + X[i] @ vb_i @ X[i]),
                                   rtol=1e-6)
        np.testing.assert_allclose(row["dffits"], X[i] @ diff / np.sqrt(hat[i] * s_i[i]), rtol=1e-6)
        np.testing.assert_allclose(row["cooks_distance"], diff @ np.linalg.solve(vb, diff), rtol=1e-6)
        np.testing.assert_allclose(row["cov_ratio"], np.linalg.det(vb_i) / np.linalg.det(vb), rtol=1e-6)
        np.testing.assert_allclose(row["sigma2_deleted"], s_i[i] - v[i], rtol=1e-6)
        dfb = row[[c for c in inf.columns if c.startswith("dfbetas:")]].to_numpy(dtype=float)
        np.testing.assert_allclose(dfb, diff / np.sqrt(np.diag(vb_all)), rtol=1e-6, atol=1e-9)


def test_leave_one_out_by_column(ls_fit, restoration):
    loo = ls_fit.leave_one_out(by="habitat")
    assert list(loo["omitted"]) == sorted(restoration["habitat"].unique())
    # dropping a whole habitat leaves its mu and sigma contrasts unidentified: the refit of the
    # other levels is still a fit of the same program; check one level against drm.fit
    f2 = drm.fit(drm.Formula("yi ~ duration + meta_V(V = vi)"), data=restoration)
    loo2 = f2.leave_one_out(by="habitat")
    for _, row in loo2.iterrows():
        r = drm.fit(drm.Formula("yi ~ duration + meta_V(V = vi)"), data=restoration[restoration.habitat != row["omitted"]])
        np.testing.assert_allclose(row[list(r.params.index)].to_numpy(dtype=float), r.params.to_numpy(), atol=2e-6)
        np.testing.assert_allclose(row["loglik"], r.loglik, atol=1e-8)
        np.testing.assert_allclose(row[["Q", "Q_df", "Q_p_value"]].to_numpy(dtype=float), r.q_test().to_numpy(),
                                   rtol=1e-9)
        np.testing.assert_allclose(row[["I2", "H2"]].to_numpy(dtype=float),
                                   [r.i2().loc["total", "i2"], r.h2()], rtol=1e-5)
        # without one habitat the habitat contrast is collinear with the intercept: the Q test
        # of the rank-deficient design is that of the design without it (metafor drops it)
        q = loo.loc[loo["omitted"] == row["omitted"], ["Q", "Q_df"]].to_numpy(dtype=float)[0]
        np.testing.assert_allclose(q, r.q_test()[["Q", "df"]].to_numpy(), rtol=1e-9)


def _nested(seed=3, studies=12):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, studies)
    study = np.repeat(np.arange(studies), sizes)
    n = study.size
    vi = rng.uniform(0.02, 0.1, n)
    x = rng.normal(size=n)
    yi = 0.3 + 0.2 * x + rng.normal(0, 0.25, studies)[study] + rng.normal(0, np.sqrt(vi + 0.02))
    return pd.DataFrame({"yi": yi, "vi": vi, "x": x, "study": study, "grp": np.where(study % 2, "a", "b")})


@pytest.mark.parametrize("formula,structure", [
    (drm.Formula("yi ~ x + (1|study) + meta_V(V = vi)", "sd(study) ~ grp"), None),   # intercepts
    (drm.Formula("yi ~ x + (1|study) + meta_V(V = vi)", "sigma ~ x"), "block"),
    (drm.Formula("yi ~ x + (1|study) + meta_V(V = vi)"), "woodbury"),
])
def test_deletion_refits_equal_subset_fits(formula, structure):
    d = _nested()
    ctrl = {"structure": structure} if structure else None
    f = drm.fit(formula, data=d, method="REML", control=ctrl)
    loo = f.leave_one_out(by="study")
    for s in (0, 5):
        r = drm.fit(formula, data=d[d.study != s], method="REML", control=ctrl)
        row = loo[loo["omitted"] == s].iloc[0]
        np.testing.assert_allclose(row["loglik"], r.loglik, atol=1e-8)
        # Q depends on V alone; I2 on the refit's variances (1e-4: SDs near zero differ by path)
        np.testing.assert_allclose(row[["Q", "Q_df", "Q_p_value"]].to_numpy(dtype=float),
                                   r.q_test().to_numpy(), rtol=1e-9)
        np.testing.assert_allclose(row["I2"], r.i2().loc["total", "i2"], atol=1e-4)
        np.testing.assert_allclose(row["H2"], r.h2(), rtol=1e-4)
        mu = [n for n in r.params.index if n.startswith("mu:")]
        np.testing.assert_allclose(row[mu].to_numpy(dtype=float), r.params[mu].to_numpy(), atol=1e-5)
        # SDs compared on the response scale per level: an SD at its zero boundary has a
        # flat, unidentified log-SD coefficient (both fits end near 0 by different paths)
        for name in ("sigma", "sd(study)"):
            design = f.design.fixed["sigma"].matrix if name == "sigma" else f.design.random[0].sd_designs[0].matrix
            cols = [n for n in r.params.index if n.startswith(name + ":")]
            np.testing.assert_allclose(np.exp(design @ row[cols].to_numpy(dtype=float)),
                                       np.exp(design @ r.params[cols].to_numpy()), atol=1e-4)


def test_deletion_with_full_v():
    """A non-diagonal V (dense structure): the deleted row's covariances go with it."""
    d = _nested(seed=5, studies=8)
    n = len(d)
    V = np.diag(d["vi"].to_numpy())
    same = d["study"].to_numpy()[:, None] == d["study"].to_numpy()[None, :]
    V = V + np.where(same & ~np.eye(n, dtype=bool), 0.5 * np.sqrt(np.outer(d.vi, d.vi)), 0.0)
    f = drm.fit(drm.Formula("yi ~ x + meta_V(V = V)"), data=d, env={"V": V})
    loo = f.leave_one_out()
    for i in (0, 3):
        keep = np.arange(n) != i
        r = drm.fit(drm.Formula("yi ~ x + meta_V(V = V)"), data=d[keep], env={"V": V[np.ix_(keep, keep)]})
        np.testing.assert_allclose(loo.loc[i, "loglik"], r.loglik, atol=1e-8)
        np.testing.assert_allclose(loo.loc[i, ["Q", "Q_df", "Q_p_value"]].to_numpy(dtype=float),
                                   r.q_test().to_numpy(), rtol=1e-9)
        np.testing.assert_allclose(loo.loc[i, "I2"], r.i2().loc["total", "i2"], rtol=1e-5)
        np.testing.assert_allclose(loo.loc[i, list(r.params.index)].to_numpy(dtype=float), r.params.to_numpy(),
                                   atol=1e-5)


def test_egger_keeps_other_formulas(ls_fit):
    eg, refit = drm.egger_test(ls_fit, return_fit=True)
    p = ls_fit.design.fixed["mu"].matrix.shape[1]
    assert list(refit.params.index) == list(ls_fit.params.index[:p]) + ["mu:sei"] + list(ls_fit.params.index[p:])
    assert refit.formula.text["sigma"] == ls_fit.formula.text["sigma"]
    assert np.isnan(eg["limit_estimate"])  # moderators in mu: no limit estimate
    # observed-information z by default
    se = refit.std_errors["mu:sei"]
    np.testing.assert_allclose(eg["statistic"], refit.params["mu:sei"] / se, rtol=1e-12)


def test_pet_peese_choice():
    d = pd.read_csv(__import__("pathlib").Path(__file__).resolve().parents[1] / "reference_extra" / "bias" / "data_hackshaw.csv")
    f = drm.fit("yi ~ 1 + meta_V(V = vi)", d)
    pp = drm.pet_peese(f)
    assert list(pp.index) == ["PET", "PEESE"] and pp["selected"].sum() == 1
    pet = drm.egger_test(f, "sei")
    np.testing.assert_allclose(pp.loc["PET", "limit_estimate"], pet["limit_estimate"], rtol=1e-12)
    assert pp.loc["PEESE", "selected"] == (pp.loc["PET", "limit_p_one_sided"] < 0.05)


# ---------------------------------------------------------------- errors that say why
def test_errors(ls_fit, restoration):
    with pytest.raises(drm.DrmError, match="moderators"):
        drm.trim_and_fill(drm.fit("yi ~ habitat + meta_V(V = vi)", restoration))
    with pytest.raises(drm.DrmError, match="location-scale"):
        drm.trim_and_fill(drm.fit(drm.Formula("yi ~ 1 + meta_V(V = vi)", "sigma ~ habitat"), restoration))
    d = _nested()
    re_fit = drm.fit("yi ~ 1 + (1|study) + meta_V(V = vi)", d)
    with pytest.raises(drm.DrmError, match="random effects"):
        drm.selection_model(re_fit)
    with pytest.raises(drm.DrmError, match="random effects"):
        drm.trim_and_fill(re_fit)
    with pytest.raises(drm.DrmError, match="column `nope` is not in the data"):
        ls_fit.leave_one_out(by="nope")
    with pytest.raises(drm.DrmError, match="column `nope` is not in the data"):
        re_fit.influence(cluster="nope")
    with pytest.raises(drm.DrmError, match="no sample sizes were given"):
        drm.egger_test(ls_fit, "ni")
    with pytest.raises(drm.DrmError, match="predictor must be one of"):
        drm.egger_test(ls_fit, "se")
    with pytest.raises(drm.DrmError, match="sigma ~ 1"):
        drm.selection_model(ls_fit)
    with pytest.raises(drm.DrmError, match="without moderators"):
        drm.pet_peese(ls_fit)
    with pytest.raises(drm.DrmError, match="increasing"):
        drm.selection_model(drm.fit("yi ~ 1 + meta_V(V = vi)", restoration), steps=(0.5, 0.1))


def test_caller_data_untouched(restoration):
    before = restoration.copy()
    f = drm.fit("yi ~ 1 + meta_V(V = vi)", restoration)
    drm.egger_test(f)
    f.leave_one_out(by="habitat")
    pd.testing.assert_frame_equal(restoration, before)


def test_common_effect_deletions():
    """sigma ~ 0 (no variance parameter): each deletion is the GLS refit of the kept rows."""
    from pathlib import Path

    d = pd.read_csv(Path(__file__).resolve().parents[1] / "reference_extra" / "bias" / "data_bcg.csv")
    formula = drm.Formula("yi ~ 1 + meta_V(V = vi)", "sigma ~ 0")
    f = drm.fit(formula, d)
    loo = f.leave_one_out()
    inf = f.influence()
    w = 1.0 / d["vi"].to_numpy()
    for i in (0, 4):
        keep = np.arange(len(d)) != i
        r = drm.fit(formula, d[keep])
        np.testing.assert_allclose(loo.loc[i, "mu:(Intercept)"], r.params.iloc[0], rtol=1e-10)
        np.testing.assert_allclose(loo.loc[i, "loglik"], r.loglik, rtol=1e-10)
        b_i = np.sum(w[keep] * d["yi"][keep]) / np.sum(w[keep])
        np.testing.assert_allclose(inf.loc[i, "rstudent"],
                                   (d["yi"][i] - b_i) / np.sqrt(d["vi"][i] + 1.0 / np.sum(w[keep])), rtol=1e-8)
    assert (inf["sigma2_deleted"] == 0).all()
