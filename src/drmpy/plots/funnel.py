"""Funnel plot (metafor's ``funnel``), optionally contour-enhanced (Peters et al. 2008)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError
from ._common import (TransformArg, effect_label, effect_sizes_table, marker_areas, new_axes,
                      require_univariate, resolve_transform, table_settings, tag_table)

__all__ = ["funnel_table", "funnel"]

_YAXES = {"sei": "Standard error", "vi": "Sampling variance", "seinv": "Inverse standard error",
          "vinv": "Inverse sampling variance"}
# p-value regions of the contour-enhanced funnel, light to lighter: the darkest band is the
# one just outside p = .10, so the pseudo-confidence triangle (dark dotted) stays visible on all
_CONTOUR_PALETTE = ("0.72", "0.83", "0.93")


def funnel_table(fit: Any, *, level: float = 0.95, xaxis: str | None = None, yaxis: str = "sei",
                 transform: TransformArg = None, size_by: str | None = None,
                 data: Any = None) -> pd.DataFrame:
    """One row per effect size: ``x`` (effect size or residual), ``y`` (``yaxis``), ``sei``.

    ``xaxis``: ``"yi"`` (the effect sizes; default when ``mu ~ 1``) or ``"residuals"``
    (``y_i - x_i' beta``, the fixed part only, as metafor draws models with moderators; the
    default otherwise).  ``yaxis`` as metafor's: ``"sei"`` (default), ``"vi"``, ``"seinv"``,
    ``"vinv"``.  ``center`` (a column) is the pseudo-confidence region's centre on the model
    scale: the pooled estimate for ``"yi"`` in a ``mu ~ 1`` model, 0 for residuals.  ``x`` is
    back-transformed by ``transform`` (``effect`` keeps the model scale).  ``size_value``:
    precision ``1/sqrt(v_i)`` or the ``size_by`` column when given (None: equal points, as
    metafor).  The settings that change the drawing (``level`` of the region, ``transform``,
    ``xaxis``, ``yaxis``, ``center``, ``size_by``) travel with the table (``attrs``) and
    :func:`funnel` reads them from there.
    """
    require_univariate(fit, "funnel_table")
    if yaxis not in _YAXES:
        raise DrmError(f"funnel: yaxis must be one of {', '.join(_YAXES)}, got {yaxis!r}.")
    if not 0.0 < float(level) < 1.0:
        raise DrmError(f"funnel: level must be in (0, 1), got {level!r}.")
    intercept_only = list(fit.design.fixed["mu"].terms) == ["(Intercept)"]
    if xaxis is None:
        xaxis = "yi" if intercept_only else "residuals"
    points = effect_sizes_table(fit, size_by=size_by or "precision", data=data)
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
    tf = resolve_transform(transform)
    size_value = points["size_value"].to_numpy() if size_by else np.full(len(sei), np.nan)
    table = pd.DataFrame({"effect": effect, "x": tf(effect), "y": _y_values(sei, yaxis), "sei": sei,
                          "size_value": size_value, "center": center}, index=points.index)
    return tag_table(table, "funnel", level=float(level), transform=transform, xaxis=xaxis,
                     yaxis=yaxis, center=center, size_by=size_by, response=fit.formula.response)


def _y_values(se: np.ndarray, yaxis: str) -> np.ndarray:
    if yaxis == "sei":
        return se
    if yaxis == "vi":
        return se**2
    return 1.0 / se if yaxis == "seinv" else 1.0 / se**2


def _se_grid(sei: np.ndarray, yaxis: str) -> np.ndarray:
    """Standard errors at which the region's edges are drawn: 0 (or the smallest, for the
    inverse axes) to 5% beyond the largest."""
    se_max = float(np.max(sei)) * 1.05
    if yaxis in ("seinv", "vinv"):
        return np.linspace(float(np.min(sei)) * 0.95, se_max, 200)
    return np.linspace(0.0, se_max, 200)


def _overlay_trim_and_fill(ax: Any, result: Any, settings: dict, tf) -> None:
    """The imputed effect sizes of a ``trim_and_fill`` result (open grey points)."""
    if settings["xaxis"] != "yi":
        raise DrmError("funnel: trim_and_fill= draws imputed effect sizes, which need "
                       "xaxis='yi' (a model without moderators).")
    filled = getattr(result, "filled", None)
    if filled is None or not {"yi", "vi"} <= set(filled.columns):
        raise DrmError("funnel: trim_and_fill= takes the result of drm.trim_and_fill(fit).")
    if len(filled) == 0:
        return
    se = np.sqrt(filled["vi"].to_numpy(dtype=np.float64))
    ax.scatter(tf(filled["yi"].to_numpy(dtype=np.float64)), _y_values(se, settings["yaxis"]), s=22.0,
               facecolor="white", edgecolor="0.3", linewidths=0.9, zorder=3,
               label=f"imputed (trim and fill, k0 = {len(filled)})")


def _overlay_egger(ax: Any, result: Any, se: np.ndarray, settings: dict, tf) -> None:
    """Egger's regression line ``x = limit + slope * predictor(se)`` of an ``egger_test`` result."""
    if not isinstance(result, pd.Series) or not {"estimate", "limit_estimate"} <= set(result.index):
        raise DrmError("funnel: egger= takes the Series returned by drm.egger_test(fit).")
    predictor = str(result.name)
    if predictor not in ("sei", "vi") or settings["xaxis"] != "yi" or not np.isfinite(result["limit_estimate"]):
        raise DrmError("funnel: egger= draws the regression on the standard error or the variance "
                       "(egger_test(fit, predictor='sei' or 'vi')) of a model without moderators "
                       f"(xaxis='yi'); got predictor={predictor!r}, xaxis={settings['xaxis']!r}.")
    x = result["limit_estimate"] + result["estimate"] * (se if predictor == "sei" else se**2)
    ax.plot(tf(x), _y_values(se, settings["yaxis"]), color="C3", linewidth=1.2, zorder=2,
            label=f"Egger regression on {'SE' if predictor == 'sei' else 'variance'} "
                  f"(p = {result['p_value']:.3g})" if "p_value" in result.index else "Egger regression")


