"""Many refits of the normal and a robust model in compiled, ``vmap``-ed batches.

The parametric-bootstrap outlier test (:mod:`drmpy.inference.outlier_test`) refits, for each of
many simulated responses, the normal model and the robust model (``student()`` or
``normal_mixture()``) with the same formulas.  Every simulated data set has the fitted design;
only ``y`` (and, when the sampling variances are resampled as metaplus does, ``v``) changes.
Two compiled programs, each ``jax.vmap``-ed over lanes, do the work:

1. :func:`normal_refits`: the normal (Gaussian, ML) refit of each replicate from the generating
   estimates, with the same likelihood code as the robust model
   (:func:`drmpy.robust.likelihood.loglik` with :class:`drmpy.families.Gaussian`; a ``(1|g)``
   integral is then Gaussian, which adaptive Gauss-Hermite quadrature integrates exactly), and
   the robust starts that :func:`drmpy.robust.program.start_values` would take from that refit
   (:func:`batch_starts`: the same starts as the fit of the observed data);
2. :func:`robust_refits`: one robust refit per lane (replicate x start).  ``student()`` without
   a random effect uses the one-pass value, gradient and Hessian of
   :func:`student_objective` (:mod:`drmpy.robust.student_derivatives`); other models automatic
   differentiation (with ``REFIT_NODES`` quadrature nodes, see there).  A t refit heading for
   ``nu = infinity`` stops at ``NU_BOUNDARY_LOG`` (see there).

:func:`fixed_parameter_refits` serves the profile likelihood: one refit per lane with one
parameter held fixed.  All use :func:`drmpy.engine.optimize.newton_trust_region` (or its step)
with the elementwise eigen-solver (:func:`drmpy.engine.small_linalg.jacobi_eigh`): batched
LAPACK kernels under ``vmap`` can deadlock on CPU.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.optimize import (CONVERGED_FLAT, RUNNING, newton_trust_region, trust_region_init,
                               trust_region_output, trust_region_step, value_grad_hessian)
from ..engine.small_linalg import jacobi_eigh
from ..families.base import Family
from ..families.student_marginal import FINE_NODES
from ..families.gaussian import Gaussian
from .likelihood import Layout, RobustArrays, loglik
from .student_derivatives import student_row_derivatives

# A student() refit stops at the boundary nu = infinity once nu exceeds exp(NU_BOUNDARY_LOG) on
# every row while its log-likelihood is not above the normal refit's by more than the boundary
# gain: there the t model differs from the normal by O(1/nu) per row, and Newton approaches
# infinity one unit of log(nu) per step (the objective is ~ A + B/nu), which would take as many
# steps again.
NU_BOUNDARY_LOG = math.log(1e5)

# Fine trapezoid nodes of the t marginal in the outlier test's robust refits (the fits themselves
# use the family's FINE_NODES = 256).  On a grid of 420 points (nu 0.3 to 1e6, sigma/sqrt(v)
# 1e-3 to 1e3, residuals up to 25 total SDs) against scipy's quad, 192 nodes err by at most
# 4.0e-9 of the density (at nu = 0.3, where the rule's window is widest; 256: 5.8e-12), which
# moves a simulated LRT statistic by ~1e-8, far below the boundary gain, and costs 3/4 of the time.
REFIT_NODES = 192

__all__ = ["StartPlan", "start_plan", "batch_starts", "normal_refits", "robust_refits", "normal_layout",
           "student_objective", "NormalRefits", "RobustRefits", "fixed_parameter_refits", "FixedRefits"]


class StartPlan(NamedTuple):
    """How the robust starts follow from a normal fit, as arrays (see :func:`start_plan`).

    ``intercepts[d]``: coefficients of the extra parameter ``d``'s design that give the constant
    1 (a constant c is ``c * intercepts[d]``); ``sigma_intercept`` likewise for sigma's design;
    ``sigma_mean``: the row mean of sigma's design (``mean(Xs @ b) = sigma_mean @ b``)."""

    intercepts: tuple[jax.Array, ...]
    sigma_intercept: jax.Array
    sigma_mean: jax.Array


