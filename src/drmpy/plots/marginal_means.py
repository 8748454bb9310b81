"""Marginal means of ``mu`` with confidence and prediction intervals, as orchaRd's ``mod_results``.

For each setting of the moderator(s) being drawn, every other predictor of the ``mu``,
``sigma`` and ``sd(g)`` formulas is marginalised as emmeans' ``weights = "proportional"``
(orchaRd's ``weights = "prop"``): numeric predictors of ``mu`` are held at their mean over the
retained rows, and the observed combinations of the other factors' levels form a reference
grid weighted by their share of the retained rows (the same weights for every setting).
Numeric predictors of ``sigma`` or ``sd(g)`` enter the grid at their observed values, so the
prediction interval averages the fitted variances over the rows (a variance is not linear in
its predictors, so its value at the mean predictor would not be that average; for a linear
``mu`` both ways give the same mean).  Over that grid:

* the mean is ``c' beta`` with ``c`` the weighted average of the grid's ``mu`` design rows
  (= the weighted average of ``fit.predict(grid)``), and its SE ``sqrt(c' V_beta c)``;
* the prediction variance is ``se^2`` plus the weighted average of each grid row's
  heterogeneity variance ``sigma^2 + sum_g sd(g)^2`` (variances, not SDs), which is read off
  ``fit.predict(grid, interval="prediction")``.

When the grid has one row per setting (no other factors) the intervals are exactly those
of ``fit.predict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import DrmError
from ._common import fit_frame, is_factor

__all__ = ["marginal_means", "model_variables"]


def _spec_variables(spec: Any, columns) -> list[str]:
    if spec is None:
        return []
    return [v for v in sorted(getattr(spec, "required_variables", ()) or ()) if v in columns]


def model_variables(fit: Any, *, variance_only: bool = False) -> list[str]:
    """Data columns that the mu, sigma and sd(g) formulas read (response and V excluded);
    ``variance_only``: those of the sigma and sd(g) formulas."""
    design = fit.design
    specs = [] if variance_only else [design.fixed["mu"].model_spec]
    specs.append(design.fixed["sigma"].model_spec)
    for rd in design.random:
        specs.extend(d.model_spec for d in rd.sd_designs)
    columns = fit_frame(fit).columns
    return list(dict.fromkeys(v for spec in specs for v in _spec_variables(spec, columns)))


def _quantile(fit: Any, level: float, test: str) -> float:
    """The critical value ``fit.predict`` uses (normal, or t with ``nobs - p_mu`` df)."""
    from ..inference.predict import critical_value, residual_df

    if test not in ("z", "t"):
        raise DrmError(f"test must be 'z' or 't', got {test!r}.")
    return critical_value(level, test, residual_df(fit) if test == "t" else None)


def _reference_grid(fit: Any, fixed_columns: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows over the other predictors' observed combinations and their shares of the rows.

    Factors and the numeric predictors of sigma / sd(g) enter with their observed (joint)
    values; numeric predictors of mu alone are held at their mean (emmeans' reference grid;
    for a linear mu the same as averaging over the rows).
    """
    frame = fit_frame(fit)
    others = [v for v in model_variables(fit) if v not in fixed_columns]
    in_variances = set(model_variables(fit, variance_only=True))
    observed = [v for v in others if is_factor(frame[v]) or v in in_variances]
    at_mean = [v for v in others if v not in observed]
    if observed:
        shares = frame.groupby(observed, observed=True, sort=True, dropna=False).size()
        grid = shares.index.to_frame(index=False)
        weights = shares.to_numpy(dtype=np.float64)
        for v in observed:  # keep the data's dtype (categories) so the designs see known levels
            grid[v] = grid[v].astype(frame[v].dtype)
    else:
        grid = pd.DataFrame(index=range(1))
        weights = np.ones(1)
    for v in at_mean:
        grid[v] = float(frame[v].to_numpy(dtype=np.float64).mean())
    return grid, weights / weights.sum()


