"""phylo() fits by the linear-time tree route against metafor's rma.mv(R = ) and against
drmpy's dense-K route (references: tests/reference_extra/phylo/make_phylo.R)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.inference.marginal import location_vcov

pytest.importorskip("Bio.Phylo")

REF = Path(__file__).parents[1] / "reference_extra" / "phylo"
TREE_CONTROL = {"structure": "tree"}
DENSE_CONTROL = {"structure": "woodbury"}  # the dense-K route, the checked reference


def load(case: str):
    folder = REF / case
    info = json.loads((folder / "case.json").read_text())
    data = pd.read_csv(folder / "data.csv")
    return info, data, (folder / "tree.nwk").read_text()


def formula(info, tree, sigma: str = "~ 1"):
    study = " + (1|study)" if info["crossed_study"] else ""
    return drm.Formula(f"yi ~ x + phylo(1|phylo, tree=tree) + (1|species){study} + meta_V(V=vi)", sigma=sigma)


def metafor_variances(fit, info) -> dict[str, float]:
    """drmpy's variance components named as metafor's sigma2 (species, phylo, [study], obs)."""
    p = fit.params
    out = {"species": np.exp(2 * p["sd(species):(Intercept)"]), "phylo": np.exp(2 * p["sd(phylo):(Intercept)"]),
           "obs": np.exp(2 * p["sigma:(Intercept)"])}
    if info["crossed_study"]:
        out["study"] = np.exp(2 * p["sd(study):(Intercept)"])
    return out


def check_against_metafor(case: str, method: str):
    info, data, tree = load(case)
    fit = drm.fit(formula(info, tree), data=data, method=method, control=TREE_CONTROL)
    assert fit.structure == "tree" and fit.converged
    ref = info["metafor"][method]
    X = np.column_stack([np.ones(len(data)), data["x"]])
    shift = 0.5 * np.linalg.slogdet(X.T @ X)[1] if method == "REML" else 0.0
    # a variance at its zero boundary (metafor: ~1e-10) leaves the likelihood flat: drmpy
    # stops within 3e-7 of metafor's logLik there (rtree120's residual variance)
    at_boundary = min(ref["sigma2"]) < 1e-6 * max(ref["sigma2"])
    assert fit.loglik + shift == pytest.approx(ref["loglik"], abs=1e-6 if at_boundary else 1e-8)
    np.testing.assert_allclose(fit.params[["mu:(Intercept)", "mu:x"]], ref["beta"], atol=1e-6)
    gls_se = np.sqrt(np.diag(location_vcov(fit, "gls")))
    np.testing.assert_allclose(gls_se, ref["se"], rtol=1e-5)
    variances = metafor_variances(fit, info)
    for name, value in zip(info["sigma2_order"], ref["sigma2"]):
        if value < 1e-6 * max(ref["sigma2"]):
            assert variances[name] < 1e-6 * max(ref["sigma2"]), name
        else:
            assert variances[name] == pytest.approx(value, rel=1e-4 if at_boundary else 1e-5), name
    return fit


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_rcoal30_matches_metafor(method):
    fit = check_against_metafor("rcoal30", method)
    row = fit.check().set_index("check").loc["phylo_likelihood"]
    assert row["value"] == "tree" and row["status"] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["rtree120", "rtree200_polytomy", "rcoal500_study"])
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_larger_trees_match_metafor(case, method):
    check_against_metafor(case, method)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_location_scale_tree_equals_dense(method):
    """sigma ~ x: no metafor equivalent with R=; the tree route equals the dense-K route."""
    info, data, tree = load("rtree120")
    f = formula(info, tree, sigma="~ x")
    tree_fit = drm.fit(f, data=data, method=method, control=TREE_CONTROL)
    dense_fit = drm.fit(f, data=data, method=method, control=DENSE_CONTROL)
    assert dense_fit.structure == "woodbury" and tree_fit.structure == "tree"
    assert drm.fit(f, data=data, method=method).structure == "tree"  # 120 species: chosen by itself
    assert tree_fit.loglik == pytest.approx(dense_fit.loglik, abs=1e-8)
    pd.testing.assert_series_equal(tree_fit.params, dense_fit.params, atol=1e-6, rtol=0)
    pd.testing.assert_series_equal(tree_fit.std_errors, dense_fit.std_errors, atol=1e-5, rtol=1e-5)
    dense_row = dense_fit.check().set_index("check").loc["phylo_likelihood"]
    assert "control={'structure': 'tree'}" in dense_row["message"]


def test_profile_interval_of_phylo_sd_equals_dense():
    info, data, tree = load("rcoal30")
    f = formula(info, tree)
    name = "sd(phylo):(Intercept)"
    by_tree = drm.fit(f, data=data, control=TREE_CONTROL).conf_int(method="profile", params=[name])
    dense = drm.fit(f, data=data, control=DENSE_CONTROL).conf_int(method="profile", params=[name])
    np.testing.assert_allclose(by_tree[["lower", "upper"]].to_numpy(float),
                               dense[["lower", "upper"]].to_numpy(float), atol=1e-5)


def test_tree_route_refusals_are_explained():
    info, data, tree = load("rcoal30")
    V = np.diag(data["vi"].to_numpy())
    V[0, 1] = V[1, 0] = 0.001
    f = drm.Formula("yi ~ x + phylo(1|phylo, tree=tree) + meta_V(V=V)")
    with pytest.raises(drm.DrmError, match="not diagonal"):
        drm.fit(f, data=data, control=TREE_CONTROL)


def test_zero_sampling_variance_without_sigma_takes_the_dense_route():
    """sigma ~ 0 and a zero v_i: the row's pendant edge would have length 0 (and Woodbury
    would divide by it); the automatic choice factors the dense S, and forcing the tree says why."""
    info, data, tree = load("rtree120")
    data = data.copy()
    data.loc[3, "vi"] = 0.0
    f = drm.Formula("yi ~ x + phylo(1|phylo, tree=tree) + (1|species) + meta_V(V=vi)", sigma="~ 0")
    fit = drm.fit(f, data=data)
    assert fit.structure == "dense" and fit.converged and np.isfinite(fit.loglik)
    with pytest.raises(drm.DrmError, match="zero sampling variance"):
        drm.fit(f, data=data, control=TREE_CONTROL)
