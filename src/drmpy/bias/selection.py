"""The step-function selection model of Vevea and Hedges (1995), by maximum likelihood.

Each effect size ``y_i ~ N(mu_i, v_i + sigma^2)`` is published with a probability that
depends only on its one-sided (or two-sided) p-value ``p_i``: ``delta_j`` on the j-th
interval of the cut points ``0 < a_1 < ... < a_J = 1``, ``delta_1 = 1``.  The density of an
observed effect size is then

    delta_{j(i)} phi(y_i; mu_i, v_i + sigma^2) / A_i,   A_i = sum_j delta_j P_ij,

with ``P_ij`` the probability that ``y_i`` falls in interval j under the unselected model.
For ``alternative="greater"`` (p-values of ``H1: theta > 0``) interval j is
``sqrt(v_i) z_{1-a_j} < y_i <= sqrt(v_i) z_{1-a_{j-1}}``.  With one cut point this is the
three-parameter selection model.  The likelihood is written in JAX and minimised by the
engine's exact-Hessian trust-region Newton loop on link scales (``mu`` identity, log sigma,
log delta_j); standard errors come from the observed information (delta method on the
response scale), as metafor's ``selmodel(type = "stepfun")`` estimates.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ..engine.optimize import CONVERGED, CONVERGED_FLAT, STATUS_MESSAGES
from ..errors import DrmError
from .refit import require_drm_fit

__all__ = ["SelectionModel", "selection_model"]

ALTERNATIVES = ("greater", "less", "two.sided")


@dataclass(frozen=True)
class SelectionModel:
    """Result of :func:`selection_model`.

    ``params``: ``mu:<term>`` (location coefficients), ``sigma`` (heterogeneity SD, response
    scale), ``delta[1]`` (= 1), ``delta[2]``, ... (relative publication probabilities of the
    later p-value intervals); ``std_errors`` (observed information, delta method; NaN for
    ``delta[1]``); ``loglik``; ``lrt`` (Series ``statistic``, ``df``, ``p_value``: against the
    ML fit without selection); ``steps`` (cut points, ending in 1); ``k_per_interval``;
    ``converged``; ``unselected``: that ML fit.
    """

    params: pd.Series
    std_errors: pd.Series
    loglik: float
    lrt: pd.Series
    steps: tuple
    alternative: str
    k_per_interval: tuple
    converged: bool
    message: str
    unselected: object = field(repr=False)

    def summary(self) -> pd.DataFrame:
        """Estimates, standard errors and Wald z (response scales; delta tested against 1)."""
        null = pd.Series(0.0, index=self.params.index)
        null[[n for n in self.params.index if n.startswith("delta[")]] = 1.0
        z = (self.params - null) / self.std_errors
        return pd.DataFrame({"estimate": self.params, "std_error": self.std_errors, "z": z,
                             "p_value": 2 * stats.norm.sf(np.abs(z))})


def _interval_probabilities(jnp, ndtr, mu, s, sd, cuts, alternative):
    """(n, J) probabilities that y_i falls in each p-value interval under N(mu_i, s_i^2).

    ``cuts`` (J-1,) are the standard-normal quantiles of the finite cut points; only finite
    bounds enter (F_0 = 0, F_J = 1), so derivatives stay finite."""
    c = sd[:, None] * cuts[None, :]  # (n, J-1)
    if alternative == "greater":
        F = ndtr(-(c - mu[:, None]) / s[:, None])  # P(y > c_j)
    elif alternative == "less":
        F = ndtr((c - mu[:, None]) / s[:, None])  # P(y <= c_j)
    else:
        F = ndtr(-(c - mu[:, None]) / s[:, None]) + ndtr((-c - mu[:, None]) / s[:, None])  # P(|y| >= c_j)
    n = mu.shape[0]
    F = jnp.concatenate([jnp.zeros((n, 1)), F, jnp.ones((n, 1))], axis=1)
    return F[:, 1:] - F[:, :-1]


@functools.lru_cache(maxsize=8)
def _program(alternative: str):
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import ndtr

    from ..engine.optimize import newton_trust_region

    LOG_2PI = float(np.log(2 * np.pi))

    def negloglik(theta, y, v, X, onehot, cuts):
        p = X.shape[1]
        beta = theta[:p]
        log_sigma = theta[p]
        log_delta = jnp.concatenate([jnp.zeros(1), theta[p + 1:]])
        mu = X @ beta
        s2 = v + jnp.exp(2.0 * log_sigma)
        s = jnp.sqrt(s2)
        P = _interval_probabilities(jnp, ndtr, mu, s, jnp.sqrt(v), cuts, alternative)
        A = P @ jnp.exp(log_delta)
        ll = onehot @ log_delta - 0.5 * (LOG_2PI + jnp.log(s2) + (y - mu) ** 2 / s2) - jnp.log(A)
        return -jnp.sum(ll)

    def run(theta0, y, v, X, onehot, cuts, max_iter, gtol):
        sol = newton_trust_region(lambda t: negloglik(t, y, v, X, onehot, cuts), theta0,
                                  max_iter=max_iter, gtol=gtol)
        return dict(theta=sol.x, f=sol.f, grad=sol.grad, hess=sol.hess, status=sol.status,
                    iterations=sol.iterations)

    return jax.jit(run), jax.jit(negloglik)


def _p_values(y, v, alternative):
    z = y / np.sqrt(v)
    if alternative == "greater":
        return stats.norm.sf(z)
    if alternative == "less":
        return stats.norm.cdf(z)
    return 2.0 * stats.norm.sf(np.abs(z))


def selection_model(fit, steps=(0.025,), alternative: str = "greater") -> SelectionModel:
    """Step-function selection model (Vevea and Hedges 1995) for a fitted meta-regression.

    ``steps``: the p-value cut points (increasing, in (0, 1); 1 is appended), e.g. ``(0.025,)``
    for the three-parameter selection model.  ``alternative``: ``"greater"`` (default),
    ``"less"`` or ``"two.sided"``, the p-values by which studies were selected
    (``p_i = 1 - Phi(y_i / sqrt(v_i))`` for greater).  For models with ``sigma ~ 1``, no random
    effects and a diagonal V (moderators of ``mu`` allowed); always fitted by maximum
    likelihood: a REML fit is first refitted by ML (as metafor does), and ``lrt`` compares
    with that ML fit.  Equals metafor's ``selmodel(..., type = "stepfun", steps = ...)``.
    """
    import jax.numpy as jnp

    require_drm_fit(fit, "selection_model")
    design = fit.design
    if design.random:
        raise DrmError(
            "selection_model does not take random effects: the step-function selection model "
            "(as metafor's selmodel) is defined for independent effect sizes; drop the "
            f"random-effect terms of `{fit.formula.text['mu']}`."
        )
    if tuple(design.fixed["sigma"].terms) != ("(Intercept)",):
        raise DrmError(
            f"selection_model needs sigma ~ 1; the sigma formula `{fit.formula.text['sigma']}` has "
            "moderators (location-scale selection models are not supported)."
        )
    if not design.known_v.is_diagonal:
        raise DrmError("selection_model needs a diagonal V (independent effect sizes).")
    if design.weights is not None and np.any(design.weights != 1.0):
        raise DrmError("selection_model does not take row weights.")
    if alternative not in ALTERNATIVES:
        raise DrmError(f"alternative must be one of {', '.join(ALTERNATIVES)}; got {alternative!r}.")
    cut = np.atleast_1d(np.asarray(steps, dtype=np.float64))
    if cut.size == 0 or np.any(~np.isfinite(cut)) or np.any(cut <= 0) or np.any(cut > 1) or np.any(np.diff(cut) <= 0):
        raise DrmError(f"steps must be increasing p-values in (0, 1], got {steps!r}.")
    if cut[-1] < 1:
        cut = np.append(cut, 1.0)
    J = len(cut)
    if J < 2:
        raise DrmError("steps must contain at least one cut point below 1.")
    y = np.asarray(design.y, dtype=np.float64)
    v = np.asarray(design.known_v.diag, dtype=np.float64)
    X = design.fixed["mu"].matrix
    p = X.shape[1]
    pv = _p_values(y, v, alternative)
    group = np.array([int(np.flatnonzero(q <= cut)[0]) for q in pv])
    counts = np.bincount(group, minlength=J)
    if np.any(counts == 0):
        j = int(np.flatnonzero(counts == 0)[0])
        lo = 0.0 if j == 0 else cut[j - 1]
        raise DrmError(
            f"No observed p-value falls in the interval ({lo:g}, {cut[j]:g}] of steps; its selection "
            "weight cannot be estimated. Choose other steps."
        )
    if fit.method == "ML":
        ml = fit
    else:
        from .refit import refit_design

        ml = refit_design(fit, design, method="ML")
    theta_ml = ml.params.to_numpy()
    theta0 = np.concatenate([theta_ml[: p + 1], np.zeros(J - 1)])
    quant = stats.norm.ppf(cut[:-1]) if alternative == "less" else (
        stats.norm.isf(cut[:-1]) if alternative == "greater" else stats.norm.isf(cut[:-1] / 2.0))
    onehot = np.eye(J)[group]
    run, _ = _program(alternative)
    ctrl = fit.control
    out = run(jnp.asarray(theta0), jnp.asarray(y), jnp.asarray(v), jnp.asarray(X), jnp.asarray(onehot),
              jnp.asarray(quant), jnp.asarray(int(ctrl.max_iter)), jnp.asarray(float(ctrl.gtol)))
    theta = np.asarray(out["theta"])
    H = np.asarray(out["hess"])
    try:
        cov = np.linalg.inv(H)
        se_link = np.sqrt(np.where(np.diag(cov) >= 0, np.diag(cov), np.nan))
    except np.linalg.LinAlgError:
        se_link = np.full(len(theta), np.nan)
    sigma = float(np.exp(theta[p]))
    delta = np.exp(theta[p + 1:])
    names = list(design.fixed["mu"].names) + ["sigma"] + [f"delta[{j + 1}]" for j in range(J)]
    params = pd.Series(np.concatenate([theta[:p], [sigma], [1.0], delta]), index=names, name="estimate")
    ses = pd.Series(np.concatenate([se_link[:p], [sigma * se_link[p]], [np.nan], delta * se_link[p + 1:]]),
                    index=names, name="std_error")
    loglik = -float(out["f"])
    stat = 2.0 * (loglik - ml.loglik)
    lrt = pd.Series({"statistic": stat, "df": J - 1, "p_value": float(stats.chi2.sf(max(stat, 0.0), J - 1))},
                    name="lrt")
    status = int(out["status"])
    return SelectionModel(params, ses, loglik, lrt, tuple(float(c) for c in cut), alternative,
                          tuple(int(c) for c in counts), status in (CONVERGED, CONVERGED_FLAT),
                          STATUS_MESSAGES[status], ml)
