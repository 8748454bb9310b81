"""Prediction intervals of a robust fit: quantiles of a new study's true effect.

For a row with location estimate ``m = x' beta_hat`` (standard error ``se``), the true effect
of a new study is ``m + z + u``: ``z ~ N(0, s^2)`` gathers the normal parts (``s^2 = se^2``
plus the variances of Gaussian ``(1|g)`` effects, plus a new sampling variance when asked),
and ``u`` is the family's random effect:

* ``student()``: ``u ~ t_nu(0, sigma)``, so ``z + u`` has the t-plus-normal distribution of
  :mod:`drmpy.families.student_marginal`; its CDF is the normal scale mixture

      F(x) = integral over t = log(lambda) of  p(t) Phi(x / sqrt(s^2 + sigma^2 exp(-t))) dt,

  ``p`` the density of ``log(lambda)``, ``lambda ~ Gamma(nu/2, rate nu/2)``
  (:func:`~drmpy.families.student_marginal.log_gamma_mixing`), integrated by the trapezoidal
  rule over the window where ``log p`` is within 60 of its largest value (p is smooth and
  decays exponentially to the left and double exponentially to the right, so the rule
  converges geometrically; 4,001 nodes);
* ``normal_mixture()``: ``u ~ (1 - p) N(0, sigma^2) + p N(0, sigma_out^2)``, so
  ``F(x) = (1 - p) Phi(x / sqrt(s^2 + sigma^2)) + p Phi(x / sqrt(s^2 + sigma_out^2))``.

Both distributions are symmetric about 0, so the interval is ``m +- x_q`` with
``F(x_q) = (1 + level) / 2``, found by bisection on the bracket ``[0, x_hi]`` (to 1e-12 of the
bracket); metafor's normal interval ``m +- z_q sqrt(s^2 + tau^2)`` is the limit ``nu -> inf``
or ``p = 0``.  The tests check the quantiles against ``scipy.integrate.quad`` of the
convolution and against simulation.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import special, stats

from ..errors import DrmError

__all__ = ["student_half_width", "mixture_half_width", "student_cdf", "mixture_cdf", "robust_predict_interval"]

_MIXING_NODES = 4001
_WINDOW_DROP = 60.0
_BISECTIONS = 80


def _mixing_log_density(t: np.ndarray, nu: np.ndarray) -> np.ndarray:
    from ..families.student_marginal import log_gamma_mixing

    return np.asarray(log_gamma_mixing(jnp.asarray(t, dtype=jnp.float64), jnp.asarray(nu, dtype=jnp.float64)))


def _mixing_window(nu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per ``nu``: [lower, upper] in ``t = log(lambda)`` outside which ``log p`` is more than
    ``_WINDOW_DROP`` below its peak (at t = 0).  Left tail: ``log p ~ a t`` (a = nu/2) for
    t << 0; right tail ``-a (e^t - 1 - t)``; the peak's width is ``sqrt(2/nu)``; each end is
    found on a coarse grid and then padded by one grid step."""
    a = 0.5 * nu
    width = np.minimum(1.0, np.sqrt(2.0 / nu))
    # a grid reaching past where the tails are surely negligible: the peak (log p ~ -t^2/width^2
    # near 0) is below the drop at 11 widths, the left tail at drop/a, the right at log(1 + drop/a)
    left_reach = 20.0 * width + 1.5 * _WINDOW_DROP / a
    right_reach = 20.0 * width + np.log1p(2.0 * _WINDOW_DROP / a)
    u = np.linspace(0.0, 1.0, 2001)
    lower = np.empty_like(nu)
    upper = np.empty_like(nu)
    for i in range(nu.size):
        grid = np.concatenate([-left_reach[i] * u[::-1], right_reach[i] * u[1:]])
        logp = _mixing_log_density(grid, np.full_like(grid, nu[i]))
        keep = np.flatnonzero(logp >= logp.max() - _WINDOW_DROP)
        step = grid[1] - grid[0]
        lower[i] = grid[keep[0]] - step
        upper[i] = grid[keep[-1]] + step
    return lower, upper


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise DrmError(f"level must be between 0 and 1, got {level!r}.")
    return float(level)


def _bisect(cdf, target: float, hi: np.ndarray) -> np.ndarray:
    """Elementwise root of ``cdf(x) = target`` on ``[0, hi]`` (``cdf`` increasing, ``cdf(0) =
    1/2 < target <= cdf(hi)``)."""
    lo = np.zeros_like(hi)
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < target
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return special.ndtr(x)


