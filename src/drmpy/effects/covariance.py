"""Sampling covariance matrices of dependent effect sizes (metafor's ``vcalc``; shared control groups).

Both functions return a scipy.sparse CSR matrix, block-diagonal by cluster, rows and
columns in data order, ready for ``meta_V(V = V)``.  Built with vectorised numpy: every
within-cluster pair of rows is enumerated once (sum of squared cluster sizes entries).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError, DrmWarning
from ..model.frames import is_numeric_values

__all__ = ["sampling_covariance", "shared_control_covariance"]


# ------------------------------------------------------------------------------------------
# columns


def _column(data: Any, spec: Any, arg: str, where: str, n: int | None = None) -> np.ndarray:
    """A column of ``data`` named by ``spec``, or ``spec`` itself as an array."""
    if isinstance(spec, str):
        if data is None:
            raise DataError(f"{where}: `{arg}` = '{spec}' names a column but no `data` was given.")
        if isinstance(data, pd.DataFrame):
            if spec not in data.columns:
                raise DataError(f"{where}: `{arg}` = '{spec}' is not a column of `data` "
                                f"(columns: {', '.join(map(str, data.columns[:20]))}).")
            column = data[spec]
            if isinstance(column, pd.DataFrame):
                raise DataError(f"{where}: `{arg}`: `data` has {column.shape[1]} columns named `{spec}`; "
                                "rename or drop the duplicates.")
            values = column.to_numpy()
        else:
            import narwhals as nw

            try:
                frame = nw.from_native(data, eager_only=True)
            except TypeError as exc:
                raise DataError(f"{where}: `data` must be a pandas or polars DataFrame, got {type(data).__name__}.") from exc
            if spec not in frame.columns:
                raise DataError(f"{where}: `{arg}` = '{spec}' is not a column of `data` "
                                f"(columns: {', '.join(frame.columns[:20])}).")
            values = frame[spec].to_numpy()
    else:
        values = np.asarray(spec)
    if values.ndim != 1:
        raise DataError(f"{where}: `{arg}` must be one-dimensional, got shape {values.shape}.")
    if n is not None and values.shape[0] != n:
        raise DataError(f"{where}: `{arg}` has {values.shape[0]} values, `vi` has {n}.")
    return values


def _numeric(values: np.ndarray, arg: str, where: str) -> np.ndarray:
    if not is_numeric_values(values):
        raise DataError(f"{where}: `{arg}` is not numeric (numbers stored as text or booleans are not converted).")
    try:
        if isinstance(values, pd.Series):
            return values.to_numpy(dtype=np.float64, na_value=np.nan)
        return pd.to_numeric(pd.Series(values), errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: `{arg}` is not numeric.") from exc


def _codes(values: np.ndarray, arg: str, where: str) -> np.ndarray:
    """Integer codes of a grouping variable; a missing value is an error (naming its row)."""
    try:
        codes, _ = pd.factorize(pd.Series(values), use_na_sentinel=True)
    except TypeError as exc:  # unhashable labels (lists, dicts)
        raise DataError(f"{where}: `{arg}` has values that cannot be compared as labels "
                        f"({_one_line(exc)}); give strings or numbers.") from exc
    if (codes < 0).any():
        raise DataError(f"{where}: `{arg}` has a missing value; first at row {int(np.argmax(codes < 0))}.")
    return codes


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _variances(data: Any, vi: Any, where: str) -> np.ndarray:
    """The sampling variances: at least one row, each >= 0 and finite or missing (NaN)."""
    v = _numeric(_column(data, vi, "vi", where), "vi", where)
    if v.shape[0] == 0:
        raise DataError(f"{where}: `vi` has no rows; there is no covariance matrix to build.")
    for bad, problem in ((v < 0, "must be >= 0"), (np.isinf(v), "must be finite (or missing)")):
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(f"{where}: `vi` {problem}; first at row {first} (value {v[first]:g}).")
    return v


def _within_cluster_pairs(cluster_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(i, j)`` of every ordered pair of rows in the same cluster (i == j included)."""
    order = np.argsort(cluster_codes, kind="stable")
    sizes = np.bincount(cluster_codes)
    size_of_row = sizes[cluster_codes[order]]               # cluster size, per sorted row
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    start_of_row = starts[cluster_codes[order]]
    total = int(size_of_row.sum())
    i_sorted = np.repeat(np.arange(order.size), size_of_row)
    first_of_run = np.repeat(np.cumsum(size_of_row) - size_of_row, size_of_row)
    j_sorted = np.repeat(start_of_row, size_of_row) + (np.arange(total) - first_of_run)
    return order[i_sorted], order[j_sorted]


