"""The known sampling (co)variance V of ``meta_V(V = name)``: resolve, subset, validate, classify.

A vector (length n) is a diagonal V of sampling variances.  A matrix (numpy n x n or
scipy.sparse) is subset by the retained rows and columns together; one whose
off-diagonal entries are all zero is treated as diagonal.  A matrix that falls apart
into independent blocks (studies) is evaluated block by block; the reported ``kind``
stays what the user gave (``dense`` or ``sparse``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CovarianceError
from .frames import is_numeric

__all__ = ["KnownV", "resolve_v", "finalize_v", "require_common_effect_covariance"]


@dataclass(frozen=True)
class RawV:
    """V as resolved, before rows are dropped."""

    name: str
    source: str  # "column", "env", "namespace"
    vector: np.ndarray | None = None
    matrix: Any = None  # numpy 2-D or scipy.sparse

    @property
    def is_vector(self) -> bool:
        return self.vector is not None


@dataclass(frozen=True)
class KnownV:
    """V restricted to the retained rows.

    Attributes:
        kind: ``none`` (no meta_V), ``diagonal``, ``dense`` or ``sparse``.
        diag: the diagonal of V (zeros when there is no meta_V).
        matrix: the dense n x n V for ``dense``/``sparse`` kinds (None otherwise).
        blocks: row positions of each independent block of V (None when V is diagonal).
        rank, condition: for matrix V, its numerical rank and condition number.
    """

    kind: str
    name: str | None
    diag: np.ndarray
    matrix: np.ndarray | None = field(default=None, repr=False)
    blocks: tuple[np.ndarray, ...] | None = field(default=None, repr=False)
    rank: int | None = None
    condition: float | None = None

    @property
    def is_diagonal(self) -> bool:
        return self.matrix is None


def resolve_v(name: str, data_columns: list[str], get_column, env: Mapping[str, Any] | None,
              namespace: Mapping[str, Any], n_data: int) -> RawV:
    """Look ``name`` up as a data column, then in ``env=``, then where the Formula was built."""
    if name in data_columns:
        column = get_column(name)
        dtype = getattr(column, "dtype", None)
        if dtype is not None and not is_numeric(column):
            # as the response: numbers stored as text are an error in the data, not converted
            raise CovarianceError(f"meta_V(V = {name}): V must be numeric, but the sampling variance column "
                                  f"`{name}` has dtype {dtype}.")
        values = np.asarray(column)
        return RawV(name, "column", vector=_as_float_vector(values, name, n_data))
    if env is not None and name in env:
        return _from_object(env[name], name, "env", n_data)
    if name in namespace:
        return _from_object(namespace[name], name, "namespace", n_data)
    raise CovarianceError(
        f"meta_V(V = {name}): `{name}` is not a column of the data, a key of `env=`, or a "
        "variable in the namespace where the Formula was built."
    )


def _as_float_vector(values: np.ndarray, name: str, n_data: int) -> np.ndarray:
    if values.ndim != 1:
        raise CovarianceError(f"meta_V(V = {name}): expected a vector, got shape {values.shape}.")
    if len(values) != n_data:
        raise CovarianceError(
            f"meta_V(V = {name}): V has length {len(values)} but the data have {n_data} rows."
        )
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CovarianceError(f"meta_V(V = {name}): V must be numeric.") from exc


def _from_object(obj: Any, name: str, source: str, n_data: int) -> RawV:
    try:
        import scipy.sparse as sp

        if sp.issparse(obj):
            if obj.shape != (n_data, n_data):
                raise CovarianceError(
                    f"meta_V(V = {name}): V has shape {obj.shape} but the data have {n_data} rows; "
                    f"expected ({n_data}, {n_data})."
                )
            return RawV(name, source, matrix=sp.csr_matrix(obj, dtype=np.float64))
    except ImportError:  # pragma: no cover - scipy is a dependency
        pass
    arr = np.asarray(obj)
    if arr.ndim == 1:
        return RawV(name, source, vector=_as_float_vector(arr, name, n_data))
    if arr.ndim == 2:
        if arr.shape != (n_data, n_data):
            raise CovarianceError(
                f"meta_V(V = {name}): V has shape {arr.shape} but the data have {n_data} rows; "
                f"expected ({n_data}, {n_data})."
            )
        try:
            return RawV(name, source, matrix=np.asarray(arr, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise CovarianceError(f"meta_V(V = {name}): V must be numeric.") from exc
    raise CovarianceError(f"meta_V(V = {name}): expected a vector or a square matrix, got shape {arr.shape}.")


def finalize_v(raw: RawV | None, keep: np.ndarray, labels: Any) -> KnownV:
    """Subset V to the retained row positions ``keep`` and validate it."""
    n = len(keep)
    if raw is None:
        return KnownV("none", None, np.zeros(n))
    name = raw.name
    if raw.vector is not None:  # raw.is_vector, spelt so that the type checker narrows it
        v = raw.vector[keep]
        bad = np.flatnonzero(v < 0)
        if bad.size:
            raise CovarianceError(
                f"meta_V(V = {name}): sampling variances must be >= 0; row {labels[bad[0]]!r} has "
                f"{v[bad[0]]:g} ({bad.size} negative in all)."
            )
        return KnownV("diagonal", name, v)
    import scipy.sparse as sp

    if sp.issparse(raw.matrix):
        sub = raw.matrix[keep][:, keep].tocsr()
        kind = "sparse"
        dense = sub.toarray()
    else:
        dense = raw.matrix[np.ix_(keep, keep)]
        kind = "dense"
    if not np.all(np.isfinite(dense)):
        i, j = np.argwhere(~np.isfinite(dense))[0]
        raise CovarianceError(
            f"meta_V(V = {name}): V has a non-finite entry at rows ({labels[i]!r}, {labels[j]!r}) "
            "among the retained rows."
        )
    scale = float(np.max(np.abs(dense))) if dense.size else 0.0
    asym = float(np.max(np.abs(dense - dense.T))) if dense.size else 0.0
    if asym > np.sqrt(np.finfo(float).eps) * max(scale, np.finfo(float).tiny):
        i, j = np.unravel_index(np.argmax(np.abs(dense - dense.T)), dense.shape)
        raise CovarianceError(
            f"meta_V(V = {name}): V is not symmetric (max |V - V'| = {asym:.3g} at rows "
            f"({labels[i]!r}, {labels[j]!r}))."
        )
    dense = 0.5 * (dense + dense.T)
    diag = np.diag(dense).copy()
    bad = np.flatnonzero(diag < 0)
    if bad.size:
        raise CovarianceError(
            f"meta_V(V = {name}): the diagonal of V must be >= 0; row {labels[bad[0]]!r} has {diag[bad[0]]:g}."
        )
    offdiag = dense - np.diag(diag)
    if not np.any(offdiag):
        return KnownV("diagonal", name, diag)
    blocks = _blocks(dense)
    eigen_min, eigen_max, rank = _block_spectrum(dense, blocks)
    tol = max(n, 1) * 1e3 * np.finfo(float).eps * max(eigen_max, 0.0)
    if eigen_min < -tol or eigen_max <= 0:
        raise CovarianceError(
            f"meta_V(V = {name}): V is not positive semidefinite (smallest eigenvalue "
            f"{eigen_min:.3g}, largest {eigen_max:.3g})."
        )
    cond = float(eigen_max / eigen_min) if eigen_min > tol else float("inf")
    return KnownV(kind, name, diag, dense, tuple(blocks), rank, cond)


def _blocks(dense: np.ndarray) -> list[np.ndarray]:
    """Row positions of the connected components of V's non-zero pattern, each sorted."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    ncomp, labels = connected_components(csr_matrix(dense != 0), directed=False)
    order = np.argsort(labels, kind="stable")
    splits = np.flatnonzero(np.diff(labels[order])) + 1
    return [np.sort(b) for b in np.split(order, splits)]