def _student_cdf_rule(normal_var: np.ndarray, sigma: np.ndarray, nu: float):
    """``x -> F(x)`` elementwise over rows: the CDF of ``z + u``, ``z ~ N(0, normal_var)``,
    ``u ~ t_nu(0, sigma)``, by the trapezoidal rule over the mixing variable (module docstring)."""
    lo, hi = _mixing_window(np.array([nu], dtype=np.float64))
    t = np.linspace(lo[0], hi[0], _MIXING_NODES)
    w = np.exp(_mixing_log_density(t, np.full_like(t, nu)))
    w = w / w.sum()  # trapezoid weights (end nodes negligible), normalised: the rule's error cancels
    scale = np.sqrt(normal_var[:, None] + sigma[:, None] ** 2 * np.exp(-t))

    def cdf(x: np.ndarray) -> np.ndarray:
        return _normal_cdf(x[:, None] / scale) @ w

    return cdf


def student_cdf(x, normal_var, sigma, nu) -> np.ndarray:
    """``P(z + u <= x)``, ``z ~ N(0, normal_var)``, ``u ~ t_nu(0, sigma)``, elementwise over
    broadcast arrays; ``nu = inf`` is the normal CDF.  Accurate in both tails (the upper one
    as ``1 - F(-x)`` would not be: use ``student_cdf(-x, ...)`` for ``P(z + u >= x)``)."""
    x, s2, sigma, nu = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (x, normal_var, sigma, nu)))
    shape = x.shape
    x, s2, sigma, nu = (a.reshape(-1) for a in (x, s2, sigma, nu))
    out = np.empty_like(x)
    normal = ~np.isfinite(nu)
    out[normal] = _normal_cdf(x[normal] / np.sqrt(s2[normal] + sigma[normal] ** 2))
    for value in np.unique(nu[~normal]):
        rows = nu == value
        out[rows] = _student_cdf_rule(s2[rows], sigma[rows], float(value))(x[rows])
    return out.reshape(shape)


def mixture_cdf(x, normal_var, sigma, sigma_out, p_out) -> np.ndarray:
    """``P(z + u <= x)``, ``z ~ N(0, normal_var)``, ``u ~ (1 - p_out) N(0, sigma^2) +
    p_out N(0, sigma_out^2)``, elementwise."""
    x, s2, sigma, sigma_out, p_out = (np.asarray(a, dtype=np.float64) for a in (x, normal_var, sigma, sigma_out, p_out))
    return ((1.0 - p_out) * _normal_cdf(x / np.sqrt(s2 + sigma**2))
            + p_out * _normal_cdf(x / np.sqrt(s2 + sigma_out**2)))


def student_half_width(normal_var, sigma, nu, level: float) -> np.ndarray:
    """Half-width ``x_q`` of the ``level`` interval of ``z + u``, ``z ~ N(0, normal_var)``,
    ``u ~ t_nu(0, sigma)``, elementwise over broadcast arrays (scale of mu)."""
    level = _check_level(level)
    s2, sigma, nu = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (normal_var, sigma, nu)))
    shape = s2.shape
    s2, sigma, nu = (x.reshape(-1) for x in (s2, sigma, nu))
    if np.any(~np.isfinite(nu)) or np.any(nu <= 0):
        # nu = inf is the normal model (the boundary of an estimated nu)
        finite = np.isfinite(nu) & (nu > 0)
        out = np.sqrt(s2 + sigma**2) * special.ndtri(0.5 + level / 2.0)
        if np.any(finite):
            out[finite] = student_half_width(s2[finite], sigma[finite], nu[finite], level)
        return out.reshape(shape)
    out = np.empty_like(s2)
    target = 0.5 + level / 2.0
    for value in np.unique(nu):
        rows = nu == value
        cdf = _student_cdf_rule(s2[rows], sigma[rows], value)
        # a bracket: the t quantile of sigma T plus the normal one of z, each at 1 - (1 - level)/4,
        # exceeds the quantile of their sum's |.| at level (union bound)
        tail = (1.0 - level) / 4.0
        hi_x = sigma[rows] * stats.t.ppf(1.0 - tail, value) + np.sqrt(s2[rows]) * special.ndtri(1.0 - tail)
        out[rows] = _bisect(cdf, target, np.maximum(hi_x, 1e-300))
    return out.reshape(shape)


