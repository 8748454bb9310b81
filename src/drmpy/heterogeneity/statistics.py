"""Q, I2, H2 and R2 of a univariate fit.

Notation: X the ``mu`` design of the retained rows, V the known sampling covariance,
``W = V^-1``.  The Q test and the typical sampling variance ``s2`` use V alone (no fitted
heterogeneity), as metafor:

* ``Q_E = r' W r`` with ``r = y - X b_V`` the residual of the GLS fit ``b_V = (X'WX)^-1 X'W y``,
  on ``n - p`` degrees of freedom;
* ``s2 = (n - p) / tr(P)``, ``P = W - W X (X'WX)^-1 X'W`` (metafor's ``rma.uni``, orchaRd's
  ``i2_ml``; for ``mu ~ 1`` and diagonal V, Higgins and Thompson's typical within-study variance).

The fitted variance components are ``sigma^2`` (row level) and ``sd(g)^2`` per random-effect
SD parameter, each averaged over the retained rows (a modelled SD differs by row); I2 of a
component is ``100 variance / (sum of variances + s2)``, H2 ``(sum of variances + s2) / s2``.

Everything is computed per block of V (O(n) for a diagonal V); no n x n inverse is formed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import linalg, stats

from ..errors import ConvergenceWarning, DrmError

__all__ = ["SamplingGLS", "sampling_gls", "q_test", "typical_sampling_variance", "variance_components",
           "i2", "h2", "r2"]


class SamplingGLS(NamedTuple):
    """The GLS fit of the ``mu`` design with the known V alone.

    ``Q``: ``r' V^-1 r``; ``df``: n - p; ``trace_P``: ``tr(P)``; ``estimate``: ``b_V``.
    """

    Q: float
    df: int
    trace_P: float
    estimate: np.ndarray


def _univariate(fit, what: str):
    from ..results.bivariate import BivariateFit

    if isinstance(fit, BivariateFit):
        raise DrmError(
            f"{what} is defined for univariate fits; this is a bivariate fit (mu1, mu2). "
            "Fit each response on its own (drm.fit with one mu formula) to get its heterogeneity summaries."
        )
    if fit.design.weights is not None:
        raise DrmError(
            f"{what} is not defined for a fit with weights= (they multiply log-likelihood terms, which "
            "changes neither V nor the data Q and I2 are built from); refit without weights."
        )


def _whitened_blocks(known_v):
    """Yield (row positions, Cholesky factor of V's block) for every independent block of V."""
    for block in known_v.blocks:
        L = linalg.cholesky(known_v.matrix[np.ix_(block, block)], lower=True)
        yield block, L


def sampling_gls(fit) -> SamplingGLS:
    """GLS of ``y`` on the ``mu`` design with ``W = V^-1``: Q_E, its df, ``tr(P)`` and ``b_V``.

    Diagonal V: O(n p^2).  Block V: one Cholesky per block of V.
    """
    cached = getattr(fit, "_sampling_gls_cache", None)
    if cached is not None:
        return cached
    _univariate(fit, "q_test")
    design = fit.design
    kv = design.known_v
    if kv.kind == "none":
        raise DrmError("q_test, i2 and h2 need the known sampling variances: the mu formula has no meta_V(V = ...).")
    X = design.fixed["mu"].matrix
    y = design.y
    n, p = X.shape
    if n <= p:
        raise DrmError(f"q_test needs more rows ({n}) than mu coefficients ({p}).")
    if kv.matrix is None:
        v = kv.diag
        if np.any(v <= 0):
            bad = design.row_labels[int(np.flatnonzero(v <= 0)[0])]
            raise DrmError(f"q_test needs positive sampling variances; row {bad!r} has v_i = "
                           f"{v[v <= 0][0]:g} (V^-1 does not exist).")
        w = 1.0 / v
        WX, Wy, trace_W = X * w[:, None], y * w, float(np.sum(w))
    else:
        WX, Wy, trace_W = np.empty_like(X), np.empty_like(y), 0.0
        for block, L in _whitened_blocks(kv):
            WX[block] = linalg.cho_solve((L, True), X[block])
            Wy[block] = linalg.cho_solve((L, True), y[block])
            Linv = linalg.solve_triangular(L, np.eye(len(block)), lower=True)
            trace_W += float(np.sum(Linv**2))  # tr(V_b^-1) = ||L^-1||_F^2
    A = X.T @ WX  # X' W X
    A = 0.5 * (A + A.T)
    chol = linalg.cho_factor(A)
    b = linalg.cho_solve(chol, X.T @ Wy)
    r = y - X @ b
    Q = float(r @ (Wy - WX @ b))  # r' W r, with W r = W y - W X b
    trace_P = trace_W - float(np.trace(linalg.cho_solve(chol, WX.T @ WX)))
    out = SamplingGLS(Q, n - p, trace_P, b)
    fit._sampling_gls_cache = out
    return out


def q_test(fit) -> pd.Series:
    """Test for residual heterogeneity: ``Q`` (metafor's ``QE``), ``df`` (n - p) and ``p_value``
    (upper tail of chi-square with df degrees of freedom)."""
    g = sampling_gls(fit)
    return pd.Series({"Q": g.Q, "df": float(g.df), "p_value": float(stats.chi2.sf(g.Q, g.df))}, name="q_test")


def typical_sampling_variance(fit) -> float:
    """metafor's typical sampling variance ``s2 = (n - p) / tr(P)`` (``P`` from V alone)."""
    g = sampling_gls(fit)
    return g.df / g.trace_P


def _row_variances(fit) -> dict[str, np.ndarray]:
    """Per retained row, the fitted variance of each component: ``sigma`` (sigma_i^2; absent
    under ``sigma ~ 0``), then
    per random-effect SD parameter ``(z_ic sd_c[level_i])^2`` (times K_ll for relmat)."""
    from ..results.random_effects import _term_params, level_sds

    design = fit.design
    # sigma ~ 0 (common effect): no row-level component at all, rather than a row of zeros
    out = {} if design.common_effect else {"sigma": np.asarray(fit.sigma(), dtype=np.float64) ** 2}
    if not design.random:
        return out
    _, terms = _term_params(design, fit._raw.theta)
    for rd, (alphas, _) in zip(design.random, terms):
        if rd.n_cor:
            raise DrmError(
                f"i2 and r2 split the variance by SD parameter, which a correlated term such as "
                f"`{rd.term.text}` does not allow (its covariance adds cross terms); write it with `||` "
                "(independent SDs) to get these summaries."
            )
        sd = level_sds(rd, alphas)  # (levels, coefficients)
        scale = np.diag(rd.relmat)[rd.level_index] if rd.relmat is not None else 1.0
        for c, name in enumerate(rd.term.sd_dpars()):
            out[name] = (rd.z[:, c] * sd[rd.level_index, c]) ** 2 * scale
    return out


def variance_components(fit) -> pd.Series:
    """The fitted variance of every component averaged over the retained rows: ``sigma``
    (mean sigma_i^2) and one entry per random-effect SD parameter (``sd(study)``: mean of
    ``sd(study)^2`` over the rows, which is the plain ``sd(study)^2`` when it is not modelled)."""
    _univariate(fit, "variance_components")
    return pd.Series({k: float(np.mean(v)) for k, v in _row_variances(fit).items()}, name="variance")


def _by_values(fit, by: Any, data: Any) -> np.ndarray:
    """Values of ``by`` on the retained rows, from a column of ``data`` or an aligned Series/array."""
    labels = fit.design.row_labels
    if isinstance(by, str):
        if data is None:
            raise DrmError(f"i2(by={by!r}) needs the data the model was fitted to: fit.i2(by={by!r}, data=...).")
        from ..model import frames

        if by not in frames.column_names(data):
            raise DrmError(f"i2(by=...): data has no column `{by}`.")
        column = frames.as_pandas(data, [by])[by]
        try:
            return column.loc[labels].to_numpy()
        except KeyError as exc:
            raise DrmError("i2(by=..., data=...): data lacks rows the fit used; pass the data given to "
                           "drm.fit.") from exc
    if isinstance(by, pd.Series):
        missing = labels.difference(by.index)
        if len(missing):
            raise DrmError(f"i2(by=...): the Series lacks the fitted row {missing[0]!r}; it is aligned by index "
                           "with the fitted rows (fit.design.row_labels).")
        return by.loc[labels].to_numpy()
    values = np.asarray(by)
    if values.ndim != 1 or len(values) != fit.nobs:
        raise DrmError(f"i2(by=...) takes a column name (with data=), a Series, or an array of one value per "
                       f"fitted row ({fit.nobs}); got shape {values.shape}.")
    return values


def _i2_table(components: dict[str, float], s2: float) -> pd.DataFrame:
    names = list(components) + ["total"]
    variances = np.array(list(components.values()) + [sum(components.values())])
    total = variances[-1] + s2
    return pd.DataFrame({"variance": variances, "i2": 100.0 * variances / total,
                         "typical_sampling_variance": s2}, index=pd.Index(names, name="component"))


EE_DEFINITION = "common-effect (EE, metafor): I2 = 100 max(0, (Q - df) / Q), H2 = Q / df"


def _common_effect(fit) -> bool:
    """A model without any heterogeneity variance (``sigma ~ 0``, no random effects)."""
    return bool(fit.design.common_effect) and not fit.design.random


def _ee_table(fit) -> pd.DataFrame:
    """metafor's I2 of a common-effect (``method = "EE"``) model, from Q; says so in ``definition``."""
    g = sampling_gls(fit)
    i2_ee = 100.0 * max(0.0, (g.Q - g.df) / g.Q) if g.Q > 0 else 0.0
    table = pd.DataFrame({"variance": [0.0], "i2": [i2_ee], "typical_sampling_variance": [g.df / g.trace_P],
                          "definition": [EE_DEFINITION]}, index=pd.Index(["total"], name="component"))
    table.attrs["definition"] = EE_DEFINITION
    return table


def i2(fit, by: Any = None, data: Any = None) -> pd.DataFrame:
    """I2 per variance component (percent of the total variance) and in total.

    Index: ``sigma``, one row per random-effect SD parameter (``sd(study)``,
    ``sd(district:school)``), ``total``.  Columns: ``variance`` (the fitted variance of the
    component averaged over the retained rows; ``total`` their sum), ``i2`` =
    ``100 variance / (sum of variances + s2)`` and ``typical_sampling_variance`` (``s2``).
    With ``sigma ~ 1`` and no random effects this is metafor's ``I2`` of ``rma``; with random
    effects the multilevel I2 of Nakagawa and Santos (2012) (orchaRd's ``i2_ml``).

    ``by``: a column name (with ``data=``, the data given to ``drm.fit``), a Series aligned
    with the data's index, or an array with one value per fitted row.  The table is then
    given per level (outer index level), from that level's mean fitted variances and the
    fit's ``s2``, so that a location-scale model shows its per-level heterogeneity.

    A common-effect model (``sigma ~ 0``, no random effects) has no fitted heterogeneity
    variance; the table then has one row, ``total``, with metafor's EE definition
    ``I2 = 100 max(0, (Q - df) / Q)`` and a ``definition`` column saying so.
    """
    if _common_effect(fit):
        if by is not None:
            raise DrmError("i2(by=...) splits fitted heterogeneity variances by level; this common-effect model "
                           "(sigma ~ 0, no random effects) has none. Use fit.i2() for the Q-based I2.")
        return _ee_table(fit)
    s2 = typical_sampling_variance(fit)
    rows = _row_variances(fit)
    if by is None:
        return _i2_table({k: float(np.mean(v)) for k, v in rows.items()}, s2)
    values = _by_values(fit, by, data)
    keys = pd.Series(values)
    if keys.isna().any():
        raise DrmError("i2(by=...): the grouping has missing values on fitted rows.")
    name = by if isinstance(by, str) else (getattr(by, "name", None) or "by")
    groups = keys.groupby(keys, sort=True, observed=True).indices
    tables = {level: _i2_table({k: float(np.mean(v[idx])) for k, v in rows.items()}, s2)
              for level, idx in groups.items()}
    out = pd.concat(tables, names=[name, "component"])
    return out


def h2(fit) -> float:
    """metafor's H2: ``(sum of the fitted variances + s2) / s2`` (variances averaged over rows);
    for a common-effect model (``sigma ~ 0``, no random effects) metafor's EE ``Q / df``."""
    if _common_effect(fit):
        g = sampling_gls(fit)
        return g.Q / g.df
    s2 = typical_sampling_variance(fit)
    return float((sum(np.mean(v) for v in _row_variances(fit).values()) + s2) / s2)


def _null_fit(fit):
    """The same model with ``mu ~ 1`` (the other formulas, V, random effects and method kept)."""
    from ..engine.program import prepare, run_fit
    from ..model.design import FixedDesign
    from ..results.fit import DrmFit

    design = fit.design
    mu0 = FixedDesign("mu", ("(Intercept)",), np.ones((fit.nobs, 1)), None)
    design0 = replace(design, fixed={**design.fixed, "mu": mu0})
    prepared, clusters = prepare(design0, fit.method, fit._control)
    null = DrmFit(design0, run_fit(prepared, fit._control), fit.method, fit._control, clusters)
    if not null.converged:
        warnings.warn(f"r2: the refit with mu ~ 1 did not converge ({null.convergence_message}); "
                      "pseudo is unreliable.", ConvergenceWarning, stacklevel=3)
    return null


def r2(fit) -> pd.Series:
    """R2 of the location moderators.

    ``marginal`` = ``var(X b) / (var(X b) + sum of variances)`` and ``conditional`` =
    ``(var(X b) + sum of sd(g)^2) / (var(X b) + sum of variances)`` (Nakagawa and
    Schielzeth; orchaRd's ``r2_ml``: ``var`` with n - 1 over the fitted rows, the row-level
    ``sigma^2`` left out of the conditional numerator), and ``pseudo`` = ``max(0,
    (total_0 - total_1) / total_0)`` (metafor's ``R2`` / 100), ``total`` the sum of the
    variances (averaged over rows) of this fit and of a refit with ``mu ~ 1`` keeping the
    other formulas.  A fit whose mu formula is ``~ 1`` has pseudo 0.
    """
    _univariate(fit, "r2")
    if _common_effect(fit):
        raise DrmError("r2 is the share of heterogeneity variance the moderators explain; this common-effect "
                       "model (sigma ~ 0, no random effects) has none (metafor reports no R2 for EE models).")
    X = fit.design.fixed["mu"].matrix
    fixed = X @ fit._raw.theta[: X.shape[1]]
    var_fixed = float(np.var(fixed, ddof=1)) if fit.nobs > 1 else 0.0
    comps = variance_components(fit)
    total = float(comps.sum())
    random = float(comps.drop("sigma", errors="ignore").sum())
    denom = var_fixed + total
    intercept_only = X.shape[1] == 1 and np.all(X == 1.0)
    if intercept_only:
        pseudo = 0.0
    else:
        total0 = float(variance_components(_null_fit(fit)).sum())
        pseudo = max(0.0, (total0 - total) / total0) if total0 > 0 else math.nan
    if denom <= 0:
        return pd.Series({"marginal": math.nan, "conditional": math.nan, "pseudo": pseudo}, name="r2")
    return pd.Series({"marginal": var_fixed / denom, "conditional": (var_fixed + random) / denom,
                      "pseudo": pseudo}, name="r2")
