"""Start values of the optimiser: one set of moment rules for single fits and batches.

Every program starts from the same rules:

* location: the (weighted) OLS estimate;
* heterogeneity: the DerSimonian-Laird between-row variance (:func:`dersimonian_laird`) when
  every v_i > 0 and n > p, else the residual variance of the OLS fit (:func:`residual_variance`);
  with random terms it is shared equally between sigma and each term (:func:`variance_share`);
* floor: at 1% of the variance scale (mean v_i, or the residual variance without usable V,
  :func:`variance_scale`), or 1e-4 of it when the moment estimate is 0 (:func:`start_variance`);
* ``sd(g)``: the SD of the level means of the OLS residuals, floored (:func:`level_sd_start`);
* log-SD coefficients reproduce ``log sd`` on every row (or level) by least squares.

The rules are written once, generic over the array namespace ``xp``: numpy scalars in a single
fit (:func:`start_values`, :func:`bivariate_start_values`), numpy arrays with one value per
group in ``batch.batch_random.start_values``, ``jax.numpy`` inside the compiled batch programs
(:func:`diag_start_values` and :func:`start_variance_from_sums` of ``engine.batch``, their
column-layout twin ``engine.diag_columns.columns_start_values``, the tau^2 program's
DerSimonian-Laird start in ``engine.tau2_batch``).  Each program forms the sums in its own
layout; the rules use only exactly rounded operations (+, -, *, /, sqrt, max, where), so the
same sums give the same start whichever namespace evaluates them.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from .likelihood import RHO_GUARD, small_cholesky_solve

if TYPE_CHECKING:
    from ..model.bivariate import BivariateDesign
    from ..model.design import ModelDesign

__all__ = ["BOUNDARY_START", "dersimonian_laird", "residual_variance", "variance_scale", "variance_share",
           "start_variance", "level_sd_start", "constant_coefficients", "least_squares", "moment_start",
           "start_values", "bivariate_start_values", "start_variance_from_sums", "diag_start_values"]

# start of a variance whose moment estimate is 0, relative to the variance scale: a zero
# boundary is then likely, and Newton steps toward it move the log-SD by only 1/2 each
BOUNDARY_START = 1e-4
VARIANCE_FLOOR = 1e-2  # a positive moment estimate starts at >= 1% of the variance scale
RHO_START_LIMIT = 0.8  # |rho12| start of a bivariate fit


# ------------------------------------------------------------------------------------------
# the rules (numpy or jax.numpy; scalars or one value per group)


def dersimonian_laird(Q: Any, n: Any, p: Any, denom: Any, xp: ModuleType = np) -> Any:
    """DerSimonian-Laird between-row variance ``max(0, (Q - (n - p)) / denom)``, 0 where
    ``denom <= 0``; ``Q`` the residual sum of squares weighted by 1/v_i, ``denom`` =
    ``sum 1/v_i - tr((X'WX)^-1 X'W^2X)`` (``tr(P)`` at tau^2 = 0).  Variance scale."""
    safe = xp.where(denom > 0, denom, 1.0)
    return xp.where(denom > 0, xp.maximum(0.0, (Q - (n - p)) / safe), 0.0)


def residual_variance(sum_wr2: Any, n: Any, p: Any, xp: ModuleType = np) -> Any:
    """Residual variance of the OLS fit, ``sum w r^2 / max(n - p, 1)`` (the moment estimate
    without usable sampling variances).  Variance scale."""
    return sum_wr2 / xp.maximum(n - p, 1.0)


def variance_scale(mean_v: Any, var_r: Any, xp: ModuleType = np) -> Any:
    """The scale the start variances are floored against: the mean sampling variance, or the
    residual variance (plus 1e-12) where no sampling variance is positive on average."""
    return xp.where(mean_v > 0, mean_v, var_r + 1e-12)


def variance_share(tau2: Any, n_random: int) -> Any:
    """The moment estimate shared equally between sigma and ``n_random`` random terms."""
    return tau2 / (1 + n_random)


def start_variance(tau2: Any, scale2: Any, xp: ModuleType = np) -> Any:
    """Start value of a heterogeneity variance from its moment estimate: floored at 1% of
    the variance scale, or ``BOUNDARY_START`` of it when the moment estimate is 0."""
    return xp.where(tau2 > 0, xp.maximum(tau2, VARIANCE_FLOOR * scale2), BOUNDARY_START * scale2)


def level_sd_start(sd_means: Any, n_levels: Any, tau2_sigma: Any, share: Any, scale2: Any,
                   xp: ModuleType = np) -> Any:
    """Start SD of a random intercept: the SD of the level means of the OLS residuals
    (``sqrt(tau2_sigma)``, sigma's start variance, with one level), at least the square root
    of the term's floored ``share`` of the moment estimate.  SD scale."""
    sd0 = xp.where(n_levels > 1, sd_means, xp.sqrt(tau2_sigma))
    return xp.maximum(sd0, xp.sqrt(xp.maximum(share, VARIANCE_FLOOR * scale2)))


# ------------------------------------------------------------------------------------------
# single fits (numpy)


def constant_coefficients(Z: np.ndarray, value: float) -> np.ndarray:
    """Coefficients of design Z that reproduce the constant ``value`` as closely as possible."""
    if Z.shape[1] == 0:
        return np.zeros(0)
    ones = np.flatnonzero(np.all(Z == 1.0, axis=0))
    if ones.size:  # an intercept column reproduces it exactly (no SVD of a million-row Z)
        coef = np.zeros(Z.shape[1])
        coef[ones[0]] = value
        return coef
    coef, *_ = np.linalg.lstsq(Z, np.full(Z.shape[0], value), rcond=None)
    return coef


def least_squares(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS coefficients: normal equations when X'X is well conditioned (the start values
    of a million-row fit without an SVD), else the SVD solution."""
    G = X.T @ X
    if X.shape[0] > 10_000 and X.shape[1] and np.linalg.cond(G) < 1e10:
        return np.linalg.solve(G, X.T @ y)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return coef


def moment_start(X: np.ndarray, y: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(beta_ols, residuals, tau2, scale2): weighted OLS location, the DerSimonian-Laird
    between-row variance (residual variance without usable V) and the variance scale."""
    sw = np.sqrt(w)
    beta0 = least_squares(X * sw[:, None], y * sw)
    r = y - X @ beta0
    n, p = X.shape
    pos = (v > 0) & (w > 0)
    if pos.all() and n > p:
        wi = w / v
        XtWX = (X * wi[:, None]).T @ X
        bw = np.linalg.solve(XtWX, (X * wi[:, None]).T @ y)
        rw = y - X @ bw
        Q = float(np.sum(wi * rw**2))
        denom = float(np.sum(wi) - np.trace(np.linalg.solve(XtWX, (X * (wi**2)[:, None]).T @ X)))
        tau2 = float(dersimonian_laird(Q, n, p, denom))
    else:
        tau2 = float(residual_variance(np.sum(w * r**2), np.sum(w), p))
    mean_v = float(np.mean(v))
    scale2 = mean_v if mean_v > 0 else float(variance_scale(mean_v, float(np.var(r))))
    return beta0, r, tau2, scale2


def start_values(design: ModelDesign) -> tuple[np.ndarray, np.ndarray]:
    """(beta_ols, phi0) of a univariate fit: OLS location, the moment estimate shared between
    sigma and the random terms, level-mean SDs for ``sd(g)`` (log-SD coefficients)."""
    y = design.y
    w = design.weights if design.weights is not None else np.ones_like(y)
    beta0, r, tau2, scale2 = moment_start(design.fixed["mu"].matrix, y, design.known_v.diag, w)
    share = variance_share(tau2, len(design.random))
    tau2_sigma = float(start_variance(share, scale2))
    parts = [constant_coefficients(design.fixed["sigma"].matrix, 0.5 * math.log(tau2_sigma))]
    for rd in design.random:
        counts = np.bincount(rd.level_index, minlength=rd.n_levels)
        means = np.bincount(rd.level_index, weights=r, minlength=rd.n_levels) / np.maximum(counts, 1)
        present = int(np.sum(counts > 0))
        sd_means = float(np.std(means[counts > 0])) if present > 1 else 0.0
        sd0 = float(level_sd_start(sd_means, present, tau2_sigma, share, scale2))
        for c, sdd in enumerate(rd.sd_designs):
            if c == 0 and rd.term.intercept:
                target = sd0
            else:
                spread = float(np.std(rd.z[:, c])) or 1.0
                target = 0.5 * sd0 / spread
            parts.append(constant_coefficients(sdd.matrix, math.log(target)))
        parts.append(np.zeros(rd.n_cor))
    return beta0, np.concatenate(parts) if parts else np.zeros(0)


def bivariate_start_values(design: BivariateDesign) -> tuple[np.ndarray, np.ndarray]:
    """(beta_ols, phi0) of a bivariate fit: per response OLS and the floored moment estimate
    for sigma; rho12 from the residual correlation of the correlated pairs, clipped to +-0.8."""
    v = design.v_diag
    betas, parts, resid = [], [], np.zeros((design.nobs, 2))
    for k in range(2):
        rows = design.kept[:, k]
        X = design.fixed[f"mu{k + 1}"].matrix[rows]
        w = design.weights[rows] if design.weights is not None else np.ones(int(rows.sum()))
        beta, r, tau2, scale2 = moment_start(X, design.y[rows, k], v[rows, k], w)
        betas.append(beta)
        resid[rows, k] = r
        tau2 = float(start_variance(tau2, scale2))
        parts.append(constant_coefficients(design.fixed[f"sigma{k + 1}"].matrix[rows], 0.5 * math.log(tau2)))
    Zr = design.fixed["rho12"].matrix
    if Zr.shape[1]:
        pairs = design.pair
        rho = 0.0
        if pairs.sum() > 2:
            r1, r2 = resid[pairs, 0], resid[pairs, 1]
            denom = math.sqrt(float(np.sum(r1**2) * np.sum(r2**2)))
            rho = float(np.sum(r1 * r2)) / denom if denom > 0 else 0.0
        rho = float(np.clip(rho, -RHO_START_LIMIT, RHO_START_LIMIT))
        parts.append(constant_coefficients(Zr[pairs], math.atanh(rho / RHO_GUARD)))
    return np.concatenate(betas), np.concatenate(parts)


# ------------------------------------------------------------------------------------------
# batched diagonal programs (jax.numpy, one group per vmap lane)


def start_variance_from_sums(n, p, Q, denom, v_pos, sum_wr2, sum_wr, sum_wv):
    """The start value of sigma^2 (the rules above) from one group's sums: DerSimonian-Laird
    (``Q``, ``denom`` as in :func:`dersimonian_laird`) when every v_i > 0 (``v_pos``) and
    n > p, else the residual variance; floored against the mean v_i (the residual variance
    ``sum_wr2 / n - (sum_wr / n)^2`` when no v_i is positive on average).  Inside jit."""
    tau2_dl = dersimonian_laird(Q, n, p, denom, xp=jnp)
    tau2_rss = residual_variance(sum_wr2, n, p, xp=jnp)
    tau2 = jnp.where(v_pos & (n > p), tau2_dl, tau2_rss)
    mean_v = sum_wv / n
    var_r = sum_wr2 / n - (sum_wr / n) ** 2
    scale2 = variance_scale(mean_v, var_r, xp=jnp)
    return start_variance(tau2, scale2, xp=jnp)


def _solve_small(M, B):
    """M^-1 B for a small SPD M (no LAPACK call; B (m, r))."""
    return small_cholesky_solve(M, B)[1]


def diag_start_values(a):
    """(beta0, gamma0) of one group of ``engine.batch.DiagArrays`` (``X``, ``Z``, ``y``, ``v``,
    ``w``; ``w`` 0 on padding), as :func:`start_values` for a diagonal V: OLS for beta, sigma^2
    from :func:`start_variance_from_sums`, sigma coefficients that reproduce
    ``0.5 log sigma^2`` by least squares.  Inside jit (elementwise small solves)."""
    X, Z, y, v, w = a.X, a.Z, a.y, a.v, a.w
    p = X.shape[1]
    data = w > 0
    n = jnp.sum(w)
    Xw = X * w[:, None]
    beta0 = _solve_small(Xw.T @ X, (Xw.T @ y)[:, None])[:, 0]
    r = (y - X @ beta0) * data
    v_pos = jnp.all(jnp.where(data, v > 0, True))
    wi = jnp.where(data & (v > 0), w / jnp.where(v > 0, v, 1.0), 0.0)
    Xwi = X * wi[:, None]
    XtWX = Xwi.T @ X
    sol = _solve_small(XtWX, jnp.concatenate([(Xwi.T @ y)[:, None], (Xwi * wi[:, None]).T @ X], axis=1))
    bw = sol[:, 0]
    rw = y - X @ bw
    tau2_sigma = start_variance_from_sums(n, p, jnp.sum(wi * rw * rw), jnp.sum(wi) - jnp.trace(sol[:, 1:]), v_pos,
                                          jnp.sum(w * r * r), jnp.sum(w * r), jnp.sum(w * v))
    Zw = Z * w[:, None]
    gamma0 = _solve_small(Zw.T @ Z, jnp.sum(Zw, axis=0)[:, None])[:, 0] * (0.5 * jnp.log(tau2_sigma))
    return beta0, gamma0
