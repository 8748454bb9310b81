"""Shared pieces of the plots: data columns of a fit, transforms, sizes, level order, Axes.

Nothing here computes a statistic of the model; the table functions of each plot do that
through the fit's public methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from ..errors import DrmError

__all__ = ["resolve_transform", "fit_frame", "column_of", "level_order", "size_values",
           "marker_areas", "new_axes", "require_univariate", "effect_sizes_table", "TableSettings",
           "tag_table", "table_settings", "effect_label", "transform_name", "size_legend",
           "interval_legend", "keep_legend", "legends_of"]

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


def transform_name(transform: TransformArg) -> str | None:
    """A short name of ``transform`` for labels: None, the string itself, or a callable's name."""
    if transform is None or isinstance(transform, str):
        return transform
    name = getattr(transform, "__name__", None)
    return None if name in (None, "<lambda>") else str(name)


def effect_label(response: str | None, transform: TransformArg, *, residual: bool = False) -> str:
    """Default axis label of the effect-size scale: the response's name and the back-transform.

    ``yi`` -> ``"yi"``; with ``"exp"`` -> ``"exp(yi)"``, ``"tanh"`` -> ``"tanh(yi)"`` (Fisher z
    to r), ``"percent"`` -> ``"100 (exp(yi) - 1), %"``; ``residual`` prefixes ``"Residual of"``.
    """
    base = response or "effect size"
    if residual:
        base = f"residual of {base}"
    if transform is None:
        text = base
    elif transform == "percent":
        text = f"100 (exp({base}) - 1), %"
    else:
        name = transform_name(transform)
        text = f"{name}({base})" if name else f"{base}, back-transformed"
    return text[0].upper() + text[1:] if residual else text


SETTINGS_KEY = "drmpy"


