"""``fit_batch``: the same model fitted to every level of a grouping column, in one compiled program.

The formula is parsed once and the fixed-effect designs are materialised once on the
whole data (so factor levels, and any stateful transform such as ``center(x)``, are
those of the whole data, common to all groups).  Rows are then scattered into padded
per-group arrays with vectorised numpy, groups sorted by size so that each pool of
groups pads little, and every pool is fitted by one compiled program
(:func:`drmpy.engine.batch.pool_program`): ``lanes`` optimisers advance side by side
(``jax.vmap`` of one trust-region iteration), and a lane whose group has finished takes
the next group at once, so slow groups (typically a variance converging to its zero
boundary) never hold the others back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import numpy as np
import pandas as pd

from ..model import frames
from ..model import rows as drop_rules
from ..model.design import (FixedDesign, check_full_rank, formulaic_module, materialize_uncached, response_values,
                            formula_columns, require_scale_coefficients, response_columns, term_name)
from ..engine.program import Control
from ..engine.scaling import grouped_standardizers
from ..errors import DataError, DrmError, FormulaError
from ..model.formula import Formula
from ..model.known_v import resolve_v
from ..engine.optimize import CONVERGED, CONVERGED_FLAT, NONFINITE, STATUS_MESSAGES

__all__ = ["fit_batch"]


# ------------------------------------------------------------------------------------------
# design: one materialisation for all groups


@dataclass
class _Groups:
    """Rows of every group, sorted by group, and what is known about each group."""

    labels: Any  # unique values of the by column, in output order (pandas Index/array)
    names: list[str]  # parameter names (mu:..., sigma:...)
    p: int
    k: int
    # retained rows, sorted by group
    y: np.ndarray
    X: np.ndarray
    Z: np.ndarray
    v: np.ndarray
    row_pos: np.ndarray  # position in the data of each retained row
    index: Any  # the data's row labels (for messages)
    offsets: np.ndarray  # (G + 1,) start of each group's rows
    sizes: np.ndarray  # (G,)
    notes: dict[int, list[str]]  # group -> dropped-row notes (appended to the message)
    error: dict[int, str] = field(default_factory=dict)  # group -> why it is not fitted

    def group_sums(self, values: np.ndarray) -> np.ndarray:
        """Per-group sums over the (sorted) retained rows; any trailing shape; empty groups 0."""
        G = len(self.sizes)
        flat = np.ascontiguousarray(values).reshape(len(values), -1)
        out = np.zeros((G, flat.shape[1]))
        nonempty = self.sizes > 0
        if flat.shape[0] and nonempty.any():
            out[nonempty] = np.add.reduceat(flat, self.offsets[:-1][nonempty], axis=0)
        return out.reshape((G,) + values.shape[1:])

    def cross(self, A: np.ndarray, B: np.ndarray | None = None, w: np.ndarray | None = None) -> np.ndarray:
        """Per-group sum of w_i a_i b_i' (G, a, b); ``B`` defaults to ``A``, ``w`` to ones.
        One batched product when every group has the same rows (rows sorted by group: a
        reshaped view), else a segment sum of the row products."""
        B = A if B is None else B
        Aw = A if w is None else A * w[:, None]
        G = len(self.sizes)
        s = int(self.sizes[0]) if G else 0
        if G and s > 0 and len(A) == G * s and bool(np.all(self.sizes == s)):
            return np.matmul(Aw.reshape(G, s, -1).transpose(0, 2, 1), B.reshape(G, s, -1))
        return self.group_sums(np.einsum("ni,nj->nij", Aw, B))


def _column_lists(formula: Formula, all_columns: list[str], context: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """Columns the formulas read (response, mu, sigma), and the V column, as build_design."""
    texts = formula.text
    needed = response_columns(formula.response, "mu", texts["mu"], all_columns, context)
    for dpar, rhs in formula.dpars.items():
        needed.extend(formula_columns(dpar, rhs, texts[dpar], all_columns, context))
    meta_v = formula.meta_v
    v_col = meta_v.name if meta_v is not None and meta_v.name in all_columns else None
    return list(dict.fromkeys(needed)), v_col


def _rank_deficient(gram: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Groups whose X'X may be singular (screen; confirmed on the rows by matrix_rank)."""
    m = gram.shape[-1]
    flag = np.zeros(len(gram), dtype=bool)
    if m == 0:
        return flag
    idx = np.flatnonzero(ok)
    if m == 1:
        flag[idx] = gram[idx, 0, 0] <= 0
        return flag
    # cheap exclusion first: lambda_min / lambda_max >= det / trace^m for a positive
    # semi-definite matrix, so a determinant well above 1e-9 trace^m clears the group
    # (margin 4 for the determinant's rounding); eigenvalues decide the rest
    sub = gram[idx]
    trace = np.trace(sub, axis1=1, axis2=2)
    with np.errstate(over="ignore", invalid="ignore"):
        clear = np.linalg.det(sub) > 4e-9 * trace**m
    idx = idx[~clear]
    if idx.size:
        ev = np.linalg.eigvalsh(gram[idx])
        flag[idx] = ev[:, 0] <= 1e-9 * np.maximum(ev[:, -1], np.finfo(float).tiny)
    return flag


