"""Leave-one-out refits and influence diagnostics, vectorised over deletion masks.

Every deletion (one row, or every row of one level of a column) is a refit of the same
model to the remaining rows.  The engine's :func:`~drmpy.engine.batch.deletion_program`
runs them side by side: one compiled program, ``jax.vmap``-ed over 0/1 masks of kept rows
(a dropped row becomes a padding row of the same arrays, so no shape changes and no
re-trace), for every likelihood structure (diagonal V, block-diagonal random effects,
Woodbury, dense).  Each refit starts at the full fit's variance estimate.

Influence statistics follow metafor's ``influence.rma.uni`` (and, with random effects, its
``rma.mv`` methods), written for any fitted variances: where metafor uses ``v_i + tau^2``,
drmpy uses the fitted marginal covariance ``S`` (``v_i + sigma_i^2`` for a location-scale
model, each row with its own ``sigma_i``), at the full fit's or the refit's variance
parameters as metafor does.  Location uncertainty is the GLS one, ``(X'S^-1X)^-1``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..engine.optimize import CONVERGED, CONVERGED_FLAT
from ..errors import DrmError
from .refit import data_column, require_drm_fit

__all__ = ["deletion_fits", "leave_one_out", "influence"]

_LANE_BYTES = 2e8  # memory budget of one chunk of vmapped refits


def _single_intercept(design) -> bool:
    """Diagonal V and one ``(1|g)`` term: the closed-form ``intercepts`` structure applies."""
    from ..engine.structures import get_structure

    return get_structure("intercepts").refusal(design, None, automatic=False) is None


def _prepared(fit):
    """(arrays, structure, beta0) of the fit's design, built once per fit.  A model with a
    diagonal V and one random intercept uses the closed-form ``intercepts`` structure
    (segment sums, O(n) per evaluation): the same likelihood as the fit's block structure."""
    return fit.stage_cache("bias.deletion_prepared", lambda: _prepared_uncached(fit))


def _prepared_uncached(fit):
    from ..engine.program import build_arrays, prepare
    from ..engine.start import start_values

    design = fit.design
    if _single_intercept(design):
        # one block per level, read in closed form
        beta0, _ = start_values(design)
        arrs, struct = build_arrays(design, "intercepts", None, beta0, fit.method)
    else:
        (arrs, struct, beta0, _), _ = prepare(design, fit.method, fit.control)
    return arrs, struct, np.asarray(beta0)


def _lanes(arrs, n_deletions: int) -> int:
    import jax

    from ..engine.program import padded_size

    per_lane = 8.0 * sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(arrs)) * 3 + 8.0 * arrs.y.shape[0] * 20
    cap = max(1, int(_LANE_BYTES // per_lane))
    # at least 16 lanes and sizes up the engine's ladder: data sets of similar size share a compile
    return max(1, min(padded_size(n_deletions), cap))


def deletion_fits(fit, keep: np.ndarray, with_gls: bool = False) -> dict:
    """Refits of ``fit``'s model to the rows each row of ``keep`` (deletions x nobs, bool) keeps.

    Returns per deletion ``beta`` (location, data scale), ``phi`` (variance parameters,
    link scales), ``loglik``, ``status``, and with ``with_gls`` ``A_kept`` (``X'S^-1X`` over
    the kept rows at the refit) and ``A_all`` (over every row at the refit's variance
    parameters).
    """
    import jax

    from ..engine.batch import deletion_program

    arrs, struct, beta0 = _prepared(fit)
    N = int(arrs.y.shape[0])
    n = fit.nobs
    D = keep.shape[0]
    K = np.zeros((D, N))
    K[:, :n] = keep
    phi_hat = np.asarray(fit.params.to_numpy()[struct.p:], dtype=np.float64)
    lanes = _lanes(arrs, D)
    prog = deletion_program(struct, bool(with_gls))
    ctrl = fit.control
    parts = []
    for start in range(0, D, lanes):
        chunk = K[start:start + lanes]
        m = len(chunk)
        if m < lanes:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], lanes - m, axis=0)])
        out = prog(arrs, chunk, np.tile(phi_hat, (lanes, 1)), np.int64(ctrl.max_iter), np.float64(ctrl.gtol))
        out = jax.device_get(out)
        parts.append({k: np.asarray(v)[:m] for k, v in out.items()})
    res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    res["beta"] = res["beta"] + beta0[None, :]
    res["loglik"] = -res.pop("f")
    return res


