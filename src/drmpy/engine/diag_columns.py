"""The diagonal-V location-scale model for one large fit, with the row sums of each pass
over the data in one reduction.

Same closed form as :func:`drmpy.engine.batch.diag_derivatives` (see that module's
docstring for the formulas), written for a single fit with many rows: the designs are
held as columns (one ``(N,)`` array per column; a ``(p, N)`` array also works, slower)
and every weighted cross-product ``sum_i c_i a_i b_i`` is one operand of a variadic
reduction (:func:`_row_sums`), so that one pass over the rows computes all the sums that
depend on the same row values.  An evaluation of the derivatives is two such passes: the
location pieces (``A``, ``b``, ``sum w log s``), then, with ``beta`` and ``A^-1``, the
gradient and Hessian sums.  At n = 1e6 a separate reduction per sum costs about 1.5 ms
each, the variadic one about as much as two of them for a dozen sums; the matrix-product
form (``(X * c).T @ Z``) is an XLA ``dot`` with a long contraction, slower still.  Used
by :func:`drmpy.engine.program._diag_closed_form_fn` when ``p`` and ``k`` are small
(:data:`MAX_COLUMNS`), and vmapped by the optimiser loop of
:func:`drmpy.engine.batch.pool_program` (``fit_batch``, with ``(p, N)`` columns).  Not
differentiable by JAX (the variadic reduction has no derivative rule): the derivatives are
the closed form.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .batch import _location, _solve_small, derivative_row_terms, location_covariance
from .likelihood import gaussian_objective
from .start import start_variance_from_sums

__all__ = ["MAX_COLUMNS", "DiagColumns", "Location", "columns", "columns_derivatives", "columns_value",
           "location_post", "loop_derivatives", "columns_start_values",
           "columns_zero_variance_fit", "row_combination"]


# the unrolled sums grow as p^2 k: beyond this many columns the matrix form is used
MAX_COLUMNS = 6


class DiagColumns(NamedTuple):
    """One fit's arrays by column; padding rows have w = 0, v = 1."""

    y: jax.Array  # (N,) response minus X beta0
    Xt: tuple | jax.Array  # location design: p columns of shape (N,) (or a (p, N) array)
    Zt: tuple | jax.Array  # sigma design: k columns of shape (N,) (or a (k, N) array)
    v: jax.Array  # (N,)
    w: jax.Array  # (N,)


class Location(NamedTuple):
    """The location pieces at gamma that the covariance at the optimum needs."""

    beta: jax.Array  # (p,) GLS estimate (of y centred at beta0)
    A: jax.Array  # (p, p) X' S^-1 X
    b: jax.Array  # (p,) X' S^-1 y
    A_inv: jax.Array  # (p, p)
    T: jax.Array  # (p, k) sum_i x_i (u'_i r_i z_i)'


def columns(M: jax.Array) -> tuple:
    """The columns of an (N, m) design as m separate (N,) arrays (contiguous, so that the
    reductions read them directly; rows of a (m, N) array are slower operands)."""
    return tuple(M[:, j] for j in range(M.shape[1]))


def _row_sums(terms) -> jax.Array:
    """``[sum_i a_i for a in terms]``: every (N,) row term reduced in one variadic reduction
    (one pass over the rows; separate sums would each read their inputs again)."""
    terms = tuple(terms)
    zeros = tuple(jnp.zeros((), t.dtype) for t in terms)
    sums = lax.reduce(terms, zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), (0,))
    return jnp.stack(sums)


def _pairs(m: int) -> list[tuple[int, int]]:
    """Index pairs (a, b), a <= b, of a symmetric m x m matrix, row by row."""
    return [(a, b) for a in range(m) for b in range(a, m)]


def _symmetric(entries, m: int) -> jax.Array:
    """The symmetric m x m matrix from its ``_pairs(m)`` entries."""
    pos = {pair: i for i, pair in enumerate(_pairs(m))}
    return jnp.stack([jnp.stack([entries[pos[(min(a, b), max(a, b))]] for b in range(m)]) for a in range(m)])


def _gram_terms(weight, Ft) -> list:
    """Row terms of ``F' diag(weight) F``, one per entry of its upper triangle (``_pairs``)."""
    return [weight * Ft[a] * Ft[b] for a, b in _pairs(len(Ft))]


