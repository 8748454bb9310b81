"""Shared pieces of the plots: data columns of a fit, transforms, sizes, level order, Axes.

Nothing here computes a statistic of the model; the table functions of each plot do that
through the fit's public methods.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import DrmError

__all__ = ["resolve_transform", "fit_frame", "column_of", "level_order", "size_values",
           "marker_areas", "new_axes", "require_univariate", "effect_sizes_table"]

TransformArg = None | str | Callable[[np.ndarray], np.ndarray]

_TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "exp": (np.exp, "exp"),
    "tanh": (np.tanh, "tanh"),
    "percent": (lambda x: 100.0 * np.expm1(x), "percent change"),
}


def resolve_transform(transform: TransformArg) -> Callable[[np.ndarray], np.ndarray]:
    """The back-transformation applied to every drawn value: identity, exp, tanh, percent or a callable.

    ``"percent"`` is ``100 (exp(x) - 1)`` (lnRR to percent change); ``"tanh"`` turns Fisher z
    into r.  A callable must be increasing (interval ends stay in order).
    """
    if transform is None:
        return lambda x: np.asarray(x, dtype=np.float64)
    if callable(transform):
        return lambda x: np.asarray(transform(np.asarray(x, dtype=np.float64)), dtype=np.float64)
    if isinstance(transform, str) and transform in _TRANSFORMS:
        return _TRANSFORMS[transform][0]
    raise DrmError(f"transform must be None, 'exp', 'tanh', 'percent' or a callable, got {transform!r}.")


def require_univariate(fit: Any, plot: str) -> None:
    """Refuse a bivariate fit (its plots need per-response prediction intervals)."""
    from ..results.bivariate import BivariateFit

    if isinstance(fit, BivariateFit):
        raise DrmError(
            f"{plot}() draws univariate fits; this is a bivariate fit (two responses). Fit each "
            "response on its own (drm.fit with one mu formula) and draw that fit."
        )
    if not hasattr(fit, "design") or not hasattr(fit, "predict"):
        raise DrmError(f"{plot}() needs a fit from drm.fit(), got {type(fit).__name__}.")


def fit_frame(fit: Any) -> pd.DataFrame:
    """The retained rows of the columns the model read (index = the fit's row labels)."""
    frame = getattr(fit.design, "frame", None)
    if frame is None:
        raise DrmError("This fit keeps no copy of its data columns; refit with this drmpy version.")
    return frame


def column_of(fit: Any, name: str, data: Any = None) -> pd.Series:
    """Column ``name`` at the fit's retained rows: from ``data`` when given, else from the model's columns.

    ``data`` is the frame the model was fitted to (pandas or polars); rows are matched by the
    fit's row labels (pandas) or positions (polars), so a column the formulas do not use
    (study labels, sample sizes) can label or size the points.
    """
    labels = fit.design.row_labels
    if data is not None:
        if isinstance(data, pd.DataFrame):
            if name in data.columns:
                return data.loc[labels, name]
        else:
            from ..model import frames

            if name in frames.column_names(data):
                full = frames.as_pandas(data, [name])
                return full.loc[labels, name]
    frame = fit_frame(fit)
    if name in frame.columns:
        return frame[name]
    where = "the data given" if data is not None else "the model's columns"
    raise DrmError(
        f"Column `{name}` is not in {where} (the model read {', '.join(frame.columns)}); pass the "
        "data frame the model was fitted to as data= to use another column."
    )


def is_factor(column: pd.Series) -> bool:
    """A column drawn as categories: anything not numeric (strings, categoricals, booleans)."""
    return not (pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column))


def level_order(column: pd.Series) -> list:
    """Levels in categorical order (dtype categories that occur), else sorted values."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(column.dropna().unique())
        return [c for c in column.cat.categories if c in present]
    values = column.dropna().unique()
    try:
        return sorted(values)
    except TypeError:
        return list(values)


def size_values(fit: Any, size_by: str, data: Any = None) -> np.ndarray:
    """Per retained row, the value that sets a point's area: precision ``1/sqrt(v_i)`` or a column."""
    if size_by == "precision":
        return 1.0 / np.sqrt(fit.design.known_v.diag)
    column = column_of(fit, size_by, data)
    if is_factor(column):
        raise DrmError(f"size_by column `{size_by}` must be numeric, got dtype {column.dtype}.")
    return column.to_numpy(dtype=np.float64)


def marker_areas(values: np.ndarray, smallest: float = 6.0, largest: float = 110.0) -> np.ndarray:
    """Marker areas (points^2) linear in ``values`` between ``smallest`` and ``largest``."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(values.shape, smallest)
    lo, hi = np.min(values[finite]), np.max(values[finite])
    scaled = np.zeros_like(values) if hi == lo else (values - lo) / (hi - lo)
    return np.where(finite, smallest + (largest - smallest) * scaled, smallest)


def new_axes(ax: Any, figsize: tuple[float, float]):
    """``ax`` itself, or a new figure's single Axes when ``ax`` is None (every plot's rule)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def effect_sizes_table(fit: Any, mod: str | None = None, *, size_by: str = "precision",
                       transform: TransformArg = None, data: Any = None) -> pd.DataFrame:
    """One row per effect size the fit used: the points of orchard, forest, funnel and bubble plots.

    Columns: ``yi`` (response, back-transformed when ``transform`` is given), ``vi`` (known
    sampling variance, model scale), ``sei`` = ``sqrt(vi)``, ``size_value`` (precision
    ``1/sqrt(vi)`` or the ``size_by`` column), ``level`` (value of ``mod``; all ``"overall"``
    when None).  Index: the fit's row labels.
    """
    require_univariate(fit, "effect_sizes_table")
    tf = resolve_transform(transform)
    vi = np.asarray(fit.design.known_v.diag, dtype=np.float64)
    out = pd.DataFrame(
        {"yi": tf(fit.design.y), "vi": vi, "sei": np.sqrt(vi),
         "size_value": size_values(fit, size_by, data)},
        index=fit.design.row_labels,
    )
    if mod is None:
        out["level"] = "overall"
    else:
        out["level"] = column_of(fit, mod, data).to_numpy()
    return out
