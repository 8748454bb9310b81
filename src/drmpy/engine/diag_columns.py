"""The diagonal-V location-scale model for one large fit, with every row sum a reduction.

Same closed form as :func:`drmpy.engine.batch.diag_derivatives` (see that module's
docstring for the formulas), written for a single fit with many rows: the designs are
held as columns (``(p, N)`` and ``(k, N)``) and every weighted cross-product
``sum_i c_i a_i b_i'`` is an elementwise product reduced over the row axis, which XLA
on CPU fuses into one pass per output entry.  The matrix-product form
(``(X * c).T @ Z``) is an XLA ``dot`` with a long contraction, about 4x slower at
n = 1e6, and per-row quadratic forms over the short column axis are also slow; here the
small sums over columns are unrolled.  Used by :func:`drmpy.engine.program._program_fn`
when ``p`` and ``k`` are small (:data:`MAX_COLUMNS`), and vmapped by the optimiser loop of
:func:`drmpy.engine.batch.pool_program` (``fit_batch``: about 10% less CPU per iteration
than the matrix form there).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .batch import derivative_row_terms
from .likelihood import _unrolled_cholesky_solve
from .small_linalg import sym_inverse

__all__ = ["MAX_COLUMNS", "DiagColumns", "columns_derivatives", "columns_value", "columns_post"]

LOG_2PI = math.log(2.0 * math.pi)

# the unrolled sums grow as p^2 k: beyond this many columns the matrix form is used
MAX_COLUMNS = 6


class DiagColumns(NamedTuple):
    """One fit's arrays by column; padding rows have w = 0, v = 1."""

    y: jax.Array  # (N,) response minus X beta0
    Xt: jax.Array  # (p, N) location design, transposed
    Zt: jax.Array  # (k, N) sigma design, transposed
    v: jax.Array  # (N,)
    w: jax.Array  # (N,)


def _combine(coef, Ft):
    """Row values ``F coef`` (sum over the short column axis, unrolled)."""
    out = coef[0] * Ft[0]
    for j in range(1, Ft.shape[0]):
        out = out + coef[j] * Ft[j]
    return out


def _cross(Ft, Gt, c):
    """``sum_i c_i f_i g_i'``: (a, b) from (a, N), (b, N) and (N,)."""
    return jnp.sum(Ft[:, None, :] * Gt[None, :, :] * c, axis=-1)


def _quad(M, Ft):
    """Row values ``f_i' M f_i`` for a small symmetric M (unrolled)."""
    m = Ft.shape[0]
    out = M[0, 0] * Ft[0] * Ft[0]
    for a in range(m):
        for b in range(a, m):
            if a == b == 0:
                continue
            coef = M[a, b] if a == b else 2.0 * M[a, b]
            out = out + coef * Ft[a] * Ft[b]
    return out


def _pieces(gamma, c: DiagColumns):
    data = c.w > 0
    t = jnp.where(data, jnp.exp(2.0 * _combine(gamma, c.Zt)), 0.0)
    s = jnp.where(data, c.v + t, 1.0)
    u = c.w / s
    A = _cross(c.Xt, c.Xt, u)
    A = 0.5 * (A + A.T)
    b = jnp.sum(c.Xt * (u * c.y), axis=-1)
    p = A.shape[0]
    logdet_A, sol = _unrolled_cholesky_solve(A, jnp.concatenate([jnp.eye(p, dtype=A.dtype), b[:, None]], axis=1))
    A_inv, beta = sol[:, :p], sol[:, p]
    r = c.y - _combine(beta, c.Xt)
    return t, s, u, A, b, logdet_A, A_inv, beta, r


def columns_value(gamma, c: DiagColumns, reml: bool):
    """Negative (restricted) log-likelihood at gamma (= ``batch.diag_value``)."""
    t, s, u, A, b, logdet_A, A_inv, beta, r = _pieces(gamma, c)
    p = c.Xt.shape[0]
    n = jnp.sum(c.w)
    f = jnp.sum(c.w * jnp.log(s) + u * r * r)
    if reml:
        return 0.5 * ((n - p) * LOG_2PI + f + logdet_A)
    return 0.5 * (n * LOG_2PI + f)


def columns_derivatives(gamma, c: DiagColumns, reml: bool):
    """(f, gradient, Hessian) in gamma (= ``batch.diag_derivatives``)."""
    t, s, u, A, b, logdet_A, A_inv, beta, r = _pieces(gamma, c)
    p = c.Xt.shape[0]
    n = jnp.sum(c.w)
    r2 = r * r
    base = jnp.sum(c.w * jnp.log(s) + u * r2)
    if reml:
        q = r2 + _quad(A_inv, c.Xt)
        f = 0.5 * ((n - p) * LOG_2PI + base + logdet_A)
    else:
        q = r2
        f = 0.5 * (n * LOG_2PI + base)
    u1, e, d = derivative_row_terms(c.w, c.v, t, s, u, q)
    g = jnp.sum(c.Zt * e, axis=-1)
    T = _cross(c.Xt, c.Zt, u1 * r)  # (p, k)
    H = _cross(c.Zt, c.Zt, d) - T.T @ A_inv @ T
    if reml:
        k = c.Zt.shape[0]
        P = jnp.stack([_cross(c.Xt, c.Xt, u1 * c.Zt[j]) for j in range(k)])  # (k, p, p)
        AP = jnp.einsum("ab,kbc->kac", A_inv, P)
        H = H - 0.5 * jnp.einsum("kab,lba->kl", AP, AP)
    H = 0.5 * (H + H.T)
    return f, g, H


def columns_post(c: DiagColumns, gamma, grad_phi, H_phi, reml: bool):
    """(beta, full gradient, covariance of (beta, gamma)) at the optimum
    (= ``batch._diag_post``; drmTMB's REML convention)."""
    t, s, u, A, b, logdet_A, A_inv, beta, r = _pieces(gamma, c)
    u1 = -u * (2.0 * t / s)
    T = _cross(c.Xt, c.Zt, u1 * r)
    J = A_inv @ T
    C = sym_inverse(H_phi)
    cross = J @ C
    vcov = jnp.block([[A_inv + cross @ J.T, cross], [cross.T, C]])
    score_beta = jnp.zeros_like(beta) if reml else A @ beta - b
    return beta, jnp.concatenate([score_beta, grad_phi]), vcov
