"""Egger-type regression tests for small-study effects, and PET-PEESE, inside the full model.

The fitted model is refitted with one more predictor of ``mu`` (the standard error
``sqrt(v_i)``, the variance ``v_i`` or a function of the sample size), every other formula
kept as it is: ``sigma`` (location-scale), every ``sd(g)`` (multilevel, Nakagawa et al. 2022),
V and the method.  The slope's Wald test is the test of funnel asymmetry; with the standard
error or variance as predictor and no other moderator, the intercept is the "limit"
estimate, the mean effect of a study with infinite precision (metafor's ``regtest``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError
from ..inference.marginal import location_vcov
from .refit import data_column, refit_design, require_drm_fit, with_mu_column

__all__ = ["egger_test", "pet_peese", "PREDICTORS"]

PREDICTORS = ("sei", "vi", "ni", "ninv", "sqrtni", "sqrtninv")
# predictors whose zero is infinite precision: the intercept is then the limit estimate
_LIMIT_PREDICTORS = ("sei", "vi", "ninv", "sqrtninv")


def _predictor_values(fit, predictor: str, ni: Any) -> np.ndarray:
    if predictor not in PREDICTORS:
        raise DrmError(f"predictor must be one of {', '.join(PREDICTORS)}; got {predictor!r}.")
    if predictor == "sei":
        return np.sqrt(fit.design.known_v.diag)
    if predictor == "vi":
        return np.array(fit.design.known_v.diag, dtype=np.float64)
    if ni is None:
        raise DrmError(
            f"predictor='{predictor}' is a function of the sample sizes, but no sample sizes were "
            "given; pass ni= (a column name of the data or an array with one value per data row)."
        )
    n = np.asarray(data_column(fit, ni, "ni"), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(n) | (n <= 0))
    if bad.size:
        raise DrmError(f"ni: sample sizes must be positive and finite; row {fit.design.row_labels[bad[0]]!r} "
                       f"has {n[bad[0]]!r}.")
    return {"ni": n, "ninv": 1.0 / n, "sqrtni": np.sqrt(n), "sqrtninv": 1.0 / np.sqrt(n)}[predictor]


def _is_intercept_only(fit) -> bool:
    return tuple(fit.design.fixed["mu"].terms) == ("(Intercept)",)


def _regression(fit, predictor: str, ni: Any, vcov: str, level: float = 0.95):
    """(refit, Series) of one Egger-type regression."""
    values = _predictor_values(fit, predictor, ni)
    refit = refit_design(fit, with_mu_column(fit, values, predictor))
    p = refit.design.fixed["mu"].matrix.shape[1]
    cov = location_vcov(refit, vcov)
    beta = refit.params.to_numpy()[:p]
    se = np.sqrt(np.diag(cov))
    slope, slope_se = beta[-1], se[-1]
    z = slope / slope_se
    crit = stats.norm.ppf(0.5 + level / 2)
    if predictor in _LIMIT_PREDICTORS and _is_intercept_only(fit):
        limit, limit_se = beta[0], se[0]
    else:
        limit, limit_se = np.nan, np.nan
    out = pd.Series({
        "estimate": slope,
        "std_error": slope_se,
        "statistic": z,
        "p_value": 2.0 * stats.norm.sf(abs(z)),
        "limit_estimate": limit,
        "limit_std_error": limit_se,
        "limit_lower": limit - crit * limit_se,
        "limit_upper": limit + crit * limit_se,
    }, name=predictor)
    return refit, out


def egger_test(fit, predictor: str = "sei", ni: Any = None, vcov: str = "observed", *,
               return_fit: bool = False):
    """Egger-type regression test for funnel-plot asymmetry in the fitted model.

    Refits ``fit``'s model with ``predictor`` added to the ``mu`` formula (every other
    formula, V, the random effects and the method kept) and tests its slope with a Wald
    z test.

    Parameters
    ----------
    predictor:
        ``"sei"`` (standard error ``sqrt(v_i)``, Egger's test), ``"vi"`` (sampling variance),
        ``"ni"``, ``"ninv"`` (1/n), ``"sqrtni"``, ``"sqrtninv"`` (1/sqrt(n)), as metafor's
        ``regtest``; the sample-size ones need ``ni=``.
    ni:
        Sample sizes: a column name of the fit's data or an array with one value per data row.
    vcov:
        ``"observed"`` (default, drmTMB's observed information of the refit) or ``"gls"``
        (``(X'S^-1X)^-1`` at the refit's variances, metafor's).

    Returns a Series: ``estimate`` (the slope, response scale of ``mu``), ``std_error``,
    ``statistic`` (z), ``p_value`` (two-sided), and ``limit_estimate``, ``limit_std_error``,
    ``limit_lower``, ``limit_upper`` (the ``mu`` intercept, the mean effect as the predictor
    goes to 0, with its 95% Wald interval).  The limit columns are NaN, as in ``regtest``,
    for ``ni``/``sqrtni`` and when the ``mu`` formula has moderators.  ``return_fit=True``
    returns ``(Series, refit)``, the refit being a DrmFit whose ``mu`` has the predictor as
    term ``mu:<predictor>``.
    """
    require_drm_fit(fit, "egger_test")
    refit, out = _regression(fit, predictor, ni, vcov)
    return (out, refit) if return_fit else out


def pet_peese(fit, vcov: str = "observed", alpha: float = 0.05) -> pd.DataFrame:
    """PET-PEESE (Stanley and Doucouliagos 2014) inside the full model.

    PET adds the standard error ``sqrt(v_i)`` to the ``mu`` formula, PEESE the variance
    ``v_i`` (each refit keeps every other formula, V, random effects and method); each
    gives the limit estimate (the ``mu`` intercept).  The conditional estimator uses PEESE
    when PET's limit is significantly different from 0 at ``alpha`` in a one-sided test in
    the direction of the PET estimate (``p = P(Z > |z|)``), else PET.

    Returns a DataFrame indexed ``PET``, ``PEESE`` with the limit estimate, its standard
    error, 95% interval, z and one-sided p, the slope and its two-sided p, and ``selected``
    (True on the row the conditional estimator picks).  The ``mu`` formula must have no
    moderators (the limit is then the intercept).
    """
    require_drm_fit(fit, "pet_peese")
    if not _is_intercept_only(fit):
        raise DrmError(
            "pet_peese needs a mu formula without moderators (intercept only): the limit estimate is "
            f"the intercept of `{fit.formula.text['mu']}` plus the standard error or variance."
        )
    rows = {}
    for name, predictor in (("PET", "sei"), ("PEESE", "vi")):
        _, r = _regression(fit, predictor, None, vcov)
        z = r["limit_estimate"] / r["limit_std_error"]
        rows[name] = {
            "predictor": predictor,
            "limit_estimate": r["limit_estimate"],
            "limit_std_error": r["limit_std_error"],
            "limit_lower": r["limit_lower"],
            "limit_upper": r["limit_upper"],
            "limit_statistic": z,
            "limit_p_one_sided": stats.norm.sf(abs(z)),
            "slope": r["estimate"],
            "slope_p_value": r["p_value"],
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    use_peese = bool(out.loc["PET", "limit_p_one_sided"] < alpha)
    out["selected"] = [not use_peese, use_peese]
    return out
