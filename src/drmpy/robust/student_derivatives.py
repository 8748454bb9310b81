"""The t marginal's log-density with its first and second derivatives, by the same quadrature.

``log f(r)`` of :func:`drmpy.families.student_marginal.student_normal_logpdf` is the log of a
trapezoid sum ``h sum_j exp(g_j)`` over nodes ``t_j`` (log of the gamma mixing variable) with

    g_j = log_gamma_mixing(t_j, nu) - (log 2 pi + log q_j + r^2 / q_j) / 2,
    q_j = v + sigma^2 exp(-t_j).

The nodes follow the window :func:`~drmpy.families.student_marginal.quadrature_window`, which
does not depend on the parameters to the rule's error (no derivatives flow through it).  So in
``(r, s = log sigma, m = log nu)`` the derivatives of ``log f`` are posterior moments over the
nodes, with weights ``p_j = exp(g_j) / sum exp(g)``:

    d log f = E[dg],     d2 log f = E[d2 g] + Cov(dg, dg),

and ``dg``, ``d2g`` per node are closed forms (``x = sigma^2 exp(-t)``, ``q = v + x``):
``g_r = -r/q``, ``g_rr = -1/q``, ``g_s = -x/q + r^2 x/q^2``, ``g_rs = 2 r x/q^2``,
``g_ss = -2 x v/q^2 + 2 r^2 x (q - 2x)/q^3``, ``g_m = c_m + (lgm - c)``,
``g_mm = c_mm + (lgm - c)`` with ``c = log_gamma_mixing(0, nu)`` (its derivatives in m by
forward differentiation, per row) and ``g_rm = g_sm = 0``.

This is one pass over the nodes per row for value, gradient and Hessian (automatic
second derivatives through the quadrature cost several passes); the batch refits of the outlier
test use it (:mod:`drmpy.robust.batch`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..families.student_marginal import FINE_NODES, log_gamma_mixing, quadrature_window

__all__ = ["StudentRowDerivatives", "student_row_derivatives"]

_LOG_2PI = math.log(2.0 * math.pi)


class StudentRowDerivatives(NamedTuple):
    """Per row: ``log f`` and its derivatives in ``r``, ``s = log sigma``, ``m = log nu``."""

    value: jax.Array
    r: jax.Array
    s: jax.Array
    m: jax.Array
    rr: jax.Array
    rs: jax.Array
    rm: jax.Array
    ss: jax.Array
    sm: jax.Array
    mm: jax.Array


def _gap_derivatives(m: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``c(m) = log_gamma_mixing(0, exp(m))`` and its first two derivatives in m (elementwise)."""

    def c(mm):
        return log_gamma_mixing(jnp.zeros_like(mm), jnp.exp(mm))

    def c_and_first(mm):
        return jax.jvp(c, (mm,), (jnp.ones_like(mm),))

    (value, first), (_, second) = jax.jvp(c_and_first, (m,), (jnp.ones_like(m),))
    return value, first, second


def student_row_derivatives(r: jax.Array, v: jax.Array, s: jax.Array, m: jax.Array,
                            nodes: int = FINE_NODES) -> StudentRowDerivatives:
    """``log f(r)`` of ``r = u + e``, ``u ~ t_nu(0, sigma)``, ``e ~ N(0, v)``, and its derivatives
    in ``r``, ``s = log sigma`` and ``m = log nu``, elementwise over 1-d arrays (see the module
    docstring).  ``nodes``: fine trapezoid nodes (the family's ``FINE_NODES`` reproduces
    :func:`~drmpy.families.student_marginal.student_normal_logpdf`)."""
    sigma = jnp.exp(s)
    nu = jnp.exp(m)
    lo, hi = quadrature_window(r, v, sigma, nu)
    u = jnp.linspace(0.0, 1.0, nodes, dtype=jnp.float64)
    h = (hi - lo) / (nodes - 1)
    t = lo[:, None] + (hi - lo)[:, None] * u  # (n, nodes)
    x = jnp.exp(2.0 * s[:, None] - t)
    q = v[:, None] + x
    rr_ = r[:, None]
    lgm = log_gamma_mixing(t, nu[:, None])
    g = lgm - 0.5 * (_LOG_2PI + jnp.log(q) + rr_ * rr_ / q)
    top = jnp.max(g, axis=1, keepdims=True)
    e = jnp.exp(g - top)
    total = jnp.sum(e, axis=1, keepdims=True)
    p = e / total
    value = jnp.log(total[:, 0]) + top[:, 0] + jnp.log(h)

    c, c_m, c_mm = _gap_derivatives(m)
    inv_q = 1.0 / q
    g_r = -rr_ * inv_q
    g_s = x * inv_q * (rr_ * rr_ * inv_q - 1.0)
    g_m = c_m[:, None] + (lgm - c[:, None])
    g_rr = -inv_q
    g_rs = 2.0 * rr_ * x * inv_q * inv_q
    g_ss = -2.0 * x * v[:, None] * inv_q * inv_q + 2.0 * rr_ * rr_ * x * (q - 2.0 * x) * inv_q**3
    g_mm = c_mm[:, None] + (lgm - c[:, None])

    def mean(a):
        return jnp.sum(p * a, axis=1)

    d_r, d_s, d_m = mean(g_r), mean(g_s), mean(g_m)
    cr, cs, cm = g_r - d_r[:, None], g_s - d_s[:, None], g_m - d_m[:, None]
    return StudentRowDerivatives(
        value, d_r, d_s, d_m,
        mean(g_rr) + mean(cr * cr), mean(g_rs) + mean(cr * cs), mean(cr * cm),
        mean(g_ss) + mean(cs * cs), mean(cs * cm), mean(g_mm) + mean(cm * cm))