def _by_codes(frame: pd.DataFrame, by: str) -> tuple[np.ndarray, Any]:
    col = frame[by]
    missing = col.isna().to_numpy()
    if missing.any():
        first = frame.index[np.flatnonzero(missing)[0]]
        raise DataError(
            f"by: column `{by}` has {int(missing.sum())} missing value(s) (first at row {first!r}); "
            "every row must belong to a group: fill or drop them first."
        )
    if col.dtype.kind in "iuf" and len(col):
        # a numeric column already sorted (data sets stacked one after another, the usual
        # layout of simulated replicates): the codes are a running count of value changes,
        # the same as pd.factorize(sort=True) without hashing every row
        values = col.to_numpy()
        change = values[1:] != values[:-1]
        if not np.any(values[1:] < values[:-1]):
            codes = np.concatenate([[0], np.cumsum(change)]).astype(np.int64)
            starts = np.concatenate([[0], np.flatnonzero(change) + 1])
            return codes, pd.Index(values[starts], dtype=col.dtype)
    try:
        codes, uniques = pd.factorize(col, sort=True)
    except TypeError:  # unorderable mixture of types: order of first appearance
        try:
            codes, uniques = pd.factorize(col, sort=False)
        except TypeError as exc:  # unhashable values (lists, dicts)
            raise DataError(f"by: column `{by}` has values that cannot be group labels ({exc}); "
                            "give strings or numbers.") from exc
    return codes.astype(np.int64), uniques


class _RawRows(NamedTuple):
    """The data's rows as every fit_batch path first reads them: the model's columns, each
    row's group code, its sampling variance and why it is dropped (a :mod:`drmpy.model.rows`
    reason code; only the reasons found before designs are built)."""

    frame: pd.DataFrame
    context: dict
    codes: np.ndarray
    labels: Any
    v: np.ndarray
    reason: np.ndarray


def _read_rows(formula: Formula, data: Any, by: str, full_v_error: str, extra_columns=(), extra_error=None) -> _RawRows:
    """Read the columns ``formula`` (plus ``extra_columns``) needs and mark the rows
    :func:`drmpy.fit` would drop, counted per group later.  ``full_v_error``: the message for
    a full V (``{name}`` is its name); ``extra_error(column)``: the error for a missing extra column."""
    if data is None:
        raise DataError("`data` is required.")
    all_columns = frames.column_names(data)
    if not isinstance(by, str):
        raise DrmError(f"by must be a column name, got {type(by).__name__}.")
    if by not in all_columns:
        raise DataError(f"by: column `{by}` is not in the data (columns: {', '.join(all_columns[:20])}).")
    context: dict[str, Any] = dict(formula.env)
    needed, v_col = _column_lists(formula, all_columns, context)
    for c in extra_columns:
        if c not in all_columns:
            raise extra_error(c)
    needed = list(dict.fromkeys(needed + list(extra_columns)))
    frame = frames.as_pandas(data, list(dict.fromkeys(needed + ([v_col] if v_col else []) + [by])))
    n_data = len(frame)
    codes, labels = _by_codes(frame, by)
    meta_v = formula.meta_v
    if meta_v is not None:
        raw_v = resolve_v(meta_v.name, all_columns, lambda c: frame[c], None, formula.env, n_data)
        if not raw_v.is_vector:
            raise FormulaError(full_v_error.format(name=meta_v.name))
        v_all = raw_v.vector
        assert v_all is not None  # raw_v.is_vector
    else:
        v_all = np.zeros(n_data)
    # rows: the same rules as build_design, counted per group instead of per data set
    reason = drop_rules.row_reasons(frame, [c for c in needed if c != by], v_all if meta_v is not None else None)
    return _RawRows(frame, context, codes, labels, v_all, reason)


def _materialize_dpars(formula: Formula, sub: pd.DataFrame, context: Mapping[str, Any]) -> dict:
    """The mu and sigma designs on ``sub`` as ``materialize_uncached`` builds them, from one
    formulaic call (variables the two formulas share are evaluated and encoded once); any
    failure falls back to one call per formula, whose error names the formula."""
    dpars = ("mu", "sigma")
    try:
        formulaic = formulaic_module()
        both = formulaic.model_matrix(formulaic.Formula({d: formulaic.Formula(formula.dpars[d]) for d in dpars}), sub,
                                      na_action="ignore", context=dict(context))
        out = {}
        for d in dpars:
            mm = both[d]
            values = np.asarray(mm, dtype=np.float64)
            if values.ndim == 1:
                values = values[:, None]
            out[d] = (values, tuple(term_name(str(c)) for c in mm.columns), mm.model_spec)
        return out
    except Exception:
        return {d: materialize_uncached(formula.dpars[d], sub, d, formula.text[d], context) for d in dpars}


