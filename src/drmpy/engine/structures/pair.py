"""``pair``: a bivariate model whose V is block-diagonal by study: closed-form 2 x 2
determinant and inverse per study, O(studies), optionally study-weighted."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..likelihood import RHO_GUARD, Arrays
from .base import CovarianceStructure

__all__ = ["Pair", "pair_correlations"]


def pair_correlations(eta: jax.Array, arrs: Arrays) -> jax.Array:
    """rho12 per study: 0.999999 tanh(z_i'eta) for correlated pairs, 0 otherwise."""
    pairs = arrs.pairs
    assert pairs is not None  # bivariate arrays (trace time only)
    if eta.shape[0] == 0:
        return jnp.zeros(pairs.pair.shape, arrs.y.dtype)
    return RHO_GUARD * jnp.tanh(pairs.Z_rho @ eta) * pairs.pair


def _pair_covariances(gamma, eta, arrs: Arrays):
    """Per study the entries (a, d, b) of S_i = V_i + B_i; unit variance for responses not kept."""
    sd = jnp.exp(arrs.Z_sigma @ gamma).reshape(-1, 2)  # unmasked: no sqrt(0) in derivatives
    v = arrs.v.reshape(-1, 2)
    kept = arrs.mask.reshape(-1, 2) > 0
    var = jnp.where(kept, v + sd**2, 1.0)
    assert arrs.pairs is not None  # bivariate arrays (trace time only)
    cov = arrs.pairs.v12 + pair_correlations(eta, arrs) * sd[:, 0] * sd[:, 1]
    return var[:, 0], var[:, 1], cov


class Pair(CovarianceStructure):
    name = "pair"
    univariate = False
    bivariate = True

    def pair_refusal(self, design):
        if not design.v.block_diagonal:
            return "needs a V that is block-diagonal by study."
        return None

    def gram_pairs(self, gamma, eta, arrs, struct, B):
        """Per-study closed form, each study's terms multiplied by its weight (the larger of
        its two row weights: a response that is not kept has weight 0; padding studies 0)."""
        a, d, b = _pair_covariances(gamma, eta, arrs)
        det = a * d - b * b
        w = arrs.w.reshape(-1, 2)
        ws = jnp.maximum(w[:, 0], w[:, 1])
        Bp = B.reshape(-1, 2, B.shape[1])
        B1, B2 = Bp[:, 0], Bp[:, 1]
        cross = (B1 * (ws * b / det)[:, None]).T @ B2
        M = (B1 * (ws * d / det)[:, None]).T @ B1 + (B2 * (ws * a / det)[:, None]).T @ B2 - cross - cross.T
        return jnp.sum(ws * jnp.log(det)), 0.5 * (M + M.T)