def _mu_rows(fit: Any, newdata: pd.DataFrame) -> np.ndarray:
    """The mu design rows of ``newdata`` (through the fit's own formulaic spec)."""
    spec = fit.design.fixed["mu"].model_spec
    columns = [c for c in newdata.columns if c in spec.required_variables]
    mm = spec.get_model_matrix(newdata[columns], context=dict(fit.formula.env))
    return np.asarray(mm, dtype=np.float64)


def marginal_means(fit: Any, settings: pd.DataFrame, *, level: float = 0.95, test: str = "z",
                   vcov: str = "observed") -> pd.DataFrame:
    """Marginal mean of ``mu`` at each row of ``settings`` (columns: the moderators held fixed).

    Returns one row per setting (``settings``' index): ``estimate``, ``se``, ``conf_low``,
    ``conf_high``, ``pred_low``, ``pred_high``, ``pred_sd`` (``sqrt(se^2 + mean heterogeneity
    variance)``) on the scale of ``mu`` (the effect-size scale).  ``test``/``vcov`` as in
    ``fit.predict``.
    """
    from ..inference.marginal import location_vcov

    settings = settings.reset_index(drop=True) if settings.index.has_duplicates else settings
    grid, weights = _reference_grid(fit, list(settings.columns))
    m = len(grid)
    from ..results.robust_fit import RobustFit

    if m > 1 and isinstance(fit, RobustFit):  # refused before any interval is computed
        raise DrmError(f"marginal means over other predictors of a {fit.family!r} fit: averaging prediction "
                       "intervals over a reference grid assumes normal random effects; give every predictor of "
                       "the mu, sigma and family formulas a value (one row per setting).")
    # every setting crossed with the grid: block s holds rows s*m .. s*m + m - 1
    rows = settings.loc[settings.index.repeat(m)].reset_index(drop=True)
    tiled = pd.concat([grid] * len(settings), ignore_index=True)
    for c in tiled.columns:
        rows[c] = tiled[c].to_numpy()
        if isinstance(grid[c].dtype, pd.CategoricalDtype):
            rows[c] = rows[c].astype(grid[c].dtype)
    conf = fit.predict(rows, interval="confidence", level=level, test=test, vcov=vcov)
    pred = fit.predict(rows, interval="prediction", level=level, test=test, vcov=vcov)
    if m == 1:
        out = pd.DataFrame({
            "estimate": conf["estimate"].to_numpy(), "se": conf["se"].to_numpy(),
            "conf_low": conf["lower"].to_numpy(), "conf_high": conf["upper"].to_numpy(),
            "pred_low": pred["lower"].to_numpy(), "pred_high": pred["upper"].to_numpy(),
        }, index=settings.index)
        q = _quantile(fit, level, test)
        out["pred_sd"] = (out["pred_high"] - out["pred_low"]) / (2.0 * q)
        return out
    q = _quantile(fit, level, test)
    se_row = conf["se"].to_numpy()
    heterogeneity = ((pred["upper"].to_numpy() - pred["lower"].to_numpy()) / (2.0 * q)) ** 2 - se_row**2
    X = _mu_rows(fit, rows)
    p = X.shape[1]
    V = np.asarray(location_vcov(fit, vcov))[:p, :p]
    C = np.einsum("sm,smp->sp", np.broadcast_to(weights, (len(settings), m)),
                  X.reshape(len(settings), m, p))
    estimate = (conf["estimate"].to_numpy().reshape(len(settings), m) * weights).sum(axis=1)
    se = np.sqrt(np.einsum("sp,pq,sq->s", C, V, C))
    tau2 = (heterogeneity.reshape(len(settings), m) * weights).sum(axis=1)
    pred_sd = np.sqrt(se**2 + tau2)
    return pd.DataFrame({
        "estimate": estimate, "se": se, "conf_low": estimate - q * se, "conf_high": estimate + q * se,
        "pred_low": estimate - q * pred_sd, "pred_high": estimate + q * pred_sd, "pred_sd": pred_sd,
    }, index=settings.index)