def _gls_sums(u, X, y, extra=()):
    """``(A = X'UX, b = X'Uy, sums of the extra row terms)`` from one pass over the rows."""
    p = len(X)
    uy = u * y
    sums = _row_sums(_gram_terms(u, X) + [uy * X[a] for a in range(p)] + list(extra))
    n_pairs = p * (p + 1) // 2
    return _symmetric(sums[:n_pairs], p), sums[n_pairs : n_pairs + p], sums[n_pairs + p :]


def row_combination(coef, Ft):
    """Row values ``F coef`` (sum over the short column axis, unrolled)."""
    out = coef[0] * Ft[0]
    for j in range(1, len(Ft)):
        out = out + coef[j] * Ft[j]
    return out


def _quad(M, Ft):
    """Row values ``f_i' M f_i`` for a small symmetric M (unrolled)."""
    m = len(Ft)
    out = M[0, 0] * Ft[0] * Ft[0]
    for a in range(m):
        for b in range(a, m):
            if a == b == 0:
                continue
            coef = M[a, b] if a == b else 2.0 * M[a, b]
            out = out + coef * Ft[a] * Ft[b]
    return out


def _pieces(gamma, c: DiagColumns):
    """Row values and location pieces at gamma, from one pass over the rows."""
    data = c.w > 0
    t = jnp.where(data, jnp.exp(2.0 * row_combination(gamma, c.Zt)), 0.0)
    s = jnp.where(data, c.v + t, 1.0)
    u = c.w / s
    A, b, (sum_log_s,) = _gls_sums(u, c.Xt, c.y, [c.w * jnp.log(s)])
    logdet_A, A_inv, beta = _location(A, b)
    r = c.y - row_combination(beta, c.Xt)
    return t, s, u, A, b, logdet_A, A_inv, beta, r, sum_log_s


def columns_value(gamma, c: DiagColumns, reml: bool):
    """Negative (restricted) log-likelihood at gamma (= ``batch.diag_value``)."""
    t, s, u, A, b, logdet_A, A_inv, beta, r, sum_log_s = _pieces(gamma, c)
    p = len(c.Xt)
    n, sum_ur2 = _row_sums([c.w, u * r * r])
    return gaussian_objective(n, p, sum_log_s + sum_ur2, logdet_A, reml)


def columns_derivatives(gamma, c: DiagColumns, reml: bool, location: bool = False):
    """(f, gradient, Hessian) in gamma (= ``batch.diag_derivatives``); with ``location``
    also the :class:`Location` pieces at gamma (for :func:`location_post` without another
    pass over the rows)."""
    t, s, u, A, b, logdet_A, A_inv, beta, r, sum_log_s = _pieces(gamma, c)
    X, Z = c.Xt, c.Zt
    p, k = len(X), len(Z)
    r2 = r * r
    q = r2 + _quad(A_inv, X) if reml else r2
    u1, e, d = derivative_row_terms(c.w, c.v, t, s, u, q)
    u1r = u1 * r
    # the second pass: every sum that needs beta (and A^-1), in one reduction
    terms = [c.w, u * r2] + [Z[j] * e for j in range(k)]
    terms += [X[a] * (Z[j] * u1r) for a in range(p) for j in range(k)]  # T, (p, k)
    terms += [Z[j] * Z[l] * d for j, l in _pairs(k)]  # Z' diag(d) Z
    if reml:  # P_j = sum_i u1_i z_ij x_i x_i'
        terms += [(u1 * Z[j]) * X[a] * X[b_] for j in range(k) for a, b_ in _pairs(p)]
    sums = _row_sums(terms)
    n, sum_ur2 = sums[0], sums[1]
    g = sums[2 : 2 + k]
    pos = 2 + k
    T = sums[pos : pos + p * k].reshape(p, k)
    pos += p * k
    n_kk = k * (k + 1) // 2
    H = _symmetric(sums[pos : pos + n_kk], k) - T.T @ A_inv @ T
    pos += n_kk
    base = sum_log_s + sum_ur2
    if reml:
        n_pp = p * (p + 1) // 2
        P = jnp.stack([_symmetric(sums[pos + j * n_pp : pos + (j + 1) * n_pp], p) for j in range(k)])  # (k, p, p)
        AP = jnp.einsum("ab,kbc->kac", A_inv, P)
        H = H - 0.5 * jnp.einsum("kab,lba->kl", AP, AP)
    f = gaussian_objective(n, p, base, logdet_A, reml)
    H = 0.5 * (H + H.T)
    if location:
        return f, g, H, Location(beta, A, b, A_inv, T)
    return f, g, H


