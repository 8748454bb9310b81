"""``fit_batch`` for models with one random intercept ``(1|g)``: one three-level meta-analysis per group.

The random-effect levels of a group are the distinct values of ``g`` among its rows (a
label repeated in two groups is two unrelated levels).  Designs are materialised once on
the whole data, as for models without random effects; rows are then sorted by (group,
level) and packed per pool into the engine's ``intercepts`` arrays
(:func:`drmpy.engine.batch_random.pack_intercepts`), and every pool is one call of a
compiled program whose lanes are refilled as groups finish.  Start values, the zero-variance candidates and the
refits from them are those of a single :func:`drmpy.fit` on the group's rows
(:func:`drmpy.engine.start.start_values`, ``boundary_candidates``, ``run_fit``),
computed here for all groups at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..engine.scaling import grouped_standardizers
from ..engine.program import BOUNDARY_SD_RATIO, Control, bucket_size, boundary_gain_threshold
from ..engine.start import (dersimonian_laird, level_sd_start, residual_variance, start_variance, variance_scale,
                            variance_share)
from ..errors import DataError, FormulaError, RandomEffectsError
from ..model.design import level_label, materialize_uncached, response_values, one_level_message
from ..model.known_v import rows_text
from ..model import rows as drop_rules
from ..model.formula import Formula
from .batch import (MERGE_LANE_ROWS, _check_groups, _Groups, _lanes_ladder, _pool_layout, _read_rows,
                    _result_frame, _Runner, padded_rows)

__all__ = ["fit_batch_random"]

# optimisers side by side (lanes refilled from a pool of up to POOL_LANES * LANES groups):
# 64 and 256 lanes took the same time on 2,000 genes of 30 rows
LANES = 64


def check_random_formula(formula: Formula) -> None:
    """fit_batch takes one random-intercept term ``(1|g)`` (no slopes, no relmat)."""
    terms = formula.random_terms
    if len(terms) > 1:
        names = ", ".join(f"`(1|{t.group})`" for t in terms)
        raise FormulaError(
            f"fit_batch fits one random-intercept term per group; the formula has {len(terms)} "
            f"random terms ({names}, from `{terms[0].text}`). Fit such models one group at a time with drm.fit."
        )
    term = terms[0]
    if term.slopes or not term.intercept:
        what = f"random slope(s) {', '.join(term.slopes)}" if term.slopes else "no intercept"
        raise FormulaError(
            f"fit_batch takes a random intercept `(1|{term.group})` only; `{term.text}` has {what}. "
            "Fit such models one group at a time with drm.fit."
        )
    if term.relmat:
        raise FormulaError(
            f"fit_batch takes a random intercept `(1|{term.group})` with independent levels; `{term.text}` "
            "has a relatedness matrix. Fit such models one group at a time with drm.fit."
        )


class _Levels:
    """Random-effect levels of the sorted rows: per row its level within its group and its
    slot within the level; per (group, level) the sd-design row; per group its levels."""

    def __init__(self, group: np.ndarray, key: np.ndarray, sd_matrix: np.ndarray, G: int):
        n = len(group)
        new = np.ones(n, dtype=bool)
        new[1:] = (group[1:] != group[:-1]) | (key[1:] != key[:-1])
        self.of_row = np.cumsum(new) - 1  # global (group, level) index of every row
        first = np.flatnonzero(new)
        self.group = group[first]  # group of every (group, level)
        self.size = np.diff(np.append(first, n))  # rows per level
        self.count = np.bincount(self.group, minlength=G)  # levels per group
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])  # first level of each group
        self.within = self.of_row - self.start[group]  # level within the group
        self.slot = np.arange(n) - first[self.of_row]  # position within the level
        self.W = sd_matrix[first]
        self.W_rows = sd_matrix
        self.max_size = np.zeros(G, dtype=np.int64)
        np.maximum.at(self.max_size, self.group, self.size)
        self.group_values: pd.DataFrame | None = None  # the grouping columns of the sorted rows (set by _build)

    def label(self, row: int) -> str:
        """The level label of sorted row ``row``, as a single fit names it (``a`` or ``a:b``)."""
        assert self.group_values is not None  # _build sets it before any level is named
        return ":".join(level_label(v) for v in self.group_values.iloc[int(row)])


def _build(formula: Formula, data: Any, by: str) -> tuple[_Groups, _Levels, list[str]]:
    """Rows of every group sorted by (group, level), as ``batch.batch._build_groups``."""
    term = formula.random_terms[0]
    frame, context, codes, labels, v_all, reason = _read_rows(
        formula, data, by, extra_columns=term.group_columns,
        extra_error=lambda c: RandomEffectsError(
            f"Column `{c}` of the random-effect term `{term.text}` is not in the data."),
        full_v_error=(f"fit_batch takes a diagonal V with `{term.text}`: meta_V(V = {{name}}) must be one "
                      "sampling variance per row (a data column or a vector), not a full covariance matrix. "
                      "Fit such models one group at a time with drm.fit."))
    texts = formula.text
    meta_v = formula.meta_v
    n_data = len(frame)
    G = len(labels)
    keep_pos = np.flatnonzero(reason == drop_rules.KEPT)
    sub = frame.iloc[keep_pos]
    if len(sub) == 0:
        raise DataError(drop_rules.no_rows_message(n_data))
    y = response_values(sub, formula.response, context)
    sd_dpar = term.sd_dpars()[0]
    mats = {d: materialize_uncached(formula.dpars[d], sub, d, texts[d], context) for d in ("mu", "sigma", sd_dpar)}
    ok = np.isfinite(y)
    for m, _, _ in mats.values():
        ok &= np.all(np.isfinite(m), axis=1)
    if not ok.all():
        reason[keep_pos[~ok]] = drop_rules.TRANSFORMED
        keep_pos, y, sub = keep_pos[ok], y[ok], sub.iloc[np.flatnonzero(ok)]
        mats = {d: (m[ok], t, s) for d, (m, t, s) in mats.items()}
    # level key: the (possibly interacted) grouping columns, as one integer code per row
    key = np.zeros(len(sub), dtype=np.int64)
    for c in term.group_columns:
        col_codes, col_uniques = pd.factorize(sub[c])
        key = key * max(len(col_uniques), 1) + col_codes
    key = pd.factorize(key)[0]
    group = codes[keep_pos]
    order = np.lexsort((key, group))
    y, group, key, keep_pos = y[order], group[order], key[order], keep_pos[order]
    X, mu_terms, _ = mats["mu"]
    Z, sigma_terms, _ = mats["sigma"]
    Wr, sd_terms, _ = mats[sd_dpar]
    X, Z, Wr = X[order], Z[order], Wr[order]
    v = v_all[keep_pos]
    sizes = np.bincount(group, minlength=G)
    notes = drop_rules.group_notes(codes, reason, G, meta_v.name if meta_v is not None else None)
    gr = _Groups(labels=labels, names=[f"mu:{t}" for t in mu_terms] + [f"sigma:{t}" for t in sigma_terms],
                 p=X.shape[1], k=Z.shape[1], y=y, X=X, Z=Z, v=v, row_pos=keep_pos, index=frame.index,
                 offsets=np.concatenate([[0], np.cumsum(sizes)]), sizes=sizes, notes=notes)
    lv = _Levels(group, key, Wr, G)
    lv.group_values = sub[list(term.group_columns)].iloc[order]  # for messages naming a level
    return gr, lv, [f"{sd_dpar}:{t}" for t in sd_terms]


def _check_levels(gr: _Groups, lv: _Levels, ok: np.ndarray, formula: Formula) -> None:
    """Groups a single fit would refuse for their random-effect levels (marked in ``gr.error``)."""
    term = formula.random_terms[0]
    sd_dpar = term.sd_dpars()[0]
    varies = np.any(np.abs(lv.W_rows - lv.W[lv.of_row]) > 1e-12 * (1 + np.abs(lv.W_rows)), axis=1)
    for g in np.unique(lv.group[lv.of_row[varies]]):
        if ok[g]:
            gr.error[int(g)] = (f"the predictors of `{formula.text[sd_dpar]}` must be constant within each "
                                f"level of `{term.group}`")
            ok[g] = False
    for g in np.flatnonzero(ok & (lv.count == 1)):  # one draw of the random effect
        gr.error[int(g)] = one_level_message(term, lv.label(gr.offsets[g]), "in this group").rstrip(".")
        ok[g] = False
    if gr.k == 0:
        _check_common_effect_v(gr, lv, ok, formula)
    if gr.k > 0:  # every level one row: sd(g) is confounded with sigma
        single = ok & (lv.count == gr.sizes)
        for g in np.flatnonzero(single):
            gr.error[int(g)] = (f"every level of `{term.group}` has a single row in this group, so "
                                f"sd({term.group}) is confounded with the row-level sigma")
            ok[g] = False
    k_sd = lv.W.shape[1]
    if k_sd > 1:
        for g in np.flatnonzero(ok):
            Wg = lv.W[lv.start[g]:lv.start[g] + lv.count[g]]
            if np.linalg.matrix_rank(Wg) < k_sd:
                gr.error[int(g)] = f"the `{formula.text[sd_dpar]}` design is rank-deficient among this group's levels"
                ok[g] = False


def _check_common_effect_v(gr: _Groups, lv: _Levels, ok: np.ndarray, formula: Formula) -> None:
    """``sigma ~ 0`` groups with a zero sampling variance (marked in ``gr.error``).  Two zero
    rows in one level leave their difference without variance: the covariance is singular,
    which a single fit refuses (:func:`drmpy.model.known_v.require_common_effect_covariance`).
    One zero row per level is a proper model, but the batch program's likelihood divides by
    ``v_i + sigma_i^2`` on every row: such a group is left to :func:`drmpy.fit`."""
    term = formula.random_terms[0]
    name = formula.meta_v.name if formula.meta_v is not None else None
    zero = np.flatnonzero(gr.v == 0)
    if zero.size == 0:
        return
    owner = np.searchsorted(gr.offsets, zero, side="right") - 1
    # a level with two zero rows: their difference has no variance
    shared = np.bincount(lv.of_row[zero], minlength=len(lv.group))[lv.of_row[zero]] >= 2
    for g in np.unique(owner):
        if not ok[g]:
            continue
        mine = owner == g
        rows = zero[mine & shared] if shared[mine].any() else zero[mine]
        where = rows_text(gr.index[gr.row_pos[rows]], np.arange(len(rows)))
        if shared[mine].any():
            gr.error[int(g)] = (
                f"meta_V(V = {name}): with sigma ~ 0 the covariance of this group's responses is singular: "
                f"zero sampling variances on {where} in one level of `{term.group}`, which "
                f"`{term.text}` gives only a shared variance (drm.fit raises CovarianceError)")
        else:
            gr.error[int(g)] = (
                f"meta_V(V = {name}): a zero sampling variance with sigma ~ 0 on {where}; "
                f"the batch program needs v + sigma^2 > 0 on every row: fit this group with drm.fit")
        ok[g] = False


def _per_group_solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A^-1 b for a stack of small systems (G, m, m), (G, m)."""
    return np.linalg.solve(A, b[..., None])[..., 0]


