"""Orchard plot (Nakagawa et al. 2021): effect sizes, mean per level, confidence and prediction intervals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import DrmError
from ._common import (points_settings, TransformArg, column_of, effect_label, effect_sizes_table, level_order,
                      interval_legend, marker_areas, new_axes, require_univariate, resolve_transform,
                      size_legend,
                      table_settings, tag_table)
from .marginal_means import marginal_means

__all__ = ["orchard_table", "orchard"]

TABLE_COLUMNS = ["level", "estimate", "conf_low", "conf_high", "pred_low", "pred_high", "k", "n_studies"]


def _study_column(fit: Any, group: str | None, data: Any) -> pd.Series | None:
    """The study id per retained row: ``group``, else the first random-effect grouping column."""
    if group is None:
        if not fit.design.random:
            return None
        group = fit.design.random[0].term.group_columns[0]
    return column_of(fit, group, data)


def orchard_table(fit: Any, mod: str | None = None, level: float = 0.95, *,
                  transform: TransformArg = None, group: str | None = None, test: str = "z",
                  vcov: str = "observed", data: Any = None) -> pd.DataFrame:
    """One row per level of ``mod``: marginal mean of ``mu``, its confidence and prediction interval.

    ``estimate``, ``conf_low``/``conf_high`` (confidence interval of the mean) and
    ``pred_low``/``pred_high`` (prediction interval for the true effect of a new study in that
    level) come from ``fit.predict(..., interval=...)``; predictors other than ``mod`` in the
    ``mu``, ``sigma`` and ``sd(g)`` formulas are marginalised as orchaRd's
    ``mod_results(weights = "prop")`` (see :mod:`drmpy.plots.marginal_means`), so a
    location-scale model gets each level's own ``sigma`` and ``sd(g)`` in its prediction
    interval.  ``mod=None``: one row, ``level = "overall"``.

    ``k``: effect sizes in the level; ``n_studies``: distinct values of ``group`` among them
    (default: the first random-effect grouping column; missing without random effects and
    ``group``).  Values are on the effect-size scale, or back-transformed by ``transform``
    (``"exp"``, ``"tanh"``, ``"percent"`` or an increasing callable).  ``test``/``vcov`` as
    in ``fit.predict``; ``data``: the fitted frame, for a ``mod``/``group`` column the
    formulas do not use.
    """
    require_univariate(fit, "orchard_table")
    tf = resolve_transform(transform)
    studies = _study_column(fit, group, data)
    if mod is None:
        levels = ["overall"]
        level_of_row = np.zeros(fit.nobs, dtype=np.int64)
        settings = pd.DataFrame(index=pd.RangeIndex(1))
    else:
        column = column_of(fit, mod, data)
        levels = level_order(column)
        if len(levels) > 200:
            raise DrmError(f"orchard: moderator `{mod}` has {len(levels)} levels; orchard plots "
                           "draw a categorical moderator (use bubble() for a continuous one).")
        position = {lv: i for i, lv in enumerate(levels)}
        level_of_row = np.array([position.get(v, -1) for v in column.to_numpy()])
        settings = pd.DataFrame({mod: pd.Series(levels, dtype=column.dtype)})
    means = marginal_means(fit, settings, level=level, test=test, vcov=vcov)
    k = np.bincount(level_of_row[level_of_row >= 0], minlength=len(levels))
    if studies is None:
        n_studies = pd.array([pd.NA] * len(levels), dtype="Int64")
    else:
        ids = studies.to_numpy()
        n_studies = pd.array([len(pd.unique(ids[level_of_row == i])) for i in range(len(levels))],
                             dtype="Int64")
    table = pd.DataFrame({
        "level": levels,
        "estimate": tf(means["estimate"].to_numpy()),
        "conf_low": tf(means["conf_low"].to_numpy()),
        "conf_high": tf(means["conf_high"].to_numpy()),
        "pred_low": tf(means["pred_low"].to_numpy()),
        "pred_high": tf(means["pred_high"].to_numpy()),
        "k": k,
        "n_studies": n_studies,
    })
    return tag_table(table, "orchard", level=float(level), transform=transform, moderator=mod,
                     group=group, test=test, vcov=vcov, response=fit.formula.response,
                     reference=float(tf(np.zeros(1))[0]))  # reference: no effect, on the drawn scale


def _jitter(level_positions: np.ndarray, width: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level_positions + rng.uniform(-width, width, size=level_positions.shape)


def orchard(fit: Any, *, mod: str | None = None, level: float | None = None,
            transform: TransformArg = None, size_by: str = "precision", group: str | None = None,
            test: str | None = None, vcov: str | None = None, data: Any = None,
            points: pd.DataFrame | None = None, xlab: str | None = None, ylab: str | None = None,
            jitter: float = 0.3, seed: int = 19680801, palette: Any = None, k_labels: bool = True,
            legend: bool = True, ax: Any = None, **kwargs: Any):
    """Orchard plot: effect sizes jittered per level, the mean with its CI (thick) and PI (thin).

    ``fit`` is a fit (the tables are computed with :func:`orchard_table` and
    :func:`~drmpy.plots.effect_sizes_table`) or an :func:`orchard_table` frame, drawn as it is
    (with the points of ``points=``, an ``effect_sizes_table``, when given).  Levels run top
    to bottom in the moderator's order; the effect size is on the x axis, labelled ``xlab``
    (default: the response's name and the back-transform, e.g. ``"tanh(yi)"``).  Point area
    is linear in ``size_by`` (precision ``1/sqrt(v_i)`` or a column); ``palette``: one colour
    per level.  ``k = ... (n studies)`` sits inside the Axes at the right end of each row, above
    its intervals; a legend above the Axes says which line is which (thick = confidence
    interval, thin = prediction interval, at the table's level) and gives the point sizes.
    ``kwargs`` style the effect-size points (``ax.scatter``).  Returns the Axes; ``ax=None``
    draws on a new figure.
    """
    given = {"mod": mod, "level": level, "transform": transform, "group": group, "test": test,
             "vcov": vcov}
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        require_univariate(fit, "orchard")
        table = orchard_table(fit, mod, 0.95 if level is None else level, transform=transform,
                              group=group, test=test or "z", vcov=vcov or "observed", data=data)
        points = effect_sizes_table(fit, mod, size_by=size_by, transform=transform, data=data)
    settings = table_settings(table, "orchard", columns=TABLE_COLUMNS,
                              given={("moderator" if k == "mod" else k): v for k, v in given.items()})
    mod = settings["moderator"]
    if points is not None:
        point_settings = points_settings(points, "orchard", settings["transform"], ("yi", "size_value", "level"))
        size_by = point_settings["size_by"]
    colors = palette
    n_levels = len(table)
    ax = new_axes(ax, (6.4, 1.6 + (0.8 * n_levels if n_levels <= 6 else 2.4 + 0.4 * n_levels)))
    import matplotlib.pyplot as plt
    from matplotlib import patheffects
    from matplotlib import transforms as mtransforms
    from matplotlib.colors import to_rgba

    if colors is None:
        cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
        colors = [cycle[i % len(cycle)] for i in range(n_levels)]
    positions = np.arange(n_levels, dtype=np.float64)[::-1]  # first level on top
    position_of = dict(zip(table["level"], positions))
    reference = settings["reference"]
    if reference is not None:
        ax.axvline(reference, color="0.45", linewidth=0.8, linestyle="--", zorder=0)

    if points is not None and len(points):
        keep = points["level"].isin(position_of.keys()).to_numpy()
        pts = points.loc[keep]
        y_level = pts["level"].map(position_of).to_numpy(dtype=np.float64)
        scatter_kw = {"alpha": 0.45, "linewidths": 0.3, "edgecolors": "0.2", "zorder": 2}
        scatter_kw.update(kwargs)
        rgba = np.array([to_rgba(c) for c in colors])
        level_index = pts["level"].map(dict(zip(table["level"], range(n_levels)))).to_numpy()
        points_artist = ax.scatter(pts["yi"].to_numpy(), _jitter(y_level, jitter, seed),
                                   s=marker_areas(pts["size_value"].to_numpy()), c=rgba[level_index],
                                   label="_effect sizes", **scatter_kw)
        points_artist.set_in_layout(False)  # inside the Axes; spares the layout 10^4 marker extents

    # prediction interval (thin), confidence interval (thick), mean (large white-filled point)
    # a white halo keeps the intervals readable over thousands of points
    halo = [patheffects.withStroke(linewidth=3.0, foreground="white")]
    ax.hlines(positions, table["pred_low"], table["pred_high"], colors="0.1", linewidths=1.2,
              zorder=3, label="_prediction interval", path_effects=halo)
    ax.hlines(positions, table["conf_low"], table["conf_high"], colors="0.1", linewidths=4.5,
              zorder=4, label="_confidence interval",
              path_effects=[patheffects.withStroke(linewidth=6.5, foreground="white")])
    ax.scatter(table["estimate"], positions, s=80, facecolors="white", edgecolors="0.1",
               linewidths=1.5, zorder=5, label="_estimate")

    if k_labels:  # inside the Axes (x in axes fraction), in the gap above each row's jitter band
        blend = mtransforms.blended_transform_factory(ax.transAxes, ax.transData)
        for pos, k, g in zip(positions, table["k"], table["n_studies"]):
            text = f"k = {k}" if pd.isna(g) else f"k = {k} ({g} studies)"
            ax.text(0.99, pos + jitter + 0.04, text, transform=blend, ha="right", va="bottom",
                    fontsize=8, color="0.15", gid="k label", clip_on=True)
    ax.set_yticks(positions, [str(v) for v in table["level"]])
    ax.set_ylim(positions.min() - jitter - 0.25, positions.max() + jitter + 0.45)
    ax.set_xlabel(xlab if xlab is not None else effect_label(settings["response"], settings["transform"]))
    if ylab is not None:
        ax.set_ylabel(ylab)
    elif mod is not None:
        ax.set_ylabel(str(mod))
    ax.grid(axis="x", color="0.9", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    if legend:
        interval_legend(ax, settings["level"], title="mean and intervals")
        if points is not None and len(points):
            size_legend(ax, points["size_value"].to_numpy(),
                        "precision (1/SE)" if size_by == "precision" else size_by)
    return ax
