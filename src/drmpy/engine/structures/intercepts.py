"""``intercepts``: a diagonal V and one random intercept ``(1|g)`` (no slopes, no relmat),
in closed form per level by segment sums, O(n).

The automatic choice does not take it (the block structure fits the same models); the
deletion refits of :mod:`drmpy.bias.deletion` and the batch of :mod:`drmpy.engine.batch_random`
use it.  Its arrays are the block structure's buckets with one level per block.
"""

from __future__ import annotations

import jax.numpy as jnp

from .base import CovarianceStructure
from .block import BlockArrays, block_buckets, drop_bucket_rows

__all__ = ["Intercepts"]


class Intercepts(CovarianceStructure):
    name = "intercepts"
    automatic = False

    def refusal(self, design, clusters, automatic):
        if len(design.random) != 1 or not design.known_v.is_diagonal:
            return "needs a diagonal V and one random-effect term."
        rd = design.random[0]
        if not rd.term.intercept or rd.term.slopes or rd.is_relmat:
            return "needs a random intercept (1 | g) without slopes or relatedness."
        return None

    def build(self, design, clusters, n_rows):
        # one block per level of the term, whatever the clusters
        return BlockArrays(tuple(block_buckets(design, design.random[0].level_index))), None

    def gram(self, sigma2, re_terms, arrs, struct, B):
        """One random intercept per level l of a single grouping factor, diagonal V.

        With ``D = diag(v_i + sigma_i^2)`` and level variance ``tau_l^2``, each level's block is
        ``D_l + tau_l^2 11'``: ``log|S| = sum log d_i + sum_l log(1 + tau_l^2 a_l)`` and
        ``B'S^-1B = B'D^-1B - sum_l tau_l^2 / (1 + tau_l^2 a_l) c_l c_l'``, with
        ``a_l = sum_{i in l} 1/d_i`` and ``c_l = sum_{i in l} B_i / d_i``.  The rows of each
        level sit in one block of the buckets (one level per block), so the sums over a level
        are sums over a block's slots: O(n), no scatter, no factorisation.
        """
        (alphas, _), = re_terms
        ra, = arrs.random
        L = struct.random[0].n_levels
        tau2 = jnp.exp(2.0 * (ra.sd_designs[0] @ alphas[0]))  # (L,)
        s = jnp.where(arrs.mask > 0, arrs.v + sigma2, 1.0)
        u = arrs.w / s
        Bu = B * u[:, None]
        M = Bu.T @ B
        logdet = jnp.sum(arrs.w * jnp.log(s))
        u_ext = jnp.concatenate([u, jnp.zeros((1,))])
        Bu_ext = jnp.concatenate([Bu, jnp.zeros((1, B.shape[1]))], axis=0)
        for bucket in arrs.extra.buckets:
            a = jnp.sum(u_ext[bucket.rows], axis=1)  # (nb,)
            c = jnp.sum(Bu_ext[bucket.rows], axis=1)  # (nb, p + 1)
            level = jnp.min(bucket.levels[0], axis=1)  # a block's real slots share one level
            t = jnp.where(level < L, tau2[jnp.minimum(level, L - 1)], 0.0)
            e = 1.0 + t * a
            M = M - (c * (t / e)[:, None]).T @ c
            logdet = logdet + jnp.sum(jnp.log(e))
        return logdet, 0.5 * (M + M.T)

    def drop_rows(self, extra, on, struct):
        return BlockArrays(drop_bucket_rows(extra.buckets, on, struct))
