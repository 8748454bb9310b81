"""Caterpillar plot: conditional modes of one random effect with their intervals, sorted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError
from ._common import (TransformArg, new_axes, require_univariate, resolve_transform, table_settings,
                      tag_table)

__all__ = ["caterpillar_table", "caterpillar"]


def caterpillar_table(fit: Any, group: str, term: str = "(Intercept)", level: float = 0.95, *,
                      transform: TransformArg = None) -> pd.DataFrame:
    """Conditional modes of ``group``'s ``term`` (from ``fit.ranef()``), sorted by estimate.

    Columns ``level`` (of the grouping factor), ``estimate`` (the conditional mode, a deviation
    from the fixed-effect mean on the effect-size scale), ``conf_low``/``conf_high``
    (``estimate +- z cond_sd``, z the normal quantile of ``level``), ``n_rows`` and
    ``position`` (0 = smallest).  Values back-transformed by ``transform``.
    """
    require_univariate(fit, "caterpillar_table")
    ranef = fit.ranef()
    groups = list(dict.fromkeys(ranef["group"]))
    if group not in groups:
        raise DrmError(f"caterpillar: no random effect for group `{group}` (groups in this model: "
                       f"{', '.join(groups) or 'none'}).")
    sub = ranef[(ranef["group"] == group) & (ranef["term"] == term)]
    if sub.empty:
        terms = ", ".join(dict.fromkeys(ranef.loc[ranef["group"] == group, "term"]))
        raise DrmError(f"caterpillar: group `{group}` has no term `{term}` (terms: {terms}).")
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    sub = sub.sort_values("estimate", kind="stable")
    tf = resolve_transform(transform)
    est = sub["estimate"].to_numpy(dtype=np.float64)
    sd = sub["cond_sd"].to_numpy(dtype=np.float64)
    table = pd.DataFrame({"level": sub["level"].astype(str).to_numpy(), "estimate": tf(est),
                          "conf_low": tf(est - z * sd), "conf_high": tf(est + z * sd),
                          "n_rows": sub["n_rows"].to_numpy(), "position": np.arange(len(sub), dtype=float)})
    return tag_table(table, "caterpillar", group=group, term=term, level=float(level),
                     transform=transform, reference=float(tf(np.zeros(1))[0]))


def caterpillar(fit: Any, *, group: str | None = None, term: str | None = None,
                level: float | None = None, transform: TransformArg = None, xlab: str | None = None,
                ylab: str | None = None, max_labels: int = 40, ax: Any = None, **kwargs: Any):
    """Caterpillar plot of :func:`caterpillar_table` (or of such a table passed as ``fit``):
    one row per level, sorted, the conditional mode and its interval; level names shown when
    there are at most ``max_labels`` levels.  ``kwargs`` style the points."""
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        if group is None:
            raise DrmError("caterpillar: name the grouping factor, e.g. caterpillar(fit, 'study').")
        table = caterpillar_table(fit, group, term or "(Intercept)", 0.95 if level is None else level,
                                  transform=transform)
    settings = table_settings(table, "caterpillar", columns=("level", "estimate", "conf_low", "conf_high",
                                                             "position"),
                              given={"group": group, "term": term, "level": level, "transform": transform})
    n = len(table)
    ax = new_axes(ax, (5.6, min(1.8 + 0.16 * n, 12.0) if n <= max_labels else 5.6))
    ax.axvline(settings["reference"], color="0.45", linewidth=0.8, linestyle="--", zorder=0)
    ax.hlines(table["position"], table["conf_low"], table["conf_high"], colors="0.45",
              linewidths=0.7 if n > 100 else 1.0, zorder=1, label="_intervals")
    point_kw = {"s": 6 if n > 100 else 14, "color": "0.05", "zorder": 2}
    point_kw.update(kwargs)
    ax.scatter(table["estimate"], table["position"], label="_conditional modes", **point_kw)
    group_name, term_name = settings["group"], settings["term"]
    if n <= max_labels:
        ax.set_yticks(table["position"], table["level"], fontsize=8)
        ax.set_ylabel(ylab if ylab is not None else str(group_name))
    else:
        ax.set_yticks([])
        ax.set_ylabel(ylab if ylab is not None else f"{group_name} ({n} levels, sorted)")
    ax.set_ylim(-1.0, n)
    what = "intercept" if term_name == "(Intercept)" else str(term_name)
    ax.set_xlabel(xlab if xlab is not None else f"Conditional mode of the {group_name} {what} (deviation from mu)")
    return ax
