"""Bubble plot: effect sizes against a continuous moderator with the fitted mean and its bands."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import DrmError
from ._common import (TransformArg, column_of, effect_label, effect_sizes_table, is_factor,
                      marker_areas, new_axes, require_univariate, resolve_transform,
                      table_settings, tag_table)
from .marginal_means import marginal_means

__all__ = ["bubble_table", "bubble"]


def bubble_table(fit: Any, mod: str, level: float = 0.95, *, n: int = 101,
                 transform: TransformArg = None, test: str = "z", vcov: str = "observed",
                 data: Any = None) -> pd.DataFrame:
    """The fitted mean line over ``n`` values of ``mod`` (its observed range), with its bands.

    One row per grid value: ``mod`` (the moderator value), ``estimate``, ``conf_low``,
    ``conf_high`` (confidence band of the mean) and ``pred_low``, ``pred_high`` (prediction
    band for a new study's true effect; it follows ``sigma(x)`` and ``sd(g)(x)`` when those
    depend on ``mod``).  Other predictors are marginalised as in :func:`orchard_table`;
    values come from ``fit.predict(..., interval=...)`` and are back-transformed by
    ``transform``.
    """
    require_univariate(fit, "bubble_table")
    column = column_of(fit, mod, data)
    if is_factor(column):
        raise DrmError(f"bubble: moderator `{mod}` must be numeric (dtype {column.dtype}); "
                       "use orchard() for a categorical moderator.")
    values = column.to_numpy(dtype=np.float64)
    grid = np.linspace(np.nanmin(values), np.nanmax(values), int(n))
    means = marginal_means(fit, pd.DataFrame({mod: grid}), level=level, test=test, vcov=vcov)
    tf = resolve_transform(transform)
    table = pd.DataFrame({"mod": grid})
    for c in ("estimate", "conf_low", "conf_high", "pred_low", "pred_high"):
        table[c] = tf(means[c].to_numpy())
    return tag_table(table, "bubble", level=float(level), transform=transform, moderator=mod,
                     test=test, vcov=vcov, response=fit.formula.response)


def bubble(fit: Any, *, mod: str | None = None, level: float | None = None, transform: TransformArg = None,
           size_by: str = "precision", test: str | None = None, vcov: str | None = None, data: Any = None,
           points: pd.DataFrame | None = None, xlab: str | None = None, ylab: str | None = None,
           legend: bool = True, ax: Any = None, **kwargs: Any):
    """Bubble plot: points (area by ``size_by``) at (moderator, effect size), the fitted mean
    line, its confidence band (shaded) and prediction band (dashed lines).

    ``fit``: a fit, or a :func:`bubble_table` frame (then ``points``, an effect-size table
    with a ``mod`` column, adds the points).  ``kwargs`` style the points.
    """
    given = {"moderator": mod, "level": level, "transform": transform, "test": test, "vcov": vcov}
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        require_univariate(fit, "bubble")
        if mod is None:
            raise DrmError("bubble: name the moderator, e.g. bubble(fit, mod='duration').")
        table = bubble_table(fit, mod, 0.95 if level is None else level, transform=transform,
                             test=test or "z", vcov=vcov or "observed", data=data)
        points = effect_sizes_table(fit, size_by=size_by, transform=transform, data=data)
        points["mod"] = column_of(fit, mod, data).to_numpy(dtype=np.float64)
    settings = table_settings(table, "bubble", columns=("mod", "estimate", "conf_low", "conf_high",
                                                        "pred_low", "pred_high"), given=given)
    level, mod = settings["level"], settings["moderator"]
    if points is not None:
        point_settings = table_settings(points, "effect_sizes", columns=("yi", "size_value", "mod"))
        if point_settings["transform"] != settings["transform"]:
            raise DrmError(f"bubble: the points were computed with transform="
                           f"{point_settings['transform']!r} and the table with "
                           f"{settings['transform']!r}; compute both with the same transform.")
    ax = new_axes(ax, (6.0, 4.4))
    ax.fill_between(table["mod"], table["conf_low"], table["conf_high"], color="C0", alpha=0.25,
                    linewidth=0, zorder=1, label=f"{level:.0%} confidence band")
    ax.plot(table["mod"], table["pred_low"], color="C0", linestyle="--", linewidth=1.0, zorder=1,
            label=f"{level:.0%} prediction band")
    ax.plot(table["mod"], table["pred_high"], color="C0", linestyle="--", linewidth=1.0, zorder=1,
            label="_prediction band upper")
    ax.plot(table["mod"], table["estimate"], color="C0", linewidth=2.0, zorder=2, label="mean (mu)")
    if points is not None and len(points):
        point_kw = {"facecolor": "0.55", "edgecolor": "0.15", "alpha": 0.55, "linewidths": 0.4, "zorder": 3}
        point_kw.update(kwargs)
        ax.scatter(points["mod"], points["yi"], s=marker_areas(points["size_value"].to_numpy(), 8.0, 130.0),
                   label="_effect sizes", **point_kw)
    ax.set_xlabel(xlab if xlab is not None else str(mod))
    ax.set_ylabel(ylab if ylab is not None else effect_label(settings["response"], settings["transform"]))
    ax.grid(color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    if legend:
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False, fontsize=8,
                  borderaxespad=0.2)
    return ax
