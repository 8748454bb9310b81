"""Fitting program of the robust families: arrays, start values, compiled Newton, boundary.

``fit_robust`` maximises the exact marginal likelihood (:mod:`drmpy.robust.likelihood`) with
:func:`drmpy.engine.optimize.newton_trust_region` (exact JAX gradient and Hessian, one
``jit`` per family and shapes) from a few starts built on the normal model's estimates, and
keeps the best.  For ``student()`` with nu estimated, the normal model is the boundary
``nu = infinity`` (``1/nu = 0``): when no t fit beats the normal fit's log-likelihood by more
than :data:`BOUNDARY_GAIN`, the normal estimates are reported with ``nu = inf`` and
``at_boundary = True`` (metaplus reports ``vinv = 0`` there).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.optimize import CONVERGED, CONVERGED_FLAT, newton_trust_region
from ..errors import DrmError, FormulaError, RandomEffectsError
from ..families.base import Family
from ..model.design import ModelDesign
from ..model.formula import Formula, family_dpar_names
from .likelihood import Layout, RobustArrays, loglik, row_values

__all__ = ["NormalReference", "RobustRaw", "fit_robust", "robust_formula", "prepare_robust"]

# a t fit must beat the normal fit's log-likelihood by more than this to leave the boundary
BOUNDARY_GAIN = 1e-6


class NormalReference(NamedTuple):
    """The normal (Gaussian, ML) fit of the same formulas: estimates (mu, sigma, sd order),
    covariance, log-likelihood, convergence."""

    theta: np.ndarray
    vcov: np.ndarray
    loglik: float
    converged: bool


@dataclass(frozen=True)
class RobustRaw:
    """What :func:`fit_robust` returns: the fields of :class:`drmpy.engine.program.RawFit` that
    results read (estimates on link scales in parameter order, covariance from the exact
    observed information, log-likelihood, solver status), plus the robust model's own."""

    theta: np.ndarray
    vcov: np.ndarray
    loglik: float
    gradient: np.ndarray
    hessian_min_eigenvalue: float
    status: int
    iterations: int
    evaluations: int
    sigma: np.ndarray
    row_values: dict = field(repr=False)
    at_boundary: bool = False  # student(): nu at infinity (the normal model fits as well)
    normal_loglik: float | None = None
    starts: int = 1
    start_logliks: tuple = ()
    boundary_gain: float = 0.0
    normal_theta: np.ndarray | None = field(default=None, repr=False)  # the normal model's estimates


def robust_formula(formula: Formula, family: Family) -> Formula:
    """The formula with the family's default ``dpar ~ 1`` for each estimated extra parameter;
    refuses formulas of fixed parameters and of other families' parameters."""
    owners = family_dpar_names()
    for d in formula.family_dpars:
        if d not in family.extra_dpars:
            raise FormulaError(f"`{formula.text[d]}`: {d} is a parameter of family {owners[d]}(), not of "
                               f"{family!r}.")
        if d in family.fixed_values:
            raise FormulaError(f"`{formula.text[d]}`: {d} is fixed at {family.fixed_values[d]:g} by "
                               f"{family!r}; drop its formula or estimate it with {family.name}().")
    return formula.with_dpar_defaults({d: "1" for d in family.estimated_extra_dpars})


def _check_design(design: ModelDesign, family: Family) -> None:
    if design.common_effect:
        raise FormulaError(f"sigma ~ 0 (no random effect) leaves nothing for {family!r} to model; "
                           "give sigma a formula (sigma ~ 1).")
    if not design.known_v.is_diagonal:
        raise DrmError(f"{family!r} needs a diagonal V (independent sampling errors, one v_i per row); "
                       "the given V has off-diagonal entries.")
    if len(design.random) > 1:
        raise RandomEffectsError(f"{family!r} takes at most one random-effect term, a Gaussian `(1|study)`; "
                                 f"this model has {len(design.random)}.")
    for rd in design.random:
        if rd.is_relmat or rd.n_coef != 1 or not rd.term.intercept:
            raise RandomEffectsError(f"`{rd.term.text}`: {family!r} takes a Gaussian random intercept "
                                     "`(1|study)` only (no slopes, relmat or phylo).")
    if design.random and design.weights is not None and np.any(design.weights != 1.0):
        raise DrmError("weights: non-unit weights with a random effect are not supported.")


