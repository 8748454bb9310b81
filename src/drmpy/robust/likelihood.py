"""Marginal log-likelihood of a robust random-effects model with known diagonal V.

Parameter vector ``theta`` (link scales): the coefficients of each row-level parameter in
the family's order (mu, sigma, then e.g. nu), then the log-SD coefficients of a Gaussian
``(1|g)`` random intercept when the model has one.

Without a random effect the rows are independent: ``sum_i w_i log f(y_i - mu_i; v_i, sigma_i, ...)``
with ``f`` the family's marginal density (:meth:`drmpy.families.Family.logpdf`).

With ``(1|g)``: ``y_ij = mu_ij + b_j + u_ij + e_ij``, ``b_j ~ N(0, tau_j^2)``, and study j's
likelihood ``L_j = integral of N(b; 0, tau_j^2) prod_i f(y_ij - mu_ij - b) db`` is computed by
a trapezoid rule (``B_NODES`` nodes) in ``z``, ``b = mode + scale sinh(z)``, centred at the mode
of the integrand with its curvature as scale (as adaptive Gauss-Hermite, Liu and Pierce 1994,
but with geometrically growing reach for far humps and t tails); mode and scale are found by a
fixed number of safeguarded Newton steps and enter through ``stop_gradient`` (the integral does
not depend on them, to the rule's error).
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..families.base import Family, inverse_link

__all__ = ["Layout", "RobustArrays", "negative_loglik", "row_parameters", "group_posterior_nodes", "B_NODES"]

# The integrand over b can be two-humped (a study holding an outlier: a hump where the outlier's
# own density peaks, far from the mode) and its tails are those of the t.  Gauss-Hermite at the
# mode with the mode's curvature as scale needed 128 nodes to reach 1e-11 on the test's small
# case (64: 1e-6).  The trapezoid in z with b = mode + scale sinh(z) places nodes at the
# mode's resolution near it and spaces them geometrically out to mode +- (|mode| + 12 tau)
# (beyond, the prior is below exp(-72)), so a far hump of any position is resolved by a fixed
# node count; the rule converges geometrically in its step (the integrand is analytic).
B_NODES = 129  # converged on the test case (the 257-node value to 1e-15)
PRIOR_REACH = 12.0
MODE_STEPS = 16
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class Layout(NamedTuple):
    """Static description of theta: ``(dpar, start, stop)`` per row-level parameter in order,
    the slice of the random-intercept SD coefficients (or None) and the number of groups."""

    blocks: tuple[tuple[str, int, int], ...]
    sd_slice: tuple[int, int] | None
    n_groups: int


class RobustArrays(NamedTuple):
    """Device arrays of one model: response, known variances, row weights, one design per
    row-level parameter (in ``Layout.blocks`` order), and for ``(1|g)`` the group of each row
    and the design of the log-SD per group."""

    y: jax.Array
    v: jax.Array
    w: jax.Array
    designs: tuple[jax.Array, ...]
    group: jax.Array
    sd_design: jax.Array


def row_parameters(theta: jax.Array, arrays: RobustArrays, layout: Layout, family: Family
                   ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """``mu_i``, ``sigma_i`` and the extra parameters per row on their response scales (fixed
    extra parameters of the family broadcast to every row)."""
    values = {}
    for (dpar, start, stop), X in zip(layout.blocks, arrays.designs):
        values[dpar] = inverse_link(family.link(dpar), X @ theta[start:stop])
    extra = {d: values[d] for d in family.estimated_extra_dpars}
    for d, value in family.fixed_values.items():
        extra[d] = jnp.full(arrays.y.shape, value, dtype=jnp.float64)
    return values["mu"], values["sigma"], extra


def _row_logpdf(family: Family, r, v, sigma, extra):
    return family.logpdf(r, v, sigma, extra)


def _row_derivatives(family: Family, r, v, sigma, extra):
    """First and second derivatives of each row's log f(r - b) in b at b = 0 (elementwise)."""

    def total(shift):
        return jnp.sum(_row_logpdf(family, r - shift, v, sigma, extra))

    zero = jnp.zeros_like(r)
    d1, d2 = jax.jvp(jax.grad(total), (zero,), (jnp.ones_like(r),))
    return d1, d2


