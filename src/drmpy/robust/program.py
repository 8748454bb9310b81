"""Fitting program of the robust families: arrays, start values, compiled Newton, boundary.

``fit_robust`` maximises the exact marginal likelihood (:mod:`drmpy.robust.likelihood`) with
:func:`drmpy.engine.optimize.newton_trust_region` (exact JAX gradient and Hessian, one
``jit`` per family and shapes) from a few starts built on the normal model's estimates, and
keeps the best.  For ``student()`` with nu estimated, the normal model is the boundary
``nu = infinity`` (``1/nu = 0``): when no t fit beats the normal fit's log-likelihood by more
than :data:`BOUNDARY_GAIN`, the normal estimates are reported with ``nu = inf`` and
``at_boundary = True`` (metaplus reports ``vinv = 0`` there).

The optimiser works in the response's own units (:class:`ResponseScale`): it sees ``y / c`` and
``v / c^2`` with ``c`` a power of two near the data's typical SD, and the estimates, covariance
and log-likelihood are mapped back exactly, so a fit does not depend on the units of ``y``
(the data multiplied by 1e-6 or 1e6 converge as the original; without it the trust region
crawled on curvatures of order 1/v = 1e12 and stopped at the iteration limit).
"""

from __future__ import annotations

import dataclasses

import functools
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.likelihood import Structure
from ..engine.optimize import CONVERGED, CONVERGED_FLAT, newton_trust_region
from ..engine.program import RawFit
from ..errors import DataError, DrmError, FormulaError, RandomEffectsError
from ..families.base import Family
from ..model.design import ModelDesign
from ..model.formula import Formula, family_dpar_names
from .likelihood import Layout, RobustArrays, loglik, row_values

__all__ = ["NormalReference", "RobustRaw", "ResponseScale", "fit_robust", "robust_formula", "prepare_robust",
           "prepare_scaled", "check_robust_data", "normal_positions"]

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
class RobustRaw(RawFit):
    """What :func:`fit_robust` returns: a :class:`drmpy.engine.program.RawFit` (estimates on link
    scales in the family's parameter order, covariance from the exact observed information,
    log-likelihood, solver status; ``gradient`` and ``hessian_min_eigenvalue`` in the optimiser's
    units, see :class:`ResponseScale`; ``structure`` of kind ``"robust"``; ``information`` the
    observed information of the mu coefficients with the other parameters profiled out, the
    inverse of their block of ``vcov``), plus the robust model's own fields."""

    row_values: dict = field(default_factory=dict, repr=False)
    at_boundary: bool = False  # student(): nu at infinity (the normal model fits as well)
    normal_loglik: float | None = None
    starts: int = 1
    start_logliks: tuple = ()
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


def check_robust_data(design: ModelDesign, family: Family) -> None:
    """Refuse data the robust likelihood cannot fit: a zero sampling variance (the row's t or
    mixture density grows without bound as sigma -> 0 with mu at that row's y) and no more rows
    than estimated parameters (the maximum is then on the boundary of the parameter space or
    not unique, yet the solver would report it converged).  Negative variances and missing
    values are handled for every family when the design is built (:mod:`drmpy.model.rows`)."""
    _check_design(design, family)
    v = np.asarray(design.known_v.diag)
    zero = np.flatnonzero(v == 0.0)
    if zero.size:
        label = design.row_labels[zero[0]]
        raise DataError(f"meta_V(V = {design.known_v.name}): row {label} has sampling variance `{design.known_v.name}` "
                        f"0 ({zero.size} zero in all); {family!r} cannot fit it: the row's {family.name} density "
                        "grows without bound as sigma -> 0 with mu at its y (the likelihood has no maximum). "
                        "Give each row a positive sampling variance.")
    k = n_parameters(design, family)
    if design.nobs <= k:
        raise DataError(f"{family!r}: {design.nobs} row{'s' if design.nobs != 1 else ''} for {k} parameters "
                        f"({', '.join(parameter_counts(design, family))}); a robust fit needs more rows than "
                        "estimated parameters.")


def parameter_counts(design: ModelDesign, family: Family) -> list[str]:
    """``"<dpar>: <columns>"`` per estimated parameter block, in parameter order."""
    out = [f"{d}: {design.fixed[d].matrix.shape[1]}" for d in family.dpars]
    for rd in design.random:
        out.append(f"sd({rd.term.text}): {rd.sd_designs[0].matrix.shape[1]}")
    return out


def n_parameters(design: ModelDesign, family: Family) -> int:
    """Number of estimated parameters of the robust model (every coefficient of theta)."""
    return (sum(design.fixed[d].matrix.shape[1] for d in family.dpars)
            + sum(rd.sd_designs[0].matrix.shape[1] for rd in design.random))


# parameters measured in the response's units: mu coefficients scale with it (identity link);
# log-SD coefficients of these shift by log c (every other parameter, nu or p_out, has no unit)
_LOCATION = "mu"
_RESPONSE_SDS = ("sigma", "sigma_out")