def _build_groups(formula: Formula, data: Any, by: str) -> _Groups:
    if formula.is_bivariate:
        raise FormulaError(
            "fit_batch fits models with one response; a bivariate model (mu1, mu2) is not "
            "supported in batches. Fit such models one group at a time with drm.fit."
        )
    if formula.random_terms:
        raise FormulaError(
            "fit_batch fits models without random effects (a diagonal V given as a data "
            f"column); `{formula.random_terms[0].text}` is a random-effect term. Fit such "
            "models one group at a time with drm.fit."
        )
    rows = _read_rows(formula, data, by, full_v_error=(
        "fit_batch takes the sampling variances of meta_V(V = {name}) as one value per "
        "row (a data column or a vector); a full covariance matrix is not supported in "
        "batches. Fit such models one group at a time with drm.fit."))
    frame, context, codes, labels, v_all, reason = rows
    texts = formula.text
    n_data = len(frame)
    G = len(labels)
    meta_v = formula.meta_v
    keep = reason == drop_rules.KEPT
    sub = frame.loc[keep] if not keep.all() else frame
    if len(sub) == 0:
        raise DataError(drop_rules.no_rows_message(n_data))
    y = response_values(sub, formula.response, context)
    mats = _materialize_dpars(formula, sub, context)
    ok = np.isfinite(y)
    for m, _, _ in mats.values():
        ok &= np.all(np.isfinite(m), axis=1)
    keep_pos = np.flatnonzero(keep) if not keep.all() else None
    if not ok.all():
        if keep_pos is None:
            keep_pos = np.arange(n_data)
        reason[keep_pos[~ok]] = drop_rules.TRANSFORMED
        keep_pos = keep_pos[ok]
        y = y[ok]
        mats = {d: (m[ok], t, s) for d, (m, t, s) in mats.items()}
    X, mu_terms, _ = mats["mu"]
    Z, sigma_terms, _ = mats["sigma"]
    require_scale_coefficients("sigma", Z.shape[1], texts["sigma"],
                               fix="fit_batch does not fit the common-effect model sigma ~ 0; fit it with drm.fit")
    names = [f"mu:{t}" for t in mu_terms] + [f"sigma:{t}" for t in sigma_terms]
    if keep_pos is None:
        keep_pos = np.arange(n_data)
        v, kept_codes = v_all, codes
    else:
        v, kept_codes = v_all[keep_pos], codes[keep_pos]
    sizes = np.bincount(kept_codes, minlength=G)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if np.any(kept_codes[1:] < kept_codes[:-1]):  # not already sorted by group
        order = np.argsort(kept_codes, kind="stable")
        y, X, Z, v, keep_pos = y[order], X[order], Z[order], v[order], keep_pos[order]
    notes = drop_rules.group_notes(codes, reason, G, meta_v.name if meta_v is not None else None)
    return _Groups(
        labels=labels, names=names, p=X.shape[1], k=Z.shape[1], y=y, X=X, Z=Z, v=v,
        row_pos=keep_pos, index=frame.index, offsets=offsets, sizes=sizes, notes=notes,
    )


# ------------------------------------------------------------------------------------------
# per-group checks and start values (vectorised over groups)


def _check_groups(gr: _Groups, formula: Formula, v_name: str | None) -> np.ndarray:
    """Fill ``gr.error`` for groups that cannot be fitted; returns the boolean 'fit me' mask."""
    n_par = gr.p + gr.k
    ok = gr.sizes > 0
    for g in np.flatnonzero(~ok):
        gr.error[int(g)] = "no rows remain"
    few = ok & (gr.sizes < n_par)
    for g in np.flatnonzero(few):
        gr.error[int(g)] = (f"{gr.sizes[g]} row{'s' if gr.sizes[g] != 1 else ''} for {n_par} parameters "
                            f"({gr.p} mu, {gr.k} sigma)")
    ok &= ~few
    negative = gr.v < 0
    if negative.any():
        neg = gr.group_sums(negative.astype(float)) > 0
        for g in np.flatnonzero(ok & neg):
            rows = slice(gr.offsets[g], gr.offsets[g + 1])
            vv = gr.v[rows]
            i = int(np.flatnonzero(vv < 0)[0])
            label = gr.index[gr.row_pos[rows][i]]
            gr.error[int(g)] = (f"meta_V(V = {v_name}): sampling variances must be >= 0; row "
                                f"{label!r} has {vv[i]:g} ({int((vv < 0).sum())} negative in all)")
        ok &= ~neg
    for dpar, M, terms in (("mu", gr.X, gr.names[: gr.p]), ("sigma", gr.Z, gr.names[gr.p:])):
        suspect = _rank_deficient(gr.cross(M), ok)
        for g in np.flatnonzero(suspect):
            rows = slice(gr.offsets[g], gr.offsets[g + 1])
            design = FixedDesign(dpar, tuple(t.split(":", 1)[1] for t in terms), M[rows], None)
            try:
                check_full_rank(design, formula.text[dpar])
            except DataError as exc:
                gr.error[int(g)] = str(exc).rstrip(".").replace("among the retained rows", "among this group's rows")
                ok[g] = False
    return ok


# ------------------------------------------------------------------------------------------
# chunks


def padded_rows(n: int) -> int:
    """Rows per lane: multiples of 8 up to 64, then quarter-octave steps (80, 96, 112, 128, 160, ...).

    Few distinct shapes (each is one compile) with at most 25% padding above 64 rows.
    """
    n = max(int(n), 1)
    if n <= 64:
        return 8 * math.ceil(n / 8)
    step = 2 ** (int(math.floor(math.log2(n))) - 2)
    return step * math.ceil(n / step)


def auto_chunk_lanes(n_rows: int, width: int) -> int:
    """Lanes (groups) per chunk: about 4 MB of input per chunk (it then stays in cache), 256 to 8192."""
    per_lane = 8.0 * n_rows * (width + 3)
    lanes = 2 ** int(math.floor(math.log2(max(4e6 / per_lane, 1.0))))
    return int(min(max(lanes, 256), 8192))