def prepare_robust(design: ModelDesign, family: Family) -> tuple[RobustArrays, Layout]:
    """Device arrays and the parameter layout of one model."""
    _check_design(design, family)
    blocks = []
    designs = []
    start = 0
    for d in family.dpars:
        X = design.fixed[d].matrix
        blocks.append((d, start, start + X.shape[1]))
        designs.append(jnp.asarray(X, dtype=jnp.float64))
        start += X.shape[1]
    n = design.nobs
    if design.random:
        rd = design.random[0]
        sd = rd.sd_designs[0].matrix
        sd_slice: tuple[int, int] | None = (start, start + sd.shape[1])
        group = jnp.asarray(rd.level_index, dtype=jnp.int32)
        sd_design = jnp.asarray(sd, dtype=jnp.float64)
        n_groups = rd.n_levels
    else:
        sd_slice, n_groups = None, 0
        group = jnp.zeros(n, dtype=jnp.int32)
        sd_design = jnp.zeros((0, 0), dtype=jnp.float64)
    w = np.ones(n) if design.weights is None else design.weights
    arrays = RobustArrays(jnp.asarray(design.y, dtype=jnp.float64), jnp.asarray(design.known_v.diag, dtype=jnp.float64),
                          jnp.asarray(w, dtype=jnp.float64), tuple(designs), group, sd_design)
    return arrays, Layout(tuple(blocks), sd_slice, n_groups)


@functools.partial(jax.jit, static_argnames=("layout", "family"))
def _solve(theta0, arrays, max_iter, gtol, layout: Layout, family: Family):
    def objective(theta):
        return -loglik(theta, arrays, layout, family)

    return newton_trust_region(objective, theta0, max_iter=max_iter, gtol=gtol)


def _intercept_coefficients(X: np.ndarray, value: float) -> np.ndarray:
    """Coefficients giving the constant ``value`` on the design X (least squares)."""
    coef, *_ = np.linalg.lstsq(X, np.full(X.shape[0], value), rcond=None)
    return coef


def start_values(design: ModelDesign, family: Family, normal: NormalReference) -> list[np.ndarray]:
    """Starts from the normal fit: its mu and sigma coefficients (and sd), each extra parameter
    at a few constant values (nu 4 and 30; p_out 0.05 and 0.2 with sigma_out 3 times the
    total SD)."""
    p_mu = design.fixed["mu"].matrix.shape[1]
    p_sigma = design.fixed["sigma"].matrix.shape[1]
    base_mu = normal.theta[:p_mu]
    base_sigma = normal.theta[p_mu:p_mu + p_sigma]
    rest = normal.theta[p_mu + p_sigma:]
    sigma_hat = float(np.exp(np.mean(design.fixed["sigma"].matrix @ base_sigma)))
    total_sd = math.sqrt(sigma_hat**2 + float(np.median(design.known_v.diag)))
    extras: list[dict[str, float]]
    if family.name == "student":
        extras = [{"nu": math.log(4.0)}, {"nu": math.log(30.0)}]
    elif family.name == "normal_mixture":
        extras = [{"sigma_out": math.log(3.0 * total_sd), "p_out": math.log(p / (1 - p))} for p in (0.05, 0.2)]
        extras += [{"sigma_out": math.log(10.0 * total_sd), "p_out": math.log(0.1 / 0.9)}]
    else:
        extras = [{}]
    starts = []
    for ex in extras:
        parts = [base_mu, base_sigma]
        for d in family.estimated_extra_dpars:
            parts.append(_intercept_coefficients(design.fixed[d].matrix, ex[d]))
        parts.append(rest)
        starts.append(np.concatenate(parts))
    if family.name == "normal_mixture":  # the main component smaller than the normal model's
        shrunk = starts[0].copy()
        shrunk[p_mu:p_mu + p_sigma] = base_sigma + _intercept_coefficients(design.fixed["sigma"].matrix, math.log(0.3))
        starts.append(shrunk)
    return starts