def loop_derivatives(c: DiagColumns, reml: bool, location: bool = False):
    """:func:`columns_derivatives` as the ``derivatives`` of a Newton loop over ``c``.

    The columns pass an optimisation barrier together with gamma: otherwise XLA hoists the
    loop-invariant row products (``x_a x_b``, ``z_j z_l``, ...) out of the loop as extra
    (N,) arrays, which costs their computation on every call and makes each pass of the
    loop read more arrays (about 20% slower at n = 1e6)."""

    def evaluate(gamma):
        gamma, cols = lax.optimization_barrier((gamma, c))
        return columns_derivatives(gamma, cols, reml, location)

    return evaluate


def location_post(loc: Location, grad_phi, H_phi, reml: bool):
    """(beta, full gradient, covariance of (beta, gamma)) at the optimum from the location
    pieces of its last evaluation (:func:`drmpy.engine.batch.location_covariance`)."""
    grad, vcov = location_covariance(loc.beta, loc.A, loc.b, loc.A_inv, loc.T, grad_phi, H_phi, reml)
    return loc.beta, grad, vcov


def columns_zero_variance_fit(c: DiagColumns, reml: bool) -> dict:
    """:func:`drmpy.engine.batch.zero_variance_fit` (the model with sigma = 0) in the column
    layout: ``f``, ``beta`` and ``var_beta``."""
    data = c.w > 0
    positive = data & (c.v > 0)
    u = jnp.where(positive, c.w / jnp.where(positive, c.v, 1.0), 0.0)
    A, b, (n, sum_log_v) = _gls_sums(u, c.Xt, c.y, [c.w, c.w * jnp.log(jnp.where(data, c.v, 1.0))])
    logdet_A, A_inv, beta = _location(A, b)
    r = c.y - row_combination(beta, c.Xt)
    base = sum_log_v + _row_sums([u * r * r])[0]
    return dict(f=gaussian_objective(n, len(c.Xt), base, logdet_A, reml), beta=beta, var_beta=jnp.diagonal(A_inv))


def columns_start_values(c: DiagColumns):
    """(beta0, gamma0) of :func:`drmpy.engine.start.diag_start_values` in the column layout
    (``c.y`` the raw response): OLS for beta, sigma^2 from :func:`~drmpy.engine.start.start_variance_from_sums`,
    sigma coefficients that reproduce ``0.5 log sigma^2`` by least squares.  Two passes over the
    rows, where the matrix form's products are batched XLA dots (slow for these small
    matrices under vmap)."""
    X, Z, y, v, w = c.Xt, c.Zt, c.y, c.v, c.w
    p, k = len(X), len(Z)
    data = w > 0
    positive = data & (v > 0)
    wi = jnp.where(positive, w / jnp.where(positive, v, 1.0), 0.0)
    wy, wiy = w * y, wi * y
    terms = (_gram_terms(w, X) + [wy * X[a] for a in range(p)]
             + _gram_terms(wi, X) + [wiy * X[a] for a in range(p)]
             + _gram_terms(wi * wi, X)
             + _gram_terms(w, Z) + [w * Z[j] for j in range(k)]
             + [w, w * v, wi, (data & (v <= 0)).astype(w.dtype)])
    sums = _row_sums(terms)
    n_pp, pos = p * (p + 1) // 2, 0

    def take(m):
        nonlocal pos
        out = sums[pos : pos + m]
        pos += m
        return out

    XtWX, XtWy = _symmetric(take(n_pp), p), take(p)
    XtWiX, XtWiy = _symmetric(take(n_pp), p), take(p)
    XtWi2X = _symmetric(take(n_pp), p)
    ZtWZ, ZtW1 = _symmetric(take(k * (k + 1) // 2), k), take(k)
    n, sum_wv, sum_wi, nonpositive = take(4)
    beta0 = _solve_small(XtWX, XtWy[:, None])[:, 0]
    sol = _solve_small(XtWiX, jnp.concatenate([XtWiy[:, None], XtWi2X], axis=1))
    bw = sol[:, 0]
    r = (y - row_combination(beta0, X)) * data
    rw = y - row_combination(bw, X)
    sum_wr2, sum_wr, Q = _row_sums([w * r * r, w * r, wi * rw * rw])
    tau2_sigma = start_variance_from_sums(n, p, Q, sum_wi - jnp.trace(sol[:, 1:]), nonpositive == 0, sum_wr2, sum_wr, sum_wv)
    gamma0 = _solve_small(ZtWZ, ZtW1[:, None])[:, 0] * (0.5 * jnp.log(tau2_sigma))
    return beta0, gamma0