@dataclass
class _Chunk:
    """A pool of groups fitted by one compiled call."""

    groups: np.ndarray  # group ids of the real groups
    n_rows: int  # padded rows per group
    lanes: int  # optimisers side by side (vmap width)
    size: int  # groups in the call's arrays, padding groups included (a multiple of lanes)


# A compile costs about as much as this many (group x padded row) units of work (about 1 s
# on one CPU core): adjacent row buckets are merged while padding the smaller one up
# costs less than compiling another shape.
MERGE_LANE_ROWS = 1.5e6
# groups per compiled call, in lanes: enough for the lanes to be refilled many times
POOL_LANES = 16


def _lanes_ladder(n: int) -> int:
    """Lanes for a bucket with fewer groups than a full chunk: 16, 64, 256, ... (few shapes)."""
    lanes = 16
    while lanes < n:
        lanes *= 4
    return lanes


def _half_octave(n: int) -> int:
    """Smallest of 1, 2, 3, 4, 6, 8, 12, 16, ... (2^j and 3 * 2^j) that is >= n."""
    m = 1
    while m < n:
        m = 3 * m // 2 if m >= 2 and (m & (m - 1)) == 0 else (4 * m // 3 if m >= 3 else m + 1)
    return m


def _pool_layout(n_members: int, lanes: int) -> tuple[int, int]:
    """(groups per pool, slots per pool) for ``n_members`` groups of one shape: equal pools of
    at most POOL_LANES * lanes groups, padded to lanes times 1, 2, 3, 4, 6, 8, 12, 16 (few
    compiled shapes; a padding slot costs up to a third, not half, of the pool)."""
    n_pools = math.ceil(n_members / (POOL_LANES * lanes))
    per = math.ceil(n_members / n_pools)
    return per, lanes * _half_octave(math.ceil(per / lanes))


def _plan(group_ids: np.ndarray, sizes: np.ndarray, chunk_size: int | None, width: int) -> list[_Chunk]:
    """Pools of groups sorted by size; each pool pads its groups to its bucket's rows."""
    if group_ids.size == 0:
        return []
    order = group_ids[np.argsort(sizes[group_ids], kind="stable")]
    uniq, inv = np.unique(sizes[order], return_inverse=True)
    padded = np.array([padded_rows(s) for s in uniq])[inv]
    buckets = [[int(n), order[padded == n]] for n in np.unique(padded)]
    # merge small buckets upwards (from the largest rows down) when padding is cheaper than compiling
    merged = [buckets[-1]]
    for n_rows, members in reversed(buckets[:-1]):
        top = merged[-1]
        if len(members) * (top[0] - n_rows) <= MERGE_LANE_ROWS:
            top[1] = np.concatenate([members, top[1]])
        else:
            merged.append([n_rows, members])
    chunks = []
    for n_rows, members in reversed(merged):
        lanes = int(chunk_size) if chunk_size is not None else auto_chunk_lanes(n_rows, width)
        if len(members) < lanes:
            lanes = min(lanes, _lanes_ladder(len(members)))
        per, size = _pool_layout(len(members), lanes)
        for start in range(0, len(members), per):
            chunks.append(_Chunk(members[start : start + per], n_rows, lanes, size))
    return chunks


def _gather_padded(gr: _Groups, groups: np.ndarray, n_rows: int, sources) -> tuple[list[np.ndarray], np.ndarray]:
    """The rows of ``groups`` as (len(groups), n_rows, ...) arrays, one per ``(array, fill)`` of
    ``sources`` (arrays over the retained rows), rows beyond a group's size set to ``fill``;
    and the mask of real rows (len(groups), n_rows).  One gather per array."""
    col = np.arange(n_rows)
    mask = col[None, :] < gr.sizes[groups][:, None]
    idx = gr.offsets[groups][:, None] + col[None, :]
    pad = None if bool(mask.all()) else ~mask  # every group fills its rows: the common case
    if pad is not None:
        np.minimum(idx, len(gr.y) - 1, out=idx)  # a valid row for every padding slot
    out = []
    for src, fill in sources:
        vals = src[idx]
        if pad is not None:
            np.copyto(vals, fill, where=pad.reshape(pad.shape + (1,) * (vals.ndim - 2)))
        out.append(vals)
    return out, mask


def _chunk_arrays(gr: _Groups, chunk: _Chunk) -> tuple[np.ndarray, ...]:
    """(y, X, Z, v, w) as (size, n_rows, ...) arrays; padding rows and lanes w = 0, v = 1,
    y = X = Z = 0."""
    L, N = chunk.size, chunk.n_rows
    gs = chunk.groups
    n = len(gs)
    sources = ((gr.y, 0.0), (gr.X, 0.0), (gr.Z, 0.0), (gr.v, 1.0))
    start = int(gr.offsets[gs[0]])
    if bool(np.all(gr.sizes[gs] == N)) and bool(np.all(gr.offsets[gs] == start + N * np.arange(n))):
        # consecutive groups that fill their rows (the common case): slices, no gather
        out = []
        for src, fill in sources:
            arr = np.empty((L, N) + src.shape[1:])
            arr[:n] = src[start:start + n * N].reshape((n, N) + src.shape[1:])
            arr[n:] = fill
            out.append(arr)
        w = np.zeros((L, N))
        w[:n] = 1.0
        return tuple(out) + (w,)
    # lanes beyond the groups gather the last group's rows, then take the fill values
    lanes = np.concatenate([gs, np.repeat(gs[-1:], L - n)])
    out, mask = _gather_padded(gr, lanes, N, sources)
    for arr, (_, fill) in zip(out, sources):
        arr[n:] = fill
    w = mask.astype(float)
    w[n:] = 0.0
    y, X, Z, v = out
    return y, X, Z, v, w


