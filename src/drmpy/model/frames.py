"""Data-frame adapter: pandas as is, polars (or any narwhals-supported eager frame) column by column.

Only the columns a model uses are converted, into a new pandas DataFrame; the caller's
frame is never modified.  Categorical order is kept: pandas ``Categorical`` as is,
polars ``Enum`` with its declared categories.  A polars ``Categorical`` is ordered
lexically, as polars itself orders it.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..errors import DataError

__all__ = ["as_pandas", "column_names"]


def is_pandas(data: Any) -> bool:
    return isinstance(data, pd.DataFrame)


def column_names(data: Any) -> list[str]:
    """Column names of a pandas or narwhals-compatible frame."""
    if is_pandas(data):
        return [str(c) for c in data.columns]
    return list(_narwhals_frame(data).columns)


def _narwhals_frame(data: Any):
    import narwhals as nw

    try:
        return nw.from_native(data, eager_only=True)
    except TypeError as exc:
        raise DataError(
            f"`data` must be a pandas or polars DataFrame, got {type(data).__name__}."
        ) from exc


def as_pandas(data: Any, columns: Iterable[str]) -> pd.DataFrame:
    """A pandas frame with the named columns of ``data`` (a view-safe selection, never the original)."""
    columns = list(dict.fromkeys(columns))
    if is_pandas(data):
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise DataError(_missing_message(missing[0], data.columns))
        return data.loc[:, columns]
    import narwhals as nw

    frame = _narwhals_frame(data)
    out: dict[str, Any] = {}
    for name in columns:
        if name not in frame.columns:
            raise DataError(_missing_message(name, frame.columns))
        series = frame[name]
        dtype = series.dtype
        if dtype == nw.Enum:
            out[name] = pd.Categorical(series.to_numpy(), categories=list(dtype.categories))
        elif dtype == nw.Categorical:
            values = series.to_numpy()
            levels = sorted({v for v in values if v is not None and v == v})
            out[name] = pd.Categorical(values, categories=levels)
        else:
            out[name] = series.to_numpy()
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


def _missing_message(name: str, available: Iterable[Any]) -> str:
    avail = ", ".join(map(str, list(available)[:20]))
    return f"Column `{name}` is not in the data (columns: {avail})."


def is_numeric(values: np.ndarray | pd.Series) -> bool:
    dtype = getattr(values, "dtype", None)
    return dtype is not None and (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype))


def is_numeric_values(values: Any) -> bool:
    """True for numbers (a numeric pandas/numpy dtype, or an object array of numbers and missing
    values); False for text, booleans and mixtures.  Numbers stored as text are not numbers, as
    for a data column (the response, ``vi``): drmpy never converts them silently."""
    if isinstance(values, pd.Series):
        return is_numeric(values) or (values.dtype == object and is_numeric_values(values.to_numpy()))
    array = np.asarray(values)
    if array.dtype.kind in "iuf":
        return True
    if array.dtype.kind != "O":
        return False
    return all(v is None or v is pd.NA or (isinstance(v, (int, float, np.integer, np.floating))
                                           and not isinstance(v, (bool, np.bool_)))
               for v in array.reshape(-1))


def without_infinities(frame: pd.DataFrame, columns: Iterable[str]) -> np.ndarray:
    """Per row: True when no numeric column among ``columns`` holds +-inf (NaN is left to
    the missing-value test)."""
    ok = np.ones(len(frame), dtype=bool)
    for c in columns:
        col = frame[c]
        if is_numeric(col):
            vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
            ok &= ~np.isinf(vals)
    return ok