def funnel(fit: Any, *, contour: bool = False, level: float | None = None, xaxis: str | None = None,
           yaxis: str | None = None, transform: TransformArg = None, size_by: str | None = None,
           contour_levels: tuple[float, ...] = (0.10, 0.05, 0.01), palette: Any = None,
           trim_and_fill: Any = None, egger: Any = None, data: Any = None, xlab: str | None = None,
           ylab: str | None = None, legend: bool = True, ax: Any = None, **kwargs: Any):
    """Funnel plot of :func:`funnel_table` (or of such a table passed as ``fit``).

    Points against ``yaxis`` (standard error by default, axis inverted so precise studies are
    on top), all the same size as metafor's (``size_by="precision"`` or a column scales their
    area), the estimate's vertical line and the pseudo-confidence triangle
    ``center +- z_level se`` (``level`` default 0.95), both in the legend.  ``contour=True``
    shades the regions where a study's own z test (two-sided, against 0) has p between
    ``contour_levels`` (default .10, .05, .01), as Peters et al. (2008); ``palette``: their
    colours, from the largest p band to the smallest (default light greys, lightest for
    p < .01).  ``trim_and_fill``: a :func:`drmpy.trim_and_fill` result, whose imputed effect
    sizes are drawn as open grey points; ``egger``: a :func:`drmpy.egger_test` Series (predictor
    ``"sei"`` or ``"vi"``), whose regression line is drawn.  Given a table, ``level``,
    ``transform``, ``xaxis``, ``yaxis`` and ``size_by`` are the table's (passing a different
    one raises a :class:`DrmError`).  ``kwargs`` style the points; returns the Axes.
    """
    given = {"level": level, "transform": transform, "xaxis": xaxis, "yaxis": yaxis, "size_by": size_by}
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        table = funnel_table(fit, level=0.95 if level is None else level, xaxis=xaxis,
                             yaxis=yaxis or "sei", transform=transform, size_by=size_by, data=data)
    settings = table_settings(table, "funnel", columns=("x", "y", "sei", "size_value"), given=given)
    yaxis, center, tf = settings["yaxis"], float(settings["center"]), resolve_transform(settings["transform"])
    ax = new_axes(ax, (5.6, 4.6))
    se = _se_grid(table["sei"].to_numpy(dtype=np.float64), yaxis)
    yv = _y_values(se, yaxis)
    if contour:
        _draw_contours(ax, se, yv, contour_levels, palette, tf)
    z = float(stats.norm.ppf(0.5 + settings["level"] / 2.0))
    region = f"{settings['level']:.0%} pseudo-confidence region"
    for sign in (-1.0, 1.0):
        ax.plot(tf(center + sign * z * se), yv, color="0.15", linestyle=":", linewidth=1.1,
                label=region if sign > 0 else "_" + region)
    estimate_label = ("pooled estimate" if settings["xaxis"] == "yi" else "zero residual (fixed part)")
    ax.axvline(float(tf(np.array([center]))[0]), color="0.15", linewidth=1.0, zorder=1,
               label=estimate_label)
    if egger is not None:
        _overlay_egger(ax, egger, se, settings, tf)
    point_kw = {"facecolor": "0.2", "edgecolor": "0.05", "linewidths": 0.6, "zorder": 4}
    point_kw.update(kwargs)
    sizes = (marker_areas(table["size_value"].to_numpy(), 8.0, 80.0) if settings["size_by"] else 20.0)
    ax.scatter(table["x"], table["y"], s=sizes, label="_effect sizes", **point_kw)
    if trim_and_fill is not None:
        _overlay_trim_and_fill(ax, trim_and_fill, settings, tf)
    ends = tf(center + np.array([-z, z]) * se.max())
    drawn_x = np.concatenate([table["x"].to_numpy(dtype=np.float64), ends,
                              *[c.get_offsets()[:, 0] for c in ax.collections if c.get_label().startswith("imputed")]])
    lo, hi = float(np.nanmin(drawn_x)), float(np.nanmax(drawn_x))
    pad = 0.05 * (hi - lo)
    ax.set_xlim(lo - pad, hi + pad)
    if yaxis in ("sei", "vi"):
        ax.set_ylim(float(yv.max()), 0.0)  # inverted: precise studies at the top
    ax.set_ylabel(ylab if ylab is not None else _YAXES[yaxis])
    ax.set_xlabel(xlab if xlab is not None else effect_label(settings["response"], settings["transform"],
                                                             residual=settings["xaxis"] == "residuals"))
    if legend:
        _legend(ax, contour, contour_levels)
    return ax