def _plan_tau2(group_ids: np.ndarray, sizes: np.ndarray, chunk_size: int | None) -> list[_Chunk]:
    """Chunks of the tau^2 program: groups sorted by size, padded to their bucket's rows;
    every lane of a chunk iterates in step (about 2^18 cells per chunk)."""
    if group_ids.size == 0:
        return []
    order = group_ids[np.argsort(sizes[group_ids], kind="stable")]
    uniq, inv = np.unique(sizes[order], return_inverse=True)
    padded = np.array([padded_rows(s) for s in uniq])[inv]
    chunks = []
    for n_rows in np.unique(padded):
        members = order[padded == n_rows]
        lanes = int(chunk_size) if chunk_size is not None else int(min(max(2 ** int(math.log2(2**18 / n_rows)), 256), 16384))
        if len(members) < lanes:
            lanes = min(lanes, _lanes_ladder(len(members)))
        for start in range(0, len(members), lanes):
            chunks.append(_Chunk(members[start:start + lanes], int(n_rows), lanes, lanes))
    return chunks


def _dense_chunk(gr: _Groups, groups: np.ndarray, size: int, n_rows: int, x_ones: bool):
    """(y, X, v, w) of ``groups`` as (size, n_rows[, p]) arrays, lanes beyond the groups
    repeating the last group (their results are discarded); padding rows w = 0, v = 1."""
    gs = np.concatenate([groups, np.repeat(groups[-1:], size - len(groups))])
    # the mu design is one column of ones: the programs take None
    sources = ((gr.y, 0.0), (gr.v, 1.0)) + (() if x_ones else ((gr.X, 0.0),))
    out, mask = _gather_padded(gr, gs, n_rows, sources)
    y, v = out[:2]
    X = None if x_ones else out[2]
    return y, X, v, mask.astype(float)


def _round_key(args, kwargs):
    """What tasks run together in one multi-device program must share: the argument tree,
    every array's shape and dtype and every other argument's value."""
    from jax.tree_util import tree_flatten

    leaves, treedef = tree_flatten((args, kwargs))
    return (str(treedef),) + tuple((np.shape(x), x.dtype.str) if isinstance(x, np.ndarray) else ("=", x)
                                    for x in leaves)


def _rounds(tasks, n_devices: int):
    """Consecutive tasks grouped in rounds of at most ``n_devices`` with one round key."""
    batch: list = []
    key = None
    for task in tasks:
        k = _round_key(task[2], task[3])
        if batch and (k != key or len(batch) == n_devices):
            yield batch
            batch = []
        batch.append(task)
        key = k
    if batch:
        yield batch