def _block_spectrum(dense: np.ndarray, blocks: list[np.ndarray]) -> tuple[float, float, int]:
    lo, hi, eigs = np.inf, -np.inf, []
    for b in blocks:
        e = np.linalg.eigvalsh(dense[np.ix_(b, b)])
        eigs.append(e)
        lo = min(lo, float(e[0]))
        hi = max(hi, float(e[-1]))
    all_e = np.concatenate(eigs)
    rank = int(np.sum(all_e > max(len(all_e), 1) * np.finfo(float).eps * max(hi, 0.0)))
    return lo, hi, rank


def rows_text(labels: Any, positions: np.ndarray, limit: int = 10) -> str:
    """``row 'a'`` or ``3 rows: 'a', 'b', 'c'`` (the first ``limit`` labels, then ``...``)."""
    shown = ", ".join(repr(labels[i]) for i in positions[:limit])
    if len(positions) == 1:
        return f"row {shown}"
    return f"{len(positions)} rows: {shown}{', ...' if len(positions) > limit else ''}"


def null_directions(known_v: KnownV) -> list[tuple[np.ndarray, np.ndarray]]:
    """An orthonormal basis of the null space of V over the retained rows, each direction as
    (row positions, values) on its support: the unit vector of every row with a zero sampling
    variance (diagonal V), else the eigenvectors of each block with an eigenvalue at or
    below the rank tolerance of :class:`KnownV` (``n eps lambda_max``)."""
    n = len(known_v.diag)
    if known_v.is_diagonal:
        return [(np.array([i]), np.ones(1)) for i in np.flatnonzero(known_v.diag <= 0)]
    if known_v.rank is not None and known_v.rank == n:
        return []
    blocks = known_v.blocks if known_v.blocks is not None else (np.arange(n),)
    assert known_v.matrix is not None  # V is not diagonal (returned above)
    spectra = [np.linalg.eigh(known_v.matrix[np.ix_(b, b)]) for b in blocks]
    hi = max(float(e[-1]) for e, _ in spectra)
    tol = max(n, 1) * np.finfo(float).eps * max(hi, 0.0)
    return [(b, U[:, j]) for b, (e, U) in zip(blocks, spectra) for j in np.flatnonzero(e <= tol)]


