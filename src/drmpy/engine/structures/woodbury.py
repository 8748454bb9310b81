"""``woodbury``: a diagonal V with random effects that do not nest (crossed, relmat):
``log|S| = log|R| + log|I + L'Z'R^-1ZL|`` with ``R`` diagonal and ``G = LL'``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..likelihood import random_design, random_factor, woodbury_update
from .base import CovarianceStructure
from .diag import diag_gram

__all__ = ["Woodbury"]


class Woodbury(CovarianceStructure):
    name = "woodbury"

    def refusal(self, design, clusters, automatic):
        if not design.random or not design.known_v.is_diagonal:
            return "needs random effects and a diagonal V."
        # Woodbury divides by each row's v_i + sigma_i^2: with sigma ~ 0 a zero sampling
        # variance (its variance then comes from the random effects alone) needs the dense
        # factorisation
        if automatic and design.common_effect and bool(np.any(design.known_v.diag <= 0.0)):
            return "needs v_i + sigma_i^2 > 0 on every row."
        return None

    def gram(self, sigma2, re_terms, arrs, struct, B):
        ZL = random_design(arrs.random, struct.random) @ random_factor(re_terms, arrs.random, struct.random)
        logdet_R, M_all = diag_gram(sigma2, arrs, jnp.concatenate([ZL, B], axis=1))
        return woodbury_update(logdet_R, M_all, ZL.shape[1])
