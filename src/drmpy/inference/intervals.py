"""``conf_int``: Wald, profile-likelihood and parametric-bootstrap intervals for every parameter.

All methods work on the link scales of ``fit.params`` (identity for ``mu``, log-SD for
``sigma`` and ``sd(g)``, guarded atanh for correlations and ``rho12``); ``scale="response"``
then applies the inverse link to the estimate and both ends (exp; ``0.999999 tanh``;
identity), so an SD intercept becomes an SD and an SD slope an SD ratio.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DrmError
from .profile import RHO_GUARD, _check_params, _kind, profile_intervals

__all__ = ["conf_int", "METHODS"]

METHODS = ("wald", "profile", "bootstrap")
COLUMNS = ["estimate", "lower", "upper", "method", "status"]


def _wald(fit, names: list[str], level: float) -> pd.DataFrame:
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    est = fit.params[names].to_numpy(dtype=float)
    se = fit.std_errors[names].to_numpy(dtype=float)
    status = np.where(np.isfinite(se), "ok", "no finite standard error")
    return pd.DataFrame({"estimate": est, "lower": est - z * se, "upper": est + z * se, "status": status},
                        index=pd.Index(names, name="parameter"))


def _bootstrap(fit, names: list[str], level: float, nsim: int, seed: Any) -> pd.DataFrame:
    from ..simulation.bootstrap import parametric_bootstrap
    from ..results.fit import DrmFit

    if not isinstance(fit, DrmFit):
        raise DrmError(f"conf_int(method='bootstrap') is not available for {type(fit).__name__} "
                       "(parametric_bootstrap refits univariate drm.fit models); use method='wald' or 'profile'.")
    if fit.n_location == len(fit.params):
        boot = _bootstrap_gls(fit, nsim, seed, level)
    else:
        boot = parametric_bootstrap(fit, nsim=nsim, seed=seed, level=level, progress=False)
    boot = boot.set_index("parameter").loc[names]
    n_ok = boot["n_converged"].to_numpy()
    status = np.where(n_ok == nsim, "ok", [f"{int(k)} of {nsim} refits converged" for k in n_ok])
    return pd.DataFrame({"estimate": boot["estimate"].to_numpy(float), "lower": boot["lower"].to_numpy(float),
                         "upper": boot["upper"].to_numpy(float), "status": status},
                        index=pd.Index(names, name="parameter"))


def _bootstrap_gls(fit, nsim: int, seed: Any, level: float) -> pd.DataFrame:
    """The parametric bootstrap of a model without variance parameters (common-effect model
    without random effects): each refit is the GLS estimate, in closed form."""
    from .marginal import gls, marginal_covariance

    Y = fit.simulate(nsim, seed=seed).to_numpy()
    X = fit.design.fixed["mu"].matrix
    S = marginal_covariance(fit)
    beta = gls(fit).vcov @ (X.T @ np.linalg.solve(S, Y))  # (p, nsim)
    lower, upper = np.quantile(beta, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return pd.DataFrame({"parameter": list(fit.params.index), "estimate": fit.params.to_numpy(),
                         "boot_mean": beta.mean(axis=1), "boot_se": beta.std(axis=1, ddof=1),
                         "lower": lower, "upper": upper, "n_converged": nsim})


def to_response_scale(names, values: np.ndarray) -> np.ndarray:
    """Inverse link per parameter name: exp for log-SD coefficients, 0.999999 tanh for
    correlations, identity for location coefficients (-inf on the log scale becomes 0)."""
    values = np.asarray(values, dtype=float)
    out = values.copy()
    for i, name in enumerate(names):
        kind = _kind(name)
        if kind == "sd":
            out[i] = np.exp(values[i])
        elif kind == "cor":
            out[i] = RHO_GUARD * np.tanh(values[i])
    return out


def conf_int(fit, level: float = 0.95, method: str = "wald", params=None, scale: str = "link",
             nsim: int = 1000, seed: Any = None) -> pd.DataFrame:
    """Confidence intervals, one row per parameter of ``fit.params`` (or of ``params``).

    Columns ``estimate``, ``lower``, ``upper``, ``method``, ``status``.  ``method``:

    * ``"wald"``: estimate +- z SE (the observed-information SEs of ``summary()``);
    * ``"profile"``: profile likelihood; an open side is ``-inf``/``+inf`` on the link
      scale and ``status`` says why.  REML: the REML criterion, which profiles the variance
      parameters only; by default (``params=None``) the ``mu`` coefficients then get Wald
      intervals (``method`` column ``"wald"``, and ``attrs["note"]`` says why); naming a
      ``mu`` coefficient in ``params`` under REML is an error;
    * ``"bootstrap"``: parametric-bootstrap percentile interval
      (:func:`drmpy.parametric_bootstrap` with ``nsim`` and ``seed``).

    ``scale="response"`` applies the inverse link to estimate and ends.
    """
    if method not in METHODS:
        raise DrmError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    if scale not in ("link", "response"):
        raise DrmError(f"scale must be 'link' or 'response', got {scale!r}.")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < float(level) < 1:
        raise DrmError(f"level must be between 0 and 1, got {level!r}.")
    level = float(level)
    names = _check_params(fit, params)
    methods = [method] * len(names)
    note = None
    if method == "wald":
        table = _wald(fit, names, level)
    elif method == "profile":
        table, methods, note = _profile_table(fit, names, level, default=params is None)
    else:
        if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or int(nsim) < 2:
            raise DrmError(f"nsim must be an integer >= 2, got {nsim!r}.")
        table = _bootstrap(fit, names, level, int(nsim), seed)
    if scale == "response":
        for col in ("estimate", "lower", "upper"):
            table[col] = to_response_scale(names, table[col].to_numpy())
    table["method"] = methods
    table = table[COLUMNS]
    if note is not None:
        table.attrs["note"] = note
    return table


REML_NOTE = ("REML profiles only the variance parameters (the REML criterion has the location coefficients "
             "integrated out): the mu coefficients have Wald intervals, as the method column says.")


def _profile_table(fit, names: list[str], level: float, default: bool) -> tuple[pd.DataFrame, list[str], str | None]:
    """(table, method per row, note) of ``method="profile"``.  Under REML the default
    parameter list profiles the variance parameters (sigma, sd(g), correlations) and gives the
    location coefficients Wald intervals; named location coefficients are refused."""
    location = [n for n in names if _kind(n) == "mu"]
    if not (default and fit.method == "REML" and location):
        return profile_intervals(fit, level, names), ["profile"] * len(names), None
    variance = [n for n in names if n not in location]
    parts = [_wald(fit, location, level)]
    if variance:
        parts.append(profile_intervals(fit, level, variance))
    table = pd.concat(parts).loc[names]
    methods = ["wald" if n in location else "profile" for n in names]
    return table, methods, REML_NOTE
