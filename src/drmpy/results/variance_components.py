"""Variance components on the variance scale: metafor's ``tau2`` and ``sigma2`` from a fit.

drmpy (as drmTMB) estimates log-SD coefficients: ``log sigma_i = z_i' gamma`` for the row-level
heterogeneity and ``log tau_{g,j} = w_{g,j}' alpha_g`` for each random effect.  metafor reports
the variances themselves.  :func:`variance_components` turns the fit into one row per variance
component (per distinct design row when the SD is modelled) on the variance scale,
``exp(2 eta)``, with optional confidence intervals:

* a component that is one parameter (``sigma ~ 1``, an intercept-only ``sd(g)``): the profile
  likelihood interval of its log-SD (``method="profile"``, the default: metafor's
  ``confint(..., type = "PL")`` and ``confint(rma.mv, sigma2 = k)``), or Wald;
* a modelled SD (``sigma ~ habitat``, ``sd(study) ~ habitat``): per distinct design row
  ``z``, the Wald interval of ``eta = z' gamma`` with ``se = sqrt(z' Cov(gamma) z)``
  (observed information).

Either way the bounds on the log-SD scale are transformed by ``exp(2 bound)``, so an
interval whose lower side is open (a variance that can go to 0) has lower bound 0.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DrmError

__all__ = ["variance_components", "METHODS"]

METHODS = ("profile", "wald")
COLUMNS = ["component", "level", "metafor", "estimate"]
CI_COLUMNS = ["lower", "upper", "method"]


def _is_intercept_only(design) -> bool:
    return design.matrix.shape[1] == 1 and bool(np.all(design.matrix == 1.0))


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, (float, np.floating)) else str(value)


def _row_labels(design, values: pd.DataFrame | None) -> list[str]:
    """A label per row of ``design.matrix``: ``var=value`` for the formula's variables when
    their values are known (``values``, one row per design row), else ``term=value``."""
    variables = [v for v in (values.columns if values is not None else [])
                 if v in getattr(design.model_spec, "required_variables", set())]
    if values is not None and variables:
        return [", ".join(f"{v}={_show(row[v])}" for v in variables) for _, row in values[variables].iterrows()]
    terms = [t for t in design.terms if t != "(Intercept)"]
    cols = [design.terms.index(t) for t in terms]
    return [", ".join(f"{t}={design.matrix[i, c]:g}" for t, c in zip(terms, cols))
            for i in range(design.matrix.shape[0])]


def _scale_designs(fit) -> list[tuple[str, Any, pd.DataFrame | None]]:
    """(component name, FixedDesign of its log-SD, per-design-row variable values or None)
    for every variance component of the fit, row level first, then each random term."""
    design = fit.design
    frame = getattr(design, "frame", None)
    out = []
    for dpar in ("sigma", "sigma1", "sigma2"):
        fixed = design.fixed.get(dpar)
        if fixed is None or fixed.matrix.shape[1] == 0:  # absent, or sigma ~ 0 (common effect)
            continue
        values = frame.reset_index(drop=True) if (frame is not None and dpar == "sigma"
                                                  and len(frame) == fixed.matrix.shape[0]) else None
        out.append((dpar, fixed, values))
    for rd in getattr(design, "random", ()):
        values = None
        if frame is not None and len(frame) == len(rd.level_index):
            first = pd.Series(np.arange(len(rd.level_index))).groupby(rd.level_index).first()
            values = frame.iloc[first.to_numpy()].reset_index(drop=True)
        for sd_design in rd.sd_designs:
            out.append((sd_design.dpar, sd_design, values))
    return out


def _metafor_kinds(fit, comps) -> list[str | None]:
    """metafor's element for each component: ``tau2`` of ``rma()`` (for ``sigma ~ z``, its
    ``tau2`` holds one value per row: ``"tau2 (per row)"``); ``tau2`` of an rma.mv
    ``~ w | g, struct = "DIAG"`` term for an ``sd(g)`` modelled by one factor (as many
    distinct design rows as coefficients); ``sigma2`` for rma.mv ``~ 1 | g`` terms and the row
    level; None where metafor has no such parameter (slopes, bivariate fits, an SD with a
    numeric predictor beside random effects)."""
    random = bool(getattr(fit.design, "random", ()))
    kinds: list[str | None] = []
    for name, fixed, _ in comps:
        one = _is_intercept_only(fixed)
        per_factor_level = len(np.unique(fixed.matrix, axis=0)) == fixed.matrix.shape[1]
        if name in ("sigma1", "sigma2") or "|" in name:
            kinds.append(None)
        elif name == "sigma" and not random:
            kinds.append("tau2" if one else "tau2 (per row)")
        elif one:
            kinds.append("sigma2")
        else:
            kinds.append("tau2" if name != "sigma" and per_factor_level else None)
    return kinds


def _number_metafor(components: list[str], kinds: list[str | None]) -> list[str | None]:
    """Index the metafor names as R's vectors are (``sigma2[1]``, ``sigma2[2]``) when a kind
    occurs more than once; metafor lists the ``~ 1 | g`` terms in the order of ``random`` with
    the row level (drmpy's ``sigma``) last, as in ``random = ~ 1 | district/school``."""
    order = sorted(range(len(kinds)), key=lambda i: (components[i] == "sigma", i))
    names: list[str | None] = list(kinds)
    for kind in ("tau2", "sigma2"):
        idx = [i for i in order if kinds[i] == kind]
        if len(idx) > 1:
            for k, i in enumerate(idx, start=1):
                names[i] = f"{kind}[{k}]"
    return names


def variance_components(fit, level: float | None = None, method: str = "profile") -> pd.DataFrame:
    """One row per variance component on the variance scale (metafor's ``tau2``/``sigma2``).

    Columns: ``component`` (``sigma``, ``sd(study)``, ``sd(g|x)`` for a slope; ``sigma1``,
    ``sigma2`` of a bivariate fit), ``level`` (``None`` for a constant SD; otherwise the
    values of the SD's predictors for each distinct design row, e.g. ``habitat=forest``),
    ``metafor`` (the matching metafor element: ``tau2`` of ``rma()``, ``"tau2 (per row)"`` for
    ``sigma ~ z`` (metafor's location-scale ``tau2`` has one value per row), ``tau2[k]`` of an
    ``rma.mv`` ``~ w | g, struct = "DIAG"`` term for an ``sd(g)`` modelled by a factor,
    ``sigma2``/``sigma2[k]`` for ``~ 1 | g`` terms with the row level last; None where metafor
    has no such parameter) and ``estimate`` = ``exp(2 eta)``, the fitted
    variance.  With ``level`` (e.g. 0.95) also ``lower``, ``upper`` and ``method``: the
    profile interval of a one-parameter component's log-SD (``method="profile"``) or the
    Wald interval of ``eta`` (``method="wald"``, and always for modelled SDs), each bound
    mapped by ``exp(2 bound)`` (an open lower side gives 0).  Correlations are not variances
    and are left out (``fit.conf_int()`` has them).
    """
    if method not in METHODS:
        raise DrmError(f"variance_components(method=...) must be one of {', '.join(METHODS)}; got {method!r}.")
    if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float))
                              or not 0 < float(level) < 1):
        raise DrmError(f"variance_components(level=...) must be None or between 0 and 1, got {level!r}.")
    comps = _scale_designs(fit)
    kinds = _metafor_kinds(fit, comps)
    params, vcov = fit.params, fit.vcov()
    rows = []
    profile_names = []
    for (name, fixed, values), mf in zip(comps, kinds):
        coef_names = fixed.names
        gamma = params[coef_names].to_numpy(dtype=float)
        if _is_intercept_only(fixed):
            rows.append(dict(component=name, level=None, metafor=mf, eta=gamma[0],
                             se=float(np.sqrt(vcov.loc[coef_names[0], coef_names[0]])), param=coef_names[0]))
            profile_names.append(coef_names[0])
            continue
        Z, first = np.unique(fixed.matrix, axis=0, return_index=True)
        order = np.argsort(first)  # distinct rows in order of first appearance
        Z, first = Z[order], first[order]
        cov = vcov.loc[coef_names, coef_names].to_numpy(dtype=float)
        if values is not None:  # distinct rows in the order of their predictors' values (factor levels)
            distinct = values.iloc[first].reset_index(drop=True)
            variables = [v for v in distinct.columns if v in fixed.model_spec.required_variables]
            by_value = distinct.sort_values(variables, kind="stable").index.to_numpy() if variables else \
                np.arange(len(first))
            Z, first = Z[by_value], first[by_value]
            labels = _row_labels(fixed, values.iloc[first].reset_index(drop=True))
        else:
            labels = [_row_labels(fixed, None)[i] for i in first]
        for z, label in zip(Z, labels):
            rows.append(dict(component=name, level=label, metafor=mf, eta=float(z @ gamma),
                             se=float(np.sqrt(z @ cov @ z)), param=None))
    table = pd.DataFrame(rows, columns=COLUMNS[:3] + ["eta", "se", "param"])
    table["metafor"] = _number_metafor(table["component"].tolist(), table["metafor"].tolist())
    table["level"] = table["level"].astype(object).where(table["level"].notna(), None)
    table["estimate"] = np.exp(2.0 * table["eta"].to_numpy(dtype=float))
    if level is None:
        return table[COLUMNS]
    q = NormalDist().inv_cdf(0.5 + float(level) / 2.0)
    eta, se = table["eta"].to_numpy(dtype=float), table["se"].to_numpy(dtype=float)
    table["lower"], table["upper"] = np.exp(2.0 * (eta - q * se)), np.exp(2.0 * (eta + q * se))
    table["method"] = "wald"
    if method == "profile" and profile_names:
        ci = fit.conf_int(level=float(level), method="profile", params=profile_names)
        for i, param in table["param"].items():
            if isinstance(param, str):
                table.loc[i, ["lower", "upper"]] = np.exp(2.0 * ci.loc[param, ["lower", "upper"]].to_numpy(float))
                table.loc[i, "method"] = "profile"
    return table[COLUMNS + CI_COLUMNS]
