"""Bubble plot: effect sizes against a continuous moderator with the fitted mean and its bands."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import DrmError
from ._common import (points_settings, TransformArg, column_of, effect_label, effect_sizes_table, is_factor,
                      keep_legend, level_order, marker_areas, new_axes, require_univariate, resolve_transform,
                      size_legend, table_settings, tag_table)
from .marginal_means import marginal_means, model_variables

__all__ = ["bubble_table", "bubble"]

_BANDS = ("estimate", "conf_low", "conf_high", "pred_low", "pred_high")


def bubble_table(fit: Any, mod: str, level: float = 0.95, *, by: str | None = None, n: int = 101,
                 transform: TransformArg = None, test: str = "z", vcov: str = "observed",
                 data: Any = None) -> pd.DataFrame:
    """The fitted mean line over ``n`` values of ``mod`` (its observed range), with its bands.

    One row per grid value: ``mod`` (the moderator value), ``estimate``, ``conf_low``,
    ``conf_high`` (confidence band of the mean) and ``pred_low``, ``pred_high`` (prediction
    band for a new study's true effect; it follows ``sigma(x)`` and ``sd(g)(x)`` when those
    depend on ``mod``).  ``by``: a categorical second moderator; when the model uses it, one
    line per level (column ``by``), else the table has one line and ``by`` only colours the
    points.  Other predictors are marginalised as in :func:`orchard_table` (their names are
    the setting ``averaged_over``); values come from ``fit.predict(..., interval=...)`` and
    are back-transformed by ``transform``.
    """
    require_univariate(fit, "bubble_table")
    column = column_of(fit, mod, data)
    if is_factor(column):
        raise DrmError(f"bubble: moderator `{mod}` must be numeric (dtype {column.dtype}); "
                       "use orchard() for a categorical moderator.")
    values = column.to_numpy(dtype=np.float64)
    grid = np.linspace(np.nanmin(values), np.nanmax(values), int(n))
    used = model_variables(fit)
    split = False
    if by is not None:
        by_column = column_of(fit, by, data)
        if not is_factor(by_column):
            raise DrmError(f"bubble: by= colours the points by a categorical moderator; `{by}` is "
                           f"numeric (dtype {by_column.dtype}).")
        split = by in used
    if split:
        levels = level_order(by_column)
        settings = pd.DataFrame({mod: np.tile(grid, len(levels)),
                                 by: pd.Series(np.repeat(np.asarray(levels, dtype=object), len(grid)),
                                               dtype=by_column.dtype)})
    else:
        settings = pd.DataFrame({mod: grid})
    means = marginal_means(fit, settings, level=level, test=test, vcov=vcov)
    tf = resolve_transform(transform)
    table = pd.DataFrame({"mod": settings[mod].to_numpy()})
    if split:
        table["by"] = settings[by].to_numpy()
    for c in _BANDS:
        table[c] = tf(means[c].to_numpy())
    averaged_over = tuple(v for v in used if v not in (mod, by))
    return tag_table(table, "bubble", level=float(level), transform=transform, moderator=mod, by=by,
                     split=split, averaged_over=averaged_over, test=test, vcov=vcov,
                     response=fit.formula.response, k=int(fit.nobs))


def bubble(fit: Any, *, mod: str | None = None, by: str | None = None, level: float | None = None,
           transform: TransformArg = None, size_by: str = "precision", test: str | None = None,
           vcov: str | None = None, data: Any = None, points: pd.DataFrame | None = None,
           palette: Any = None, xlab: str | None = None, ylab: str | None = None, legend: bool = True,
           k_label: bool = True, ax: Any = None, **kwargs: Any):
    """Bubble plot: points (area by ``size_by``) at (moderator, effect size), the fitted mean
    line, its confidence band (shaded) and prediction band (dashed lines).

    ``fit``: a fit, or a :func:`bubble_table` frame (then ``points``, an effect-size table
    with a ``mod`` column, and a ``by`` column when the table has ``by``, adds the points).
    ``by``: a categorical second moderator; points are coloured by its levels (``palette``:
    one colour per level) and, when the model uses it, each level gets its own line and
    bands.  The legend above the Axes is titled ``k = ... effect sizes`` (``k_label``) and says
    when the line is averaged over other predictors; the point sizes and the levels of ``by``
    are explained right of the Axes.  ``kwargs`` style the points.
    """
    given = {"moderator": mod, "by": by, "level": level, "transform": transform, "test": test,
             "vcov": vcov}
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        require_univariate(fit, "bubble")
        if mod is None:
            raise DrmError("bubble: name the moderator, e.g. bubble(fit, mod='duration').")
        table = bubble_table(fit, mod, 0.95 if level is None else level, by=by, transform=transform,
                             test=test or "z", vcov=vcov or "observed", data=data)
        points = effect_sizes_table(fit, size_by=size_by, transform=transform, data=data)
        points["mod"] = column_of(fit, mod, data).to_numpy(dtype=np.float64)
        if by is not None:
            points["by"] = column_of(fit, by, data).to_numpy()
    settings = table_settings(table, "bubble", columns=("mod", *_BANDS), given=given)
    level, mod, by = settings["level"], settings["moderator"], settings["by"]
    if points is not None:
        point_settings = points_settings(points, "bubble", settings["transform"], ("yi", "size_value", "mod"))
        size_by = point_settings["size_by"]
        if by is not None and "by" not in points.columns:
            raise DrmError(f"bubble: the table is split by `{by}`; the points need a `by` column.")
    ax = new_axes(ax, (6.0, 4.6))
    levels = (list(dict.fromkeys(table["by"])) if settings["split"]
              else level_order(points["by"]) if by is not None and points is not None else [])
    colors = _colours(levels, palette)
    line_name = "mean"
    if settings["averaged_over"]:
        line_name += f" (averaged over {', '.join(settings['averaged_over'])})"
    groups = [(lv, table[table["by"] == lv], colors[lv]) for lv in levels] if settings["split"] \
        else [(None, table, "C0" if not levels else "0.2")]
    for i, (lv, part, color) in enumerate(groups):
        first = i == 0
        ax.fill_between(part["mod"], part["conf_low"], part["conf_high"], color=color, alpha=0.2,
                        linewidth=0, zorder=1, label=f"{level:.0%} confidence band" if first else "_")
        ax.plot(part["mod"], part["pred_low"], color=color, linestyle="--", linewidth=1.0, zorder=1,
                label=f"{level:.0%} prediction band" if first else "_")
        ax.plot(part["mod"], part["pred_high"], color=color, linestyle="--", linewidth=1.0, zorder=1,
                label="_prediction band upper")
        ax.plot(part["mod"], part["estimate"], color=color, linewidth=2.0, zorder=2,
                label=(line_name if first else "_") if lv is None else f"_mean {lv}")
    if points is not None and len(points):
        point_kw = {"edgecolor": "0.15", "alpha": 0.6, "linewidths": 0.4, "zorder": 3}
        if levels:
            point_kw["c"] = [colors.get(v, "0.55") for v in points["by"]]
        else:
            point_kw["facecolor"] = "0.55"
        point_kw.update(kwargs)
        ax.scatter(points["mod"], points["yi"], s=marker_areas(points["size_value"].to_numpy(), 8.0, 130.0),
                   label="_effect sizes", **point_kw)
    ax.set_xlabel(xlab if xlab is not None else str(mod))
    ax.set_ylabel(ylab if ylab is not None else effect_label(settings["response"], settings["transform"]))
    ax.grid(color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    if legend:
        k = len(points) if points is not None else settings["k"]
        _legends(ax, levels, colors, by, settings["split"], line_name, points, size_by,
                 title=f"k = {k} effect sizes" if k_label else None)
    return ax


def _colours(levels: list, palette: Any) -> dict:
    """One colour per level of ``by``: ``palette`` (a list or a dict by level) or the colour cycle."""
    if isinstance(palette, dict):
        missing = [lv for lv in levels if lv not in palette]
        if missing:
            raise DrmError(f"bubble: palette has no colour for level {missing[0]!r}.")
        return dict(palette)
    if palette is None:
        import matplotlib.pyplot as plt

        palette = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    palette = list(palette)
    return {lv: palette[i % len(palette)] for i, lv in enumerate(levels)}


def _legends(ax, levels, colors, by, split, line_name, points, size_by, title) -> None:
    """Bands and line above the Axes; the levels of ``by`` and the point sizes at the right."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if split:  # one line per level (coloured in the levels' legend): neutral entries here
        from matplotlib.patches import Patch

        handles = [Patch(facecolor="0.5", alpha=0.3, linewidth=0),
                   Line2D([], [], color="0.3", linestyle="--", linewidth=1.0),
                   Line2D([], [], color="0.2", linewidth=2.0)]
        labels = [*labels[:2], line_name]
    ax.legend(handles, labels, title=title, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2,
              frameon=False, fontsize=8, title_fontsize=8, borderaxespad=0.2, alignment="left")
    if levels:
        keep_legend(ax)
        level_handles = [Line2D([], [], linestyle="-" if split else "", marker="o", color=colors[lv],
                                markersize=6) for lv in levels]
        ax.legend(level_handles, [str(lv) for lv in levels], title=str(by), loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8, title_fontsize=8,
                  borderaxespad=0.0)
    if points is not None and len(points):
        size_legend(ax, points["size_value"].to_numpy(),
                    "precision (1/SE)" if size_by == "precision" else str(size_by),
                    smallest=8.0, largest=130.0, right=0.55 if levels else 1.0)