@dataclass(frozen=True)
class ResponseScale:
    """The optimiser's units of the response: it sees ``y / c`` and ``v / c^2``.

    ``c`` is the power of two nearest ``sqrt(median(v) + var(y))`` (a power of two, so the
    division is exact and data differing by a power of two are the same problem bit for bit).
    The estimates map back exactly: ``theta_user = factor * theta_internal + shift``, with
    ``factor = c`` on mu coefficients (1 elsewhere) and ``shift = log(c) u`` on a log-SD block
    (sigma, sigma_out, the ``(1|g)`` SD), ``u`` the coefficients that give the constant 1 on that
    block's design; the log-likelihood is ``logLik_internal - sum(w) log c`` (each row's density
    is 1/c times the internal one; with ``(1|g)`` each group integral likewise, per row).  When a
    log-SD design cannot represent a constant (``sigma ~ 0 + x``), the model is not invariant
    to the units of y and ``c = 1``."""

    c: float
    factor: np.ndarray
    shift: np.ndarray
    weight_total: float

    @property
    def log_c(self) -> float:
        return math.log(self.c)

    def to_user(self, theta: np.ndarray) -> np.ndarray:
        return self.factor * np.asarray(theta, dtype=np.float64) + self.shift

    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        return (np.asarray(theta, dtype=np.float64) - self.shift) / self.factor

    def vcov_to_user(self, vcov: np.ndarray) -> np.ndarray:
        return np.asarray(vcov) * np.outer(self.factor, self.factor)

    def loglik_to_user(self, loglik):
        """Internal log-likelihood(s) -> the user's (works on arrays)."""
        return loglik - self.weight_total * self.log_c

    def take(self, positions: np.ndarray) -> "ResponseScale":
        """The same map restricted to the parameters at ``positions`` (the normal model's)."""
        return ResponseScale(self.c, self.factor[positions], self.shift[positions], self.weight_total)


def _constant_coefficients(X: np.ndarray) -> np.ndarray | None:
    """``u`` with ``X u = 1`` on every row, or None when the columns do not span a constant."""
    u, *_ = np.linalg.lstsq(X, np.ones(X.shape[0]), rcond=None)
    return u if np.allclose(X @ u, 1.0, rtol=0.0, atol=1e-10) else None


def response_scale(design: ModelDesign, layout: Layout, y: np.ndarray, v: np.ndarray, w: np.ndarray) -> ResponseScale:
    """:class:`ResponseScale` of one model (its layout from :func:`prepare_robust`)."""
    k = layout.blocks[-1][2] if layout.sd_slice is None else layout.sd_slice[1]
    factor, shift = np.ones(k), np.zeros(k)
    spread = float(np.median(v) + (np.var(y) if len(y) > 1 else 0.0))
    c = 2.0 ** round(math.log2(math.sqrt(spread))) if np.isfinite(spread) and spread > 0 else 1.0
    blocks = [(d, start, stop, design.fixed[d].matrix) for d, start, stop in layout.blocks]
    if layout.sd_slice is not None:
        blocks.append(("sd", *layout.sd_slice, design.random[0].sd_designs[0].matrix))
    for d, start, stop, X in blocks:
        if d == _LOCATION:
            factor[start:stop] = c
        elif d in _RESPONSE_SDS or d == "sd":
            u = _constant_coefficients(X)
            if u is None:
                return ResponseScale(1.0, np.ones(k), np.zeros(k), float(np.sum(w)))
            shift[start:stop] = math.log(c) * u
    return ResponseScale(c, factor, shift, float(np.sum(w)))


def prepare_scaled(design: ModelDesign, family: Family) -> tuple[RobustArrays, Layout, ResponseScale]:
    """:func:`prepare_robust` in the optimiser's units: arrays with ``y / c``, ``v / c^2`` and
    each design column divided by a power of two near its root mean square, the layout, and
    the map back (:class:`ResponseScale`, whose ``factor`` includes the column scales)."""
    arrays, layout = prepare_robust(design, family)
    y, v, w = (np.asarray(a) for a in (arrays.y, arrays.v, arrays.w))
    scale = response_scale(design, layout, y, v, w)
    if scale.c != 1.0:
        arrays = arrays._replace(y=jnp.asarray(y / scale.c, dtype=jnp.float64),
                                 v=jnp.asarray(v / scale.c**2, dtype=jnp.float64))
    # design columns far from unit size brought near 1 (a predictor in units of 1e-6 gives the
    # trust region curvatures of 1e12 along its coefficient): X_j / s_j with s_j a power of two
    # (exact), theta_user_j = theta_internal_j / s_j
    designs = [np.asarray(X, dtype=np.float64) for X in arrays.designs]
    sd_design = np.asarray(arrays.sd_design, dtype=np.float64)
    column = np.ones(len(scale.factor))
    for i, (_, start, stop) in enumerate(layout.blocks):
        column[start:stop] = _column_scales(designs[i])
        designs[i] = designs[i] / column[start:stop]
    if layout.sd_slice is not None:
        start, stop = layout.sd_slice
        column[start:stop] = _column_scales(sd_design)
        sd_design = sd_design / column[start:stop]
    if np.any(column != 1.0):
        arrays = arrays._replace(designs=tuple(jnp.asarray(X, dtype=jnp.float64) for X in designs),
                                 sd_design=jnp.asarray(sd_design, dtype=jnp.float64))
        scale = dataclasses.replace(scale, factor=scale.factor / column)
    return arrays, layout, scale


