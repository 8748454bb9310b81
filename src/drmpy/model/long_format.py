"""Long-format multivariate data (one row per outcome, as metafor holds them) -> bivariate input.

``long_to_bivariate`` builds the one-row-per-study frame and the row-paired 2n x 2n
sampling covariance that ``drm.fit(Formula(mu1=..., mu2=...))`` takes.  A study that
reports one outcome gets a missing value for the other, so the fit keeps its univariate
marginal: the same model as metafor's
``rma.mv(yi, V, mods = ~ outcome - 1, random = ~ outcome | study, struct = "UN")``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import frames
from ..errors import CovarianceError, DataError

__all__ = ["long_to_bivariate"]


def long_to_bivariate(data: Any, *, y: str, outcome: str, study: str, V: Any = None, vi: str | None = None,
                      outcomes: Sequence[Any] | None = None) -> tuple[pd.DataFrame, Any]:
    """Reshape long data to one row per study and a row-paired sampling covariance.

    Parameters
    ----------
    data:
        pandas or polars frame, one row per (study, outcome).  Never modified.
    y, outcome, study:
        Column names of the effect size, the outcome label and the study label.
    V, vi:
        The known sampling covariance of the long rows: a (m, m) matrix (numpy or
        scipy.sparse, rows in the order of ``data``; it may correlate outcomes within and
        across studies), or a column ``vi`` of sampling variances (no covariances).
    outcomes:
        The two outcome labels, in the order that makes them response 1 and 2.  Default: the
        two labels in the data, sorted.  Rows of other outcomes are excluded (say so here).

    Returns
    -------
    (wide, V2):
        ``wide`` has one row per study (in order of first appearance) with columns
        ``study``, ``<y>1`` and ``<y>2`` (NaN where the study lacks that outcome), every other
        column that is constant within each study as is, and columns that vary between a
        study's outcomes as ``<name>1``, ``<name>2``.  ``V2`` is the (2n, 2n) row-paired matrix
        (``y1`` of study 1, ``y2`` of study 1, ...) with NaN variances for absent outcomes;
        scipy.sparse CSR unless ``V`` was a dense array.
    """
    if (V is None) == (vi is None):
        raise DataError("long_to_bivariate: give exactly one of V= (a matrix) and vi= (a column).")
    names = frames.column_names(data)
    for role, col in (("y", y), ("outcome", outcome), ("study", study)) + ((("vi", vi),) if vi else ()):
        if col not in names:
            raise DataError(f"long_to_bivariate: {role} column `{col}` is not in the data.")
    frame = frames.as_pandas(data, names).reset_index(drop=True)
    m = len(frame)
    if frame[study].isna().any() or frame[outcome].isna().any():
        col = study if frame[study].isna().any() else outcome
        row = int(np.flatnonzero(frame[col].isna().to_numpy())[0])
        raise DataError(f"long_to_bivariate: `{col}` is missing at row {row}.")
    labels = list(pd.unique(frame[outcome]))
    if outcomes is None:
        if len(labels) != 2:
            raise DataError(
                f"long_to_bivariate: `{outcome}` has {len(labels)} labels ({', '.join(map(str, labels[:6]))}); "
                "a bivariate model needs two: choose them with outcomes=(a, b)."
            )
        outcomes = sorted(labels, key=str)
    outcomes = list(outcomes)
    if len(outcomes) != 2 or outcomes[0] == outcomes[1]:
        raise DataError(f"long_to_bivariate: outcomes must be two different labels, got {outcomes!r}.")
    for o in outcomes:
        if o not in labels:
            raise DataError(f"long_to_bivariate: outcome {o!r} does not occur in `{outcome}`.")
    use = frame[outcome].isin(outcomes).to_numpy()
    k = np.where(frame[outcome].to_numpy() == outcomes[0], 0, 1)
    order = pd.unique(frame[study].to_numpy()[use])  # first appearance
    rank = {s: i for i, s in enumerate(order)}
    pos = np.full(m, -1)
    pos[use] = [rank[s] for s in frame[study].to_numpy()[use]]
    n = len(order)
    entry = np.where(use, 2 * pos + k, -1)
    taken = entry[use]
    dup = pd.Series(taken).duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(use)[np.flatnonzero(dup)[0]])
        raise DataError(
            f"long_to_bivariate: study {_plain(frame[study][row])!r} has more than one row for outcome "
            f"{_plain(frame[outcome][row])!r} (row {row})."
        )

    wide = pd.DataFrame({study: order})
    sub = frame.loc[use]
    p = pos[use]
    kk = k[use]
    for col in names:
        if col in (study, outcome):
            continue
        values = sub[col]
        constant = col != y and _constant_within(values, p)
        if constant:
            first = values.groupby(p, sort=True).first()
            wide[col] = first.reindex(range(n)).to_numpy()
        else:
            for j in (0, 1):
                out = pd.Series([np.nan] * n, dtype=values.dtype if values.dtype.kind == "f" else object)
                sel = kk == j
                out.iloc[p[sel]] = values.to_numpy()[sel]
                if values.dtype.kind in "if":
                    out = out.astype(float)
                wide[f"{col}{j + 1}"] = out.to_numpy()

    V2 = _pair_matrix(frame, V, vi, use, entry, n, m)
    return wide, V2


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _constant_within(values: pd.Series, group: np.ndarray) -> bool:
    df = pd.DataFrame({"v": values.to_numpy(), "g": group})
    counts = df.dropna().groupby("g")["v"].nunique()
    return bool((counts <= 1).all())


def _pair_matrix(frame: pd.DataFrame, V: Any, vi: str | None, use: np.ndarray, entry: np.ndarray, n: int, m: int):
    import scipy.sparse as sp

    missing_diag = np.setdiff1d(np.arange(2 * n), entry[use])
    if vi is not None:
        v = frame[vi].to_numpy(dtype=np.float64)[use]
        rows = np.concatenate([entry[use], missing_diag])
        vals = np.concatenate([v, np.full(len(missing_diag), np.nan)])
        return sp.csr_matrix((vals, (rows, rows)), shape=(2 * n, 2 * n))
    dense = not sp.issparse(V)
    if not dense:
        M = sp.coo_matrix(V)
    else:
        M = np.asarray(V, dtype=np.float64)
    if M.shape != (m, m):
        raise CovarianceError(f"long_to_bivariate: V has shape {M.shape}; the long data have {m} rows.")
    if dense:
        idx = np.flatnonzero(use)
        out = np.zeros((2 * n, 2 * n))
        out[np.ix_(entry[idx], entry[idx])] = M[np.ix_(idx, idx)]
        out[missing_diag, missing_diag] = np.nan
        return out
    keep = use[M.row] & use[M.col]
    rows = np.concatenate([entry[M.row[keep]], missing_diag])
    cols = np.concatenate([entry[M.col[keep]], missing_diag])
    vals = np.concatenate([M.data[keep], np.full(len(missing_diag), np.nan)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(2 * n, 2 * n))
