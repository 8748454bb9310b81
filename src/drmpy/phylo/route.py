"""When a model takes the tree route, and its arrays.

The tree route evaluates the likelihood of a model whose only relatedness term is one
``phylo(1 | species, tree=)`` by the linear-time tree pass.  It takes:

* the ``phylo()`` term with a constant SD (``sd(species) ~ 1``);
* optionally one non-phylogenetic species term: a random intercept ``(1 | g)`` whose levels
  are the same partition of the rows as the species (metafor's ``~ 1 | species`` beside
  ``~ 1 | phylo``), its SD constant or modelled per species (``sd(g) ~ w``);
* any other random terms (crossed study effects, slopes): a low-rank Woodbury correction on
  top of the tree pass, O(n q + q^3) for their q columns;
* a diagonal known V, ``sigma ~ z`` (location-scale), ML or REML, no row weights.
"""

from __future__ import annotations

import numpy as np

from ..model.design import ModelDesign, RandomDesign
from .likelihood import TreeArrays, TreeStatic, tree_arrays, tree_static
from .topology import tree_topology

__all__ = ["TREE_ROUTE_MIN_SPECIES", "tree_route_refusal", "tree_route_arrays", "phylo_levels"]

#: species at and above which a model the tree route takes uses it unless a structure is
#: forced (``control={"structure": ...}``).  The dense-K (Woodbury) route costs O(q^3) per
#: evaluation: at 300 species (900 rows, a species term beside the phylo term) a warm fit
#: took 17.9 s by it against 0.06 s by the tree (benchmarks/bench_phylo.py on 2026-12-04,
#: the run before this threshold was lowered from 1,000); at a few dozen species both take
#: milliseconds
TREE_ROUTE_MIN_SPECIES = 100
#: other random-effect columns the Woodbury correction takes when chosen automatically: its
#: cost grows as nodes x columns^2 (the tree pass carries every column), so many crossed
#: levels (hundreds of studies) are faster by the dense-K route
MAX_CROSSED_COLUMNS = 256


def phylo_levels(design: ModelDesign) -> int:
    """Species of the model's phylo() term (0 without one)."""
    return max((rd.n_levels for rd in design.random if rd.tree is not None), default=0)


def _same_partition(a: RandomDesign, b: RandomDesign) -> bool:
    """Whether two terms' levels group the rows alike (a one-to-one map of levels), in O(n)."""
    if a.n_levels != b.n_levels:
        return False
    b_of_a = np.full(a.n_levels, -1, dtype=np.int64)
    b_of_a[a.level_index] = b.level_index  # any row's b level; checked on every row below
    return bool(np.all(b_of_a[a.level_index] == b.level_index)
                and np.unique(b_of_a).shape[0] == a.n_levels)


def _species_term(design: ModelDesign, phylo: int) -> int | None:
    rp = design.random[phylo]
    for i, rd in enumerate(design.random):
        if (i != phylo and not rd.is_relmat and rd.term.intercept and not rd.term.slopes
                and _same_partition(rp, rd)):
            return i
    return None


def tree_route_refusal(design: ModelDesign, automatic: bool = False) -> str | None:
    """Why the tree route cannot fit this model (None when it can)."""
    phylo = [i for i, rd in enumerate(design.random) if rd.tree is not None]
    if len(phylo) != 1:
        return "it needs exactly one phylo(1 | species, tree = ...) term."
    if any(rd.is_relmat for i, rd in enumerate(design.random) if i != phylo[0]):
        return "the model has another relmat() or phylo() term."
    rp = design.random[phylo[0]]
    sd = rp.sd_designs[0].matrix
    if sd.shape[1] != 1 or np.ptp(sd[:, 0]) > 0:
        return f"sd({rp.group}) of the phylo() term must be constant (sd({rp.group}) ~ 1)."
    if not design.known_v.is_diagonal:
        return "the known sampling covariance V is not diagonal."
    if design.weights is not None and np.any(design.weights != 1.0):
        return "row weights are not supported."
    if design.common_effect and np.any(design.known_v.diag <= 0.0):
        # sigma ~ 0: a zero sampling variance is a pendant edge of length 0 (the dense
        # route handles a row whose variance comes from the random effects alone)
        return "sigma ~ 0 with a zero sampling variance."
    if automatic:
        species = _species_term(design, phylo[0])
        columns = sum(rd.n_levels * rd.n_coef for i, rd in enumerate(design.random)
                      if i not in (phylo[0], species))
        if columns > MAX_CROSSED_COLUMNS:
            return f"the other random terms have {columns} columns (more than {MAX_CROSSED_COLUMNS})."
    return None


def tree_route_arrays(design: ModelDesign) -> tuple[TreeStatic, TreeArrays]:
    """The static description and device arrays of the tree pass for a design."""
    phylo = next(i for i, rd in enumerate(design.random) if rd.tree is not None)
    rp = design.random[phylo]
    topology = tree_topology(rp.tree, rp.level_index, corr=True, levels=rp.levels)
    species = _species_term(design, phylo)
    species_level = np.zeros(topology.n_species, dtype=np.int64)
    if species is not None:
        species_level[topology.row_species] = design.random[species].level_index
    return tree_static(topology, phylo, species), tree_arrays(topology, species_level)
