"""Forest plot: each effect size with its sampling interval, then the pooled mean(s) as diamonds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError
from ._common import (TransformArg, column_of, effect_sizes_table, marker_areas, new_axes,
                      require_univariate, resolve_transform)
from .orchard import orchard_table

__all__ = ["forest_table", "forest"]


def forest_table(fit: Any, label: str | None = None, sort: str | None = None, mod: str | None = None,
                 level: float = 0.95, *, transform: TransformArg = None, size_by: str = "precision",
                 group: str | None = None, test: str = "z", vcov: str = "observed",
                 data: Any = None) -> pd.DataFrame:
    """Rows of a forest plot, top to bottom (``position`` counts down to 0).

    ``kind == "effect"``: one row per effect size, ``estimate`` = y_i and the interval
    ``y_i +- z sqrt(v_i)`` (z the normal quantile of ``level``).  ``kind == "pooled"``: the
    rows of :func:`orchard_table` (marginal mean of ``mu`` with its confidence interval and
    prediction interval), one per level of ``mod`` (each after its level's effect sizes), or
    one overall row.  ``label``: a column naming the effect sizes (default: the data's row
    labels); ``sort``: None (data order), ``"estimate"``, ``"precision"`` or a column, applied
    within each level.  Values back-transformed by ``transform``.
    """
    require_univariate(fit, "forest_table")
    tf = resolve_transform(transform)
    points = effect_sizes_table(fit, mod, size_by=size_by, data=data)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    labels = (column_of(fit, label, data).astype(str).to_numpy() if label is not None
              else np.asarray([str(v) for v in points.index]))
    effects = pd.DataFrame({
        "kind": "effect",
        "level": points["level"].to_numpy(),
        "label": labels,
        "estimate": points["yi"].to_numpy(),
        "conf_low": points["yi"].to_numpy() - z * points["sei"].to_numpy(),
        "conf_high": points["yi"].to_numpy() + z * points["sei"].to_numpy(),
        "pred_low": np.nan,
        "pred_high": np.nan,
        "size_value": points["size_value"].to_numpy(),
        "k": 1,
    })
    if sort is not None:
        if sort == "estimate":
            key = effects["estimate"].to_numpy()
        elif sort == "precision":
            key = -1.0 / points["sei"].to_numpy()
        else:
            key = column_of(fit, sort, data).to_numpy()
        effects = effects.iloc[np.argsort(key, kind="stable")]
    pooled = orchard_table(fit, mod, level, group=group, test=test, vcov=vcov, data=data)
    blocks = []
    for _, row in pooled.iterrows():
        block = effects[effects["level"] == row["level"]] if mod is not None else effects
        summary = pd.DataFrame([{
            "kind": "pooled", "level": row["level"],
            "label": "Pooled mean" if mod is None else f"{row['level']}",
            "estimate": row["estimate"], "conf_low": row["conf_low"], "conf_high": row["conf_high"],
            "pred_low": row["pred_low"], "pred_high": row["pred_high"], "size_value": np.nan,
            "k": row["k"],
        }])
        blocks.extend([block, summary])
    if mod is not None and len(pooled) == 0:
        raise DrmError(f"forest: moderator `{mod}` has no levels among the retained rows.")
    table = pd.concat(blocks, ignore_index=True)
    for c in ("estimate", "conf_low", "conf_high", "pred_low", "pred_high"):
        table[c] = tf(table[c].to_numpy(dtype=np.float64))
    # one empty slot between a level's diamond and the next level's first effect size
    gaps = np.cumsum(np.r_[0, (table["kind"].to_numpy()[:-1] == "pooled").astype(int)])
    slot = np.arange(len(table)) + gaps
    table["position"] = (slot.max() - slot).astype(np.float64)
    table.attrs["moderator"] = mod
    table.attrs["reference"] = float(tf(np.zeros(1))[0])
    return table


def forest(fit: Any, label: str | None = None, sort: str | None = None, mod: str | None = None,
           level: float = 0.95, *, transform: TransformArg = None, size_by: str = "precision",
           group: str | None = None, test: str = "z", vcov: str = "observed", data: Any = None,
           xlab: str | None = None, max_labels: int = 100, ax: Any = None, **kwargs: Any):
    """Forest plot of :func:`forest_table` (or of such a table passed as ``fit``).

    Squares (area by ``size_by``) with lines for the effect sizes; a diamond spanning the
    confidence interval for each pooled mean and a thin line with end caps beneath it for
    its prediction interval; a dashed line at no effect.  Row labels are drawn when there
    are at most ``max_labels`` rows.  ``kwargs`` style the effect-size squares.
    """
    table = fit if isinstance(fit, pd.DataFrame) else forest_table(
        fit, label, sort, mod, level, transform=transform, size_by=size_by, group=group, test=test,
        vcov=vcov, data=data)
    n_rows = int(table["position"].max()) + 1
    ax = new_axes(ax, (6.4, min(1.2 + (0.16 if n_rows <= 30 else 0.125) * n_rows, 30.0)))
    from matplotlib.patches import Polygon

    effects = table[table["kind"] == "effect"]
    pooled = table[table["kind"] == "pooled"]
    ax.hlines(effects["position"], effects["conf_low"], effects["conf_high"], colors="0.25",
              linewidths=0.8, zorder=2, label="_sampling intervals")
    square_kw = {"marker": "s", "color": "0.15", "zorder": 3}
    square_kw.update(kwargs)
    ax.scatter(effects["estimate"], effects["position"],
               s=marker_areas(effects["size_value"].to_numpy(), 4.0, 60.0), label="_effect sizes",
               **square_kw)
    half_height = 0.38
    for _, row in pooled.iterrows():
        y = row["position"]
        ax.hlines(y, row["pred_low"], row["pred_high"], colors="0.1", linewidths=1.0, zorder=2,
                  label="_prediction interval")
        ax.vlines([row["pred_low"], row["pred_high"]], y - 0.18, y + 0.18, colors="0.1",
                  linewidths=1.0, zorder=2, label="_prediction interval ends")
        diamond = Polygon([(row["conf_low"], y), (row["estimate"], y + half_height),
                           (row["conf_high"], y), (row["estimate"], y - half_height)],
                          closed=True, facecolor="0.1", edgecolor="0.1", zorder=4, label="pooled mean")
        ax.add_patch(diamond)
    reference = table.attrs.get("reference")
    if reference is not None:
        ax.axvline(reference, color="0.45", linewidth=0.8, linestyle="--", zorder=0)
    if len(table) <= max_labels:
        ax.set_yticks(table["position"], table["label"], fontsize=9 if len(table) <= 30 else 7)
        for tick, kind in zip(ax.get_yticklabels(), table["kind"]):
            if kind == "pooled":
                tick.set_fontweight("bold")
    else:
        ax.set_yticks(pooled["position"], pooled["label"], fontsize=9, fontweight="bold")
    ax.tick_params(axis="y", length=0)
    ax.set_ylim(-1.0, n_rows)
    ax.set_xlabel(xlab if xlab is not None else "Effect size")
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    return ax
