"""Content hashes of columns and arrays, for the design caches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["hash_array", "hash_object", "hash_column"]


def hash_array(h, values: Any) -> None:
    arr = np.asarray(values)
    if arr.dtype == object:
        # pandas hashes str objects in C; only other objects are converted to str first
        # (converting a million strings costs more than hashing them)
        try:
            arr = pd.util.hash_array(arr, categorize=False)
        except TypeError:
            arr = pd.util.hash_array(arr.astype(str), categorize=False)
    h.update(str(arr.dtype).encode())
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())


def hash_object(h, obj: Any) -> None:
    import scipy.sparse as sp

    if sp.issparse(obj):
        m = obj.tocsr()
        for part in (m.data, m.indices, m.indptr):
            hash_array(h, part)
    elif isinstance(obj, pd.DataFrame):
        hash_array(h, obj.to_numpy())
        hash_array(h, np.asarray([str(i) for i in obj.index], dtype=object))
        hash_array(h, np.asarray([str(i) for i in obj.columns], dtype=object))
    else:
        hash_array(h, obj)


def hash_column(h, series: pd.Series) -> None:
    """Add a pandas column (values, and categories for a categorical) to hash ``h``."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        hash_array(h, series.cat.codes.to_numpy())
        hash_array(h, np.asarray([str(x) for x in series.cat.categories], dtype=object))
    else:
        hash_array(h, series.to_numpy())