def _draw_contours(ax, se, yv, contour_levels, palette, tf) -> None:
    levels = sorted(contour_levels, reverse=True)  # .10, .05, .01
    shades = list(palette) if palette is not None else list(_CONTOUR_PALETTE)
    if len(shades) < len(levels):
        raise DrmError(f"funnel: palette has {len(shades)} colours for {len(levels)} contour regions.")
    for i, p in enumerate(levels):
        z_in = float(stats.norm.ppf(1.0 - p / 2.0))
        z_out = float(stats.norm.ppf(1.0 - levels[i + 1] / 2.0)) if i + 1 < len(levels) else np.inf
        for sign in (-1.0, 1.0):
            inner = sign * z_in * se
            outer = sign * z_out * se if np.isfinite(z_out) else np.full_like(se, sign * 50.0)
            lo, hi = (inner, outer) if sign > 0 else (outer, inner)
            label = (f"{levels[i + 1]:.2f} < p < {p:.2f}" if i + 1 < len(levels) else f"p < {p:.2f}")
            ax.fill_betweenx(yv, tf(np.clip(lo, -50, 50)), tf(np.clip(hi, -50, 50)), color=shades[i],
                             linewidth=0, zorder=0, label=label if sign > 0 else "_" + label)


def _legend(ax, contour: bool, contour_levels) -> None:
    """Every labelled artist in one legend above the Axes (outside the data)."""
    handles, labels = ax.get_legend_handles_labels()
    if contour:
        from matplotlib.patches import Patch

        handles.insert(0, Patch(facecolor="white", edgecolor="0.6", linewidth=0.6))
        labels.insert(0, f"p > {max(contour_levels):.2f}")
    ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False,
              fontsize=8, borderaxespad=0.2, columnspacing=1.0)
