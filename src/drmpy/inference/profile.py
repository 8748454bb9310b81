"""Profile likelihood: intervals and curves for single parameters of a fit.

For a parameter ``theta_j`` held fixed at ``x``, the profile log-likelihood ``l_p(x)`` is the
maximum over every other parameter.  Under ML the location coefficients are always maximised
in closed form (GLS): for a variance parameter held fixed, ``beta_hat(phi)``; for a location
coefficient ``beta_j`` held fixed, the GLS estimate of the other coefficients with ``beta_j``
fixed.  Under REML the criterion has beta integrated out, so only variance parameters
(``sigma``, ``sd(g)``, correlations) have profiles.

The profile interval at ``level`` is ``{x : 2 (l_hat - l_p(x)) <= qchisq(level, 1)}``.  Its
endpoints are found per side by bracketing (steps from the Wald endpoint, doubling) and
Illinois regula falsi to 1e-6 on the link scale, all inside one compiled program that is
``vmap``-ed over (parameter, side) lanes: the parameter held fixed is chosen by a mask
argument, so one trace serves every parameter.  A side on which the criterion never falls
far enough (a variance whose profile stays flat as its SD goes to 0, a correlation running to
+-1) is open: ``-inf`` / ``+inf`` on the link scale.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..engine.likelihood import (LOG_2PI, RHO_GUARD, Arrays, Structure, spd_solve_terms,
                                 elementwise_linalg, gram, neg_reml)
from ..engine.optimize import CONVERGED, CONVERGED_FLAT, newton_trust_region
from ..engine.small_linalg import jacobi_eigh
from ..errors import DrmError
from .root_bracket import Bracket, false_position, illinois_update

__all__ = ["profile_intervals", "profile_curve"]

ROOT_TOL = 1e-6  # bracket width at which an endpoint is final (link scale)
MAX_ROOT_ITER = 80
INNER_MAX_ITER = 100
INNER_GTOL = 1e-10
# how far (link scale) a side is searched before it is declared open
SD_SEARCH = 20.0  # log-SD units: an SD ratio of e^-20 = 2e-9
MU_SEARCH_SE = 1e4  # location coefficients: standard errors
RHO_LIMIT = float(np.arctanh(RHO_GUARD))  # the guarded atanh scale ends here (|rho| = 0.999999)


class Lanes(NamedTuple):
    """One row per (parameter, side) search; all arrays with a leading lane axis."""

    phi_mask: jax.Array  # (L, k) 1 at the variance parameter held fixed
    e_beta: jax.Array  # (L, p) 1 at the location coefficient held fixed
    offset: jax.Array  # (L,) engine coordinate = link value - offset (beta0_j for mu, 0 else)
    theta_hat: jax.Array  # (L,) estimate on the link scale
    direction: jax.Array  # (L,) -1 lower side, +1 upper side
    step0: jax.Array  # (L,) first trial distance from theta_hat
    limit: jax.Array  # (L,) largest distance searched before the side is open


def _fixed_objective(struct: Structure):
    """``nll(psi; mask, value, e, b)``: the negative (REML) log-likelihood with one parameter
    held at ``value`` (a variance parameter where ``mask`` is 1, or, ML only, the location
    coefficient ``beta'e = b``), maximised over beta in closed form; a quadratic penalty keeps
    the masked coordinate of ``psi`` at its value (so the Hessian stays regular)."""
    p = struct.p

    def nll(psi, arrs: Arrays, phi_mask, phi_value, e_beta, beta_value):
        phi = jnp.where(phi_mask > 0, phi_value, psi)
        penalty = 0.5 * jnp.sum(phi_mask * (psi - phi_value) ** 2)
        if struct.method == "REML":
            return neg_reml(phi, arrs, struct) + penalty
        logdet, M = gram(phi, arrs, struct)
        A, b, c = M[:p, :p], M[:p, p], M[p, p]
        # beta = b_val e + argmin over the free coefficients: with P = I - ee',
        # (P A P + ee') beta_free = P (b - A e b_val), and beta_free'e = 0
        P = jnp.eye(p) - jnp.outer(e_beta, e_beta)
        K = P @ A @ P + jnp.outer(e_beta, e_beta)
        rhs = P @ (b - A @ e_beta * beta_value)
        _, _, sol = spd_solve_terms(K, rhs[:, None])
        beta = e_beta * beta_value + sol[:, 0]
        quad = c - 2.0 * beta @ b + beta @ A @ beta
        return 0.5 * (arrs.n_obs * LOG_2PI + logdet + quad) + penalty

    return nll


def _inner_minimum(struct: Structure):
    """``(f, psi, ok)``: minimum of the fixed-parameter objective from a warm start.

    The optimiser works in the coordinates ``u`` of the standardised scale designs,
    ``psi = B u`` (``basis = (B, B^-1)``, :mod:`drmpy.engine.scaling`), as the fit's own
    optimiser did, so a predictor's units do not decide whether it converges."""
    nll = _fixed_objective(struct)

    def solve(arrs, basis, psi0, phi_mask, phi_value, e_beta, beta_value):
        B, B_inv = basis
        fun = lambda u: nll(B @ u, arrs, phi_mask, phi_value, e_beta, beta_value)  # noqa: E731
        if psi0.shape[0] == 0:
            return fun(psi0), psi0, jnp.asarray(True)
        sol = newton_trust_region(fun, B_inv @ jnp.where(phi_mask > 0, phi_value, psi0),
                                  max_iter=jnp.asarray(INNER_MAX_ITER), gtol=INNER_GTOL, eigh=jacobi_eigh)
        ok = (sol.status == CONVERGED) | (sol.status == CONVERGED_FLAT)
        return sol.f, B @ sol.x, ok

    return solve


class _Root(NamedTuple):
    lo: jax.Array  # inside point (g < 0)
    g_lo: jax.Array
    hi: jax.Array  # outside point (g >= 0), valid once bracketed
    g_hi: jax.Array
    bracketed: jax.Array
    dist: jax.Array  # distance of the next trial while bracketing
    x: jax.Array  # next trial
    psi: jax.Array  # warm start (solution at lo)
    side_kept: jax.Array  # Illinois: -1 lo kept twice, +1 hi kept twice, 0 otherwise
    it: jax.Array
    done: jax.Array
    code: jax.Array  # 0 root found, 1 open side, 2 inner optimisation failed, 3 iteration limit


def _root_program(struct: Structure):
    """jit(vmap over lanes) of the bracketing + Illinois search of one endpoint."""
    solve = _inner_minimum(struct)

    def g_at(arrs, basis, lane, x, psi, f_hat, q):
        value = x - lane.offset
        f, psi_new, ok = solve(arrs, basis, psi, lane.phi_mask, lane.phi_mask * value, lane.e_beta, value)
        return 2.0 * (f - f_hat) - q, psi_new, ok

    def one(arrs, basis, lane, psi_hat, f_hat, q):
        d = lane.direction
        x0 = lane.theta_hat + d * lane.step0
        init = _Root(lane.theta_hat, -q, lane.theta_hat, -q, jnp.asarray(False), lane.step0, x0, psi_hat,
                     jnp.asarray(0), jnp.asarray(0), jnp.asarray(False), jnp.asarray(0))

        def cond(s):
            return ~s.done

        def body(s):
            g, psi_new, ok = g_at(arrs, basis, lane, s.x, s.psi, f_hat, q)
            inside = g < 0
            b = illinois_update(Bracket(s.lo, s.g_lo, s.hi, s.g_hi, s.side_kept), s.x, g, s.bracketed)
            lo, g_lo, hi, g_hi, side_kept = b
            bracketed = s.bracketed | ~inside
            psi = jnp.where(inside, psi_new, s.psi)
            # next trial: outward while bracketing, then false position inside the bracket
            dist = jnp.where(bracketed, s.dist, 2.0 * s.dist)
            grow = lane.theta_hat + d * dist
            width = jnp.abs(hi - lo)
            nxt = jnp.where(bracketed, false_position(b), grow)
            found = bracketed & ((width <= ROOT_TOL) | (jnp.abs(g) <= 1e-10))
            opened = ~bracketed & (jnp.abs(s.x - lane.theta_hat) >= lane.limit * (1 - 1e-9))
            failed = ~ok
            it = s.it + 1
            code = jnp.where(failed, 2, jnp.where(found, 0, jnp.where(opened, 1, 3)))
            done = failed | found | opened | (it >= MAX_ROOT_ITER)
            nxt = jnp.where(~bracketed & (jnp.abs(nxt - lane.theta_hat) > lane.limit),
                            lane.theta_hat + d * lane.limit, nxt)
            return _Root(lo, g_lo, hi, g_hi, bracketed, dist, nxt, psi, side_kept, it, done, code)

        s = jax.lax.while_loop(cond, body, init)
        # the endpoint: the last false-position estimate inside the final bracket
        est = jnp.where(s.bracketed, false_position(Bracket(s.lo, s.g_lo, s.hi, s.g_hi, s.side_kept)), s.lo)
        return dict(endpoint=est, code=s.code, iterations=s.it)

    def run(arrs, basis, lanes, psi_hat, f_hat, q):
        with elementwise_linalg():
            return jax.vmap(one, in_axes=(None, None, 0, None, None, None))(arrs, basis, lanes, psi_hat, f_hat, q)

    return jax.jit(run)


def _curve_program(struct: Structure):
    """jit(vmap over points) of the profile objective at given values of one parameter."""
    solve = _inner_minimum(struct)

    def one(arrs, basis, phi_mask, e_beta, value, psi_hat):
        f, _, ok = solve(arrs, basis, psi_hat, phi_mask, phi_mask * value, e_beta, value)
        return f, ok

    def run(arrs, basis, phi_mask, e_beta, values, psi_hat):
        with elementwise_linalg():
            return jax.vmap(one, in_axes=(None, None, None, None, 0, None))(arrs, basis, phi_mask, e_beta, values,
                                                                            psi_hat)

    return jax.jit(run)


_root_programs = functools.lru_cache(maxsize=32)(_root_program)
_curve_programs = functools.lru_cache(maxsize=32)(_curve_program)


# ------------------------------------------------------------------------------------------
# the fit's pieces


class _Setup(NamedTuple):
    arrs: Arrays
    struct: Structure
    beta0: np.ndarray
    names: list
    theta: np.ndarray
    se: np.ndarray
    f_hat: float
    basis: tuple  # (B, B^-1): psi = B u, u the optimiser's coordinates (engine.scaling)


def _setup(fit) -> _Setup:
    """Arrays of the fit's design (cached on the fit) and its estimates."""
    return fit.stage_cache("inference.profile_setup", lambda: _setup_uncached(fit))


def _setup_uncached(fit) -> _Setup:
    from .marginal import prepared_arrays

    from ..engine.scaling import scale_designs

    arrs, struct, beta0 = prepared_arrays(fit, None)
    scaling = scale_designs(arrs, struct)
    k = len(fit.params) - struct.p
    B = scaling.B if scaling is not None else np.eye(k)
    basis = (jnp.asarray(B), jnp.asarray(np.linalg.inv(B)))
    out = _Setup(arrs, struct, np.asarray(beta0, dtype=float), list(fit.params.index),
                 fit.params.to_numpy(dtype=float), fit.std_errors.to_numpy(dtype=float), -float(fit.loglik), basis)
    return out


def _kind(name: str) -> str:
    """mu (identity link), sd (log link) or cor (guarded atanh), by summary's link rule."""
    from ..results.summary import link_of

    return {"identity": "mu", "log": "sd", "atanh": "cor"}[link_of(name)]


def _check_params(fit, params) -> list[str]:
    names = list(fit.params.index)
    if params is None:
        return names
    if isinstance(params, str):
        params = [params]
    out = []
    for p in params:
        if p not in names:
            raise DrmError(f"Unknown parameter `{p}`; this fit has: {', '.join(names)}.")
        out.append(p)
    return out


def _refuse_reml_location(fit, names: list[str]) -> None:
    bad = [n for n in names if _kind(n) == "mu"]
    if fit.method == "REML" and bad:
        raise DrmError(
            f"No REML profile for the location coefficient `{bad[0]}`: the REML criterion has the "
            "location coefficients integrated out, so it does not depend on them. Profile it under "
            "method='ML', or use method='wald' for REML location coefficients."
        )


def _lane_pieces(setup: _Setup, name: str):
    """(phi_mask, e_beta, offset) of a parameter."""
    p = setup.struct.p
    k = len(setup.theta) - p
    j = setup.names.index(name)
    phi_mask = np.zeros(k)
    e_beta = np.zeros(p)
    if j < p:
        e_beta[j] = 1.0
        offset = float(setup.beta0[j])
    else:
        phi_mask[j - p] = 1.0
        offset = 0.0
    return phi_mask, e_beta, offset


def _search(name: str, theta: float, se: float, direction: int, q: float) -> tuple[float, float]:
    """(first trial distance, search limit) of one side."""
    kind = _kind(name)
    wald = math.sqrt(q) * se if np.isfinite(se) and se > 0 else 1.0
    if kind == "mu":
        return max(wald, 1e-8), MU_SEARCH_SE * max(se if np.isfinite(se) else 1.0, 1e-8)
    if kind == "cor":
        limit = max(RHO_LIMIT - direction * theta, 1e-8)
        return min(max(wald, 1e-3), 0.5 * limit), limit
    return min(max(wald, 1e-3), 2.0), SD_SEARCH


def _open_message(name: str, direction: int, level: float) -> str:
    side = "lower" if direction < 0 else "upper"
    kind = _kind(name)
    if kind == "sd" and direction < 0:
        why = "as the SD goes to 0 (a zero variance is inside the interval)"
    elif kind == "sd":
        why = "as the SD grows"
    elif kind == "cor":
        why = f"up to the correlation's bound {'-' if direction < 0 else '+'}0.999999"
    else:
        why = "over the searched range"
    return (f"open {side}: the profile log-likelihood stays within qchisq({level:g}, 1)/2 of its "
            f"maximum {why}")


def profile_intervals(fit, level: float = 0.95, params=None) -> pd.DataFrame:
    """Profile-likelihood intervals on the link scale: columns ``estimate``, ``lower``,
    ``upper``, ``status`` (``ok``, or which side is open / failed and why), indexed by name."""
    from scipy.stats import chi2

    names = _check_params(fit, params)
    _refuse_reml_location(fit, names)
    if not (0 < float(level) < 1):
        raise DrmError(f"level must be between 0 and 1, got {level!r}.")
    setup = _setup(fit)
    q = float(chi2.ppf(float(level), 1))
    rows = []
    for name in names:
        for direction in (-1, 1):
            j = setup.names.index(name)
            phi_mask, e_beta, offset = _lane_pieces(setup, name)
            step0, limit = _search(name, setup.theta[j], setup.se[j], direction, q)
            rows.append((phi_mask, e_beta, offset, setup.theta[j], float(direction), step0, limit))
    cols = list(zip(*rows))
    lanes = Lanes(*(jnp.asarray(np.asarray(c, dtype=float)) for c in cols))
    psi_hat = jnp.asarray(setup.theta[setup.struct.p:])
    out = jax.device_get(_root_programs(setup.struct)(setup.arrs, setup.basis, lanes, psi_hat,
                                                      jnp.asarray(setup.f_hat), jnp.asarray(q)))
    endpoint = np.asarray(out["endpoint"])
    code = np.asarray(out["code"])
    result = []
    for i, name in enumerate(names):
        bounds, notes = [], []
        for s, direction in enumerate((-1, 1)):
            lane = 2 * i + s
            c = int(code[lane])
            if c == 0:
                bounds.append(float(endpoint[lane]))
            elif c == 1:
                bounds.append(-np.inf if direction < 0 else np.inf)
                if _kind(name) == "cor":  # the link scale ends at the guard
                    bounds[-1] = direction * RHO_LIMIT
                notes.append(_open_message(name, direction, float(level)))
            else:
                bounds.append(np.nan)
                side = "lower" if direction < 0 else "upper"
                notes.append(f"failed {side}: " + ("an inner optimisation did not converge" if c == 2
                                                   else "the root search hit its iteration limit"))
        result.append({"estimate": setup.theta[setup.names.index(name)], "lower": bounds[0],
                       "upper": bounds[1], "status": "; ".join(notes) if notes else "ok"})
    return pd.DataFrame(result, index=pd.Index(names, name="parameter"))


def profile_curve(fit, param: str, n: int = 25, level: float = 0.99) -> pd.DataFrame:
    """The profile on a grid of ``n`` values spanning the ``level`` profile interval (an open
    side is replaced by the estimate -/+ 3 link units): columns ``value`` (link scale),
    ``loglik`` (profile log-likelihood; REML: the REML criterion) and ``statistic``
    (``2 (l_hat - l)``)."""
    if not isinstance(param, str):
        raise DrmError(f"profile(param=...) takes one parameter name, got {param!r}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 2:
        raise DrmError(f"n must be an integer >= 2, got {n!r}.")
    ci = profile_intervals(fit, level, [param]).iloc[0]
    setup = _setup(fit)
    theta = float(ci["estimate"])
    lo, hi = float(ci["lower"]), float(ci["upper"])
    if not np.isfinite(lo):
        lo = theta - 3.0
    if not np.isfinite(hi):
        hi = theta + 3.0
    values = np.linspace(lo, hi, int(n))
    phi_mask, e_beta, offset = _lane_pieces(setup, param)
    f, ok = jax.device_get(_curve_programs(setup.struct)(
        setup.arrs, setup.basis, jnp.asarray(phi_mask), jnp.asarray(e_beta), jnp.asarray(values - offset),
        jnp.asarray(setup.theta[setup.struct.p:])))
    f = np.where(np.asarray(ok), np.asarray(f), np.nan)
    loglik = -f
    return pd.DataFrame({"value": values, "loglik": loglik, "statistic": 2.0 * (f - setup.f_hat)})
