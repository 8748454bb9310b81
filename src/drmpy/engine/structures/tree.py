"""``tree``: one ``phylo()`` term (and a species term) by the linear-time tree pass of
:mod:`drmpy.phylo`, any other random terms by a Woodbury correction on top.

When it applies is :mod:`drmpy.phylo.route`'s decision; the pass itself is
:mod:`drmpy.phylo.likelihood`'s.  Its arrays are :class:`~drmpy.phylo.likelihood.TreeArrays`
and its static part :class:`~drmpy.phylo.likelihood.TreeStatic`.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..likelihood import random_design, random_factor, woodbury_update
from .base import CovarianceStructure

__all__ = ["Tree"]


class Tree(CovarianceStructure):
    name = "tree"
    reports_clusters = False
    # the tree pass compiles far faster differentiated forward-over-forward
    forward_derivatives = True

    # drmpy.phylo is imported inside the methods: only when a model has a phylo() term

    def refusal(self, design, clusters, automatic):
        if automatic and not any(rd.tree is not None for rd in design.random):
            return "needs a phylo() term."
        from ...phylo.route import TREE_ROUTE_MIN_SPECIES, phylo_levels, tree_route_refusal

        if automatic and phylo_levels(design) < TREE_ROUTE_MIN_SPECIES:
            return f"is chosen from {TREE_ROUTE_MIN_SPECIES} species on."
        why = tree_route_refusal(design, automatic=automatic)
        return None if why is None else f"is not available: {why}"

    def relatedness_factor(self, rd):
        return rd.is_relmat and rd.tree is None  # the tree pass replaces the phylo() term's K

    def build(self, design, clusters, n_rows):
        from ...phylo.route import tree_route_arrays

        static, arrays = tree_route_arrays(design)
        return arrays, static

    def gram(self, sigma2, re_terms, arrs, struct, B):
        """With ``T`` the tree part of S and ``ZL`` the other terms' factor,
        ``log|S| = log|T| + log|I + L'Z'T^-1ZL|`` and
        ``B'S^-1B = B'T^-1B - U'(I + L'Z'T^-1ZL)^-1 U``, ``U = L'Z'T^-1B``; the tree pass gives
        every ``T^-1`` product at once for the columns ``[ZL, B]``
        (:func:`~drmpy.engine.likelihood.woodbury_update`).  Rows past ``n_obs`` are padding
        and left out."""
        from ...phylo.likelihood import edge_lengths, tree_gram

        ts, ta = struct.extra, arrs.extra
        n = ts.n_obs
        alphas_p, _ = re_terms[ts.phylo_term]
        tau2 = jnp.exp(2.0 * (arrs.random[ts.phylo_term].sd_designs[0][0] @ alphas_p[0]))
        if ts.species_term is None:
            species2 = jnp.zeros((), B.dtype)
        else:
            alphas_s, _ = re_terms[ts.species_term]
            level_sd2 = jnp.exp(2.0 * (arrs.random[ts.species_term].sd_designs[0] @ alphas_s[0]))
            species2 = level_sd2[ta.species_level]
        t = edge_lengths(tau2, species2, (arrs.v + sigma2)[:n], ta)
        others = [i for i in range(len(struct.random)) if i not in (ts.phylo_term, ts.species_term)]
        if not others:
            return tree_gram(t, B[:n], ta, ts)
        randoms = tuple(arrs.random[i] for i in others)
        statics = tuple(struct.random[i] for i in others)
        ZL = (random_design(randoms, statics) @ random_factor([re_terms[i] for i in others], randoms, statics))[:n]
        logdet_T, M_all = tree_gram(t, jnp.concatenate([ZL, B[:n]], axis=1), ta, ts)
        return woodbury_update(logdet_T, M_all, ZL.shape[1])
