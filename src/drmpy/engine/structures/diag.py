"""``diag``: a diagonal V without random effects, O(n), optionally row-weighted."""

from __future__ import annotations

import jax.numpy as jnp

from ..likelihood import Arrays
from .base import CovarianceStructure

__all__ = ["Diag", "diag_gram"]


def diag_gram(sigma2, arrs: Arrays, B):
    """``(log|S|, B'S^-1B)`` for ``S = diag(v + sigma2)``, each row times its weight."""
    s = arrs.v + sigma2
    s = jnp.where(arrs.mask > 0, s, 1.0)
    wt = arrs.w / s
    M = (B * wt[:, None]).T @ B
    logdet = jnp.sum(arrs.w * jnp.log(s))
    return logdet, M


class Diag(CovarianceStructure):
    name = "diag"
    reports_clusters = False
    closed_form_diag = True

    def refusal(self, design, clusters, automatic):
        if design.random or not design.known_v.is_diagonal:
            return "needs a diagonal V and no random effects."
        return None

    def gram(self, sigma2, re_terms, arrs, struct, B):
        return diag_gram(sigma2, arrs, B)