def group_modes(r, v, sigma, extra, group, tau, family: Family, n_groups: int):
    """Mode and curvature scale of each group's integrand ``log N(b; 0, tau^2) + sum_i log f(r_i - b)``
    (no derivatives flow through them)."""
    r, v, sigma, tau = (jax.lax.stop_gradient(x) for x in (r, v, sigma, tau))
    extra = {k: jax.lax.stop_gradient(x) for k, x in extra.items()}
    prec = 1.0 / (v + sigma * sigma)
    # start: the Gaussian approximation's posterior mean of b
    num = jax.ops.segment_sum(r * prec, group, n_groups)
    den = jax.ops.segment_sum(prec, group, n_groups) + 1.0 / (tau * tau)
    b = num / den

    def step(b, _):
        d1, d2 = _row_derivatives(family, r - b[group], v, sigma, extra)
        g = jax.ops.segment_sum(d1, group, n_groups) - b / (tau * tau)
        c = -jax.ops.segment_sum(d2, group, n_groups) + 1.0 / (tau * tau)
        # safeguarded Newton: a curvature below the prior's is replaced by the prior's, and a
        # step is at most three prior SDs (the integrand may not be log-concave)
        c = jnp.maximum(c, 1.0 / (tau * tau))
        return b + jnp.clip(g / c, -3.0 * tau, 3.0 * tau), None

    b, _ = jax.lax.scan(step, b, None, length=MODE_STEPS)
    _, d2 = _row_derivatives(family, r - b[group], v, sigma, extra)
    curvature = -jax.ops.segment_sum(d2, group, n_groups) + 1.0 / (tau * tau)
    scale = 1.0 / jnp.sqrt(jnp.maximum(curvature, 0.25 / (tau * tau)))
    return b, scale


def _group_terms(r, v, sigma, extra, group, tau, family: Family, n_groups: int):
    """The trapezoid in z with ``b = mode + scale sinh(z)`` for every group: nodes ``b``
    (K, groups) and the log of (rule weight x prior x the group's rows' densities) at each."""
    mode, scale = group_modes(r, v, sigma, extra, group, tau, family, n_groups)
    reach = jax.lax.stop_gradient(jnp.abs(mode) + PRIOR_REACH * tau)
    z_max = jnp.arcsinh(reach / scale)  # the nodes reach mode +- reach
    u = jnp.linspace(-1.0, 1.0, B_NODES, dtype=jnp.float64)
    z = u[:, None] * z_max[None, :]  # (K, groups)
    b = mode[None, :] + scale[None, :] * jnp.sinh(z)
    log_weight = jnp.log(2.0 * z_max / (B_NODES - 1) * scale)[None, :] + jnp.log(jnp.cosh(z))
    rows = _row_logpdf(family, r[None, :] - b[:, group], v[None, :], sigma[None, :],
                       {k: e[None, :] for k, e in extra.items()})  # (K, n)
    per_group = jax.vmap(lambda row: jax.ops.segment_sum(row, group, n_groups))(rows)
    prior = -_LOG_SQRT_2PI - jnp.log(tau)[None, :] - 0.5 * (b / tau[None, :]) ** 2
    return b, log_weight + prior + per_group


def _group_loglik(r, v, sigma, extra, group, tau, family: Family, n_groups: int):
    """Sum over groups of log L_j (:func:`_group_terms`)."""
    _, terms = _group_terms(r, v, sigma, extra, group, tau, family, n_groups)
    return jnp.sum(jax.scipy.special.logsumexp(terms, axis=0))


def group_posterior_nodes(theta: jax.Array, arrays: RobustArrays, layout: Layout, family: Family):
    """For a model with ``(1|g)``: the quadrature nodes of each group's effect ``b`` (K, groups),
    their normalised posterior weights ``p(b_k | y_g)`` at ``theta`` (K, groups; each column
    sums to 1), and the rows' residuals ``r = y - mu`` and parameters (sigma, extras), so that
    posterior expectations of row quantities are weighted sums over the nodes."""
    if layout.sd_slice is None:
        raise ValueError("group_posterior_nodes: the model has no (1|g) effect")
    mu, sigma, extra = row_parameters(theta, arrays, layout, family)
    r = arrays.y - mu
    start, stop = layout.sd_slice
    tau = jnp.exp(arrays.sd_design @ theta[start:stop])
    b, terms = _group_terms(r, arrays.v, sigma, extra, arrays.group, tau, family, layout.n_groups)
    weights = jnp.exp(terms - jax.scipy.special.logsumexp(terms, axis=0, keepdims=True))
    return b, weights, r, sigma, extra


def loglik(theta: jax.Array, arrays: RobustArrays, layout: Layout, family: Family) -> jax.Array:
    """Marginal log-likelihood at ``theta`` (ML)."""
    mu, sigma, extra = row_parameters(theta, arrays, layout, family)
    r = arrays.y - mu
    if layout.sd_slice is None:
        return jnp.sum(arrays.w * _row_logpdf(family, r, arrays.v, sigma, extra))
    start, stop = layout.sd_slice
    tau = jnp.exp(arrays.sd_design @ theta[start:stop])
    return _group_loglik(r, arrays.v, sigma, extra, arrays.group, tau, family, layout.n_groups)


def negative_loglik(theta: jax.Array, arrays: RobustArrays, layout: Layout, family: Family) -> jax.Array:
    return -loglik(theta, arrays, layout, family)


def row_values(theta: np.ndarray, arrays: RobustArrays, layout: Layout, family: Family
               ) -> Mapping[str, np.ndarray]:
    """Every row-level parameter on its response scale, numpy (for result tables)."""
    mu, sigma, extra = row_parameters(jnp.asarray(theta), arrays, layout, family)
    out = {"mu": np.asarray(mu), "sigma": np.asarray(sigma)}
    out.update({k: np.asarray(x) for k, x in extra.items()})
    return out
