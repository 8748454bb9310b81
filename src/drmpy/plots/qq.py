"""Normal QQ plot of residuals whitened by the fitted marginal covariance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.linalg import solve_triangular

from ._common import new_axes, require_univariate, table_settings, tag_table

__all__ = ["qq_table", "qq"]


def qq_table(fit: Any, level: float = 0.95) -> pd.DataFrame:
    """Sorted whitened residuals against normal quantiles, with a pointwise band.

    The marginal residuals ``r = y - X beta`` (fixed part) are whitened by the Cholesky factor
    of the fitted marginal covariance ``S = V + diag(sigma^2) + Z G Z' = L L'``: ``e = L^-1 r``,
    which are independent standard normal under the model (up to the estimation of beta).
    ``theoretical``: ``Phi^-1`` of R's ``ppoints(n)``; ``band_low``/``band_high``: the
    ``level`` pointwise interval of the i-th of n standard normal order statistics
    (``Phi^-1`` of Beta(i, n - i + 1) quantiles).  ``row``: the data's label of each residual
    (rows are in the data's order before whitening).
    """
    from ..inference.marginal import marginal_covariance

    require_univariate(fit, "qq_table")
    r = fit.design.y - fit.predict(re_form=False).to_numpy()
    L = np.linalg.cholesky(marginal_covariance(fit))
    e = solve_triangular(L, r, lower=True)
    n = len(e)
    order = np.argsort(e, kind="stable")
    i = np.arange(1, n + 1)
    a = 3.0 / 8.0 if n <= 10 else 0.5
    alpha = 1.0 - level
    return tag_table(pd.DataFrame({
        "theoretical": stats.norm.ppf((i - a) / (n + 1 - 2 * a)),
        "sample": e[order],
        "band_low": stats.norm.ppf(stats.beta.ppf(alpha / 2.0, i, n - i + 1)),
        "band_high": stats.norm.ppf(stats.beta.ppf(1.0 - alpha / 2.0, i, n - i + 1)),
        "row": np.asarray(fit.design.row_labels)[order],
    }), "qq", level=float(level))


def qq(fit: Any, *, level: float | None = None, xlab: str | None = None, ylab: str | None = None,
       ax: Any = None, **kwargs: Any):
    """QQ plot of :func:`qq_table` (or of such a table passed as ``fit``): points, the identity
    line and the shaded pointwise band.  ``kwargs`` style the points."""
    table = fit if isinstance(fit, pd.DataFrame) else qq_table(fit, 0.95 if level is None else level)
    level = table_settings(table, "qq", columns=("theoretical", "sample", "band_low", "band_high"),
                           given={"level": level})["level"]
    ax = new_axes(ax, (4.8, 4.6))
    ax.fill_between(table["theoretical"], table["band_low"], table["band_high"], color="0.85",
                    linewidth=0, zorder=0, label=f"{level:.0%} pointwise band")
    lims = [float(np.nanmin(table[["theoretical", "band_low", "sample"]].to_numpy())),
            float(np.nanmax(table[["theoretical", "band_high", "sample"]].to_numpy()))]
    ax.plot(lims, lims, color="0.3", linewidth=0.9, zorder=1, label="_identity")
    point_kw = {"s": 16, "facecolor": "white", "edgecolor": "0.1", "linewidths": 0.8, "zorder": 2}
    point_kw.update(kwargs)
    ax.scatter(table["theoretical"], table["sample"], label="_residuals", **point_kw)
    ax.set_xlabel(xlab if xlab is not None else "Standard normal quantile")
    ax.set_ylabel(ylab if ylab is not None else "Whitened residual  $L^{-1}(y - X\\hat\\beta)$")
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    return ax