def _finish(theta: np.ndarray, hessian: np.ndarray) -> tuple[np.ndarray, float]:
    """Covariance (inverse observed information) and the Hessian's smallest eigenvalue."""
    evals = np.linalg.eigvalsh(hessian)
    try:
        vcov = np.linalg.inv(hessian) if evals[0] > 0 else np.linalg.pinv(hessian)
    except np.linalg.LinAlgError:
        vcov = np.full_like(hessian, np.nan)
    return vcov, float(evals[0])


def fit_robust(design: ModelDesign, family: Family, control: Any, normal: NormalReference) -> RobustRaw:
    """Maximum-likelihood fit of ``design`` under ``family`` (see the module docstring)."""
    arrays, layout = prepare_robust(design, family)
    results = []
    for theta0 in start_values(design, family, normal):
        out = _solve(jnp.asarray(theta0, dtype=jnp.float64), arrays, jnp.asarray(int(control.max_iter)),
                     float(control.gtol), layout, family)
        f = float(out.f)
        results.append((f if np.isfinite(f) and np.all(np.isfinite(np.asarray(out.x))) else np.inf, out))
    best_f, best = min(results, key=lambda fo: fo[0])
    theta = np.asarray(best.x, dtype=np.float64)
    ll = -best_f
    status = int(best.status)
    gradient = np.asarray(best.grad)
    vcov, min_eval = _finish(theta, np.asarray(best.hess))
    values = row_values(theta, arrays, layout, family)
    start_ll = tuple(-fo[0] for fo in results)
    at_boundary = False
    if family.name == "student" and "nu" in family.estimated_extra_dpars and (
            not np.isfinite(ll) or ll <= normal.loglik + BOUNDARY_GAIN):
        # the normal model (nu = infinity) is as good: report it, nu at its boundary
        at_boundary = True
        theta, vcov = _boundary_estimates(design, family, normal, layout)
        ll = normal.loglik
        status = CONVERGED if normal.converged else status
        gradient = np.zeros_like(theta)
        min_eval = float("nan")
        values = _boundary_row_values(design, normal)
    elif status not in (CONVERGED, CONVERGED_FLAT) and not np.isfinite(ll):
        raise DrmError(f"{family!r}: the likelihood is not finite at any start; check the data.")
    return RobustRaw(theta=theta, vcov=vcov, loglik=float(ll), gradient=gradient, hessian_min_eigenvalue=min_eval,
                     status=status, iterations=int(best.iterations), evaluations=int(best.evaluations),
                     sigma=values["sigma"], row_values=dict(values), at_boundary=at_boundary,
                     normal_loglik=float(normal.loglik), starts=len(results), start_logliks=start_ll,
                     normal_theta=np.asarray(normal.theta, dtype=np.float64))


def _boundary_estimates(design: ModelDesign, family: Family, normal: NormalReference, layout: Layout):
    """The normal fit's estimates in the t model's layout, ``nu`` coefficients at +inf (its
    intercept; 0 for other columns) with no standard errors."""
    k = len(normal.theta) + sum(stop - start for d, start, stop in layout.blocks if d == "nu")
    theta = np.empty(k)
    vcov = np.full((k, k), np.nan)
    (_, nu_start, nu_stop), = [b for b in layout.blocks if b[0] == "nu"]
    keep = np.r_[0:nu_start, nu_stop:k]
    theta[keep] = normal.theta
    vcov[np.ix_(keep, keep)] = normal.vcov
    nu_terms = design.fixed["nu"].terms
    theta[nu_start:nu_stop] = [np.inf if t == "(Intercept)" else 0.0 for t in nu_terms]
    return theta, vcov


def _boundary_row_values(design: ModelDesign, normal: NormalReference) -> dict:
    p_mu = design.fixed["mu"].matrix.shape[1]
    Xs = design.fixed["sigma"].matrix
    return {"mu": design.fixed["mu"].matrix @ normal.theta[:p_mu],
            "sigma": np.exp(Xs @ normal.theta[p_mu:p_mu + Xs.shape[1]]),
            "nu": np.full(design.nobs, np.inf)}
