"""Caterpillars plot (orchaRd's ``caterpillars()``): every effect size with its confidence
interval, sorted within each level of a moderator, the level's mean with its confidence and
prediction intervals at the bottom of its block."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError
from ._common import (TransformArg, effect_label, effect_sizes_table, interval_legend, new_axes,
                      require_univariate, resolve_transform, table_settings, tag_table)
from .orchard import orchard_table

__all__ = ["caterpillars_table", "caterpillars"]

_COLUMNS = ("kind", "level", "label", "estimate", "conf_low", "conf_high", "pred_low", "pred_high",
            "position")


def caterpillars_table(fit: Any, mod: str | None = None, level: float = 0.95, *,
                       transform: TransformArg = None, group: str | None = None, test: str = "z",
                       vcov: str = "observed", data: Any = None) -> pd.DataFrame:
    """Rows of a caterpillars plot, blocks top to bottom in the moderator's level order.

    ``kind == "effect"``: one row per effect size, ``estimate`` = y_i with the interval
    ``y_i +- z sqrt(v_i)`` (z the normal quantile of ``level``), sorted by ``estimate`` within
    its level; ``label`` is the data's row label.  ``kind == "pooled"``: the level's row of
    :func:`orchard_table` (marginal mean, confidence and prediction interval, ``k``,
    ``n_studies``), placed under its block.  ``position``: the y coordinate (the largest effect
    size of the top block highest; empty slots above each block for its heading).  Values back-transformed
    by ``transform``.
    """
    require_univariate(fit, "caterpillars_table")
    tf = resolve_transform(transform)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    points = effect_sizes_table(fit, mod, data=data)
    pooled = orchard_table(fit, mod, level, group=group, test=test, vcov=vcov, data=data)
    y, se = fit.design.y.astype(np.float64), points["sei"].to_numpy()
    effects = pd.DataFrame({"kind": "effect", "level": points["level"].to_numpy(),
                            "label": [str(v) for v in points.index], "estimate": y,
                            "conf_low": y - z * se, "conf_high": y + z * se,
                            "pred_low": np.nan, "pred_high": np.nan})
    # empty slots above each block for its heading: at least 2, more as the plot gets taller
    gap = 2 + int(np.ceil(0.03 * len(effects)))
    # and between a block's effect sizes and its mean below, so the mean's CI/PI row stands
    # apart from the lowest effect size however tall the plot (orchaRd leaves a space too)
    below = 1 + int(np.ceil(0.01 * len(effects)))
    blocks, slot = [], 0
    for _, row in pooled.iloc[::-1].iterrows():  # bottom block first
        block = effects[effects["level"] == row["level"]].sort_values("estimate", kind="stable")
        summary = pd.DataFrame([{"kind": "pooled", "level": row["level"], "label": str(row["level"]),
                                 **{c: row[c] for c in ("estimate", "conf_low", "conf_high",
                                                        "pred_low", "pred_high")}}])
        summary["position"] = float(slot)
        block = block.assign(position=np.arange(slot + below, slot + below + len(block), dtype=np.float64))
        blocks.extend([block, summary])
        slot += len(block) + below + gap
    if not blocks:
        raise DrmError(f"caterpillars: moderator `{mod}` has no levels among the retained rows.")
    table = pd.concat(blocks[::-1], ignore_index=True)
    table = table.sort_values("position", ascending=False, kind="stable").reset_index(drop=True)
    counts = pooled.set_index("level")
    table["k"] = table["level"].map(counts["k"]).where(table["kind"] == "pooled")
    table["n_studies"] = table["level"].map(counts["n_studies"]).where(table["kind"] == "pooled")
    for c in ("estimate", "conf_low", "conf_high", "pred_low", "pred_high"):
        table[c] = tf(table[c].to_numpy(dtype=np.float64))
    return tag_table(table, "caterpillars", level=float(level), transform=transform, moderator=mod,
                     group=group, test=test, vcov=vcov, response=fit.formula.response,
                     reference=float(tf(np.zeros(1))[0]))


def caterpillars(fit: Any, *, mod: str | None = None, level: float | None = None,
                 transform: TransformArg = None, group: str | None = None, test: str | None = None,
                 vcov: str | None = None, data: Any = None, palette: Any = None,
                 xlab: str | None = None, ylab: str | None = None, legend: bool = True,
                 ax: Any = None, **kwargs: Any):
    """Caterpillars plot of :func:`caterpillars_table` (or of such a table passed as ``fit``).

    Each effect size is a point (coloured by level, ``palette``: one colour per level) on its
    confidence interval; under each level's block its mean (white point) with the confidence
    interval (thick) and prediction interval (thin), as in the orchard plot, and the level's
    name with ``k`` at the block's top left.  ``kwargs`` style the effect-size points.
    """
    given = {"moderator": mod, "level": level, "transform": transform, "group": group, "test": test,
             "vcov": vcov}
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        table = caterpillars_table(fit, mod, 0.95 if level is None else level, transform=transform,
                                   group=group, test=test or "z", vcov=vcov or "observed", data=data)
    settings = table_settings(table, "caterpillars", columns=_COLUMNS, given=given)
    effects, pooled = table[table["kind"] == "effect"], table[table["kind"] == "pooled"]
    n_rows = float(table["position"].max()) + 1.0
    ax = new_axes(ax, (6.0, min(2.2 + 0.025 * n_rows, 10.0)))
    from matplotlib import patheffects
    from matplotlib import transforms as mtransforms

    levels = list(pooled["level"])
    if palette is None:
        import matplotlib.pyplot as plt

        palette = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    colour = {lv: list(palette)[i % len(palette)] for i, lv in enumerate(levels)}
    thin = 0.6 if len(effects) > 100 else 0.9
    ax.axvline(settings["reference"], color="0.45", linewidth=0.8, linestyle="--", zorder=0)
    ax.hlines(effects["position"], effects["conf_low"], effects["conf_high"], colors="0.6",
              linewidths=thin, zorder=1, label="_effect size intervals")
    point_kw = {"s": 6 if len(effects) > 100 else 14, "zorder": 2, "linewidths": 0}
    point_kw.update(kwargs)
    ax.scatter(effects["estimate"], effects["position"], c=[colour[v] for v in effects["level"]],
               label="_effect sizes", **point_kw)
    halo = [patheffects.withStroke(linewidth=3.0, foreground="white")]
    ax.hlines(pooled["position"], pooled["pred_low"], pooled["pred_high"], colors="0.1", linewidths=1.2,
              zorder=3, label="_prediction interval", path_effects=halo)
    ax.hlines(pooled["position"], pooled["conf_low"], pooled["conf_high"], colors="0.1", linewidths=4.5,
              zorder=4, label="_confidence interval",
              path_effects=[patheffects.withStroke(linewidth=6.5, foreground="white")])
    ax.scatter(pooled["estimate"], pooled["position"], s=60, facecolors="white", edgecolors="0.1",
               linewidths=1.5, zorder=5, label="_estimate")
    left = mtransforms.blended_transform_factory(ax.transAxes, ax.transData)
    for _, row in pooled.iterrows():  # heading at the block's top, inside the Axes
        top = effects.loc[effects["level"] == row["level"], "position"].max()
        top = row["position"] if pd.isna(top) else top
        count = f"k = {int(row['k'])}" + ("" if pd.isna(row["n_studies"]) else f", {int(row['n_studies'])} studies")
        name = "" if settings["moderator"] is None else f"{row['level']}: "
        ax.text(0.01, top + 1.0, f"{name}{count}", transform=left, ha="left", va="bottom", fontsize=8,
                color="0.1", gid="level heading", path_effects=halo)
    ax.set_yticks([])
    pad = max(1.0, 0.015 * n_rows)
    ax.set_ylim(-pad, n_rows + 2.0 * pad + 1.0)
    ax.set_ylabel(ylab if ylab is not None else "Effect sizes, sorted" +
                  (f" within {settings['moderator']}" if settings["moderator"] is not None else ""))
    ax.set_xlabel(xlab if xlab is not None else effect_label(settings["response"], settings["transform"]))
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    if legend:
        interval_legend(ax, settings["level"], mean="mean")
        handles = ax.get_legend().legend_handles
        from matplotlib.lines import Line2D

        ax.get_legend().remove()
        effect_handle = Line2D([], [], color="0.6", linewidth=thin, marker="o", markersize=3,
                               markerfacecolor="0.3", markeredgewidth=0)
        labels = ["effect size, CI", "mean", f"{settings['level']:.0%} CI (thick)",
                  f"{settings['level']:.0%} PI (thin)"]
        ax.legend([effect_handle, *handles], labels, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                  ncol=4, frameon=False, fontsize=8, borderaxespad=0.2, handlelength=1.8,
                  handletextpad=0.8, columnspacing=1.2)
    return ax