def _stacked(batch, mesh):
    """The round's arguments, every array stacked along a new leading device axis as one
    array split over the mesh's devices (each task's arrays copied straight to its device,
    no stacked copy on the host); a short round repeats its last task on the spare devices
    (results not read)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    from jax.tree_util import tree_map

    devices = list(mesh.devices.flat)
    tasks = batch + [batch[-1]] * (len(devices) - len(batch))
    split = NamedSharding(mesh, PartitionSpec("d"))

    def stack(*xs):
        if not isinstance(xs[0], np.ndarray):
            return xs[0]
        shards = [jax.device_put(x[None], d) for x, d in zip(xs, devices)]
        return jax.make_array_from_single_device_arrays((len(xs),) + xs[0].shape, split, shards)

    return tree_map(stack, *[(t[2], t[3]) for t in tasks])


class _Runner:
    """Runs chunk programs locally (in rounds of one chunk per JAX device, :func:`_rounds`)
    or on a dask cluster, keeping a bounded number of chunks in flight, with one progress bar."""

    def __init__(self, fn, client, progress: bool, total: int, desc: str, count=None):
        self.fn = fn
        self.client = client
        self.count = count  # (task key, n_real, result) -> groups finished; default n_real
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="fit", desc=desc, leave=False)

    def map(self, tasks):
        """tasks: iterable of (key, n_real, args tuple, kwargs dict); returns {key: result}."""
        results = {}
        if self.client is not None:
            from distributed import as_completed

            futures = {}
            for key, n_real, args, kwargs in tasks:
                fut = self.client.submit(self.fn, *args, pure=False, **kwargs)
                futures[fut] = (key, n_real)
            for fut in as_completed(list(futures)):
                key, n_real = futures[fut]
                results[key] = fut.result()
                self._advance(key, n_real, results[key])
            return results
        import jax

        devices = jax.local_devices()
        stacked = len(devices) > 1
        if stacked:
            # one program for all devices, each running one task of the round: a program
            # placed on one device would be compiled again for every other device
            from ..engine.batch import device_mesh

            device = device_mesh(devices)
            rounds = _rounds(tasks, len(devices))
        else:
            device = devices[0]
            rounds = ([task] for task in tasks)
        inflight = []
        for batch in rounds:
            args, kwargs = _stacked(batch, device) if stacked else batch[0][2:]
            inflight.append((batch, self.fn(*args, device=device, block=False, **kwargs)))
            if len(inflight) >= 2:  # two rounds in flight: one running, one queued
                self._collect(*inflight.pop(0), results, stacked)
        for batch, out in inflight:
            self._collect(batch, out, results, stacked)
        return results

    def _collect(self, batch, out, results, stacked: bool) -> None:
        """Results of one round (stacked: split along the device axis) into ``results``."""
        import jax

        out = jax.device_get(out)
        for i, (key, n_real, _, _) in enumerate(batch):
            results[key] = {k: v[i] for k, v in out.items()} if stacked else out
            self._advance(key, n_real, results[key])

    def _advance(self, key, n_real: int, result) -> None:
        if self.bar is not None:
            self.bar.update(n_real if self.count is None else self.count(key, n_real, result))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------
# the public function


def _coerce_chunk_size(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or int(chunk_size) < 1:
        raise DrmError(f"chunk_size must be a positive integer (groups per chunk) or None, got {chunk_size!r}.")
    return int(chunk_size)


def _empty_results(gr: _Groups) -> dict:
    G = len(gr.sizes)
    P = gr.p + gr.k
    return dict(beta=np.full((G, gr.p), np.nan), phi=np.full((G, gr.k), np.nan), f=np.full(G, np.nan),
                var=np.full((G, P), np.nan), max_gradient=np.full(G, np.nan),
                status=np.full(G, -1, dtype=np.int64), iterations=np.zeros(G, dtype=np.int64))


def _positive_v_groups(gr: _Groups) -> np.ndarray:
    """Per group: every retained sampling variance > 0 (the zero-variance model exists)."""
    return gr.group_sums((gr.v <= 0).astype(float)) == 0


def _scalar_tau2(gr: _Groups) -> bool:
    """``sigma ~ 1``: one heterogeneity variance per group (the closed-form Newton path)."""
    return gr.k == 1 and bool(np.all(gr.Z[:, 0] == 1.0))


def _fit_lanes(gr: _Groups, fit_ids: np.ndarray, *, reml: bool, ctrl: Control, chunk_size: int | None,
               client, progress: bool) -> dict:
    """Run every group in ``fit_ids``; returns per-group arrays (indexed by group id).

    ``sigma ~ 1`` groups whose sampling variances are all positive go to the Newton
    program in tau^2 (:mod:`drmpy.engine.tau2_batch`); every other group to the
    trust-region pool (:func:`drmpy.engine.batch.run_pool`), after which the fit with
    sigma = 0 replaces an interior optimum that is worse (the boundary rule).
    """
    from ..engine.batch import run_pool
    from ..engine.tau2_batch import BOUNDARY_BETTER, run_tau2

    res = _empty_results(gr)
    positive = _positive_v_groups(gr)
    if _scalar_tau2(gr):
        fast = fit_ids[positive[fit_ids]]
        slow = fit_ids[~positive[fit_ids]]
    else:
        fast, slow = fit_ids[:0], fit_ids
    # the pool's optimiser sees each group's sigma design standardised on its rows, as the
    # group's single fit does (drmpy.engine.scaling); B[g] maps the coefficients back.  After
    # the routing above, which reads the user's design (the tau^2 path takes no Z)
    B = grouped_standardizers(gr.Z, gr.sizes)
    if not np.array_equal(B, np.broadcast_to(np.eye(gr.k), B.shape)):
        group_of_row = np.repeat(np.arange(len(gr.sizes)), gr.sizes)
        gr = dataclasses.replace(gr, Z=np.einsum("ni,nij->nj", gr.Z, B[group_of_row]))
    keys = ("beta", "phi", "f", "var", "max_gradient", "status", "iterations")
    fast_chunks = _plan_tau2(fast, gr.sizes, chunk_size)
    x_ones = gr.p == 1 and bool(np.all(gr.X[:, 0] == 1.0))
    chunks = _plan(slow, gr.sizes, chunk_size, gr.p + gr.k)

    def tasks():
        for i, ch in enumerate(fast_chunks):
            y, X, v, w = _dense_chunk(gr, ch.groups, ch.size, ch.n_rows, x_ones)
            yield ("tau2", i), len(ch.groups), ("tau2", y, X, v, w, int(ctrl.max_iter), reml), {}
        for i, ch in enumerate(chunks):
            arrays = _chunk_arrays(gr, ch)
            start = np.full((ch.size, gr.k), np.nan)  # NaN: the program computes start values
            beta0 = np.full((ch.size, gr.p), np.nan)
            yield ("pool", i), len(ch.groups), ("pool",) + arrays + (start, beta0, len(ch.groups), int(ctrl.max_iter),
                                                                    float(ctrl.gtol), reml, ch.lanes), {}

    def dispatch(program, *args, device=None, block=True):
        return (run_tau2 if program == "tau2" else run_pool)(*args, device=device, block=block)

    runner = _Runner(dispatch, client, progress, len(fit_ids), "drmpy fit_batch")
    try:
        out = runner.map(tasks())
    finally:
        runner.close()
    for i, ch in enumerate(fast_chunks):
        o = out[("tau2", i)]
        n = len(ch.groups)
        for key in keys:
            res[key][ch.groups] = np.asarray(o[key])[:n]
    for i, ch in enumerate(chunks):
        o = out[("pool", i)]
        n = len(ch.groups)
        for key in keys:
            res[key][ch.groups] = np.asarray(o[key])[:n]
        _to_user_coefficients(res, ch.groups, np.asarray(o["cov_phi"])[:n], B[ch.groups], gr.p)
        zero = dict(f=o["zero_f"], beta=o["zero_beta"], var_beta=o["zero_var_beta"])  # sigma = 0
        _apply_boundary_rule(gr, res, ch.groups, positive[ch.groups], zero, BOUNDARY_BETTER)
    return res


def _to_user_coefficients(res: dict, groups: np.ndarray, cov_phi: np.ndarray, B: np.ndarray, p: int) -> None:
    """Sigma coefficients fitted on the standardised designs ``Z B[g]`` -> those of ``Z``:
    ``gamma = B[g] gamma_int`` and their variances ``diag(B[g] Cov B[g]')`` (exact, linear)."""
    if np.array_equal(B, np.broadcast_to(np.eye(B.shape[-1]), B.shape)):
        return
    res["phi"][groups] = np.einsum("gij,gj->gi", B, res["phi"][groups])
    res["var"][groups, p:] = np.einsum("gij,gjk,gik->gi", B, cov_phi, B)


def _apply_boundary_rule(gr: _Groups, res: dict, groups: np.ndarray, feasible: np.ndarray, zero: dict,
                         code: int) -> None:
    """Replace converged interior optima that fit worse than sigma = 0 by the sigma = 0 fit.

    The sigma coefficients of such a group are -inf for the intercept (sigma = 0 on every
    row) and NaN for the others (undetermined), with NaN standard errors.
    """
    from ..engine.tau2_batch import BOUNDARY_MARGIN

    n = len(groups)
    f0 = np.asarray(zero["f"])[:n]
    f = res["f"][groups]
    converged = (res["status"][groups] == CONVERGED) | (res["status"][groups] == CONVERGED_FLAT)
    # (a group with a zero sampling variance has no sigma = 0 model: feasible is False)
    better = feasible & converged & (f - f0 > BOUNDARY_MARGIN * np.maximum(1.0, np.abs(f)))
    if not better.any():
        return
    g = groups[better]
    intercept = np.array([name == "sigma:(Intercept)" for name in gr.names[gr.p:]])
    res["beta"][g] = np.asarray(zero["beta"])[:n][better]
    res["phi"][g] = np.where(intercept, -np.inf, np.nan)
    res["f"][g] = f0[better]
    res["var"][g] = np.concatenate([np.asarray(zero["var_beta"])[:n][better], np.full((len(g), gr.k), np.nan)], axis=1)
    res["max_gradient"][g] = 0.0
    res["status"][g] = code


def fit_batch(
    formula: Formula | str,
    data: Any,
    by: str = "replicate",
    *,
    method: str = "ML",
    family: Any = None,
    progress: bool = True,
    chunk_size: int | None = None,
    client: Any = None,
    control: Mapping[str, Any] | Control | None = None,
) -> pd.DataFrame:
    """Fit the same model to every level of ``by``, each level an independent data set.

    Supported models: ``meta_V(V = vi)`` given as one sampling variance per row (a data
    column or a vector), any ``mu`` and ``sigma`` formulas, and no random effects or one
    random intercept ``(1|g)`` (optionally ``sd(g) ~ ...``) whose levels are the values of
    ``g`` within each group (:mod:`drmpy.batch.batch_random`).  Designs are
    built once on the whole data, so factor levels (and stateful transforms such as
    ``center(x)``) are those of the whole data and every group has the same parameters.

    Within each group, rows with missing or non-finite values are dropped (as
    :func:`drmpy.fit` drops them) and counted in that group's ``message``.  A group that
    cannot be fitted (no rows left, fewer rows than parameters, a rank-deficient mu or
    sigma design within the group, a negative sampling variance; with ``(1|g)``, a single
    level of ``g``, only single-row levels, or under ``sigma ~ 0`` a zero sampling
    variance) keeps its rows with NaN
    estimates, ``converged=False`` and the reason in ``message``; other groups are
    unaffected.  A group whose optimiser does not converge keeps its last iterate with
    ``converged=False``.

    Parameters
    ----------
    formula, method, family, control:
        As :func:`drmpy.fit` (``control``: ``max_iter``, ``gtol``; ``structure`` must be
        None or ``"diag"``).
    data:
        pandas or polars DataFrame with the column ``by``.  Never modified.
    by:
        Column whose levels are the data sets (any values; missing values are an error).
    progress:
        Show a tqdm progress bar (groups fitted).
    chunk_size:
        Groups fitted side by side (the vmap width; each compiled call takes up to 16 times
        as many groups and refills the lanes as groups finish).  Default chosen from the
        group size (about 4 MB of input per chunk).  Each group's iterations do not depend
        on it; results agree to rounding.
    client:
        A ``dask.distributed.Client``: chunks are sent to its workers (each worker needs
        drmpy installed).  Results equal the local ones for the same chunking.

    Returns
    -------
    pandas.DataFrame with one row per group and parameter, groups in sorted order of
    ``by``, parameters in ``fit.params`` order: ``by`` (same name and values), ``parameter``
    (``mu:...`` identity scale, ``sigma:...`` log-SD scale), ``estimate``, ``std_error``
    (drmTMB's: observed information, REML including the variance parameters' uncertainty),
    and per group ``loglik`` (REML: drmTMB's restricted log-likelihood), ``converged``
    (the optimiser's test, a variance at its zero boundary counting as converged; never
    for a non-finite log-likelihood or estimate),
    ``max_gradient`` (largest absolute gradient of the objective at the estimate) and
    ``message``.
    """
    from ..api import Gaussian

    formula = Formula.coerce(formula, _env_depth=2)
    if family is not None and not isinstance(family, Gaussian):
        raise DrmError(f"family must be drm.gaussian(), got {family!r}.")
    method_u = str(method).upper()
    if method_u not in ("ML", "REML"):
        raise DrmError(f"method must be 'ML' or 'REML', got {method!r}.")
    ctrl = Control.coerce(control)
    if ctrl.structure not in (None, "diag"):
        raise DrmError(f"control: fit_batch uses the diagonal structure; structure={ctrl.structure!r} is not available.")
    chunk = _coerce_chunk_size(chunk_size)
    if formula.random_terms and not formula.is_bivariate:
        from .batch_random import fit_batch_random

        return fit_batch_random(formula, data, by, method=method_u, ctrl=ctrl, chunk_size=chunk, client=client,
                                progress=progress)

    gr = _build_groups(formula, data, by)
    v_name = formula.meta_v.name if formula.meta_v is not None else None
    fit_mask = _check_groups(gr, formula, v_name)
    fit_ids = np.flatnonzero(fit_mask)
    res = _fit_lanes(gr, fit_ids, reml=method_u == "REML", ctrl=ctrl, chunk_size=chunk,
                     client=client, progress=progress)
    return _result_frame(gr, by, res, fit_mask)


def _nonfinite_not_converged(status: np.ndarray, f: np.ndarray, beta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Per group status with ``NONFINITE`` for a fitted group whose objective, location
    estimates or variance parameters are not finite: such a result is never converged.  (The
    boundary rule's sigma = 0 fit has a sigma intercept of -inf by construction: its
    variance parameters are exempt.)"""
    from ..engine.tau2_batch import BOUNDARY, BOUNDARY_BETTER

    at_boundary = np.isin(status, (BOUNDARY, BOUNDARY_BETTER))
    finite = np.isfinite(f) & np.all(np.isfinite(beta), axis=1)
    finite &= at_boundary | np.all(np.isfinite(phi), axis=1)
    return np.where((status >= 0) & ~finite, NONFINITE, status)


def _result_frame(gr: _Groups, by: str, res: dict, fit_mask: np.ndarray) -> pd.DataFrame:
    from ..engine.tau2_batch import BOUNDARY, BOUNDARY_BETTER, BOUNDARY_MESSAGES

    G = len(gr.sizes)
    P = len(gr.names)
    status = _nonfinite_not_converged(res["status"], res["f"], res["beta"], res["phi"])
    fitted = fit_mask & (status >= 0)
    theta = np.concatenate([res["beta"], res["phi"]], axis=1)
    var = res["var"]
    se = np.where(var >= 0, np.sqrt(np.abs(var)), np.nan)
    converged = fitted & np.isin(status, (CONVERGED, CONVERGED_FLAT, BOUNDARY, BOUNDARY_BETTER))
    # one message per group: the status text, or the reason it was not fitted, then notes
    messages = {**STATUS_MESSAGES, **BOUNDARY_MESSAGES}
    code = np.where(fitted, status, len(messages))
    heads = [messages[c] if c in (CONVERGED, CONVERGED_FLAT, BOUNDARY, BOUNDARY_BETTER)
             else "not converged: " + messages[c] for c in range(len(messages))] + ["not fitted"]
    msg_codes = code.astype(np.int64)
    msg_uniques = list(heads)
    special = sorted(set(gr.notes) | set(gr.error))
    if special:
        lookup = {m: i for i, m in enumerate(msg_uniques)}
        for g in special:
            head = "not fitted: " + gr.error[g] if g in gr.error else heads[int(code[g])]
            text = "; ".join([head] + gr.notes.get(g, []))
            msg_codes[g] = lookup.setdefault(text, len(lookup))
        msg_uniques = list(lookup)
    used_codes, msg_codes = np.unique(msg_codes, return_inverse=True)
    msg_uniques = [msg_uniques[c] for c in used_codes]
    rep = np.repeat(np.arange(G), P)
    labels = gr.labels
    by_values = labels.take(rep) if hasattr(labels, "take") else np.asarray(labels)[rep]
    frame = pd.DataFrame({
        by: by_values,
        "parameter": pd.Categorical.from_codes(np.tile(np.arange(P), G), categories=pd.Index(gr.names, dtype=object)),
        "estimate": theta.reshape(-1),
        "std_error": se.reshape(-1),
        "loglik": np.repeat(-res["f"], P),
        "converged": np.repeat(converged, P),
        "max_gradient": np.repeat(res["max_gradient"], P),
        "message": pd.Categorical.from_codes(np.repeat(msg_codes, P), categories=pd.Index(msg_uniques, dtype=object)),
    })
    return frame
