"""Funnel plot (metafor's ``funnel``), optionally contour-enhanced (Peters et al. 2008)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError
from ._common import (TransformArg, effect_sizes_table, marker_areas, new_axes, require_univariate,
                      resolve_transform)

__all__ = ["funnel_table", "funnel"]

_YAXES = {"sei": "Standard error", "vi": "Sampling variance", "seinv": "Inverse standard error",
          "vinv": "Inverse sampling variance"}


def funnel_table(fit: Any, *, xaxis: str | None = None, yaxis: str = "sei", transform: TransformArg = None,
                 size_by: str = "precision", data: Any = None) -> pd.DataFrame:
    """One row per effect size: ``x`` (effect size or residual), ``y`` (``yaxis``), ``sei``.

    ``xaxis``: ``"yi"`` (the effect sizes; default when ``mu ~ 1``) or ``"residuals"``
    (``y_i - x_i' beta``, the fixed part only, as metafor draws models with moderators; the
    default otherwise).  ``yaxis`` as metafor's: ``"sei"`` (default), ``"vi"``, ``"seinv"``,
    ``"vinv"``.  ``center`` (in ``attrs`` and a column) is the pseudo-confidence region's
    centre on the model scale: the pooled estimate for ``"yi"`` in a ``mu ~ 1`` model, 0 for
    residuals.  ``x`` is back-transformed by ``transform`` (``effect`` keeps the model scale).
    """
    require_univariate(fit, "funnel_table")
    if yaxis not in _YAXES:
        raise DrmError(f"funnel: yaxis must be one of {', '.join(_YAXES)}, got {yaxis!r}.")
    intercept_only = list(fit.design.fixed["mu"].terms) == ["(Intercept)"]
    if xaxis is None:
        xaxis = "yi" if intercept_only else "residuals"
    points = effect_sizes_table(fit, size_by=size_by, data=data)
    if xaxis == "yi":
        if not intercept_only:
            raise DrmError("funnel: xaxis='yi' needs a model without moderators (mu ~ 1): the "
                           "pseudo-confidence region's centre is the pooled mean. Use "
                           "xaxis='residuals' for a meta-regression.")
        effect = fit.design.y.astype(np.float64)
        center = float(fit.predict(re_form=False).iloc[0])
    elif xaxis == "residuals":
        effect = fit.design.y - fit.predict(re_form=False).to_numpy()
        center = 0.0
    else:
        raise DrmError(f"funnel: xaxis must be 'yi' or 'residuals', got {xaxis!r}.")
    sei = points["sei"].to_numpy()
    y = _y_values(sei, yaxis)
    tf = resolve_transform(transform)
    table = pd.DataFrame({"effect": effect, "x": tf(effect), "y": y, "sei": sei,
                          "size_value": points["size_value"].to_numpy(), "center": center},
                         index=points.index)
    table.attrs.update(xaxis=xaxis, yaxis=yaxis, center=center)
    return table


def _y_values(se: np.ndarray, yaxis: str) -> np.ndarray:
    if yaxis == "sei":
        return se
    if yaxis == "vi":
        return se**2
    return 1.0 / se if yaxis == "seinv" else 1.0 / se**2


def _region_edges(center: float, z: float, se: np.ndarray, yaxis: str) -> tuple[np.ndarray, np.ndarray]:
    """(x offsets, y values) of the lines ``center +- z se`` drawn in ``yaxis`` units."""
    return center + z * se, _y_values(se, yaxis)


def funnel(fit: Any, *, contour: bool = False, xaxis: str | None = None, yaxis: str = "sei",
           level: float = 0.95, contour_levels: tuple[float, ...] = (0.10, 0.05, 0.01),
           transform: TransformArg = None, size_by: str | None = "precision", data: Any = None,
           xlab: str | None = None, ax: Any = None, **kwargs: Any):
    """Funnel plot of :func:`funnel_table` (or of such a table passed as ``fit``).

    Points against ``yaxis`` (standard error by default, axis inverted so precise studies are
    on top), the estimate's vertical line and the pseudo-confidence triangle
    ``center +- z_level se``.  ``contour=True`` shades the regions where a study's own z test
    (two-sided, against 0) has p between ``contour_levels`` (default .10, .05, .01; darker =
    smaller p), as Peters et al. (2008); the legend sits outside the data.  ``size_by``:
    ``"precision"`` (default), a column, or None (equal points, as metafor).
    """
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        table = funnel_table(fit, xaxis=xaxis, yaxis=yaxis, transform=transform,
                             size_by=size_by or "precision", data=data)
    yaxis = table.attrs.get("yaxis", yaxis)
    center = float(table.attrs.get("center", 0.0))
    tf = resolve_transform(transform)
    ax = new_axes(ax, (5.6, 4.6))
    se_max = float(table["sei"].max()) * 1.05
    se_min = float(table["sei"].min()) * 0.95 if yaxis in ("seinv", "vinv") else 0.0
    se = np.linspace(max(se_min, 1e-12) if yaxis in ("seinv", "vinv") else 0.0, se_max, 200)
    if yaxis in ("seinv", "vinv"):
        se = se[se > 0]
    if contour:
        levels = sorted(contour_levels, reverse=True)  # .10, .05, .01
        shades = ["0.88", "0.72", "0.55", "0.4"][: len(levels)]
        for i, p in enumerate(levels):
            z_in = float(stats.norm.ppf(1.0 - p / 2.0))
            z_out = float(stats.norm.ppf(1.0 - levels[i + 1] / 2.0)) if i + 1 < len(levels) else np.inf
            for sign in (-1.0, 1.0):
                inner, yv = _region_edges(0.0, sign * z_in, se, yaxis)
                if np.isfinite(z_out):
                    outer, _ = _region_edges(0.0, sign * z_out, se, yaxis)
                else:
                    outer = np.full_like(inner, sign * 1e12)
                lo, hi = (inner, outer) if sign > 0 else (outer, inner)
                label = (f"{levels[i + 1]:.2f} < p < {p:.2f}" if i + 1 < len(levels)
                         else f"p < {p:.2f}") if sign > 0 else None
                ax.fill_betweenx(yv, tf(np.clip(lo, -50, 50)), tf(np.clip(hi, -50, 50)),
                                 color=shades[i], linewidth=0, zorder=0, label=label)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    for sign in (-1.0, 1.0):
        xs, ys = _region_edges(center, sign * z, se, yaxis)
        ax.plot(tf(xs), ys, color="0.2", linestyle=":", linewidth=1.0, label="_pseudo-confidence region")
    ax.axvline(float(tf(np.array([center]))[0]), color="0.2", linewidth=1.0, zorder=1,
               label="_estimate")
    point_kw = {"facecolor": "white", "edgecolor": "0.1", "linewidths": 0.8, "zorder": 3}
    point_kw.update(kwargs)
    sizes = marker_areas(table["size_value"].to_numpy(), 8.0, 80.0) if size_by else 22.0
    ax.scatter(table["x"], table["y"], s=sizes, label="_effect sizes", **point_kw)
    ends = tf(center + np.array([-z, z]) * se_max)
    x_lo = min(float(table["x"].min()), float(ends[0]))
    x_hi = max(float(table["x"].max()), float(ends[1]))
    pad = 0.05 * (x_hi - x_lo)
    ax.set_xlim(x_lo - pad, x_hi + pad)
    ymax = {"sei": se_max, "vi": se_max**2}.get(yaxis)
    if ymax is not None:
        ax.set_ylim(ymax, 0.0)  # inverted: precise studies at the top
    ax.set_ylabel(_YAXES[yaxis])
    xaxis_used = table.attrs.get("xaxis", "yi")
    ax.set_xlabel(xlab if xlab is not None else ("Residual" if xaxis_used == "residuals" else "Effect size"))
    if contour:
        from matplotlib.patches import Patch

        handles, labels = ax.get_legend_handles_labels()
        handles.insert(0, Patch(facecolor="white", edgecolor="0.6", linewidth=0.6))
        labels.insert(0, f"p > {max(contour_levels):.2f}")
        ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(labels),
                  frameon=False, fontsize=8, borderaxespad=0.2, columnspacing=1.0)
    return ax