def _const_coefficients(M: np.ndarray, owner: np.ndarray, G: int, ids: np.ndarray) -> np.ndarray:
    """Per group: coefficients of its rows of M that reproduce the constant 1 (least squares)."""
    k = M.shape[1]
    out = np.zeros((G, k))
    if k == 0:
        return out
    gram = np.zeros((G, k, k))
    np.add.at(gram, owner, np.einsum("ni,nj->nij", M, M))
    rhs = np.zeros((G, k))
    np.add.at(rhs, owner, M)
    out[ids] = _per_group_solve(gram[ids], rhs[ids])
    return out


def start_values(gr: _Groups, lv: _Levels, ids: np.ndarray):
    """(beta0, phi0, masks, values) of every group in ``ids`` (other rows NaN), as
    :func:`drmpy.engine.start.start_values` and ``boundary_candidates`` for one random
    intercept, by the same rules (:mod:`drmpy.engine.start`) on per-group sums: OLS location,
    DerSimonian-Laird between-row variance split between sigma and sd(g), the SD of the level
    means of the OLS residuals for sd(g)."""
    G, p, k = len(gr.sizes), gr.p, gr.k
    owner = np.repeat(np.arange(G), gr.sizes)
    n = gr.sizes.astype(float)
    X, y, v = gr.X, gr.y, gr.v
    beta0 = np.full((G, p), np.nan)
    beta0[ids] = _per_group_solve(gr.cross(X)[ids], gr.group_sums(X * y[:, None])[ids])
    r = y - np.einsum("np,np->n", X, np.nan_to_num(beta0[owner]))
    v_pos = gr.group_sums((v <= 0).astype(float)) == 0
    dl = np.zeros(G, dtype=bool)
    dl[ids] = v_pos[ids] & (n[ids] > p)
    wi = np.where(dl[owner], 1.0 / np.where(v > 0, v, 1.0), 0.0)
    tau2 = residual_variance(gr.group_sums(r * r), n, p)
    if dl.any():
        d = np.flatnonzero(dl)
        XtWX = gr.cross(X, w=wi)[d]
        bw = _per_group_solve(XtWX, gr.group_sums(X * (wi * y)[:, None])[d])
        bw_rows = np.zeros((G, p))
        bw_rows[d] = bw
        rw = y - np.einsum("np,np->n", X, bw_rows[owner])
        Q = gr.group_sums(wi * rw * rw)[d]
        trace = np.trace(np.linalg.solve(XtWX, gr.cross(X, w=wi * wi)[d]), axis1=1, axis2=2)
        denom = gr.group_sums(wi)[d] - trace
        tau2[d] = dersimonian_laird(Q, n[d], p, denom)
    mean_v = gr.group_sums(v) / np.maximum(n, 1)
    mean_r = gr.group_sums(r) / np.maximum(n, 1)
    var_r = gr.group_sums((r - mean_r[owner]) ** 2) / np.maximum(n, 1)
    scale2 = variance_scale(mean_v, var_r)
    share = variance_share(tau2, 1)  # the moment estimate shared between sigma and sd(g)
    tau2_sigma = start_variance(share, scale2)
    cZ = _const_coefficients(gr.Z, owner, G, ids)
    cW = _const_coefficients(lv.W, lv.group, G, ids)
    # sd(g): the SD of the level means of the OLS residuals
    level_mean = np.bincount(lv.of_row, weights=r, minlength=len(lv.group)) / lv.size
    count = lv.count.astype(float)
    mm = np.bincount(lv.group, weights=level_mean, minlength=G) / np.maximum(count, 1)
    sd_means = np.sqrt(np.bincount(lv.group, weights=(level_mean - mm[lv.group]) ** 2, minlength=G)
                       / np.maximum(count, 1))
    sd0 = level_sd_start(sd_means, count, tau2_sigma, share, scale2)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi0 = np.concatenate([cZ * (0.5 * np.log(tau2_sigma))[:, None], cW * np.log(sd0)[:, None]], axis=1)
        # zero-variance candidates: each component's SD at 1e-8 of the sampling SD scale
        var_y = gr.group_sums((y - (gr.group_sums(y) / np.maximum(n, 1))[owner]) ** 2) / np.maximum(n, 1)
        scale_b = np.where(mean_v > 0, mean_v, var_y + 1e-300)
        log_sd = np.log(BOUNDARY_SD_RATIO * np.sqrt(scale_b))
    k_sd = lv.W.shape[1]
    blocks = ([(0, cZ)] if k > 0 else []) + [(k, cW)]
    masks = np.zeros((len(blocks), k + k_sd))
    values = np.zeros((G, len(blocks), k + k_sd))
    for i, (start, coef) in enumerate(blocks):
        masks[i, start:start + coef.shape[1]] = 1.0
        values[:, i, start:start + coef.shape[1]] = coef * log_sd[:, None]
    return beta0, phi0, masks, values