# columns whose root mean square is within this factor of 1 are left as they are: the
# optimiser copes with them, and rescaling them changes its path, which for the normal mixture
# can end in the label-swapped optimum (same likelihood, sigma and sigma_out exchanged)
COLUMN_UNIT_RANGE = 16.0


def _column_scales(X: np.ndarray) -> np.ndarray:
    """Per column, 1 when its root mean square is within ``COLUMN_UNIT_RANGE`` of 1, else the
    power of two nearest it (exact division)."""
    rms = np.sqrt(np.mean(X * X, axis=0)) if X.shape[0] else np.ones(X.shape[1])
    out = np.ones(X.shape[1])
    far = np.isfinite(rms) & (rms > 0) & ((rms > COLUMN_UNIT_RANGE) | (rms < 1.0 / COLUMN_UNIT_RANGE))
    out[far] = 2.0 ** np.round(np.log2(rms[far]))
    return out


def normal_positions(layout: Layout) -> np.ndarray:
    """Positions in the robust theta of the normal model's parameters (mu, sigma, sd): every
    block but the family's extra parameters."""
    k = layout.blocks[-1][2] if layout.sd_slice is None else layout.sd_slice[1]
    extra = [np.arange(start, stop) for d, start, stop in layout.blocks if d not in ("mu", "sigma")]
    drop = np.concatenate(extra) if extra else np.zeros(0, dtype=int)
    return np.setdiff1d(np.arange(k), drop)


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


def _finish(hessian: np.ndarray) -> tuple[np.ndarray, float]:
    """Covariance (inverse observed information) and the Hessian's smallest eigenvalue."""
    evals = np.linalg.eigvalsh(hessian)
    try:
        vcov = np.linalg.inv(hessian) if evals[0] > 0 else np.linalg.pinv(hessian)
    except np.linalg.LinAlgError:
        vcov = np.full_like(hessian, np.nan)
    return vcov, float(evals[0])


def _location_information(vcov: np.ndarray, p: int) -> np.ndarray:
    """Observed information of the p location coefficients with the other parameters profiled
    out: the inverse of their block of the covariance (NaN when it is not invertible)."""
    block = vcov[:p, :p]
    if not np.all(np.isfinite(block)):
        return np.full((p, p), np.nan)
    try:
        return np.linalg.inv(block)
    except np.linalg.LinAlgError:
        return np.full((p, p), np.nan)


def fit_robust(design: ModelDesign, family: Family, control: Any, normal: NormalReference) -> RobustRaw:
    """Maximum-likelihood fit of ``design`` under ``family`` (see the module docstring); the
    data were checked by :func:`check_robust_data`."""
    arrays, layout, scale = prepare_scaled(design, family)
    results = []
    for theta0 in start_values(design, family, normal):
        out = _solve(jnp.asarray(scale.to_internal(theta0), dtype=jnp.float64), arrays,
                     jnp.asarray(int(control.max_iter)), float(control.gtol), layout, family)
        f = float(out.f)
        results.append((f if np.isfinite(f) and np.all(np.isfinite(np.asarray(out.x))) else np.inf, out))
    best_f, best = min(results, key=lambda fo: fo[0])
    theta = scale.to_user(np.asarray(best.x, dtype=np.float64))
    ll = float(scale.loglik_to_user(-best_f))
    status = int(best.status)
    gradient = np.asarray(best.grad)  # the optimiser's units (as RawFit's scale coefficients)
    vcov_internal, min_eval = _finish(np.asarray(best.hess))
    vcov = scale.vcov_to_user(vcov_internal)
    values = row_values(theta, arrays, layout, family)  # the designs are the user's
    start_ll = tuple(float(scale.loglik_to_user(-fo[0])) for fo in results)
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
    p_mu = design.fixed["mu"].matrix.shape[1]
    structure = Structure(kind="robust", p=p_mu, k_sigma=design.fixed["sigma"].matrix.shape[1])
    return RobustRaw(theta=theta, vcov=vcov, loglik=float(ll), gradient=gradient, hessian_min_eigenvalue=min_eval,
                     status=status, iterations=int(best.iterations), evaluations=int(best.evaluations),
                     structure=structure, sigma=values["sigma"], information=_location_information(vcov, p_mu),
                     row_values=dict(values), at_boundary=at_boundary,
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
