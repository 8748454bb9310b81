"""phylo(1 | species, tree = tree) is relmat(1 | species, K = phylo_corr(tree))."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

pytest.importorskip("Bio.Phylo")

TREE_PATH = Path(__file__).parents[1] / "reference_extra" / "effects" / "phylo_rtree30_polytomy.nwk"
TREE = TREE_PATH.read_text()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    species = [f"t{i}" for i in range(1, 31)]
    d = pd.DataFrame({"species": np.repeat(species, 2), "x": rng.normal(size=60)})
    K = drm.phylo_corr(TREE, species=species).to_numpy()
    u = np.linalg.cholesky(K) @ rng.normal(scale=0.4, size=30)
    d["vi"] = rng.uniform(0.02, 0.1, 60)
    d["yi"] = 0.2 + 0.3 * d["x"] + np.repeat(u, 2) + rng.normal(scale=np.sqrt(d["vi"] + 0.05))
    return d


@pytest.fixture(scope="module")
def relmat_fit(data):
    K = drm.phylo_corr(TREE)
    return drm.fit("yi ~ x + relmat(1 | species, K = K) + meta_V(V = vi)", data=data, env={"K": K})


def test_phylo_equals_relmat_with_phylo_corr(data, relmat_fit):
    tree = TREE
    fit = drm.fit("yi ~ x + phylo(1 | species, tree = tree) + meta_V(V = vi)", data=data)
    assert fit.loglik == pytest.approx(relmat_fit.loglik, abs=1e-10)
    pd.testing.assert_series_equal(fit.params, relmat_fit.params, atol=1e-8, rtol=0)


def test_phylo_tree_from_env_and_quoted_path(data, relmat_fit):
    by_env = drm.fit("yi ~ x + phylo(1 | species, tree = phy) + meta_V(V = vi)", data=data, env={"phy": TREE_PATH})
    quoted = drm.fit(f"yi ~ x + phylo(1 | species, tree = '{TREE_PATH}') + meta_V(V = vi)", data=data)
    for fit in (by_env, quoted):
        assert fit.loglik == pytest.approx(relmat_fit.loglik, abs=1e-10)


def test_phylo_errors(data):
    with pytest.raises(drm.FormulaError, match=r"expected `phylo\(1 \| species, tree = name\)`"):
        drm.Formula("yi ~ x + phylo(1 | species, K = tree) + meta_V(V = vi)")
    with pytest.raises(drm.FormulaError, match="random intercept of one grouping factor"):
        drm.Formula("yi ~ x + phylo(0 + x | species, tree = tree) + meta_V(V = vi)")
    with pytest.raises(drm.FormulaError, match="belong in the mu formula"):
        drm.Formula("yi ~ x + meta_V(V = vi)", "sigma ~ phylo(1 | species, tree = tree)")
    bad = data.assign(species=data["species"].replace({"t3": "t99"}))
    with pytest.raises(drm.RandomEffectsError, match="level `t99` of `species` is not in K"):
        drm.fit("yi ~ x + phylo(1 | species, tree = tr) + meta_V(V = vi)", data=bad, env={"tr": TREE})
    with pytest.raises(drm.RandomEffectsError, match="neither Newick text nor an existing file"):
        drm.fit("yi ~ x + phylo(1 | species, tree = 'missing.nwk') + meta_V(V = vi)", data=data)
