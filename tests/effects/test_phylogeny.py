"""phylo_corr against ape 5.7's vcv(tree, corr = TRUE) (tests/reference_extra/effects/phylo_cases.R)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

pytest.importorskip("Bio.Phylo")

REF = Path(__file__).parents[1] / "reference_extra" / "effects"
INFO = json.loads((REF / "phylo_cases.json").read_text())


@pytest.mark.parametrize("name", list(INFO["trees"]))
def test_equals_ape_vcv_corr(name):
    expected = pd.read_csv(REF / f"phylo_{name}_corr.csv.gz", index_col=0)
    tree_path = REF / f"phylo_{name}.nwk"
    got = drm.phylo_corr(tree_path)
    assert list(got.index) == list(expected.index) == list(expected.columns)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    # the same from the Newick text
    np.testing.assert_array_equal(drm.phylo_corr(tree_path.read_text()).to_numpy(), got.to_numpy())


def test_reference_trees_cover_both_kinds():
    kinds = {(t["ultrametric"], t["binary"]) for t in INFO["trees"].values()}
    assert (True, True) in kinds and (False, True) in kinds and (False, False) in kinds
    assert INFO["ape"] == "5.7"


def test_species_subset_is_the_whole_tree_matrix():
    tree = (REF / "phylo_rtree200.nwk").read_text()
    full = drm.phylo_corr(tree)
    species = ["t5", "t17", "t5", "t100", "t3"]
    sub = drm.phylo_corr(tree, species=species)
    assert list(sub.index) == ["t5", "t17", "t100", "t3"]
    pd.testing.assert_frame_equal(sub, full.loc[sub.index, sub.index])


def test_hand_computed_non_ultrametric():
    # ((a:1,b:2):0.5,c:3); shared a-b = 0.5; variances 1.5, 2.5, 3
    got = drm.phylo_corr("((a:1,b:2):0.5,c:3);")
    np.testing.assert_allclose(got.loc["a", "b"], 0.5 / np.sqrt(1.5 * 2.5), rtol=1e-15)
    assert got.loc["a", "c"] == 0.0
    from drmpy.effects.phylogeny import phylo_vcv

    np.testing.assert_allclose(np.diag(phylo_vcv("((a:1,b:2):0.5,c:3);")), [1.5, 2.5, 3.0])


def test_deep_caterpillar_tree_needs_no_recursion():
    n = 3000
    newick = "t0:1"
    for k in range(1, n):
        newick = f"({newick},t{k}:1):1"
    got = drm.phylo_corr(newick + ";")
    assert got.shape == (n, n)


def test_errors():
    with pytest.raises(drm.DataError, match=r"2 species not among the tree's tips: `x`, `y`"):
        drm.phylo_corr("((a:1,b:1):1,c:2);", species=["a", "x", "y"])
    with pytest.raises(drm.DataError, match="without a length"):
        drm.phylo_corr("((a:1,b):1,c:2);")
    with pytest.raises(drm.DataError, match="neither Newick text nor an existing file"):
        drm.phylo_corr("no_such_tree.nwk")
    with pytest.raises(drm.DataError, match="appears more than once"):
        drm.phylo_corr("((a:1,a:1):1,c:2);")
