"""Simulated phylogenetic meta-analyses for benchmarks/bench_phylo.py.

A coalescent tree (as ape's ``rcoal``: join two random lineages, exponential waiting times
with rate choose(k, 2)), effect sizes of each species drawn under Brownian motion on that
tree plus a non-phylogenetic species effect, residual heterogeneity and known sampling
variances.  Writes ``tree.nwk`` and ``data.csv`` so R (metafor, drmTMB) fits the same data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def coalescent_tree(n_tips: int, rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(Newick text, parent, branch length, tip flag) of a coalescent tree with tips sp1..spN.

    Node i < n_tips is tip ``sp{i+1}``; the root is the last node.  Built iteratively (no
    recursion), O(n log n) characters of Newick."""
    n_nodes = 2 * n_tips - 1
    parent = np.full(n_nodes, -1)
    height = np.zeros(n_nodes)
    text = [f"sp{i + 1}" for i in range(n_tips)] + [""] * (n_tips - 1)
    alive = list(range(n_tips))
    t = 0.0
    for new in range(n_tips, n_nodes):
        k = len(alive)
        t += rng.exponential(2.0 / (k * (k - 1)))
        a, b = rng.choice(k, size=2, replace=False)
        ia, ib = alive[a], alive[b]
        for i in (ia, ib):
            parent[i] = new
        height[new] = t
        text[new] = f"({text[ia]}:{t - height[ia]:.8g},{text[ib]}:{t - height[ib]:.8g})"
        text[ia] = text[ib] = ""
        for pos in sorted((a, b), reverse=True):
            alive[pos] = alive[-1]
            alive.pop()
        alive.append(new)
    length = np.where(parent >= 0, height[np.maximum(parent, 0)] - height, 0.0)
    return text[-1] + ";", parent, length, np.arange(n_nodes) < n_tips


def brownian_tips(parent, length, is_tip, rng, sd: float = 1.0) -> np.ndarray:
    """Brownian motion values at the tips (variance sd^2 per unit branch length)."""
    n_nodes = len(parent)
    value = np.zeros(n_nodes)
    # parents have larger indices than children: walk from the root down
    for i in range(n_nodes - 2, -1, -1):
        value[i] = value[parent[i]] + rng.normal(scale=sd * np.sqrt(length[i]))
    return value[is_tip]


def simulate(n_species: int, per_species: int = 3, seed: int = 1) -> tuple[str, pd.DataFrame]:
    """(Newick, data) with ``per_species`` effect sizes per species: columns species, phylo
    (the same labels, metafor's convention for the phylogenetic term), x, yi, vi."""
    rng = np.random.default_rng(seed)
    newick, parent, length, is_tip = coalescent_tree(n_species, rng)
    height = float(np.max(np.cumsum(length)))  # not used for scaling: corr=True divides by depth
    del height
    depth = np.zeros(len(parent))
    for i in range(len(parent) - 2, -1, -1):
        depth[i] = depth[parent[i]] + length[i]
    u = brownian_tips(parent, length, is_tip, rng) / np.sqrt(depth[is_tip])  # correlation scale
    species = np.repeat(np.arange(n_species), per_species)
    n = len(species)
    x = rng.normal(size=n)
    vi = rng.uniform(0.01, 0.2, n)
    yi = (0.3 + 0.2 * x + 0.5 * u[species] + rng.normal(scale=0.3, size=n_species)[species]
          + rng.normal(scale=0.2, size=n) + rng.normal(scale=np.sqrt(vi)))
    labels = np.asarray([f"sp{i + 1}" for i in range(n_species)])[species]
    data = pd.DataFrame({"species": labels, "phylo": labels, "x": x, "yi": yi, "vi": vi})
    return newick, data