def _unit_coefficients(X: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(X, np.ones(X.shape[0]), rcond=None)
    return coef


def start_plan(arrays: RobustArrays, layout: Layout, family: Family) -> StartPlan:
    """The arrays of :class:`StartPlan` for the designs in ``arrays`` (the optimiser's, as
    :func:`drmpy.robust.program.prepare_scaled` gives them: the starts are formed in its units)."""
    designs = {name: np.asarray(X) for (name, _, _), X in zip(layout.blocks, arrays.designs)}
    Xs = designs["sigma"]
    return StartPlan(tuple(jnp.asarray(_unit_coefficients(designs[d]), dtype=jnp.float64)
                           for d in family.estimated_extra_dpars),
                     jnp.asarray(_unit_coefficients(Xs), dtype=jnp.float64),
                     jnp.asarray(Xs.mean(axis=0), dtype=jnp.float64))


def _extra_settings(family: Family, total_sd: jax.Array) -> list[tuple[dict[str, jax.Array], float]]:
    """Per start: the constant value of each extra parameter (link scale) and the shift of
    log sigma; the same list as :func:`drmpy.robust.program.start_values`."""
    if family.name == "student":
        return [({"nu": jnp.asarray(math.log(4.0))}, 0.0), ({"nu": jnp.asarray(math.log(30.0))}, 0.0)]
    if family.name == "normal_mixture":
        def logit(p: float) -> float:
            return math.log(p / (1.0 - p))

        first = {"sigma_out": jnp.log(3.0 * total_sd), "p_out": jnp.asarray(logit(0.05))}
        return [(first, 0.0),
                ({"sigma_out": jnp.log(3.0 * total_sd), "p_out": jnp.asarray(logit(0.2))}, 0.0),
                ({"sigma_out": jnp.log(10.0 * total_sd), "p_out": jnp.asarray(logit(0.1))}, 0.0),
                (first, math.log(0.3))]  # the main component smaller than the normal model's
    return [({}, 0.0)]


def batch_starts(theta_normal: jax.Array, v: jax.Array, plan: StartPlan, family: Family, p_mu: int,
                 p_sigma: int) -> jax.Array:
    """(starts, k) robust start values from one normal fit ``theta_normal`` (mu, sigma, sd
    coefficients) and the replicate's sampling variances ``v``: those of
    :func:`drmpy.robust.program.start_values`, in JAX."""
    base_mu = theta_normal[:p_mu]
    base_sigma = theta_normal[p_mu:p_mu + p_sigma]
    rest = theta_normal[p_mu + p_sigma:]
    sigma_hat = jnp.exp(plan.sigma_mean @ base_sigma)
    total_sd = jnp.sqrt(sigma_hat**2 + jnp.median(v))
    starts = []
    for extra, sigma_shift in _extra_settings(family, total_sd):
        parts = [base_mu, base_sigma + sigma_shift * plan.sigma_intercept]
        parts += [extra[d] * plan.intercepts[i] for i, d in enumerate(family.estimated_extra_dpars)]
        parts.append(rest)
        starts.append(jnp.concatenate(parts))
    return jnp.stack(starts)


def normal_layout(layout: Layout, family: Family) -> Layout:
    """The Gaussian model's layout with the same mu, sigma and sd coefficients: the robust
    layout without the extra parameters' blocks."""
    blocks = tuple(b for b in layout.blocks if b[0] in ("mu", "sigma"))
    k_fixed = blocks[-1][2]
    sd_slice = None
    if layout.sd_slice is not None:
        width = layout.sd_slice[1] - layout.sd_slice[0]
        sd_slice = (k_fixed, k_fixed + width)
    return Layout(blocks, sd_slice, layout.n_groups)


def student_objective(arrays: RobustArrays, layout: Layout, nodes: int = FINE_NODES):
    """``theta -> (f, g, H)`` of ``-loglik`` for ``student()`` with nu estimated and no random
    effect, from :func:`~drmpy.robust.student_derivatives.student_row_derivatives`: the rows'
    ``(r, log sigma, log nu)`` are linear in theta (identity and log links), so
    ``g = -sum_i J_i' w_i d_i`` and ``H = -sum_i J_i' w_i D_i J_i`` with ``J_i`` the rows of the
    designs (``-X_mu`` for r)."""
    (_, a0, a1), (_, b0, b1), (_, c0, c1) = layout.blocks
    X_mu, X_s, X_nu = arrays.designs
    n = arrays.y.shape[0]
    k = c1

    def embed(X, start):
        return jnp.zeros((n, k), dtype=jnp.float64).at[:, start:start + X.shape[1]].set(X)

    J_r, J_s, J_m = embed(-X_mu, a0), embed(X_s, b0), embed(X_nu, c0)

    def derivatives(theta):
        r = arrays.y - X_mu @ theta[a0:a1]
        d = student_row_derivatives(r, arrays.v, X_s @ theta[b0:b1], X_nu @ theta[c0:c1], nodes)
        w = arrays.w
        f = -jnp.sum(w * d.value)
        g = -(J_r.T @ (w * d.r) + J_s.T @ (w * d.s) + J_m.T @ (w * d.m))

        def cross(Ja, Jb, dab):
            return Ja.T @ ((w * dab)[:, None] * Jb)

        rs, rm, sm = cross(J_r, J_s, d.rs), cross(J_r, J_m, d.rm), cross(J_s, J_m, d.sm)
        H = -(cross(J_r, J_r, d.rr) + cross(J_s, J_s, d.ss) + cross(J_m, J_m, d.mm)
              + rs + rs.T + rm + rm.T + sm + sm.T)
        return f, g, H

    return derivatives


def _uses_student_objective(layout: Layout, family: Family) -> bool:
    return (family.name == "student" and "nu" in family.estimated_extra_dpars and layout.sd_slice is None
            and tuple(b[0] for b in layout.blocks) == ("mu", "sigma", "nu"))


class NormalRefits(NamedTuple):
    """Per replicate: the normal refit's objective (-logLik), status and estimates, and the
    robust starts taken from it, (lanes, starts, k)."""

    f: jax.Array
    status: jax.Array
    theta: jax.Array
    starts: jax.Array


class RobustRefits(NamedTuple):
    """Per lane (one replicate and start): objective (-logLik), status, iterations, estimates."""

    f: jax.Array
    status: jax.Array
    iterations: jax.Array
    theta: jax.Array


@functools.partial(jax.jit, static_argnames=("layout", "family"))
def normal_refits(Y: jax.Array, V: jax.Array, arrays: RobustArrays, theta_normal0: jax.Array, plan: StartPlan,
                  max_iter: jax.Array, gtol: float, layout: Layout, family: Family) -> NormalRefits:
    """Refit the normal model (ML) to each row of ``Y`` (lanes, n) with sampling variances ``V``
    (lanes, n) from ``theta_normal0`` (the generating estimates), and form the robust starts
    from each refit (:func:`batch_starts`).  ``arrays`` supplies designs, weights and groups."""
    nlayout = normal_layout(layout, family)
    gaussian = Gaussian()
    p_mu = layout.blocks[0][2] - layout.blocks[0][1]
    p_sigma = layout.blocks[1][2] - layout.blocks[1][1]

    def one(y, v):
        narr = arrays._replace(y=y, v=v, designs=arrays.designs[:2])
        out = newton_trust_region(lambda th: -loglik(th, narr, nlayout, gaussian), theta_normal0,
                                  max_iter=max_iter, gtol=gtol, eigh=jacobi_eigh)
        return NormalRefits(out.f, out.status, out.x, batch_starts(out.x, v, plan, family, p_mu, p_sigma))

    return jax.vmap(one)(Y, V)


@functools.partial(jax.jit, static_argnames=("layout", "family"))
def robust_refits(theta0: jax.Array, Y: jax.Array, V: jax.Array, normal_f: jax.Array, arrays: RobustArrays,
                  max_iter: jax.Array, gtol: float, boundary_gain: float, layout: Layout,
                  family: Family) -> RobustRefits:
    """Refit the robust model from ``theta0`` (lanes, k) to ``Y`` and ``V`` (lanes, n), one lane
    each (``normal_f``: the lane's normal refit objective, for the boundary stop of student());
    ``student()`` without a random effect uses the one-pass derivatives
    (:func:`student_objective`), other models automatic differentiation of
    :func:`~drmpy.robust.likelihood.loglik`."""

    student_t = family.name == "student" and "nu" in family.estimated_extra_dpars
    if student_t:
        (_, n0, n1), = [b for b in layout.blocks if b[0] == "nu"]
        X_nu = arrays.designs[[b[0] for b in layout.blocks].index("nu")]

    def at_boundary(theta, f, f_normal):
        if not student_t:
            return jnp.asarray(False)
        return (jnp.min(X_nu @ theta[n0:n1]) > NU_BOUNDARY_LOG) & (f >= f_normal - boundary_gain)

    def one(th0, y, v, f_normal):
        arr = arrays._replace(y=y, v=v)
        if _uses_student_objective(layout, family):
            evaluate = student_objective(arr, layout, nodes=REFIT_NODES)
        else:
            evaluate = value_grad_hessian(lambda th: -loglik(th, arr, layout, family))

        def running(s):
            return (s.status == RUNNING) & ((s.it < max_iter) | (s.it < 0)) & ~((s.it >= 0) & at_boundary(s.x, s.f, f_normal))

        def step(s):
            return trust_region_step(s, evaluate, max_iter=max_iter, gtol=gtol, eigh=jacobi_eigh)

        final = jax.lax.while_loop(running, step, trust_region_init(th0))
        boundary = (final.status == RUNNING) & at_boundary(final.x, final.f, f_normal)
        out = trust_region_output(final)
        status = jnp.where(boundary, CONVERGED_FLAT, out.status)
        return RobustRefits(out.f, status, out.iterations, out.x)

    return jax.vmap(one)(theta0, Y, V, normal_f)


class FixedRefits(NamedTuple):
    """Per lane: the objective (-logLik) maximised with one parameter held fixed, the
    estimates there (the fixed one at its value) and the solver status."""

    f: jax.Array
    theta: jax.Array
    status: jax.Array


@functools.partial(jax.jit, static_argnames=("layout", "family"))
def fixed_parameter_refits(values: jax.Array, masks: jax.Array, theta0: jax.Array, arrays: RobustArrays,
                           max_iter: jax.Array, gtol: float, layout: Layout, family: Family) -> FixedRefits:
    """The profile points of a robust fit: per lane, maximise the log-likelihood over every
    parameter but the one where ``masks`` (lanes, k) is 1, which is held at ``values`` (lanes,),
    from ``theta0`` (lanes, k).  The held coordinate is kept at its value by a unit quadratic
    penalty in the solver's coordinates (so the Hessian stays regular); the objective reported
    is ``-logLik`` at the held value."""
    if _uses_student_objective(layout, family):
        full = student_objective(arrays, layout)
    else:
        full = value_grad_hessian(lambda th: -loglik(th, arrays, layout, family))

    def one(value, mask, th0):
        def derivatives(th):
            fixed = jnp.where(mask > 0, value, th)
            f, g, H = full(fixed)
            both = (mask[:, None] > 0) | (mask[None, :] > 0)
            H = jnp.where(both, jnp.diag(mask), H)
            return f + 0.5 * jnp.sum(mask * (th - value) ** 2), jnp.where(mask > 0, th - value, g), H

        out = newton_trust_region(None, jnp.where(mask > 0, value, th0), max_iter=max_iter, gtol=gtol,
                                  eigh=jacobi_eigh, derivatives=derivatives)
        fixed = jnp.where(mask > 0, value, out.x)
        return FixedRefits(full(fixed)[0], fixed, out.status)

    return jax.vmap(one)(values, masks, theta0)
