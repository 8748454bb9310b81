"""A phylogeny and the species of each effect size -> the static arrays of the tree pass.

The tree the pass walks has three kinds of node below the phylogeny's own:

* one *observation* node per effect size, hanging under its species by a pendant edge of
  length ``sigma_i^2 + v_i`` (residual heterogeneity plus known sampling variance);
* one *species* node per observed species, hanging under the species' tip of the phylogeny
  by an edge of length ``sigma_s^2`` (the non-phylogenetic species effect; 0 without one);
* the phylogeny's nodes, each edge of length ``tau^2 l_e`` (Brownian motion scaled by the
  phylogenetic variance).

Subtrees without an observed species are pruned (they add nothing to the likelihood).
Nodes are numbered by *level* (observations 0, species nodes 1, phylogeny tips 2, an inner
node one more than its highest child), so that every node's children come before it and
each level is one contiguous slice: the pass handles a level in one vectorised step.

With ``corr=True`` (ape's ``vcv(tree, corr = TRUE)``, drmTMB's and metafor's usual choice)
the phylogenetic matrix is ``D C D`` with ``D = diag(1 / sqrt(depth_s))`` for the
root-to-tip depths of a non-ultrametric tree.  Scaling every row of species s by
``sqrt(depth_s)`` turns ``S`` into a tree covariance again (species edge
``sigma_s^2 depth_s``, pendant edge ``(sigma_i^2 + v_i) depth_s``), with
``log|S| = log|T| - sum_i log depth_{s(i)}``; ``row_scale`` holds ``sqrt(depth_{s(i)})``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import DataError

__all__ = ["TreeTopology", "tree_topology"]

#: the most nodes one step of the pass handles (a wider level takes several steps)
MAX_STEP_WIDTH = 2048
#: the fewest: a step's overhead is a few microseconds, so narrow levels share nothing
MIN_STEP_WIDTH = 8


@dataclass(frozen=True)
class TreeTopology:
    """Static description of the tree pass (numpy, built once per data set and tree).

    Node numbers: observations ``0..n_obs-1`` in row order, then the other nodes by level.
    ``parent[i]`` is the node above node i; the root's parent is ``n_nodes`` (a sink that is
    never read) and padding slots use ``n_nodes + 1`` (always empty).  ``steps`` cuts the
    levels >= 1, tips to root, into steps of at most ``MAX_STEP_WIDTH`` nodes of one level:
    the pass is one loop over its rows, so one small program serves every tree shape.
    """

    n_obs: int
    n_species: int
    parent: np.ndarray  # (n_nodes,) int
    branch_length: np.ndarray  # (n_nodes,) phylogeny edge length l_e; 0 for other nodes
    is_phylo_edge: np.ndarray  # (n_nodes,) bool: the edge scales with tau^2
    is_species_edge: np.ndarray  # (n_nodes,) bool: the edge is sigma_s^2 (x depth)
    species_depth: np.ndarray  # (n_nodes,) depth_s for species-edge nodes (1 if corr=False), else 0
    row_species: np.ndarray  # (n_obs,) int, 0..n_species-1, observed species of each row
    row_scale: np.ndarray  # (n_obs,) sqrt(depth) of the row's species (1 if corr=False)
    steps: np.ndarray  # (n_steps, width) int: node numbers of each step, padding n_nodes + 1
    species: tuple[str, ...]  # observed species labels, in the order of row_species

    @property
    def n_nodes(self) -> int:
        return int(self.parent.shape[0])


def _phylogeny_arrays(tree) -> tuple[list, np.ndarray, np.ndarray, list[str | None]]:
    """Pre-order nodes, parent positions (-1 for the root) and branch lengths (the root's own
    edge ignored, as in ape), iteratively so a deep caterpillar tree needs no recursion."""
    nodes: list[Any] = []
    parent = []
    length = []
    stack = [(tree.root, -1)]
    while stack:
        node, up = stack.pop()
        me = len(nodes)
        nodes.append(node)
        parent.append(up)
        if up < 0:
            length.append(0.0)
        else:
            if node.branch_length is None:
                name = f" `{node.name}`" if node.name else ""
                raise DataError(f"phylo: the tree has a branch without a length (above node{name}); "
                                "Brownian-motion covariances need every branch length.")
            length.append(float(node.branch_length))
        for child in reversed(node.clades):
            stack.append((child, me))
    names = [None if n.clades else (None if n.name in (None, "") else str(n.name)) for n in nodes]
    return nodes, np.asarray(parent, dtype=np.int64), np.asarray(length, dtype=np.float64), names


def tree_topology(tree: Any, row_species: Sequence[Any] | np.ndarray, corr: bool = True,
                  levels: Sequence[str] | None = None) -> TreeTopology:
    """Static arrays of the tree pass for effect sizes of the given species.

    Parameters
    ----------
    tree
        Newick text, a path to a Newick file, or a ``Bio.Phylo`` tree (as :func:`drmpy.phylo_corr`).
    row_species
        The species label of every effect size (row order); each must be a tip label.
    corr
        Use the phylogenetic *correlation* matrix (ape's ``vcv(corr = TRUE)``; default) rather
        than the covariance matrix in branch-length units.
    levels
        When given, ``row_species`` are integer codes into these labels (a model design's
        level index: no string comparisons per row).
    """
    from ..effects.phylogeny import read_tree  # effects is a later stage: imported when used

    parsed = read_tree(tree)
    nodes, up, length, names = _phylogeny_arrays(parsed)
    n_phylo = len(nodes)
    if np.any(length < 0):
        raise DataError("phylo: the tree has a negative branch length.")
    tips = [i for i, nm in enumerate(names) if not nodes[i].clades]
    tip_of: dict[str, int] = {}
    for i in tips:
        name = names[i]
        if name is None:
            raise DataError("phylo: a tip of the tree has no label.")
        if name in tip_of:
            raise DataError(f"phylo: tip label `{name}` appears more than once in the tree.")
        tip_of[name] = i

    if levels is not None:
        codes = np.asarray(row_species, dtype=np.int64)
        used, row_species_idx = np.unique(codes, return_inverse=True)
        species = np.asarray([str(levels[c]) for c in used], dtype=object)
    else:
        labels = np.asarray([str(s) for s in row_species], dtype=object)
        species, row_species_idx = np.unique(labels, return_inverse=True)
    n_obs = len(row_species_idx)
    missing = [s for s in species if s not in tip_of]
    if missing:
        shown = ", ".join(f"`{m}`" for m in missing[:10])
        raise DataError(f"phylo: {len(missing)} species not among the tree's tips: {shown}"
                        f"{' ...' if len(missing) > 10 else ''}.")
    species_tip = np.asarray([tip_of[s] for s in species], dtype=np.int64)

    # depth of every phylogeny node (pre-order: a parent comes before its children)
    depth = np.zeros(n_phylo)
    for i in range(1, n_phylo):
        depth[i] = depth[up[i]] + length[i]
    tip_depth = depth[species_tip]
    if corr and np.any(tip_depth <= 0):
        s = species[int(np.argmax(tip_depth <= 0))]
        raise DataError(f"phylo: tip `{s}` is at distance 0 from the root; its correlation is undefined.")
    scale2 = tip_depth if corr else np.ones_like(tip_depth)

    # keep the phylogeny nodes above an observed species (reverse pre-order: children first)
    keep = np.zeros(n_phylo, dtype=bool)
    keep[species_tip] = True
    level = np.full(n_phylo, -1, dtype=np.int64)
    level[species_tip] = 2
    for i in range(n_phylo - 1, 0, -1):
        if keep[i]:
            keep[up[i]] = True
            level[up[i]] = max(level[up[i]], level[i] + 1)
    if not keep[0]:  # pragma: no cover - at least one species is observed
        keep[0] = True
    level[0] = max(level[0], 2)

    n_species = len(species)
    kept = np.flatnonzero(keep)
    # order of the non-observation nodes: species nodes (level 1), then phylogeny nodes by level
    phylo_order = kept[np.argsort(level[kept], kind="stable")]
    n_nodes = n_obs + n_species + len(phylo_order)
    number = np.full(n_phylo, -1, dtype=np.int64)
    number[phylo_order] = n_obs + n_species + np.arange(len(phylo_order))

    parent = np.empty(n_nodes, dtype=np.int64)
    parent[:n_obs] = n_obs + row_species_idx
    parent[n_obs:n_obs + n_species] = number[species_tip]
    phylo_parent = np.where(up[phylo_order] >= 0, number[np.maximum(up[phylo_order], 0)], n_nodes)
    parent[n_obs + n_species:] = phylo_parent
    branch = np.zeros(n_nodes)
    branch[n_obs + n_species:] = length[phylo_order]
    is_phylo = np.zeros(n_nodes, dtype=bool)
    is_phylo[n_obs + n_species:] = up[phylo_order] >= 0  # the root has no edge
    is_species = np.zeros(n_nodes, dtype=bool)
    is_species[n_obs:n_obs + n_species] = True
    species_depth = np.zeros(n_nodes)
    species_depth[n_obs:n_obs + n_species] = scale2
    branch[~is_phylo] = 0.0

    node_level = np.concatenate([np.zeros(n_obs, np.int64), np.ones(n_species, np.int64), level[phylo_order]])
    steps = _level_steps(node_level, n_nodes)
    return TreeTopology(
        n_obs=n_obs, n_species=n_species, parent=parent, branch_length=branch,
        is_phylo_edge=is_phylo, is_species_edge=is_species, species_depth=species_depth,
        row_species=row_species_idx.astype(np.int64), row_scale=np.sqrt(scale2)[row_species_idx],
        steps=steps, species=tuple(str(s) for s in species))


def _level_steps(node_level: np.ndarray, n_nodes: int) -> np.ndarray:
    """The levels >= 1 (contiguous slices of the level-sorted nodes), tips to root, cut into
    rows of a (steps, width) table; the width is the widest level's (a power of two between
    MIN_STEP_WIDTH and MAX_STEP_WIDTH), and a wider level takes several rows (its nodes are
    independent of each other, so any split is exact)."""
    bounds = np.flatnonzero(np.diff(node_level)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(node_level)]])
    levels = [(int(a), int(b)) for a, b in zip(starts, stops) if node_level[a] >= 1]
    widest = max(b - a for a, b in levels)
    width = int(min(MAX_STEP_WIDTH, max(MIN_STEP_WIDTH, 1 << int(np.ceil(np.log2(widest))))))
    rows = []
    for a, b in levels:
        for lo in range(a, b, width):
            row = np.full(width, n_nodes + 1, dtype=np.int64)
            hi = min(lo + width, b)
            row[: hi - lo] = np.arange(lo, hi)
            rows.append(row)
    return np.stack(rows)
