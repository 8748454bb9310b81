"""Confidence and prediction intervals for the location ``mu`` of new or fitted rows.

For a row with location design ``x`` the estimate is ``x' beta_hat`` and its standard error
``sqrt(x' C x)``, with ``C`` the covariance of the location coefficients (``vcov="observed"``:
``fit.vcov()``, drmTMB's; ``vcov="gls"``: ``(X' S^-1 X)^-1``, metafor's).  The confidence
interval is ``estimate +- q se``.  The prediction interval is for the true effect of a new
study with that row's predictors,

    estimate +- q sqrt(se^2 + sigma_new^2 + sum_g z_new' G_g,new z_new [+ vi_new]),

where ``sigma_new`` and each random-effect SD come from the new row's own predictors
(``sigma ~ z``, ``sd(g) ~ w``): metafor's ``predict(fit, newmods=, newscale=)`` for
location-scale models, and the sum of the ``sigma2`` components for ``rma.mv``.  ``q`` is the
normal quantile, or with ``test="t"`` the t quantile with ``nobs - p_mu`` df (metafor's
``test="t"``).  Intervals describe the population (fixed-effect) mean; random effects'
conditional modes are not added.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DrmError
from .marginal import location_vcov

__all__ = ["predict_interval", "critical_value"]

INTERVALS = ("confidence", "prediction")


def critical_value(level: float, test: str, df: float | None = None) -> float:
    """Two-sided critical value for a ``level`` interval: normal (``"z"``) or t with ``df``."""
    if not 0.0 < level < 1.0:
        raise DrmError(f"level must be between 0 and 1, got {level!r}.")
    if test == "z":
        return NormalDist().inv_cdf(0.5 + level / 2.0)
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + level / 2.0, df))


def residual_df(fit) -> int:
    """``nobs - p_mu``: the df of metafor's ``test="t"``."""
    return fit.nobs - fit.design.fixed["mu"].matrix.shape[1]