@dataclass(frozen=True)
class TableSettings:
    """Which plot table a frame is and the settings that changed its numbers.

    Kept in ``DataFrame.attrs[SETTINGS_KEY]``: pandas carries ``attrs`` through copies, row
    selection, sorting, ``assign``, ``round``, ``reset_index`` and concatenating pieces of the
    same table, but drops them when a new frame is built from it (``pd.DataFrame(table)``, a CSV
    round trip, ``concat`` with a foreign frame).  A drawing function never falls back to its own
    defaults for these values: :func:`table_settings` raises a :class:`DrmError` instead.
    """

    kind: str
    values: tuple[tuple[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def tag_table(table: pd.DataFrame, kind: str, **values: Any) -> pd.DataFrame:
    """Store ``kind`` and ``values`` (level, transform, ...) on ``table`` (in place) and return it."""
    table.attrs[SETTINGS_KEY] = TableSettings(kind, tuple(values.items()))
    return table


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return bool(np.isclose(float(a), float(b), rtol=0.0, atol=1e-12))
        except (TypeError, ValueError):
            return False
    if isinstance(a, tuple) or isinstance(b, tuple):
        return tuple(a) == tuple(b) if a is not None and b is not None else a is b
    return a is b or a == b


_DRAWN_BY = {"ranef": "ranef_plot"}  # table kinds whose drawing function is not named as the kind


def table_settings(table: Any, kind: str, *, columns: Iterable[str] = (),
                   given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings of a ``kind`` table (made by ``{kind}_table``), checked before drawing it.

    Raises :class:`DrmError` when ``table`` is not a DataFrame, lacks one of ``columns``, has
    lost its settings (see :class:`TableSettings`), is another plot's table, or was computed
    with a setting that differs from one passed to the drawing function (``given``: name ->
    value, None = not passed), since drawing would then mix two scales or levels.
    """
    draw = _DRAWN_BY.get(kind, kind)
    if not isinstance(table, pd.DataFrame):
        raise DrmError(f"{draw}() draws a fit or a {kind}_table() frame, got {type(table).__name__}.")
    settings = table.attrs.get(SETTINGS_KEY)
    if not isinstance(settings, TableSettings):
        raise DrmError(
            f"{draw}(): this table carries no drmpy settings (level, transform, ...) in "
            f"DataFrame.attrs; pandas drops them when a new frame is built from the table (for "
            f"example pd.DataFrame(table), pd.concat with another frame, or a CSV round trip). "
            f"Recompute it with {kind}_table(fit, ...) and edit that frame, or draw the fit.")
    if settings.kind != kind:
        raise DrmError(f"{draw}() was given a {settings.kind}_table() frame; draw it with "
                       f"{_DRAWN_BY.get(settings.kind, settings.kind)}() or compute {kind}_table(fit, ...).")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DrmError(f"{draw}(): the table has no column {', '.join(f'`{c}`' for c in missing)} "
                       f"(columns: {', '.join(map(str, table.columns))}); draw a {kind}_table() frame.")
    values = settings.as_dict()
    for name, value in (given or {}).items():
        if value is None:
            continue
        if name not in values:
            raise DrmError(f"{draw}(): {name}= changes the table's numbers; pass it to "
                           f"{kind}_table(), not when drawing a table.")
        if not _same(values[name], value):
            raise DrmError(
                f"{draw}(): the table was computed with {name}={values[name]!r}, but {name}={value!r} "
                f"was passed; drawing would mix the two. Recompute the table with "
                f"{kind}_table(fit, {name}={value!r}, ...) or leave {name} out.")
    return values


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
        from ..model import frames

        if name in frames.column_names(data):
            # by row position, as every later stage reads the fitted data (an index with
            # repeated labels, from pd.concat without ignore_index, is no obstacle)
            from ..bias.refit import retained_values

            values = retained_values(fit, name, "data", data=data)
            dtype = frames.as_pandas(data, [name])[name].dtype
            if isinstance(dtype, pd.CategoricalDtype):  # keep the level order (subgroup order)
                values = pd.Categorical(values, dtype=dtype)
            return pd.Series(values, index=labels, name=name)
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
    return tag_table(out, "effect_sizes", transform=transform, size_by=size_by, moderator=mod,
                     response=fit.formula.response)


def size_legend(ax: Any, values: np.ndarray, title: str, *, smallest: float = 6.0, largest: float = 110.0,
                right: float | None = None):
    """A legend of three round values of ``values`` drawn at their marker areas, above the right
    of the Axes (outside the data region), or, with ``right`` (a height in axes fraction), in
    one column right of the Axes; added beside any legend already there."""
    from matplotlib.lines import Line2D

    from matplotlib.ticker import MaxNLocator

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    for bins in (4, 6, 8):  # three or more round values inside the data's range
        ticks = np.asarray(MaxNLocator(nbins=bins).tick_values(lo, hi))
        shown = ticks[(ticks >= lo) & (ticks <= hi)]
        if shown.size >= 3:
            break
    if shown.size < 2:
        shown = np.array([lo, hi])
    areas = marker_areas(np.concatenate([finite, shown]), smallest, largest)[finite.size:]
    handles = [Line2D([], [], linestyle="", marker="o", markersize=np.sqrt(a), markerfacecolor="0.6",
                      markeredgecolor="0.2", alpha=0.7) for a in areas]
    keep_legend(ax)
    place = (dict(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(shown)) if right is None
             else dict(loc="upper left", bbox_to_anchor=(1.01, right), ncol=1, alignment="left"))
    return ax.legend(handles, [f"{v:g}" for v in shown], title=title, **place, frameon=False, fontsize=8,
                     title_fontsize=8, borderaxespad=0.2, handletextpad=0.2, columnspacing=0.8)


def interval_legend(ax: Any, level: float, *, title: str | None = None, mean: str = "mean"):
    """Legend above the left of the Axes: the white mean point, the thick confidence interval
    and the thin prediction interval as orchard and caterpillars draw them."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker="o", markersize=7, markerfacecolor="white",
                      markeredgecolor="0.1", markeredgewidth=1.5),
               Line2D([], [], color="0.1", linewidth=4.5, solid_capstyle="butt"),
               Line2D([], [], color="0.1", linewidth=1.2, solid_capstyle="butt")]
    labels = [mean, f"{level:.0%} CI (thick)", f"{level:.0%} PI (thin)"]
    keep_legend(ax)
    return ax.legend(handles, labels, title=title, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                     ncol=3, frameon=False, fontsize=8, title_fontsize=8, borderaxespad=0.2,
                     handlelength=1.8, handletextpad=0.6, columnspacing=1.2, alignment="left")


def keep_legend(ax: Any) -> None:
    """Keep the Axes' current legend when another is made (``ax.legend()`` replaces it).

    Kept as an extra artist, unclipped so that the layout engine reserves room for it outside
    the Axes as it does for the current legend."""
    legend = ax.get_legend()
    if legend is not None:
        ax.add_artist(legend)
        legend.set_clip_on(False)


def legends_of(ax: Any) -> list:
    """Every legend drawn on ``ax`` (the current one and those kept with ``add_artist``)."""
    from matplotlib.legend import Legend

    return [a for a in ax.get_children() if isinstance(a, Legend)]


def points_settings(points: pd.DataFrame, plot: str, table_transform: Any, columns: tuple[str, ...]) -> dict:
    """Settings of an ``effect_sizes_table`` drawn over another plot's table, after checking
    that both were computed on the same transformed scale."""
    settings = table_settings(points, "effect_sizes", columns=columns)
    if settings["transform"] != table_transform:
        raise DrmError(f"{plot}: the points were computed with transform={settings['transform']!r} "
                       f"and the table with {table_transform!r}; compute both with the same transform.")
    return settings
