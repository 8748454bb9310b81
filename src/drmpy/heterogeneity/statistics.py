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

__all__ = ["SamplingGLS", "sampling_gls", "deleted_sampling_gls", "deleted_heterogeneity", "q_test", "typical_sampling_variance", "variance_components",
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

    _gaussian(fit, what)
    if isinstance(fit, BivariateFit):
        raise DrmError(
            f"{what} is defined for univariate fits; this is a bivariate fit (mu1, mu2). "
            "Fit each response on its own (drm.fit with one mu formula) to get its heterogeneity summaries."
        )
    if fit.design.weights is not None:
        raise DrmError(
            f"{what} counts every row once (as metafor's QE and I2), which a fit with weights= (weights "
            "multiply log-likelihood terms) does not; refit without weights for these summaries."
        )


class _Whitened(NamedTuple):
    """The mu design and response whitened by V's blocks: ``L_b^-1 X_b`` and ``L_b^-1 y_b`` with
    ``V_b = L_b L_b'`` for every independent block b of V (``X / sqrt(v)`` for a diagonal V), and
    per row its share of ``tr(V^-1)`` (the squared norm of its column of ``L_b^-1``) and its row
    of ``V^-1 X``.  Every quantity of the sampling GLS is a sum of per-row terms over these rows,
    so deleting whole blocks of V deletes rows of the sums."""

    Xw: np.ndarray
    yw: np.ndarray
    WX: np.ndarray
    trace_W: np.ndarray
    block: np.ndarray  # (n,) index of each row's block of V


def _block_pieces(V: np.ndarray, X: np.ndarray, y: np.ndarray, first_row):
    """(Xw, yw, WX, per-row tr(V^-1) share) of one block of V, named by its first row in messages."""
    try:
        L = linalg.cholesky(V, lower=True)
    except linalg.LinAlgError as exc:
        raise DrmError(f"q_test needs a positive definite V (V^-1 enters Q and s2); the block of V that "
                       f"contains row {first_row!r} is not.") from exc
    Linv = linalg.solve_triangular(L, np.eye(len(V)), lower=True)
    Xw = Linv @ X
    return Xw, Linv @ y, Linv.T @ Xw, np.sum(Linv**2, axis=0)


def _whitened(fit) -> _Whitened:
    return fit.stage_cache("heterogeneity.whitened", lambda: _whitened_uncached(fit))


def _whitened_uncached(fit) -> _Whitened:
    _univariate(fit, "q_test")
    design = fit.design
    kv = design.known_v
    if kv.kind == "none":
        raise DrmError("q_test, i2 and h2 need the known sampling variances: the mu formula has no meta_V(V = ...).")
    X = design.fixed["mu"].matrix
    y = design.y
    n = len(y)
    if kv.matrix is None:
        v = kv.diag
        if np.any(v <= 0):
            bad = design.row_labels[int(np.flatnonzero(v <= 0)[0])]
            raise DrmError(f"q_test needs positive sampling variances; row {bad!r} has v_i = "
                           f"{v[v <= 0][0]:g} (V^-1 does not exist).")
        r = 1.0 / np.sqrt(v)
        out = _Whitened(X * r[:, None], y * r, X / v[:, None], 1.0 / v, np.arange(n))
    else:
        Xw, yw, WX, tw, block = np.empty_like(X), np.empty_like(y), np.empty_like(X), np.empty(n), np.empty(n, int)
        for b, rows in enumerate(kv.blocks):
            Xw[rows], yw[rows], WX[rows], tw[rows] = _block_pieces(
                kv.matrix[np.ix_(rows, rows)], X[rows], y[rows], design.row_labels[rows[0]])
            block[rows] = b
        out = _Whitened(Xw, yw, WX, tw, block)
    return out


def deleted_sampling_gls(fit, keep: np.ndarray) -> pd.DataFrame:
    """The sampling GLS (``W = V^-1``, no fitted heterogeneity) of the rows each row of
    ``keep`` (deletions x nobs, bool) keeps: columns ``Q``, ``df`` (kept rows - rank of the
    kept mu design), ``trace_P`` (NaN where no row is kept).  A block of V that loses some
    of its rows is re-factored over the rows it keeps; whole blocks enter as row sums, so a
    diagonal V costs a few (deletions x n) products."""
    wh = _whitened(fit)
    kv = fit.design.known_v
    X, y = fit.design.fixed["mu"].matrix, fit.design.y
    n, p = X.shape
    keep = np.asarray(keep, dtype=bool)
    D = keep.shape[0]
    # rows whose whole block of V is kept enter as sums of their whitened pieces
    dropped_blocks = np.zeros((D, wh.block.max(initial=-1) + 1), dtype=bool)
    gone = np.nonzero(~keep)
    dropped_blocks[gone[0], wh.block[gone[1]]] = True
    whole = keep & ~dropped_blocks[:, wh.block]
    partial = keep & dropped_blocks[:, wh.block]  # kept rows of a block that lost rows
    per_row = np.concatenate([
        (wh.Xw[:, :, None] * wh.Xw[:, None, :]).reshape(n, p * p), wh.Xw * wh.yw[:, None],
        (wh.WX[:, :, None] * wh.WX[:, None, :]).reshape(n, p * p), wh.trace_W[:, None]], axis=1)
    sums = whole.astype(np.float64) @ per_row
    A = sums[:, : p * p].reshape(D, p, p)
    Xwy = sums[:, p * p: p * p + p]
    B = sums[:, p * p + p: 2 * p * p + p].reshape(D, p, p)
    trace_W = sums[:, -1].copy()
    pieces: dict[int, list] = {}  # re-whitened pieces of the blocks a deletion cuts
    for d in np.flatnonzero(partial.any(axis=1)):
        for b in np.unique(wh.block[partial[d]]):
            rows = np.flatnonzero(partial[d] & (wh.block == b))
            pc = _block_pieces(kv.matrix[np.ix_(rows, rows)], X[rows], y[rows], fit.design.row_labels[rows[0]])
            A[d] += pc[0].T @ pc[0]
            Xwy[d] += pc[0].T @ pc[1]
            B[d] += pc[2].T @ pc[2]
            trace_W[d] += pc[3].sum()
            pieces.setdefault(int(d), []).append(pc)
    # pseudo-inverse and rank of each kept design (metafor drops redundant columns)
    vals, vecs = np.linalg.eigh(0.5 * (A + np.swapaxes(A, 1, 2)))
    ok = vals > np.maximum(vals.max(axis=1, keepdims=True), 0.0) * p * 1e-12
    inv_vals = np.where(ok, 1.0 / np.where(ok, vals, 1.0), 0.0)
    A_inv = np.einsum("dij,dj,dkj->dik", vecs, inv_vals, vecs)
    b_v = np.einsum("dij,dj->di", A_inv, Xwy)
    Q = np.empty(D)
    step = max(1, int(4e6 // max(n, 1)))  # deletions per (deletions x n) residual block
    for s0 in range(0, D, step):
        r = wh.yw[None, :] - b_v[s0:s0 + step] @ wh.Xw.T
        Q[s0:s0 + step] = np.sum(np.where(whole[s0:s0 + step], r, 0.0) ** 2, axis=1)
    for deletion, pcs in pieces.items():
        Q[deletion] += sum(float(np.sum((pc[1] - pc[0] @ b_v[deletion]) ** 2)) for pc in pcs)
    k = keep.sum(axis=1)
    trace_P = trace_W - np.einsum("dij,dji->d", A_inv, B)
    empty = k == 0
    Q[empty], trace_P[empty] = np.nan, np.nan
    return pd.DataFrame({"Q": Q, "df": np.where(empty, 0, k - ok.sum(axis=1)), "trace_P": trace_P})


def sampling_gls(fit) -> SamplingGLS:
    """GLS of ``y`` on the ``mu`` design with ``W = V^-1``: Q_E, its df, ``tr(P)`` and ``b_V``.

    Diagonal V: O(n p^2).  Block V: one Cholesky per block of V.
    """
    return fit.stage_cache("heterogeneity.sampling_gls", lambda: _sampling_gls_uncached(fit))


def _sampling_gls_uncached(fit) -> SamplingGLS:
    wh = _whitened(fit)
    n, p = wh.Xw.shape
    if n <= p:
        raise DrmError(f"q_test needs more rows ({n}) than mu coefficients ({p}).")
    A = wh.Xw.T @ wh.Xw  # X' W X
    A = 0.5 * (A + A.T)
    chol = linalg.cho_factor(A)
    b = linalg.cho_solve(chol, wh.Xw.T @ wh.yw)
    r = wh.yw - wh.Xw @ b
    Q = float(r @ r)  # r' W r
    trace_P = float(np.sum(wh.trace_W)) - float(np.trace(linalg.cho_solve(chol, wh.WX.T @ wh.WX)))
    out = SamplingGLS(Q, n - p, trace_P, b)
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


def _gaussian(fit, what: str) -> None:
    """Refuse a robust fit (``student()``, ``normal_mixture()``): these summaries add normal
    variances, and its parameter vector is not the Gaussian model's (the family's extra
    parameters sit between sigma and the random-effect SDs)."""
    from ..results.robust_fit import RobustFit

    if isinstance(fit, RobustFit):
        raise DrmError(f"{what} assumes a Gaussian random-effects model; this fit's family is {fit.family!r}, "
                       "for which drmpy does not compute it.")


def row_variances(fit, theta: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per retained row, the fitted variance of each component: ``sigma`` (sigma_i^2; absent
    under ``sigma ~ 0``), then
    per random-effect SD parameter ``(z_ic sd_c[level_i])^2`` (times K_ll for relmat).
    ``theta``: parameters in ``fit.params`` order (link scales) to evaluate at, or a
    (parameters, sets) array for several sets at once (each variance then (rows, sets));
    the fit's own estimates by default."""
    from ..results.random_effects import term_params, level_sds

    _gaussian(fit, "row_variances()")
    design = fit.design
    theta = fit.theta if theta is None else np.asarray(theta, dtype=np.float64)
    # sigma ~ 0 (common effect): no row-level component at all, rather than a row of zeros
    out = {}
    gamma, terms = term_params(design, theta)
    if not design.common_effect:
        out["sigma"] = np.exp(2.0 * (design.fixed["sigma"].matrix @ gamma))  # (n[, sets])
    if not design.random:
        return out
    for rd, (alphas, _) in zip(design.random, terms):
        if rd.n_cor:
            raise DrmError(
                f"i2 and r2 split the variance by SD parameter, which a correlated term such as "
                f"`{rd.term.text}` does not allow (its covariance adds cross terms); write it with `||` "
                "(independent SDs) to get these summaries."
            )
        sd = level_sds(rd, alphas)  # (levels, coefficients[, parameter sets])
        extra = (1,) * (sd.ndim - 2)
        scale = rd.relatedness_diagonal()[rd.level_index].reshape(-1, *extra) if rd.is_relmat else 1.0
        for c, name in enumerate(rd.term.sd_dpars()):
            out[name] = (rd.z[:, c].reshape(-1, *extra) * sd[rd.level_index, c]) ** 2 * scale
    return out


def variance_components(fit) -> pd.Series:
    """The fitted variance of every component averaged over the retained rows: ``sigma``
    (mean sigma_i^2) and one entry per random-effect SD parameter (``sd(study)``: mean of
    ``sd(study)^2`` over the rows, which is the plain ``sd(study)^2`` when it is not modelled)."""
    _univariate(fit, "variance_components")
    return pd.Series({k: float(np.mean(v)) for k, v in row_variances(fit).items()}, name="variance")


def _by_values(fit, by: Any, data: Any) -> np.ndarray:
    """Values of ``by`` on the retained rows, by row position (the data's index may repeat
    labels): a column of ``data`` (the data given to ``drm.fit``), a column the model read,
    a Series indexed like the data, or an array."""
    from ..bias.refit import retained_values

    if isinstance(by, str):
        frame = fit.design.frame
        if data is None and frame is not None and by in frame.columns:
            return frame[by].to_numpy()  # a column the model read, on the retained rows
        if data is None:
            raise DrmError(f"i2(by={by!r}): `{by}` is not a column the model uses; pass the data the model was "
                           f"fitted to: fit.i2(by={by!r}, data=...).")
        from ..model import frames

        if by not in frames.column_names(data):
            raise DrmError(f"i2(by=...): data has no column `{by}`.")
        return retained_values(fit, by, "i2(by=..., data=...)", data=data)
    if isinstance(by, pd.Series):
        return retained_values(fit, by, "i2(by=...)", data=data)
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

    ``by``: a column name (a column the model uses, or any column of ``data=``, the data
    given to ``drm.fit``), a Series aligned with the data's index, or an array with one value
    per fitted row.  The table is then
    given per level (outer index level), from that level's mean fitted variances and the
    fit's ``s2``, so that a location-scale model shows its per-level heterogeneity.

    A common-effect model (``sigma ~ 0``, no random effects) has no fitted heterogeneity
    variance; the table then has one row, ``total``, with metafor's EE definition
    ``I2 = 100 max(0, (Q - df) / Q)`` and a ``definition`` column saying so.
    """
    _univariate(fit, "i2")
    if _common_effect(fit):
        if by is not None:
            raise DrmError("i2(by=...) splits fitted heterogeneity variances by level; this common-effect model "
                           "(sigma ~ 0, no random effects) has none. Use fit.i2() for the Q-based I2.")
        return _ee_table(fit)
    s2 = typical_sampling_variance(fit)
    rows = row_variances(fit)
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


def deleted_heterogeneity(fit, keep: np.ndarray, theta: np.ndarray) -> pd.DataFrame:
    """Q test, I2 and H2 of the refits of a leave-one-out: for deletion d, the rows
    ``keep[d]`` keeps and the refit's parameters ``theta[d]`` (``fit.params`` order).

    Columns ``Q``, ``Q_df``, ``Q_p_value`` (metafor's ``QE`` and ``QEp`` of the refit, from V
    alone), ``I2`` (percent) and ``H2``: as :func:`i2` (``total``) and :func:`h2` of the refit,
    with the refit's fitted variances averaged over the kept rows and the kept rows' ``s2``;
    for a common-effect model metafor's EE ``I2`` and ``H2`` from Q; NaN with a correlated
    random term (as :func:`i2` refuses it).  metafor's ``leave1out``
    reports the same ``Q``, ``Qp``, ``I2`` and ``H2``.
    """
    keep = np.asarray(keep, dtype=bool)
    g = deleted_sampling_gls(fit, keep)
    Q, df = g["Q"].to_numpy(), g["df"].to_numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_value = np.where(df > 0, stats.chi2.sf(Q, np.maximum(df, 1.0)), np.nan)
        if _common_effect(fit):
            I2 = np.where(Q > 0, 100.0 * np.maximum(0.0, (Q - df) / Q), 0.0)
            H2 = Q / df
        elif any(rd.n_cor for rd in fit.design.random):
            # a correlated term's variance does not split by SD parameter (see row_variances)
            I2 = H2 = np.full(len(Q), np.nan)
        else:
            s2 = df / g["trace_P"].to_numpy()
            # every refit's variances per row at once: (rows, deletions), averaged over kept rows
            per_row = sum(row_variances(fit, np.asarray(theta, dtype=np.float64).T).values())
            total = np.sum(np.where(keep.T, per_row, 0.0), axis=0) / keep.sum(axis=1)
            I2 = 100.0 * total / (total + s2)
            H2 = (total + s2) / s2
    return pd.DataFrame({"Q": Q, "Q_df": df, "Q_p_value": p_value, "I2": I2, "H2": H2})


def h2(fit) -> float:
    """metafor's H2: ``(sum of the fitted variances + s2) / s2`` (variances averaged over rows);
    for a common-effect model (``sigma ~ 0``, no random effects) metafor's EE ``Q / df``."""
    _univariate(fit, "h2")
    if _common_effect(fit):
        g = sampling_gls(fit)
        return g.Q / g.df
    s2 = typical_sampling_variance(fit)
    return float((sum(np.mean(v) for v in row_variances(fit).values()) + s2) / s2)


def _null_fit(fit):
    """The same model with ``mu ~ 1`` (the other formulas, V, random effects and method kept)."""
    from ..engine.program import prepare, run_fit
    from ..model.design import FixedDesign
    from ..results.fit import DrmFit

    design = fit.design
    mu0 = FixedDesign("mu", ("(Intercept)",), np.ones((fit.nobs, 1)), None)
    design0 = replace(design, fixed={**design.fixed, "mu": mu0})
    prepared, clusters = prepare(design0, fit.method, fit.control)
    null = DrmFit(design0, run_fit(prepared, fit.control), fit.method, fit.control, clusters)
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
    fixed = X @ fit.theta[: X.shape[1]]
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