def _shapes(ids: np.ndarray, gr: _Groups, lv: _Levels, chunk_size: int | None):
    """Chunks (group ids, N, L, M, lanes): groups sorted by rows, adjacent row sizes merged
    while padding costs less than another compile (as ``batch.batch._plan``)."""
    if ids.size == 0:
        return []
    order = ids[np.argsort(gr.sizes[ids], kind="stable")]
    padded = np.array([padded_rows(s) for s in gr.sizes[order]])
    buckets = [[int(nr), order[padded == nr]] for nr in np.unique(padded)]
    merged = [buckets[-1]]
    for nr, members in reversed(buckets[:-1]):
        if len(members) * (merged[-1][0] - nr) <= MERGE_LANE_ROWS:
            merged[-1][1] = np.concatenate([members, merged[-1][1]])
        else:
            merged.append([nr, members])
    chunks = []
    for nr, members in reversed(merged):
        L = padded_rows(int(lv.count[members].max()))
        M = bucket_size(int(lv.max_size[members].max()))
        lanes = int(chunk_size) if chunk_size is not None else LANES
        lanes = min(lanes, _lanes_ladder(len(members)))
        for start in range(0, len(members), lanes):
            chunks.append((members[start:start + lanes], nr, L, M, lanes))
    return chunks


