"""The linear-time tree pass against dense matrices built independently (ape-style vcv)."""

import numpy as np
import pytest

import drmpy as drm
from drmpy.phylo.likelihood import edge_lengths, tree_arrays, tree_gram, tree_static
from drmpy.phylo.topology import tree_topology


def random_newick(n_tips: int, rng: np.random.Generator, ultrametric: bool, polytomy: float = 0.0,
                  prefix: str = "sp") -> str:
    """A random tree (random joining of clades) as Newick; ``polytomy`` merges a share of the
    joins into three-way ones; non-ultrametric trees get random branch lengths."""
    clades = [(f"{prefix}{i}", 0.0) for i in range(n_tips)]  # (text, height)
    while len(clades) > 1:
        m = 3 if (len(clades) >= 3 and rng.random() < polytomy) else 2
        pick = rng.choice(len(clades), size=m, replace=False)
        parts = [clades[i] for i in pick]
        clades = [c for i, c in enumerate(clades) if i not in set(pick)]
        height = max(h for _, h in parts) + rng.exponential(1.0)
        if ultrametric:
            text = "(" + ",".join(f"{s}:{height - h:.6f}" for s, h in parts) + ")"
        else:
            text = "(" + ",".join(f"{s}:{rng.uniform(0.05, 2.0):.6f}" for s, _ in parts) + ")"
        clades.append((text, height))
    return clades[0][0] + ";"


def dense_tree_covariance(topology, t: np.ndarray) -> np.ndarray:
    """The n_obs x n_obs covariance ``S`` that :func:`tree_gram` factors, formed densely with
    numpy from the same edge lengths (a check for tests; O(n_obs^2) memory)."""
    n_obs, n_nodes = topology.n_obs, topology.n_nodes
    # path from each observation to the root as a 0/1 incidence over nodes
    anc = np.zeros((n_obs, n_nodes))
    for i in range(n_obs):
        node = i
        while node < n_nodes:
            anc[i, node] = 1.0
            node = int(topology.parent[node])
    T = (anc * np.asarray(t)[None, :]) @ anc.T
    d = 1.0 / topology.row_scale
    return T * d[:, None] * d[None, :]


def dense_reference(newick, species, tau2, species2, row_variance, corr):
    K = (drm.phylo_corr if corr else drm.effects.phylogeny.phylo_vcv)(newick)
    Z = (np.asarray(species)[:, None] == np.asarray(K.index)[None, :]).astype(float)
    return tau2 * Z @ K.to_numpy() @ Z.T + species2 * Z @ Z.T + np.diag(row_variance)


CASES = [  # (tips, ultrametric, polytomy share, corr, species effect)
    (30, True, 0.0, True, 0.0),
    (40, False, 0.3, True, 0.3),
    (25, False, 0.0, False, 0.2),
    (60, True, 0.4, True, 0.5),
]


@pytest.mark.parametrize("n_tips,ultra,poly,corr,species2", CASES)
def test_tree_pass_equals_dense(n_tips, ultra, poly, corr, species2):
    rng = np.random.default_rng(n_tips)
    newick = random_newick(n_tips, rng, ultra, poly)
    # some species unobserved, some with several effect sizes, rows not sorted by species
    observed = rng.choice(n_tips, size=int(0.8 * n_tips), replace=False)
    species = [f"sp{s}" for s in rng.choice(observed, size=2 * n_tips)]
    n = len(species)
    row_variance = rng.uniform(0.05, 0.5, n)
    B = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    tau2 = 0.7

    topo = tree_topology(newick, species, corr=corr)
    ta = tree_arrays(topo)
    t = edge_lengths(tau2, species2, row_variance, ta)
    logdet, gram = tree_gram(t, B, ta, tree_static(topo))

    S = dense_reference(newick, species, tau2, species2, row_variance, corr)
    assert np.allclose(dense_tree_covariance(topo, np.asarray(t)), S, atol=1e-12)
    sign, ref_logdet = np.linalg.slogdet(S)
    assert sign > 0
    assert abs(float(logdet) - ref_logdet) < 1e-9
    np.testing.assert_allclose(np.asarray(gram), B.T @ np.linalg.solve(S, B), rtol=1e-10, atol=1e-10)


def test_caterpillar_matches():
    n_tips = 80
    text = "sp0:1"
    for i in range(1, n_tips):
        text = f"({text},sp{i}:1):0.5" if i < n_tips - 1 else f"({text},sp{i}:1);"
    species = [f"sp{i}" for i in range(n_tips)] * 2
    topo = tree_topology(text, species, corr=True)
    assert topo.steps.shape[0] >= n_tips  # one step per level
    rng = np.random.default_rng(1)
    rv = rng.uniform(0.1, 1.0, len(species))
    B = np.column_stack([np.ones(len(species)), rng.normal(size=len(species))])
    ta = tree_arrays(topo)
    logdet, gram = tree_gram(edge_lengths(0.4, 0.1, rv, ta), B, ta, tree_static(topo))
    S = dense_reference(text, species, 0.4, 0.1, rv, True)
    assert abs(float(logdet) - np.linalg.slogdet(S)[1]) < 1e-9
    np.testing.assert_allclose(np.asarray(gram), B.T @ np.linalg.solve(S, B), rtol=1e-9)


def test_unknown_species_is_named():
    with pytest.raises(drm.DataError, match="`zz`"):
        tree_topology("((a:1,b:1):1,c:2);", ["a", "zz"])