def _to_csr(i: np.ndarray, j: np.ndarray, values: np.ndarray, n: int) -> sp.csr_matrix:
    out = sp.csr_matrix((values, (i, j)), shape=(n, n))
    out.sort_indices()
    return out


# ------------------------------------------------------------------------------------------
# vcalc


def sampling_covariance(data: Any = None, vi: Any = "vi", cluster: Any = "study", rho: float = 0.5,
                        obs: Any = None, time: Any = None, phi: float | None = None) -> sp.csr_matrix:
    """Sampling covariance of effect sizes that share a cluster, as metafor's ``vcalc``.

    ``V[i, j] = sqrt(vi_i vi_j) R[i, j]`` for rows i and j of the same cluster (0 between
    clusters), with ``R[i, i] = 1`` and, for i != j,
    ``R[i, j] = (1 if obs_i == obs_j else rho) * (phi ** |time_i - time_j| if time is given else 1)``.

    This is ``vcalc(vi, cluster, obs = obs, rho = rho)`` and, with ``time`` and ``phi``,
    ``vcalc(vi, cluster, obs = obs, rho = rho, time1 = time, phi = phi)``.  ``obs=None`` means
    every row is its own outcome (``obs`` = row number): rows of a cluster correlate at
    ``rho``.  (metafor's own default ``obs`` is the same for every row, which correlates the
    rows of a cluster at 1.)

    Parameters
    ----------
    data
        A pandas or polars frame (None when every argument is an array).
    vi, cluster, obs, time
        Column names of ``data`` or arrays: sampling variances, cluster (study) labels,
        outcome labels (rows with the same ``obs`` in a cluster correlate at 1 before the time
        factor), and numeric time points.
    rho
        The within-cluster correlation of different outcomes, in [-1, 1].
    phi
        The autocorrelation per unit of time, in [-1, 1]; required with ``time``.

    Returns
    -------
    scipy.sparse.csr_matrix, n x n, rows and columns in data order.  A missing ``vi`` gives
    NaN in its row and column within its cluster (as ``vcalc``); the fit drops such rows
    when their effect size is missing too.

    Examples
    --------
    >>> import drmpy as drm, pandas as pd
    >>> d = pd.DataFrame({"study": [1, 1, 2], "vi": [0.04, 0.09, 0.01]})
    >>> drm.sampling_covariance(d, rho=0.5).toarray()
    array([[0.04, 0.03, 0.  ],
           [0.03, 0.09, 0.  ],
           [0.  , 0.  , 0.01]])
    """
    where = "sampling_covariance"
    v = _variances(data, vi, where)
    n = v.shape[0]
    rho = _correlation(rho, "rho", where)
    cluster_codes = _codes(_column(data, cluster, "cluster", where, n), "cluster", where)
    i, j = _within_cluster_pairs(cluster_codes)
    off = i != j
    r = np.ones(i.shape[0])
    if obs is None:
        r[off] = rho
    else:
        obs_codes = _codes(_column(data, obs, "obs", where, n), "obs", where)
        r[off] = np.where(obs_codes[i[off]] == obs_codes[j[off]], 1.0, rho)
    if time is not None:
        if phi is None:
            raise DataError(f"{where}: give `phi` (the autocorrelation per unit of time) with `time`.")
        phi = _correlation(phi, "phi", where)
        t = _numeric(_column(data, time, "time", where, n), "time", where)
        if np.isnan(t).any():
            raise DataError(f"{where}: `time` has a missing value; first at row {int(np.argmax(np.isnan(t)))}.")
        lag = np.abs(t[i[off]] - t[j[off]])
        r[off] *= np.where(lag == 0, 1.0, phi ** lag)
    elif phi is not None:
        raise DataError(f"{where}: `phi` needs `time` (the time point of each row).")
    sd = np.sqrt(v)
    values = sd[i] * sd[j] * r
    _warn_missing_variances(v, where)
    # without time, rho >= 0 gives R = rho J + (1 - rho) (same-obs blocks of ones): PSD, no check
    if rho < 0 or time is not None:
        _warn_not_psd(cluster_codes, _labels(data, cluster), i, j, values, where,
                      hint=f"with rho = {rho:g}, a cluster of k different outcomes needs rho >= -1/(k - 1)"
                      if obs is None and time is None else "check rho, obs and time")
    return _to_csr(i, j, values, n)


