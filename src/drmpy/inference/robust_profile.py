"""Profile-likelihood intervals and curves of robust fits (``student()``, ``normal_mixture()``).

For a parameter ``theta_j`` held at ``x`` the profile log-likelihood ``l_p(x)`` maximises the
exact marginal log-likelihood over every other parameter
(:func:`drmpy.robust.batch.fixed_parameter_refits`, the robust model's Newton solver with the
held coordinate fixed, warm-started from the previous point).  The interval at ``level`` is
``{x : 2 (l_hat - l_p(x)) <= qchisq(level, 1)}`` on the link scale, as for Gaussian fits
(:mod:`drmpy.inference.profile`).  Each (parameter, side) is a lane of one compiled batch:
bracketing outward from the estimate (first step the Wald half-width, doubling), then Illinois
regula falsi to ``ROOT_TOL``; a side whose criterion stays below the cut over the searched range
(``MU_SEARCH_SE`` standard errors; ``LINK_SEARCH`` units of a log or logit link) is open
(``-inf``/``+inf``) and ``status`` says so.  metaplus reports profile intervals the same way.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..errors import DrmError
from .root_bracket import illinois_roots

__all__ = ["robust_profile_intervals", "robust_profile_curve"]

ROOT_TOL = 1e-6
MAX_ROOT_ITER = 60
MAX_BRACKET = 16
MU_SEARCH_SE = 1e3
LINK_SEARCH = 20.0


def _setup(fit):
    from ..robust.program import prepare_scaled

    if fit.at_boundary:
        raise DrmError("profile: nu is at its boundary (1/nu = 0), where the t model is the normal model and "
                       "has no profile in nu; profile the normal fit (drm.fit(..., method='ML')) instead.")
    theta = np.asarray(fit.theta, dtype=np.float64)
    if not np.all(np.isfinite(theta)):
        raise DrmError("profile: the fit has non-finite estimates; no profile.")
    return prepare_scaled(fit.design, fit.family)


def _names(fit, params) -> list[str]:
    names = list(fit.params.index)
    if params is None:
        return names
    out = []
    for p in [params] if isinstance(params, str) else list(params):
        if p not in names:
            raise DrmError(f"Unknown parameter `{p}`; this fit has: {', '.join(names)}.")
        out.append(p)
    return out


def _link(fit, name: str) -> str:
    from ..results.fit import dpar_of

    return fit.family.link(dpar_of(name))


class _Evaluator:
    """Profile points of one fit, in the optimiser's units (``internal``: ``y / c``, see
    :class:`drmpy.robust.program.ResponseScale`) or the user's (``__call__``):
    ``(values, which, warm) -> (f, theta, ok)`` per lane, ``f = -logLik``."""

    def __init__(self, fit):
        self.arrays, self.layout, self.scale = _setup(fit)
        self.theta = np.asarray(fit.theta, dtype=np.float64)  # the user's estimates
        self.theta_internal = self.scale.to_internal(self.theta)
        self.family = fit.family
        ctrl = fit.control
        self.max_iter, self.gtol = int(ctrl.max_iter), float(ctrl.gtol)
        self.k = len(self.theta)

    def internal(self, values: np.ndarray, which: np.ndarray, warm: np.ndarray):
        from ..engine.optimize import CONVERGED, CONVERGED_FLAT
        from ..robust.batch import fixed_parameter_refits

        masks = np.zeros((len(values), self.k))
        masks[np.arange(len(values)), which] = 1.0
        out = fixed_parameter_refits(jnp.asarray(values, dtype=jnp.float64), jnp.asarray(masks), jnp.asarray(warm),
                                     self.arrays, jnp.asarray(self.max_iter), self.gtol, self.layout, self.family)
        f = np.asarray(out.f)
        ok = np.isin(np.asarray(out.status), (CONVERGED, CONVERGED_FLAT)) & np.isfinite(f)
        return f, np.asarray(out.theta), ok

    def __call__(self, values: np.ndarray, which: np.ndarray, warm: np.ndarray):
        sc = self.scale
        values = (np.asarray(values, dtype=np.float64) - sc.shift[which]) / sc.factor[which]
        f, theta, ok = self.internal(values, which, sc.to_internal(warm))
        return -sc.loglik_to_user(-f), sc.to_user(theta), ok


def robust_profile_intervals(fit, level: float = 0.95, params=None) -> pd.DataFrame:
    """Profile-likelihood intervals on the link scale: columns ``estimate``, ``lower``,
    ``upper``, ``status`` (``ok``, or which side is open or failed), indexed by parameter."""
    from scipy.stats import chi2

    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < float(level) < 1:
        raise DrmError(f"level must be between 0 and 1, got {level!r}.")
    names = _names(fit, params)
    ev = _Evaluator(fit)
    q = float(chi2.ppf(float(level), 1))
    # the search runs in the optimiser's units (y / c): tolerances and search ranges of mu do not
    # depend on the units of y; the ends are mapped back at the end
    sc = ev.scale
    f_hat = -(float(fit.loglik) - sc.loglik_to_user(0.0))  # -logLik in those units
    all_names = list(fit.params.index)
    se_all = fit.std_errors.to_numpy(dtype=float) / sc.factor
    which, direction, step, limit = [], [], [], []
    for name in names:
        j = all_names.index(name)
        se = se_all[j]
        wald = math.sqrt(q) * se if np.isfinite(se) and se > 0 else 1.0
        identity = _link(fit, name) == "identity"
        for d in (-1.0, 1.0):
            which.append(j)
            direction.append(d)
            step.append(max(wald, 1e-8) if identity else min(max(wald, 1e-3), 2.0))
            limit.append(MU_SEARCH_SE * (se if np.isfinite(se) and se > 0 else 1.0) if identity else LINK_SEARCH)
    which_a = np.asarray(which)
    d_a, limit_a = np.asarray(direction), np.asarray(limit)
    L = len(which_a)
    theta_hat = ev.theta_internal[which_a]
    # inside point (criterion below the cut) and outside trial, as distances from the estimate
    inside = np.zeros(L)
    g_in = np.full(L, -q)
    warm = np.tile(ev.theta_internal, (L, 1))
    trial = np.minimum(np.asarray(step), limit_a)
    state = np.zeros(L, dtype=int)  # 0 bracketing, 1 bracketed, 2 open, 3 failed
    outside = np.full(L, np.nan)
    g_out = np.full(L, np.nan)
    for _ in range(MAX_BRACKET):
        active = state == 0
        if not active.any():
            break
        f, th, ok = ev.internal(theta_hat + d_a * trial, which_a, warm)
        g = 2.0 * (f - f_hat) - q
        failed = active & ~ok
        state[failed] = 3
        crossed = active & ok & (g >= 0)
        outside[crossed], g_out[crossed] = trial[crossed], g[crossed]
        state[crossed] = 1
        below = active & ok & (g < 0)
        inside[below], g_in[below] = trial[below], g[below]
        warm[below] = th[below]
        at_limit = below & (trial >= limit_a)
        state[at_limit] = 2
        grow = below & ~at_limit
        trial[grow] = np.minimum(2.0 * trial[grow], limit_a[grow])
    state[state == 0] = 2
    # Illinois regula falsi on [inside, outside] (distances from the estimate)
    bracketed = state == 1

    def evaluate(x, active):
        f, th, ok = ev.internal(theta_hat + d_a * x, which_a, warm)
        g = 2.0 * (f - f_hat) - q
        down = active & ok & (g < 0)
        warm[down] = th[down]  # warm-start the next point from the nearest inside one
        return g, ok | ~active

    root, code = illinois_roots(evaluate, inside, g_in, outside, g_out, ROOT_TOL, MAX_ROOT_ITER, active=bracketed)
    state[bracketed & (code == 2)] = 3
    rows = []
    for i, name in enumerate(names):
        bounds, notes = [], []
        for s, label in enumerate(("lower", "upper")):
            lane = 2 * i + s
            if state[lane] == 1:
                j = which_a[lane]
                bounds.append(float(sc.factor[j] * (theta_hat[lane] + d_a[lane] * root[lane]) + sc.shift[j]))
            elif state[lane] == 2:
                bounds.append(float(-np.inf if s == 0 else np.inf))
                notes.append(f"open {label}: the profile log-likelihood stays within qchisq({level:g}, 1)/2 of its "
                             "maximum over the searched range")
            else:
                bounds.append(float("nan"))
                notes.append(f"failed {label}: an inner optimisation did not converge")
        rows.append({"estimate": float(ev.theta[all_names.index(name)]), "lower": bounds[0], "upper": bounds[1],
                     "status": "; ".join(notes) if notes else "ok"})
    return pd.DataFrame(rows, index=pd.Index(names, name="parameter"))


def robust_profile_curve(fit, param: str, n: int = 25, level: float = 0.99) -> pd.DataFrame:
    """The profile on ``n`` link-scale values spanning the ``level`` profile interval (an open side
    replaced by the estimate -/+ 3 link units): columns ``value``, ``loglik`` and ``statistic``
    (``2 (l_hat - l)``); NaN where the inner optimisation did not converge."""
    if not isinstance(param, str):
        raise DrmError(f"profile(param=...) takes one parameter name, got {param!r}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 2:
        raise DrmError(f"n must be an integer >= 2, got {n!r}.")
    ci = robust_profile_intervals(fit, level, [param]).iloc[0]
    ev = _Evaluator(fit)
    theta = float(ci["estimate"])
    lo = float(ci["lower"]) if np.isfinite(ci["lower"]) else theta - 3.0
    hi = float(ci["upper"]) if np.isfinite(ci["upper"]) else theta + 3.0
    values = np.linspace(lo, hi, int(n))
    j = list(fit.params.index).index(param)
    # walk out from the estimate on each side, warm-starting each point from its neighbour
    f = np.full(len(values), np.nan)
    order_lo = np.flatnonzero(values <= theta)[::-1]
    order_hi = np.flatnonzero(values > theta)
    warm = np.tile(ev.theta, (2, 1))
    for step in range(max(len(order_lo), len(order_hi))):
        idx = [order_lo[step] if step < len(order_lo) else None, order_hi[step] if step < len(order_hi) else None]
        vals = np.array([values[i] if i is not None else theta for i in idx])
        fv, th, ok = ev(vals, np.array([j, j]), warm)
        for s, i in enumerate(idx):
            if i is not None:
                f[i] = fv[s] if ok[s] else np.nan
                if ok[s]:
                    warm[s] = th[s]
    f_hat = -float(fit.loglik)
    return pd.DataFrame({"value": values, "loglik": -f, "statistic": 2.0 * (f - f_hat)})
