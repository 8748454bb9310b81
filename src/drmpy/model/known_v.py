"""The known sampling (co)variance V of ``meta_V(V = name)``: resolve, subset, validate, classify.

A vector (length n) is a diagonal V of sampling variances.  A matrix (numpy n x n or
scipy.sparse) is subset by the retained rows and columns together; one whose
off-diagonal entries are all zero is treated as diagonal.  A matrix that falls apart
into independent blocks (studies) is evaluated block by block; the reported ``kind``
stays what the user gave (``dense`` or ``sparse``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import CovarianceError

__all__ = ["KnownV", "resolve_v", "finalize_v"]


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
        values = np.asarray(get_column(name))
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
