"""Tests of the location (``mu``) coefficients: Wald z, t, Knapp-Hartung, cluster-robust.

``coef_test(fit, test, vcov, cluster, level)`` returns one row per ``mu`` coefficient with
``estimate``, ``std_error``, ``statistic`` (estimate / std_error), ``df`` (inf for z),
``p_value`` (two-sided) and the ``level`` interval ``estimate +- q std_error``.

* ``vcov``: ``"observed"`` (``fit.vcov()``, drmTMB's observed information), ``"gls"``
  (``(X' S^-1 X)^-1`` at the fitted variances, metafor's) or ``"CR0"``/``"CR1"``/``"CR2"``
  (cluster-robust with ``cluster``: :mod:`drmpy.inference.robust`, clubSandwich's definitions).
* ``test="z"``: normal; ``"t"``: t with ``nobs - p_mu`` df (metafor's ``test="t"``);
  ``"satterthwaite"``: t with clubSandwich's per-coefficient Satterthwaite df (cluster-robust
  vcov only); ``"knha"``: Knapp and Hartung (metafor's ``test="knha"``): the GLS covariance
  times ``q = r' S^-1 r / (k - p)`` (residuals ``r = y - X beta_hat``; no truncation at 1),
  t with ``k - p`` df.  Knapp-Hartung is defined on the GLS quantities (``vcov`` other than
  a cluster-robust type is not used) and for models without random effects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError
from .marginal import location_vcov, marginal_covariance
from .predict import residual_df

__all__ = ["coef_test", "knapp_hartung_factor", "TESTS"]

TESTS = ("z", "t", "knha", "satterthwaite")
ROBUST = ("CR0", "CR1", "CR2")


def knapp_hartung_factor(fit) -> float:
    """``q = r' S^-1 r / (k - p)`` at the fitted variances and location coefficients.

    Without random effects S is ``V + diag(sigma^2)``: evaluated per independent block of V
    (elementwise for a diagonal V); with random effects from the dense fitted S.
    """
    from scipy.linalg import cho_factor, cho_solve

    d = fit.design
    X = d.fixed["mu"].matrix
    p = X.shape[1]
    r = d.y - X @ fit.theta[:p]
    kv = d.known_v
    if d.random:
        S = marginal_covariance(fit)
        q = float(r @ cho_solve(cho_factor(S, lower=True), r))
    elif kv.matrix is None:
        q = float(np.sum(r**2 / (kv.diag + fit.sigma().to_numpy() ** 2)))
    else:
        from ..results.random_effects import row_covariance

        q = 0.0
        sigma = fit.sigma().to_numpy()
        for rows in kv.blocks:
            Sb = row_covariance(d, fit.theta, sigma, rows)
            q += float(r[rows] @ cho_solve(cho_factor(Sb, lower=True), r[rows]))
    return q / (fit.nobs - p)


def coef_test(fit, test: str = "z", vcov: str = "observed", cluster: Any = None,
              level: float = 0.95) -> pd.DataFrame:
    """Test and interval per ``mu`` coefficient; see the module docstring."""
    if test not in TESTS:
        raise DrmError(f"coef_test(test=...) must be one of {', '.join(TESTS)}, got {test!r}.")
    if not 0.0 < level < 1.0:
        raise DrmError(f"level must be between 0 and 1, got {level!r}.")
    if vcov not in ("observed", "gls") + ROBUST:
        raise DrmError(f"coef_test(vcov=...) must be 'observed', 'gls', 'CR0', 'CR1' or 'CR2', got {vcov!r}.")
    if cluster is not None and vcov not in ROBUST:
        raise DrmError(f"cluster= is used by the cluster-robust vcov ('CR0', 'CR1', 'CR2'), not vcov={vcov!r}.")
    if (test == "knha" or vcov in ROBUST) and fit.design.weights is not None:
        # with likelihood weights the estimator's working weights are no longer S^-1
        raise DrmError(f"coef_test(test={test!r}, vcov={vcov!r}) assumes working weights S^-1; it is not "
                       "defined for fits with weights=.")
    p = fit.design.fixed["mu"].matrix.shape[1]
    names = fit.params.index[:p]
    estimate = fit.params.to_numpy()[:p]
    if test == "knha":
        if vcov in ROBUST:
            raise DrmError("test='knha' scales the GLS covariance; it does not combine with a "
                           f"cluster-robust vcov ({vcov}).")
        if fit.design.random:
            raise DrmError("test='knha' (Knapp-Hartung) is defined here for models without random "
                           "effects, as metafor's rma(); use test='t' or a cluster-robust vcov.")
        C = location_vcov(fit, "gls") * knapp_hartung_factor(fit)
        df = np.full(p, float(residual_df(fit)))
    elif vcov in ROBUST:
        from .robust import cluster_robust

        robust = cluster_robust(fit, cluster, vcov)
        C = robust.vcov
        df = {"z": np.full(p, np.inf), "t": np.full(p, float(residual_df(fit))),
              "satterthwaite": robust.df}[test]
    else:
        if test == "satterthwaite":
            raise DrmError("test='satterthwaite' gives the df of a cluster-robust vcov; use "
                           "vcov='CR2' (or 'CR0', 'CR1') with cluster=.")
        C = location_vcov(fit, vcov)
        df = np.full(p, np.inf if test == "z" else float(residual_df(fit)))
    se = np.sqrt(np.diag(C))
    statistic = estimate / se
    normal = np.isinf(df)
    safe_df = np.where(normal, 1.0, df)
    p_value = np.where(normal, 2.0 * stats.norm.sf(np.abs(statistic)),
                       2.0 * stats.t.sf(np.abs(statistic), safe_df))
    q = np.where(normal, stats.norm.ppf(0.5 + level / 2.0), stats.t.ppf(0.5 + level / 2.0, safe_df))
    out = pd.DataFrame({"estimate": estimate, "std_error": se, "statistic": statistic, "df": df,
                        "p_value": p_value, "lower": estimate - q * se, "upper": estimate + q * se},
                       index=pd.Index(names, name="parameter"))
    out.attrs.update(test=test, vcov=vcov, level=level)
    return out