def _rows_text(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return ("row " if rows.size == 1 else "rows ") + shown + (f", ... ({rows.size} in all)" if rows.size > limit else "")


def _labels(data: Any, cluster: Any) -> np.ndarray | None:
    """The cluster labels in code order (``pd.factorize``'s uniques), to name a cluster in a message."""
    values = _column(data, cluster, "cluster", "sampling_covariance")
    return np.asarray(pd.factorize(pd.Series(values))[1], dtype=object)


def _warn_missing_variances(v: np.ndarray, where: str) -> None:
    """A missing ``vi`` makes its row and column of V NaN: drm.fit refuses such a V unless the row
    is dropped (its effect size missing too), so say which rows."""
    missing = np.flatnonzero(np.isnan(v))
    if missing.size:
        warnings.warn(f"{where}: `vi` is missing at {_rows_text(missing)}; their rows and columns of V are "
                      "NaN (drm.fit drops such a row only when its effect size is missing too, and "
                      "refuses a V with NaN among the rows it keeps).", DrmWarning, stacklevel=3)


def _warn_not_psd(codes: np.ndarray, labels: np.ndarray | None, i: np.ndarray, j: np.ndarray,
                  values: np.ndarray, where: str, hint: str) -> None:
    """Warn when a cluster's block of V has a negative eigenvalue (drm.fit would refuse V).

    Clusters of equal size are checked together: their blocks are scattered into one
    (clusters, k, k) array and numpy's batched ``eigvalsh`` takes them all at once.  Blocks
    with a missing variance are skipped (already warned about).
    """
    sizes = np.bincount(codes)
    order = np.argsort(codes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    position = rank - starts[codes]                      # a row's place within its cluster
    bad_clusters, bad_min = [], []
    for k in np.unique(sizes[sizes > 1]):
        members = np.flatnonzero(sizes == k)
        slot = np.full(sizes.size, -1)
        slot[members] = np.arange(members.size)
        in_group = slot[codes[i]] >= 0
        blocks = np.zeros((members.size, k, k))
        blocks[slot[codes[i[in_group]]], position[i[in_group]], position[j[in_group]]] = values[in_group]
        finite = np.isfinite(blocks).all(axis=(1, 2))
        if not finite.any():
            continue
        eig = np.linalg.eigvalsh(blocks[finite])
        scale = np.abs(np.diagonal(blocks[finite], axis1=1, axis2=2)).max(axis=1)
        negative = eig[:, 0] < -1e-10 * np.maximum(scale, np.finfo(float).tiny)
        bad_clusters.append(members[finite][negative])
        bad_min.append(eig[negative, 0])
    if not bad_clusters or not sum(b.size for b in bad_clusters):
        return
    clusters = np.concatenate(bad_clusters)
    smallest = np.concatenate(bad_min)
    first = int(np.argmin(clusters))
    code = int(clusters[first])
    rows = np.sort(np.flatnonzero(codes == code))
    unit = "clusters" if labels is not None else "shared control groups"
    name = f"cluster {labels[code]!r}" if labels is not None else "the group"
    n_clusters = int((sizes > 0).sum())
    warnings.warn(f"{where}: V is not positive semidefinite in {clusters.size} of {n_clusters} {unit}: "
                  f"{name} ({_rows_text(rows)}; smallest eigenvalue {smallest[first]:.3g}); "
                  f"drm.fit refuses such a V ({hint}).", DrmWarning, stacklevel=3)


def _correlation(value: Any, arg: str, where: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: `{arg}` must be a number in [-1, 1], got {value!r}.") from exc
    if not (-1.0 <= value <= 1.0):
        raise DataError(f"{where}: `{arg}` must be in [-1, 1], got {value:g}.")
    return value


# ------------------------------------------------------------------------------------------
# shared control groups


def shared_control_covariance(data: Any, measure: str, cluster: Any = "study", control_id: Any = "control",
                              *, yi: Any = "yi", vi: Any = "vi", m2i: Any = "m2i", sd2i: Any = "sd2i",
                              n1i: Any = "n1i", n2i: Any = "n2i") -> sp.csr_matrix:
    """Sampling covariance of effect sizes that compare several groups with one shared control group.

    Rows of the same ``cluster`` with the same ``control_id`` share their control group
    (columns ``m2i``, ``sd2i``, ``n2i``: the control group's mean, SD and size, equal on those
    rows); their covariance is

    * ``ROM`` (log response ratio; Lajeunesse 2011): ``sd2i^2 / (n2i m2i^2)``;
    * ``SMD`` (Gleser and Olkin 2009, eq. 19.19): ``1 / n2i + yi_i yi_j / (2 N)``, with ``N`` the
      total sample size of the groups sharing that control (``n2i`` plus every ``n1i``).

    The diagonal is ``vi`` (e.g. from :func:`drmpy.effect_size` with the same measure); rows
    with different controls, or in different clusters, are uncorrelated.

    Parameters
    ----------
    data
        A pandas or polars frame holding the columns named below.
    measure
        ``"ROM"`` or ``"SMD"``.
    cluster, control_id
        Study labels and, within a study, the label of each row's control group.
    yi, vi, m2i, sd2i, n1i, n2i
        Column names (or arrays): effect sizes and variances, the control group's mean, SD
        and size, the treatment group's size.  ``ROM`` uses ``vi, m2i, sd2i, n2i``; ``SMD`` uses
        ``yi, vi, n1i, n2i``.

    Returns
    -------
    scipy.sparse.csr_matrix, n x n, rows and columns in data order.
    """
    where = f"shared_control_covariance('{measure}')"
    if measure not in ("ROM", "SMD"):
        raise DataError(f"shared_control_covariance: `measure` must be 'ROM' or 'SMD', got {measure!r}.")
    v = _variances(data, vi, where)
    n = v.shape[0]
    cluster_codes = _codes(_column(data, cluster, "cluster", where, n), "cluster", where)
    control_codes = _codes(_column(data, control_id, "control_id", where, n), "control_id", where)
    group = _codes(cluster_codes.astype(np.int64) * (int(control_codes.max(initial=0)) + 1) + control_codes,
                   "control_id", where)
    n_control = _numeric(_column(data, n2i, "n2i", where, n), "n2i", where)
    _same_within(group, n_control, "n2i", where)
    i, j = _within_cluster_pairs(group)
    off = i != j
    if measure == "ROM":
        m_control = _numeric(_column(data, m2i, "m2i", where, n), "m2i", where)
        sd_control = _numeric(_column(data, sd2i, "sd2i", where, n), "sd2i", where)
        _same_within(group, m_control, "m2i", where)
        _same_within(group, sd_control, "sd2i", where)
        shared = sd_control**2 / (n_control * m_control**2)
        cov = shared[i[off]]
    else:
        y = _numeric(_column(data, yi, "yi", where, n), "yi", where)
        n_treat = _numeric(_column(data, n1i, "n1i", where, n), "n1i", where)
        total = np.bincount(group, weights=n_treat)[group] + n_control
        cov = 1.0 / n_control[i[off]] + y[i[off]] * y[j[off]] / (2.0 * total[i[off]])
    values = np.empty(i.shape[0])
    values[off] = cov
    values[~off] = v[i[~off]]
    _warn_missing_variances(v, where)
    _warn_not_psd(group, None, i, j, values, where, hint="check the control groups' summaries")
    return _to_csr(i, j, values, n)


def _same_within(group: np.ndarray, values: np.ndarray, arg: str, where: str) -> None:
    """The control group's summaries must agree on every row that shares it."""
    order = np.argsort(group, kind="stable")
    g, x = group[order], values[order]
    same_group = g[1:] == g[:-1]
    differs = same_group & ~((x[1:] == x[:-1]) | (np.isnan(x[1:]) & np.isnan(x[:-1])))
    if differs.any():
        k = int(np.argmax(differs))
        raise DataError(f"{where}: `{arg}` differs between rows {int(order[k])} and {int(order[k + 1])}, "
                        "which share a control group; a shared control has one value.")