def _deletion_sets(fit, by: Any, argument: str) -> tuple[pd.Index, np.ndarray]:
    """(labels of the deletions, keep mask deletions x nobs): one row each, or one level of ``by`` each."""
    n = fit.nobs
    if by is None:
        return pd.Index(fit.design.row_labels, name="omitted"), ~np.eye(n, dtype=bool)
    if not isinstance(by, str):
        raise DrmError(f"{argument}= must be a column name of the data or None, got {type(by).__name__}.")
    values = pd.Series(data_column(fit, by, argument))
    if values.isna().any():
        row = fit.design.row_labels[int(np.flatnonzero(values.isna().to_numpy())[0])]
        raise DrmError(f"{argument}: column `{by}` is missing on row {row!r}, which the fit uses.")
    codes, levels = pd.factorize(values, sort=True)
    keep = codes[None, :] != np.arange(len(levels))[:, None]
    return pd.Index(levels, name="omitted"), keep


def _deleted_gram(M: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``M_d' M_d`` over the rows each deletion keeps (deletions x q x q), with the columns
    scaled to unit norm over all rows so that the eigenvalues are scale-free."""
    norms = np.sqrt(np.sum(M**2, axis=0))
    Ms = M / np.where(norms > 0, norms, 1.0)
    q = M.shape[1]
    outer = (Ms[:, :, None] * Ms[:, None, :]).reshape(len(Ms), q * q)
    return (keep.astype(np.float64) @ outer).reshape(len(keep), q, q)  # one matrix product


def _unidentified(M: np.ndarray, keep: np.ndarray, names: list[str]) -> list[str | None]:
    """Per deletion: None when the kept rows of the design ``M`` have full column rank, else
    why not (the coefficients left without a row, or 'rank-deficient')."""
    q = M.shape[1]
    if q == 0:
        return [None] * len(keep)
    G = _deleted_gram(M, keep)
    eig = np.linalg.eigvalsh(G)
    deficient = eig[:, 0] <= 1e-10 * np.maximum(eig[:, -1], 1e-300)
    out: list[str | None] = []
    for d in range(len(keep)):
        if not deficient[d]:
            out.append(None)
            continue
        empty = [names[j] for j in range(q) if G[d, j, j] <= 1e-14]
        out.append(f"{', '.join(empty)} without a row" if empty else "the kept rows' design is rank-deficient")
    return out


def _single_level_terms(design, keep: np.ndarray) -> list[str | None]:
    """Per deletion: None, or the random-effect SD parameters whose group keeps fewer than two
    levels with rows (a variance between one level's effects is not identified)."""
    out: list[str | None] = [None] * len(keep)
    for rd in design.random:
        full = np.bincount(rd.level_index, minlength=rd.n_levels)
        for d in range(len(keep)):
            removed = np.bincount(rd.level_index[~keep[d]], minlength=rd.n_levels)
            left = int(np.sum(full - removed > 0))
            if left < 2 and out[d] is None:
                names = ", ".join(rd.term.sd_dpars())
                out[d] = f"{names} with {left} level{'s' if left != 1 else ''} of `{rd.group}` left"
    return out


def deletion_status(fit, keep: np.ndarray, status: np.ndarray) -> np.ndarray:
    """Why each deletion's refit is (not) usable: ``"ok"``, or a sentence.

    A refit is not identified when the kept rows leave a location (``mu``) or ``sigma``
    coefficient without data (the deleted rows were the only ones of a moderator level),
    leave a random-effect group with fewer than two levels, or are no more than the location
    coefficients (no residual to estimate a variance from: a 2-study leave-one-out);
    otherwise it is usable when the optimiser converged (``status``, the engine's codes)."""
    from ..engine.optimize import STATUS_MESSAGES

    design = fit.design
    mu, sg = design.fixed["mu"], design.fixed["sigma"]
    mu_why = _unidentified(mu.matrix, keep, [f"mu:{t}" for t in mu.terms])
    sg_why = _unidentified(sg.matrix, keep, [f"sigma:{t}" for t in sg.terms])
    re_why = _single_level_terms(design, keep)
    n_kept = keep.sum(axis=1)
    p = mu.matrix.shape[1]
    has_variance = len(fit.params) > p
    out = []
    for d in range(len(keep)):
        if mu_why[d] is not None:
            out.append(f"not identified: {mu_why[d]} (mu)")
        elif sg_why[d] is not None:
            out.append(f"not identified: {sg_why[d]} (sigma)")
        elif re_why[d] is not None:
            out.append(f"not identified: {re_why[d]}")
        elif has_variance and n_kept[d] <= p:
            rows = "1 row" if n_kept[d] == 1 else f"{n_kept[d]} rows"
            out.append(f"not identified: {rows} left for {p} mu coefficient{'s' if p > 1 else ''}, "
                       "no residual to estimate a variance from")
        elif status[d] not in (CONVERGED, CONVERGED_FLAT):
            out.append(f"not converged: {STATUS_MESSAGES.get(int(status[d]), 'unknown status')}")
        else:
            out.append("ok")
    return np.asarray(out, dtype=object)


def _inverse(A: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Inverses of the stacked matrices ``A[ok]``; NaN for the others (and for any that is
    numerically singular)."""
    out = np.full_like(A, np.nan)
    for d in np.flatnonzero(ok):
        try:
            out[d] = np.linalg.inv(A[d])
        except np.linalg.LinAlgError:
            pass
    return out


def leave_one_out(fit, by: str | None = None) -> pd.DataFrame:
    """Refit the model without each effect size (or each level of the column ``by``).

    Returns one row per deletion: ``omitted`` (the row label, or the level of ``by``), one
    column per parameter of ``fit.params`` (same names, link scales), ``loglik`` of the
    refit (drmpy's convention: REML without metafor's ``0.5 log|X'X|``), ``converged``, and
    the refit's heterogeneity as metafor's ``leave1out``: ``Q`` (``QE``, from V alone),
    ``Q_df``, ``Q_p_value``, ``I2`` (percent, :func:`drmpy.i2`'s ``total``) and ``H2`` (NaN
    without ``meta_V``, with ``weights=``, and ``I2``/``H2`` with a correlated random term).
    Every structure drmpy fits works (random effects, full V); the refits run side by side
    in one compiled program.  ``status``: ``"ok"``, or why the refit has no estimates
    (NaN parameters, ``loglik``, ``I2``, ``H2``; ``converged`` False): a ``mu`` or ``sigma``
    coefficient left without rows (the deleted rows were the only ones of a moderator
    level), a random-effect group left with one level, no more rows left than ``mu``
    coefficients (a 2-study leave-one-out), or an optimiser that did not converge.
    """
    require_drm_fit(fit, "leave_one_out")
    labels, keep = _deletion_sets(fit, by, "by")
    res = deletion_fits(fit, keep)
    theta = np.concatenate([res["beta"], res["phi"]], axis=1)
    out = pd.DataFrame(theta, columns=list(fit.params.index))
    out.insert(0, "omitted", labels.to_numpy())
    out["loglik"] = res["loglik"]
    status = deletion_status(fit, keep, res["status"])
    ok = status == "ok"
    out["converged"] = ok
    for name, values in _heterogeneity_columns(fit, keep, theta).items():
        out[name] = values
    # a refit that is not identified or did not converge has no estimates; Q (from V alone,
    # projected on the kept rows' design) stays, as metafor's leave1out
    out.loc[~ok, [*fit.params.index, "loglik", "I2", "H2"]] = np.nan
    out["status"] = status
    return out


def _heterogeneity_columns(fit, keep: np.ndarray, theta: np.ndarray) -> dict[str, np.ndarray]:
    """``Q``, ``Q_df``, ``Q_p_value``, ``I2``, ``H2`` of every refit (metafor's ``leave1out``
    columns); NaN where the fit has none: no ``meta_V``, ``weights=``, or a correlated random
    term (whose variance does not split by SD parameter; ``I2``, ``H2`` only)."""
    from ..heterogeneity.statistics import deleted_heterogeneity

    names = ("Q", "Q_df", "Q_p_value", "I2", "H2")
    design = fit.design
    if design.known_v.kind == "none" or design.weights is not None:
        return {k: np.full(len(keep), np.nan) for k in names}
    table = deleted_heterogeneity(fit, keep, theta)
    return {k: table[k].to_numpy() for k in names}


def row_variances(fit, phi: np.ndarray) -> np.ndarray | None:
    """``v_i + sigma_i^2`` at variance parameters ``phi`` (deletions x nobs) for a diagonal V
    without random effects; None otherwise (the dense S is needed)."""
    design = fit.design
    if design.random or not design.known_v.is_diagonal:
        return None
    return design.known_v.diag[None, :] + _sigma2(design, phi)


def _sigma2(design, phi: np.ndarray) -> np.ndarray:
    """sigma_i^2 per deletion (rows) and retained row (columns) at variance parameters ``phi``;
    0 for a model without sigma coefficients."""
    Zs = design.fixed["sigma"].matrix
    if Zs.shape[1] == 0:
        return np.zeros((phi.shape[0], Zs.shape[0]))
    return np.exp(2.0 * phi[:, : Zs.shape[1]] @ Zs.T)


def _dense_s(fit):
    """phi -> dense fitted S over the retained rows (engine's dense structure, compiled once)."""
    import jax.numpy as jnp

    from ..inference.marginal import dense_program, prepared_arrays as marginal_prepared

    arrs, struct, _ = marginal_prepared(fit, "dense")
    prog = dense_program(struct)
    n = fit.nobs

    def at(phi):
        return np.asarray(prog(jnp.asarray(phi), arrs))[:n, :n]

    return at


def influence(fit, cluster: str | None = None) -> pd.DataFrame:
    """Case-deletion diagnostics (metafor's ``influence.rma.uni``; ``rma.mv`` methods with
    random effects), for every model drmpy fits.

    With ``b``, ``(X'S^-1X)^-1 = vb`` the full fit's GLS estimate and covariance, and
    ``b_(i)``, ``vb_(i)``, ``S_(i)`` those of the refit without row i (``S_(i)`` over all
    rows at the refit's variance parameters; ``v_i + sigma_i^2`` without random effects, each
    row with its own fitted ``sigma_i``):

    * ``rstudent``: ``(y_i - x_i b_(i)) / sqrt(S_(i),ii + x_i vb_(i) x_i')``;
    * ``dffits``: ``x_i (b - b_(i)) / sqrt(hat_i S_(i),ii)``;
    * ``cooks_distance``: ``(b - b_(i))' vb^-1 (b - b_(i))``;
    * ``cov_ratio``: ``det vb_(i) / det vb``;
    * ``sigma2_deleted``: the refit's ``sigma_i^2`` (metafor's ``tau2.del`` for ``sigma ~ 1``);
    * ``hat``: ``diag(X vb X'S^-1)``; ``weight``: ``100 (1/s_i) / sum(1/s)`` with
      ``s_i = v_i + sigma_i^2`` (NaN with random effects or a non-diagonal V);
    * ``dfbetas:<term>``: ``(b - b_(i)) / sqrt(diag (X'S_(i)^-1X)^-1)``;
    * ``is_influential``: metafor's rule, ``|dffits| > 3 sqrt(p/(k-p))``, or
      ``P(chi2_p <= cooks) > 0.5``, or ``hat > 3p/k``, or some ``|dfbetas| > 1``.

    ``cluster``: a column of the data; every level is deleted at once (metafor's
    ``cluster=``).  Then one row per level: ``cooks_distance``, ``dfbetas:<term>``,
    ``cov_ratio``, ``x2`` (metafor's ``X2`` of ``rstudent``: the level's deleted residuals
    in the metric of their covariance), ``k`` (rows) and ``is_influential`` (the Cook's
    distance and DFBETAS rules); ``attrs["rows"]`` has each row's studentised deleted
    residual (``resid``, ``se``, ``rstudent``).

    ``status`` (both forms): ``"ok"``, or why the deletion has no refit (see
    :func:`leave_one_out`); such a row has NaN deletion statistics and is not influential
    (``hat`` and ``weight``, from the full fit, are kept).
    """
    from ..inference.marginal import gls, marginal_covariance

    require_drm_fit(fit, "influence")
    design = fit.design
    X = design.fixed["mu"].matrix
    y = design.y
    n, p = X.shape
    if n <= p:
        raise DrmError(f"influence needs more rows ({n}) than location coefficients ({p}).")
    g = gls(fit)
    vb, b = g.vcov, fit.params.to_numpy()[:p]
    labels, keep = _deletion_sets(fit, cluster, "cluster")
    res = deletion_fits(fit, keep, with_gls=True)
    status = deletion_status(fit, keep, res["status"])
    ok = status == "ok"
    b_del = np.where(ok[:, None], res["beta"], np.nan)
    vb_del = _inverse(res["A_kept"], ok)
    vb_all = _inverse(res["A_all"], ok)
    diff = b[None, :] - b_del
    cooks = np.einsum("di,ij,dj->d", diff, np.linalg.inv(vb), diff)
    with np.errstate(invalid="ignore"):
        dfbetas = diff / np.sqrt(np.diagonal(vb_all, axis1=1, axis2=2))
    with np.errstate(invalid="ignore"):
        cov_ratio = np.linalg.det(vb_del) / np.linalg.det(vb)
    sigma2_del = _sigma2(design, res["phi"])  # deletions x rows
    dfb_names = [f"dfbetas:{t}" for t in design.fixed["mu"].terms]
    s_del = row_variances(fit, res["phi"])
    dense = None if s_del is not None else _dense_s(fit)

    if cluster is None:
        i = np.arange(n)
        resid = y - np.einsum("ip,ip->i", X, b_del)
        lev = np.einsum("ip,ipq,iq->i", X, vb_del, X)
        if s_del is not None:
            s_ii = s_del[i, i]
            s_full = design.known_v.diag + fit.sigma().to_numpy() ** 2
            hat = np.einsum("ip,pq,iq->i", X, vb, X) / s_full
            weight = 100.0 * (1.0 / s_full) / np.sum(1.0 / s_full)
        else:
            assert dense is not None  # built whenever s_del is None
            s_ii = np.array([dense(res["phi"][d])[d, d] if ok[d] else np.nan for d in range(n)])
            S = marginal_covariance(fit)
            hat = np.sum((X @ vb) * np.linalg.solve(S, X), axis=1)
            weight = np.full(n, np.nan)
        rstudent = resid / np.sqrt(s_ii + lev)
        dffits = (X @ b - np.einsum("ip,ip->i", X, b_del)) / np.sqrt(hat * s_ii)
        out = pd.DataFrame({
            "rstudent": rstudent, "dffits": dffits, "cooks_distance": cooks, "cov_ratio": cov_ratio,
            "sigma2_deleted": sigma2_del[i, i], "hat": hat, "weight": weight,
        }, index=labels)
        for j, name in enumerate(dfb_names):
            out[name] = dfbetas[:, j]
        with np.errstate(invalid="ignore"):
            infl = ((np.abs(dffits) > 3.0 * math.sqrt(p / (n - p))) | (stats.chi2.cdf(cooks, p) > 0.5)
                    | (hat > 3.0 * p / n) | np.any(np.abs(dfbetas) > 1.0, axis=1))
        out["is_influential"] = infl & ok
        # hat and weight are the full fit's; the rest needs the refit
        out.loc[~ok, [c for c in out.columns if c not in ("hat", "weight", "is_influential")]] = np.nan
        out["status"] = status
        return out

    # cluster deletion (rma.mv's cluster=)
    rows: list[tuple[Any, ...]] = []
    x2 = np.full(len(labels), np.nan)
    for d in range(len(labels)):
        idx = np.flatnonzero(~keep[d])
        if not ok[d]:
            rows.extend((row, labels[d], np.nan, np.nan, np.nan) for row in idx)
            continue
        Xc = X[idx]
        r = y[idx] - Xc @ b_del[d]
        if s_del is not None:
            S_cc = np.diag(s_del[d, idx])
        else:
            assert dense is not None  # built whenever s_del is None
            S_cc = dense(res["phi"][d])[np.ix_(idx, idx)]
        C = S_cc + Xc @ vb_del[d] @ Xc.T
        x2[d] = float(r @ np.linalg.solve(C, r))
        se = np.sqrt(np.diag(C))
        for j, row in enumerate(idx):
            rows.append((row, labels[d], r[j], se[j], r[j] / se[j]))
    out = pd.DataFrame({"cooks_distance": cooks, "cov_ratio": cov_ratio}, index=labels)
    for j, name in enumerate(dfb_names):
        out[name] = dfbetas[:, j]
    out["x2"] = x2
    out["k"] = (~keep).sum(axis=1)
    with np.errstate(invalid="ignore"):
        infl = (stats.chi2.cdf(cooks, p) > 0.5) | np.any(np.abs(dfbetas) > 1.0, axis=1)
    out["is_influential"] = infl & ok
    out.loc[~ok, ["cooks_distance", "cov_ratio", "x2", *dfb_names]] = np.nan
    out["status"] = status
    # in the data's row order, by position (row labels may repeat)
    per_row = pd.DataFrame(rows, columns=["position", cluster, "resid", "se", "rstudent"]).sort_values("position")
    per_row.index = design.row_labels[per_row.pop("position").to_numpy()]
    out.attrs["rows"] = per_row
    return out