def unrescued_rows(null: list[tuple[np.ndarray, np.ndarray]], random: Sequence[Any]) -> np.ndarray:
    """Rows of the combinations x of the ``null`` directions (V x = 0) that no random term
    gives variance: ``Z_r' x = 0`` for every term r (per level l and coefficient c,
    ``sum_{i in l} z_ic x_i = 0``).  Each term's covariance ``K (x) D`` is positive definite at
    every SD > 0 (|correlations| < 1), so these are exactly the combinations in which
    ``S = V + sum_r Z_r (K (x) D) Z_r'`` is singular whatever the random-effect SDs
    (``x'Sx = x'Vx + sum_r |(K (x) D)^(1/2) Z_r'x|^2``).  Solved per connected component of
    the graph linking directions to the levels their rows belong to (a small SVD each: no
    n x m matrix however many rows have zero variance).  ``random``: designs with
    ``level_index``, ``z`` and ``n_levels``."""
    if not null:
        return np.zeros(0, dtype=np.int64)
    if not random:
        return np.unique(np.concatenate([rows[np.abs(vals) > 1e-8] for rows, vals in null]))
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(null)
    offsets = np.cumsum([0] + [rd.n_levels for rd in random])
    one_row = np.array([len(rows) == 1 for rows, _ in null])
    src_parts: list[np.ndarray] = []
    dst_parts: list[np.ndarray] = []
    if one_row.all():  # a diagonal V: each direction is one row (many rows: no Python loop)
        row = np.array([rows[0] for rows, _ in null])
        src_parts = [np.arange(m)] * len(random)
        dst_parts = [m + offsets[r] + rd.level_index[row] for r, rd in enumerate(random)]
    else:
        for d, (rows, _) in enumerate(null):
            for r, rd in enumerate(random):
                levels = np.unique(rd.level_index[rows])
                src_parts.append(np.full(len(levels), d))
                dst_parts.append(m + offsets[r] + levels)
    src, dst = np.concatenate(src_parts), np.concatenate(dst_parts)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(m + offsets[-1],) * 2)
    _, label = connected_components(graph, directed=False)
    comps, first, size = np.unique(label[:m], return_index=True, return_counts=True)
    # a row alone in its component: rescued when some random coefficient of the row is not 0
    alone = first[(size == 1) & one_row[first]]
    alone_rows = np.array([null[j][0][0] for j in alone], dtype=np.int64)
    covered = np.zeros(len(alone), dtype=bool)
    for rd in random:
        covered |= np.any(rd.z[alone_rows] != 0, axis=1)
    out = [alone_rows[~covered]]
    for comp in comps[(size > 1) | ~one_row[first]]:
        members = np.flatnonzero(label[:m] == comp)
        support = np.unique(np.concatenate([null[j][0] for j in members]))
        N = np.zeros((len(support), len(members)))  # the component's directions on its rows
        for k, j in enumerate(members):
            N[np.searchsorted(support, null[j][0]), k] = null[j][1]
        pieces = []
        for rd in random:
            levels, at = np.unique(rd.level_index[support], return_inverse=True)
            for c in range(rd.z.shape[1]):
                M = np.zeros((len(levels), len(members)))
                np.add.at(M, at, rd.z[support, c:c + 1] * N)
                pieces.append(M)
        M = np.vstack(pieces)
        _, sv, Vt = np.linalg.svd(M, full_matrices=True)
        tol = max(M.shape) * np.finfo(float).eps * (float(sv[0]) if sv.size else 0.0)
        free = N @ Vt[int(np.sum(sv > tol)):].T
        if free.shape[1]:
            out.append(support[np.max(np.abs(free), axis=1) > 1e-8])
    return np.unique(np.concatenate(out))


def require_common_effect_covariance(known_v: KnownV, random: Sequence[Any], labels: Any) -> None:
    """``sigma ~ 0``: V and the random effects alone must make the responses' covariance
    positive definite (for positive SDs); otherwise some combination of rows has variance 0
    and the likelihood is degenerate (the fit used to return NaN reported as converged).
    Raises :class:`CovarianceError` naming the rows involved."""
    rows = unrescued_rows(null_directions(known_v), random)
    if rows.size == 0:
        return
    where = rows_text(labels, rows)
    if known_v.is_diagonal:
        what = f"{'a zero sampling variance' if len(rows) == 1 else 'zero sampling variances'} on {where}"
    else:
        what = f"V is singular (rank {known_v.rank} of {len(known_v.diag)}) on {where}"
    rescue = ""
    if random:
        terms = ", ".join(f"`{rd.term.text}`" for rd in random)
        whom = "this row" if len(rows) == 1 else "a combination of these rows"
        rescue = f", and the random effects ({terms}) give no variance to {whom}"
    raise CovarianceError(
        f"meta_V(V = {known_v.name}): with sigma ~ 0 (the common-effect model: no row-level "
        f"heterogeneity) the covariance of the responses is singular: {what}{rescue}. The "
        "likelihood is then degenerate (metafor's rma() refuses a zero sampling variance in a "
        "common-effect model too). Estimate the heterogeneity (`sigma ~ 1`), or correct or drop "
        "the row(s)."
    )