def fit_batch_random(formula: Formula, data: Any, by: str, *, method: str, ctrl: Control,
                     chunk_size: int | None, client, progress: bool) -> pd.DataFrame:
    """``fit_batch`` of a model with one random intercept (see :func:`drmpy.fit_batch`)."""
    from ..engine.batch_random import intercepts_structure, pack_intercepts, run_intercepts_pool

    check_random_formula(formula)
    gr, lv, sd_names = _build(formula, data, by)
    v_name = formula.meta_v.name if formula.meta_v is not None else None
    fit_mask = _check_groups(gr, formula, v_name)
    _check_levels(gr, lv, fit_mask, formula)
    gr.names = gr.names + sd_names
    ids = np.flatnonzero(fit_mask)
    G, p, k, k_sd = len(gr.sizes), gr.p, gr.k, lv.W.shape[1]
    beta0, phi0, masks, values = start_values(gr, lv, ids)
    owner = np.repeat(np.arange(G), gr.sizes)
    y_c = gr.y - np.einsum("np,np->n", gr.X, np.nan_to_num(beta0[owner]))
    # the optimiser sees each group's sigma and sd(g) designs standardised on its rows and
    # levels, as the group's single fit does (drmpy.engine.scaling): phi = B[g] phi_int
    B_Z, B_W = grouped_standardizers(gr.Z, gr.sizes), grouped_standardizers(lv.W, lv.count)
    B = np.zeros((G, k + k_sd, k + k_sd))
    B[:, :k, :k], B[:, k:, k:] = B_Z, B_W
    Z_int = np.einsum("ni,nij->nj", gr.Z, B_Z[owner])
    W_int = np.einsum("li,lij->lj", lv.W, B_W[lv.group])
    B_inv = np.linalg.inv(B)
    phi0 = np.where(np.isfinite(phi0), np.einsum("gij,gj->gi", B_inv, np.nan_to_num(phi0)), phi0)
    values = np.einsum("gij,gcj->gci", B_inv, values)
    res = dict(beta=np.full((G, p), np.nan), phi=np.full((G, k + k_sd), np.nan), f=np.full(G, np.nan),
               var=np.full((G, p + k + k_sd), np.nan), max_gradient=np.full(G, np.nan),
               status=np.full(G, -1, dtype=np.int64), iterations=np.zeros(G, dtype=np.int64),
               boundary_f=np.full((G, len(masks)), np.nan), cov_phi=np.full((G, k + k_sd, k + k_sd), np.nan))
    chunks = _shapes(ids, gr, lv, chunk_size)
    by_group = {}  # group id -> its chunk's shape
    for members, N, L, M, lanes in chunks:
        for g in members:
            by_group[int(g)] = (N, L, M, lanes)

    def tasks(groups: np.ndarray, start: np.ndarray, count: bool):
        shape_of = np.array([by_group[int(g)] for g in groups]).reshape(-1, 4)
        for shape in np.unique(shape_of, axis=0):
            N, L, M, lanes = (int(s) for s in shape)
            members = groups[np.all(shape_of == shape, axis=1)]
            struct = intercepts_structure(p, k, k_sd, L, method)
            per, size = _pool_layout(len(members), lanes)  # as fit_batch's diagonal pools
            for s in range(0, len(members), per):
                real = members[s:s + per]
                gs = np.concatenate([real, np.repeat(real[-1:], size - len(real))])
                arrs = pack_intercepts(y_c, gr.X, Z_int, gr.v, lv.within, lv.slot, W_int, gr.offsets[gs], gr.sizes[gs],
                                       lv.start[gs], lv.count[gs], N, L, M)
                yield ((N, L, M, lanes, s), len(real) if count else 0,
                       (struct, arrs, start[gs], masks, values[gs], len(real), int(ctrl.max_iter), float(ctrl.gtol),
                        lanes), {}), real

    def run(groups: np.ndarray, start: np.ndarray, count: bool):
        """Fit ``groups`` from ``start``: (group ids in result order, results)."""
        members = {}

        def keyed():
            for task, real in tasks(groups, start, count):
                members[task[0]] = real
                yield task

        out = runner.map(keyed())
        merged: dict = {}
        for key, real in members.items():
            for name, val in out[key].items():
                merged.setdefault(name, {})[key] = np.asarray(val)[: len(real)]
        order = np.concatenate([members[key] for key in members]) if members else groups[:0]
        return order, {name: np.concatenate([parts[key] for key in members]) for name, parts in merged.items()}

    runner = _Runner(run_intercepts_pool, client, progress, len(ids), "drmpy fit_batch")
    try:
        done, out = run(ids, phi0, True)
        for name in ("phi", "f", "var", "max_gradient", "status", "iterations", "boundary_f", "cov_phi"):
            if done.size:
                res[name][done] = out[name]
        if done.size:
            res["beta"][done] = out["beta"]
        # the boundary rule of a single fit (engine.program.run_fit): when the objective with
        # a variance component at zero beats the optimum, refit from that point (3 rounds at most)
        active = fit_mask.copy()
        for _ in range(3):
            f_b = res["boundary_f"]
            best = np.argmin(np.where(np.isnan(f_b), np.inf, f_b), axis=1)
            f_best = f_b[np.arange(G), best]
            again = np.flatnonzero(active & (f_best < res["f"] - boundary_gain_threshold(res["f"])))
            if again.size == 0:
                break
            start = res["phi"].copy()
            start[again] = np.where(masks[best[again]] > 0, values[again, best[again]], res["phi"][again])
            done, out = run(again, start, False)
            better = out["f"] < res["f"][done]
            active[:] = False
            active[done[better]] = True
            g = done[better]
            for name in ("beta", "phi", "f", "var", "max_gradient", "status", "iterations", "boundary_f", "cov_phi"):
                res[name][g] = out[name][better]
    finally:
        runner.close()
    res["phi"] = np.einsum("gij,gj->gi", B, res["phi"])
    res["var"][:, p:] = np.einsum("gij,gjk,gik->gi", B, res["cov_phi"], B)
    res["beta"] = res["beta"] + beta0
    return _result_frame(gr, by, res, fit_mask)