def mixture_half_width(normal_var, sigma, sigma_out, p_out, level: float) -> np.ndarray:
    """Half-width ``x_q`` of the ``level`` interval of ``z + u``, ``z ~ N(0, normal_var)``,
    ``u ~ (1 - p_out) N(0, sigma^2) + p_out N(0, sigma_out^2)``, elementwise (scale of mu)."""
    level = _check_level(level)
    s2, sigma, sigma_out, p_out = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.float64) for x in (normal_var, sigma, sigma_out, p_out)))
    shape = s2.shape
    s2, sigma, sigma_out, p_out = (x.reshape(-1) for x in (s2, sigma, sigma_out, p_out))
    sd_main = np.sqrt(s2 + sigma**2)
    sd_out = np.sqrt(s2 + sigma_out**2)

    def cdf(x):
        return mixture_cdf(x, s2, sigma, sigma_out, p_out)

    hi = np.maximum(sd_main, sd_out) * special.ndtri(0.5 + level / 2.0)
    return _bisect(cdf, 0.5 + level / 2.0, np.maximum(hi, 1e-300)).reshape(shape)


class _GaussianView:
    """The parts of a robust fit that :func:`drmpy.inference.predict._random_variance_new`
    reads, with ``theta`` in the Gaussian order (mu, sigma, sd): the robust order puts the
    family's extra parameters (nu; sigma_out, p_out) between sigma and the SDs."""

    def __init__(self, fit) -> None:
        self.design = fit.design
        self.theta = fit.gaussian_order_theta()
        self.formula = fit.formula
        self.new_design_matrix = fit.new_design_matrix


def robust_predict_interval(fit, newdata: Any = None, interval: str = "confidence", level: float = 0.95,
                            vi: Any = None, test: str = "z", vcov: str = "observed") -> pd.DataFrame:
    """Estimate, SE and a confidence or prediction interval of ``mu`` per row of a robust fit
    (columns ``estimate``, ``se``, ``lower``, ``upper``; scale of mu).

    The confidence interval is the Wald interval ``estimate +- z se`` with the observed
    information, as for Gaussian fits.  The prediction interval is for the true effect of a new
    study with the row's predictors: the ``level`` central interval of ``estimate + z + u``
    (module docstring), with ``z``'s variance ``se^2`` plus the Gaussian ``(1|g)`` variances
    (as :func:`drmpy.inference.predict.predict_interval`) plus ``vi`` when given.  ``test``
    must be ``"z"`` and ``vcov`` ``"observed"`` (metafor's t test and GLS covariance are
    Gaussian-model quantities)."""
    from .predict import _new_sampling_variance, _random_variance_new, _shared_frame, predict_interval

    if test != "z":
        raise DrmError(f"predict(test={test!r}): a {fit.family!r} fit has Wald (z) intervals only; "
                       "the t test with nobs - p df is a Gaussian-model rule.")
    if vcov != "observed":
        raise DrmError(f"predict(vcov={vcov!r}): a {fit.family!r} fit has the observed-information covariance "
                       "only ('gls' is the Gaussian model's (X' S^-1 X)^-1).")
    if interval not in ("confidence", "prediction"):
        raise DrmError(f"interval must be None, 'confidence' or 'prediction', got {interval!r}.")
    if vi is not None and interval != "prediction":
        raise DrmError("vi= (new sampling variances) only applies to interval='prediction'.")
    conf = predict_interval(fit, newdata, "confidence", level, None, "z", "observed")
    if interval == "confidence":
        return conf
    frame = None if newdata is None else _shared_frame(fit, newdata, vi)
    n = len(conf)
    normal_var = conf["se"].to_numpy() ** 2
    if fit.design.random:
        normal_var = normal_var + _random_variance_new(_GaussianView(fit), frame, n)
    if vi is not None:
        normal_var = normal_var + _new_sampling_variance(vi, frame, n)

    def row_parameter(dpar: str) -> np.ndarray:
        """The parameter per predicted row, response scale (a fixed one at its value)."""
        return np.asarray(fit.predict(frame, dpar=dpar), dtype=np.float64)

    sigma = row_parameter("sigma")
    if fit.family.name == "student":
        half = student_half_width(normal_var, sigma, row_parameter("nu"), level)
    elif fit.family.name == "normal_mixture":
        half = mixture_half_width(normal_var, sigma, row_parameter("sigma_out"), row_parameter("p_out"), level)
    else:
        raise DrmError(f"predict(interval='prediction') is not defined for family {fit.family!r}.")
    estimate = conf["estimate"].to_numpy()
    return pd.DataFrame({"estimate": estimate, "se": conf["se"].to_numpy(), "lower": estimate - half,
                         "upper": estimate + half}, index=conf.index)