def _row_quadratic(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``diag(X C X')`` without forming the n x n matrix."""
    return np.einsum("ij,ij->i", X @ C, X)


def _sigma_new(fit, newdata: Any) -> np.ndarray:
    design = fit.design.fixed["sigma"]
    if newdata is None:
        return fit.sigma().to_numpy(dtype=np.float64)
    Z = fit.new_design_matrix("sigma", newdata, purpose="the prediction interval's sigma_new")
    if Z.shape[1] == 0:  # common-effect model: no residual heterogeneity
        return np.zeros(Z.shape[0])
    start = fit.design.fixed["mu"].matrix.shape[1]
    return np.exp(Z @ fit.theta[start : start + design.matrix.shape[1]])


def _level_positions(fit, rd, newdata: Any, n: int) -> np.ndarray | None:
    """Position of each new row's level of ``rd.group`` among the fitted levels, or None when
    newdata lacks a group column or holds a level the fit did not see."""
    from ..model import frames
    from ..model.design import group_keys

    if not set(rd.term.group_columns) <= set(frames.column_names(newdata)):
        return None
    frame = frames.as_pandas(newdata, list(rd.term.group_columns))
    if frame.isna().any(axis=None):
        return None
    keys, _ = group_keys(frame, rd.term)
    position = {lv: i for i, lv in enumerate(rd.levels)}
    out = np.fromiter((position.get(k, -1) for k in keys), dtype=np.int64, count=n)
    return None if np.any(out < 0) else out


def _random_variance_new(fit, newdata: Any, n: int) -> np.ndarray:
    """``sum_g z' G_g z`` per row: the variance the random effects add for a new study.

    Each SD comes from the row's own ``sd(g)`` predictors (columns of newdata); for a row
    of a fitted level whose ``sd(g)`` predictors are absent, from that level's fitted SD.
    """
    from ..engine.likelihood import RHO_GUARD
    from ..model import frames
    from ..results.random_effects import term_params, level_sds

    _, terms = term_params(fit.design, fit.theta)
    total = np.zeros(n)
    columns = set() if newdata is None else set(frames.column_names(newdata))
    for rd, (alphas, etas) in zip(fit.design.random, terms):
        if newdata is None:
            sd = level_sds(rd, alphas)[rd.level_index]
            z = rd.z
            positions = rd.level_index
        else:
            positions = _level_positions(fit, rd, newdata, n)
            sds = []
            for d, a in zip(rd.sd_designs, alphas):
                needed = set(d.model_spec.required_variables) - set(fit.formula.env)
                if needed <= columns:
                    W = fit.new_design_matrix(d.dpar, newdata, purpose="the prediction interval's " + d.dpar)
                    sds.append(np.exp(W @ np.asarray(a)))
                elif positions is not None:
                    sds.append(np.exp(d.matrix @ np.asarray(a))[positions])
                else:
                    missing = sorted(needed - columns)[0]
                    raise DrmError(
                        f"newdata lacks column `{missing}` needed by the {d.dpar} formula for the "
                        f"prediction interval (or give `{'`, `'.join(rd.term.group_columns)}` with levels "
                        "seen in the fit)."
                    )
            sd = np.column_stack(sds)
            zc = []
            for name in rd.term.coefficient_names:
                if name == "(Intercept)":
                    zc.append(np.ones(n))
                    continue
                if name not in columns:
                    raise DrmError(f"newdata lacks column `{name}` (random slope in `{rd.term.text}`) "
                                   "needed for the prediction interval.")
                zc.append(frames.as_pandas(newdata, [name])[name].to_numpy(dtype=np.float64))
            z = np.column_stack(zc)
        if rd.is_relmat:
            k_diag = rd.relatedness_diagonal()
            if positions is not None:
                kii = k_diag[positions]
            elif np.allclose(k_diag, 1.0):
                kii = np.ones(n)  # a correlation matrix: a new level has K_ii = 1
            else:
                raise DrmError(
                    f"The prediction interval for a new level of `{rd.group}` needs its K_ii, but "
                    f"relmat K is not a correlation matrix; give `{rd.group}` with levels seen in the fit."
                )
            total += (z[:, 0] * sd[:, 0]) ** 2 * kii
            continue
        zs = z * sd
        if rd.n_cor:
            q = rd.n_coef
            C = np.eye(q)
            iu = np.triu_indices(q, 1)
            C[iu] = RHO_GUARD * np.tanh(np.asarray(etas))
            C = C + np.triu(C, 1).T
            total += np.einsum("ij,jk,ik->i", zs, C, zs)
        else:
            total += np.sum(zs**2, axis=1)
    return total


def _new_sampling_variance(vi: Any, newdata: Any, n: int) -> np.ndarray:
    if isinstance(vi, str):
        from ..model import frames

        if newdata is None:
            raise DrmError(f"vi={vi!r} names a column of newdata, but newdata is None; pass an array.")
        if vi not in frames.column_names(newdata):
            raise DrmError(f"newdata lacks the sampling-variance column `{vi}` given as vi.")
        out = frames.as_pandas(newdata, [vi])[vi].to_numpy(dtype=np.float64)
    else:
        out = np.asarray(vi, dtype=np.float64).reshape(-1)
        if out.size == 1:
            out = np.full(n, float(out[0]))
    if out.shape != (n,):
        raise DrmError(f"vi has {out.size} values but there are {n} rows to predict.")
    if np.any(out < 0):
        raise DrmError("vi (new sampling variances) must be non-negative.")
    return out


def _shared_frame(fit, newdata: Any, vi: Any) -> pd.DataFrame:
    """The columns of newdata any formula reads, as one pandas frame (a copy) whose text
    columns are categorical: encoded once here instead of once per formula (the mu and sigma
    designs usually share a factor)."""
    from ..model import frames

    d = fit.design
    wanted = set(d.fixed["mu"].model_spec.required_variables) | set(d.fixed["sigma"].model_spec.required_variables)
    for rd in d.random:
        wanted |= set(rd.term.group_columns) | set(rd.term.slopes)
        for sd_design in rd.sd_designs:
            wanted |= set(sd_design.model_spec.required_variables)
    if isinstance(vi, str):
        wanted.add(vi)
    available = frames.column_names(newdata)
    frame = frames.as_pandas(newdata, [c for c in available if c in wanted])
    text = [c for c in frame.columns if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c].dtype)]
    if text:
        frame = frame.assign(**{c: pd.Categorical(frame[c]) for c in text})
    return frame


def predict_interval(fit, newdata: Any = None, interval: str = "confidence", level: float = 0.95,
                     vi: Any = None, test: str = "z", vcov: str = "observed") -> pd.DataFrame:
    """Estimate, SE and a confidence or prediction interval of ``mu`` per row (response scale).

    Returns a DataFrame indexed like ``newdata`` (or the retained rows when None) with
    columns ``estimate``, ``se``, ``lower``, ``upper``.  See the module docstring.
    """
    if interval not in INTERVALS:
        raise DrmError(f"interval must be None, 'confidence' or 'prediction', got {interval!r}.")
    if test not in ("z", "t"):
        raise DrmError(f"predict(test=...) must be 'z' or 't', got {test!r}.")
    if vi is not None and interval != "prediction":
        raise DrmError("vi= (new sampling variances) only applies to interval='prediction'.")
    C = location_vcov(fit, vcov)
    if newdata is None:
        X = fit.design.fixed["mu"].matrix
        index = fit.design.row_labels
    else:
        newdata = _shared_frame(fit, newdata, vi)
        X = fit.new_design_matrix("mu", newdata, purpose="prediction")
        index = newdata.index
    beta = fit.theta[: X.shape[1]]
    estimate = X @ beta
    var = _row_quadratic(X, C)
    se = np.sqrt(np.maximum(var, 0.0))
    q = critical_value(level, test, residual_df(fit) if test == "t" else None)
    if interval == "prediction":
        n = len(estimate)
        sig = _sigma_new(fit, newdata)
        var = var + sig**2 + (_random_variance_new(fit, newdata, n) if fit.design.random else 0.0)
        if vi is not None:
            var = var + _new_sampling_variance(vi, newdata, n)
    half = q * np.sqrt(np.maximum(var, 0.0))
    return pd.DataFrame({"estimate": estimate, "se": se, "lower": estimate - half, "upper": estimate + half},
                        index=index)
