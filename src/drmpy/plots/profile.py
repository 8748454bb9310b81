"""Profile-likelihood plot of one parameter with its profile interval marked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError
from ._common import TransformArg, new_axes, resolve_transform, table_settings, tag_table

__all__ = ["profile_table", "profile"]


def profile_table(fit: Any, param: str, level: float = 0.95, *, n: int = 25, grid_level: float = 0.99,
                  transform: TransformArg = None) -> pd.DataFrame:
    """The profile curve of ``param`` and its ``level`` profile interval, one row per point.

    ``kind == "curve"``: ``fit.profile(param, n, grid_level)`` (``n`` values spanning the
    ``grid_level`` interval) together with ``fit.profile(param, n, level)`` (``n`` more values
    spanning the ``level`` interval, whose ends lie on the cut), sorted by value, so the curve
    is densest where it crosses the cut; ``"estimate"`` (statistic 0) and ``"lower"``/``"upper"`` (the
    ``fit.conf_int(level, method="profile")`` endpoints, statistic ``qchisq(level, 1)``; an
    open side is left out).  Columns ``kind``, ``link_value`` (the parameter on its link scale,
    as in ``fit.params``), ``value`` (back-transformed by ``transform``, e.g. ``"exp"`` for an
    SD), ``loglik`` (curve rows) and ``statistic`` = ``2 (l_hat - l_p)``.
    """
    if not hasattr(fit, "profile") or not hasattr(fit, "conf_int"):
        raise DrmError(f"profile() needs a fit from drm.fit(), got {type(fit).__name__}.")
    tf = resolve_transform(transform)
    curve = pd.concat([fit.profile(param, n=n, level=grid_level), fit.profile(param, n=n, level=level)])
    curve = curve.sort_values("value", kind="stable").drop_duplicates("value")
    interval = fit.conf_int(level=level, method="profile", params=[param]).iloc[0]
    critical = float(stats.chi2.ppf(level, 1))
    rows = [pd.DataFrame({"kind": "curve", "link_value": curve["value"].to_numpy(),
                          "loglik": curve["loglik"].to_numpy(), "statistic": curve["statistic"].to_numpy()})]
    marks = [("estimate", float(interval["estimate"]), 0.0),
             ("lower", float(interval["lower"]), critical), ("upper", float(interval["upper"]), critical)]
    rows.append(pd.DataFrame([{"kind": k, "link_value": v, "loglik": np.nan, "statistic": s}
                              for k, v, s in marks if np.isfinite(v)]))
    table = pd.concat(rows, ignore_index=True)
    table.insert(2, "value", tf(table["link_value"].to_numpy()))
    return tag_table(table, "profile", param=param, level=float(level), critical=critical,
                     status=str(interval.get("status", "")), transform=transform)


def _smooth(x: np.ndarray, y: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A monotone cubic (PCHIP) through the evaluated points, on a fine grid that contains them
    (so the drawn line passes through every evaluated point and never overshoots between them)."""
    from scipy.interpolate import PchipInterpolator

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3:
        return x, y
    fine = np.union1d(np.linspace(x.min(), x.max(), points), x)
    return fine, PchipInterpolator(x, y)(fine)


def profile(fit: Any, *, param: str | None = None, level: float | None = None, n: int = 25,
            grid_level: float = 0.99, transform: TransformArg = None, xlab: str | None = None,
            ylab: str | None = None, ax: Any = None, **kwargs: Any):
    """Profile plot of :func:`profile_table` (or of such a table passed as ``fit``): the curve
    ``2 (l_hat - l_p)`` (a monotone cubic through the evaluated points), the ``qchisq(level, 1)``
    cut (dashed), the interval's ends (dotted verticals, their values printed beside them) and
    the estimate (the point at 0, drawn whole).  ``kwargs`` style the curve."""
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        if param is None:
            raise DrmError("profile: name the parameter, e.g. profile(fit, param='sigma:(Intercept)').")
        table = profile_table(fit, param, 0.95 if level is None else level, n=n, grid_level=grid_level,
                              transform=transform)
    settings = table_settings(table, "profile", columns=("kind", "value", "statistic"),
                              given={"param": param, "level": level, "transform": transform})
    ax = new_axes(ax, (5.2, 4.0))
    curve = table[table["kind"] == "curve"].sort_values("value")
    line_kw = {"color": "C0", "linewidth": 1.8}
    line_kw.update(kwargs)
    ax.plot(*_smooth(curve["value"].to_numpy(dtype=np.float64), curve["statistic"].to_numpy(dtype=np.float64)),
            label="_profile", **line_kw)
    critical, lev = settings["critical"], settings["level"]
    ax.axhline(critical, color="0.35", linestyle="--", linewidth=0.9, label="_cut")
    # centred above the cut, where the curve is near its minimum and cannot collide with it
    ax.text(0.5, critical, f"{lev:.0%} cut: qchisq({lev:g}, 1) = {critical:.2f}",
            transform=ax.get_yaxis_transform(), ha="center", va="bottom", fontsize=8, color="0.3")
    ends = table[table["kind"].isin(["lower", "upper"])]
    ax.vlines(ends["value"], 0.0, ends["statistic"], colors="0.2", linestyles=":", linewidth=1.0,
              label="_interval ends")
    from matplotlib import transforms as mtransforms

    at_bottom = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for _, row in ends.iterrows():  # the end's value beside its line, outside the interval
        lower = row["kind"] == "lower"
        ax.text(row["value"], 0.03, f" {row['value']:.4g} " if lower else f" {row['value']:.4g}",
                transform=at_bottom, ha="right" if lower else "left", va="bottom", fontsize=8,
                color="0.1", gid=f"{row['kind']} end")
    est = table[table["kind"] == "estimate"]
    ax.scatter(est["value"], est["statistic"], s=30, color="0.1", zorder=3, clip_on=False, label="_estimate")
    name = settings["param"]
    ax.set_xlabel(xlab if xlab is not None else
                  f"{name} (link scale)" if settings["transform"] is None else _transformed(name, settings["transform"]))
    ax.set_ylabel(ylab if ylab is not None else "Likelihood-ratio statistic\n2 (max logLik - profile logLik)")
    top = max(float(np.nanmax(curve["statistic"])), critical * 1.15)
    ax.set_ylim(-0.03 * top, top * 1.04)  # the estimate's point at 0 is drawn whole
    return ax


def _transformed(param: str, transform: TransformArg) -> str:
    """``exp(sd(article):(Intercept))``: the parameter's name inside its back-transformation."""
    from ._common import transform_name

    name = transform_name(transform)
    return f"{name}({param})" if name else f"{param}, back-transformed"
