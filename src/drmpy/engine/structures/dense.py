"""``dense``: S formed and factored in full (a dense V, or any design as an oracle);
univariate and bivariate."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..likelihood import (Arrays, Structure, chol_gram, random_design, random_factor, row_sigma2,
                          split_phi)
from .base import CovarianceStructure
from .pair import pair_correlations

__all__ = ["Dense", "DenseArrays", "dense_covariance"]


class DenseArrays(NamedTuple):
    V: jax.Array  # (N, N) known V over the (padded) rows; identity on padding rows


class Dense(CovarianceStructure):
    name = "dense"
    bivariate = True

    def refusal(self, design, clusters, automatic):
        if not automatic and design.weights is not None and np.any(design.weights != 1.0):
            return ("does not take row weights; non-unit weights need structure='diag' "
                    "(a diagonal V without random effects).")
        return None

    def pair_refusal(self, design):
        return None

    def build(self, design, clusters, n_rows):
        from ..program import _device

        n = design.nobs
        Vd = np.eye(n_rows)
        kv = design.known_v
        Vd[:n, :n] = kv.matrix if kv.matrix is not None else np.diag(kv.diag)
        return DenseArrays(_device(Vd)), None

    def build_pairs(self, design, n_studies):
        from ..bivariate import dense_pair_v

        return DenseArrays(jnp.asarray(dense_pair_v(design, n_studies)))

    def gram(self, sigma2, re_terms, arrs, struct, B):
        return chol_gram(_covariance(sigma2, re_terms, arrs, struct), B)

    def gram_pairs(self, gamma, eta, arrs, struct, B):
        return chol_gram(_pair_covariance(gamma, eta, arrs), B)

    def drop_rows(self, extra, on, struct):
        both = on[:, None] & on[None, :]
        return DenseArrays(jnp.where(both, extra.V, jnp.eye(extra.V.shape[0], dtype=extra.V.dtype)))


def _known_v(arrs: Arrays) -> jax.Array:
    """The dense known V of arrays built by this structure."""
    assert isinstance(arrs.extra, DenseArrays)  # trace time only
    return arrs.extra.V


def _covariance(sigma2, re_terms, arrs: Arrays, struct: Structure):
    S = _known_v(arrs) + jnp.diag(sigma2)
    if struct.random:
        ZL = random_design(arrs.random, struct.random) @ random_factor(re_terms, arrs.random, struct.random)
        S = S + ZL @ ZL.T
    return S


def _pair_covariance(gamma, eta, arrs: Arrays):
    sigma2 = row_sigma2(gamma, arrs)
    sd = jnp.exp(arrs.Z_sigma @ gamma).reshape(-1, 2)
    off = pair_correlations(eta, arrs) * sd[:, 0] * sd[:, 1]
    first = 2 * jnp.arange(off.shape[0])
    S = _known_v(arrs) + jnp.diag(sigma2)
    return S.at[first, first + 1].add(off).at[first + 1, first].add(off)


def dense_covariance(phi: jax.Array, arrs: Arrays, struct: Structure) -> jax.Array:
    """The marginal covariance S = V + diag(sigma^2) + Z G Z' (bivariate: V + B) as one dense
    matrix, for arrays built with structure ``dense``.  Padding rows carry unit variance."""
    if struct.pairs:
        gamma, eta = split_phi(phi, struct)
        return _pair_covariance(gamma, eta, arrs)
    gamma, re_terms = split_phi(phi, struct)
    return _covariance(row_sigma2(gamma, arrs), re_terms, arrs, struct)
