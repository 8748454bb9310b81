"""Normal QQ plot of standardized (or whitened) residuals of the fixed part."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.linalg import cho_factor, cho_solve, solve_triangular

from ..errors import DrmError
from ._common import new_axes, require_univariate, table_settings, tag_table

__all__ = ["qq_table", "qq"]

_YLABELS = {"standardized": "Standardized residual", "quantile": "Quantile residual  $\\Phi^{-1}(F_i(y_i))$",
            "whitened": "Whitened residual  $L^{-1}(y - X\\hat\\beta)$"}


def standardized_residuals(fit: Any) -> np.ndarray:
    """Internally standardized residuals, metafor's ``rstandard``: ``r_i / sqrt(Var(r)_ii)``.

    ``r = y - X beta`` (fixed part) and ``Var(r) = S - X (X' S^-1 X)^-1 X'`` with ``S`` the
    fitted marginal covariance ``V + diag(sigma^2) + Z G Z'``: each residual belongs to one
    row and is standard normal under the model (the residuals are correlated).
    """
    from ..inference.marginal import marginal_covariance

    r = fit.design.y - fit.predict(re_form=False).to_numpy()
    S = marginal_covariance(fit)
    X = np.asarray(fit.design.fixed["mu"].matrix, dtype=np.float64)
    factor = cho_factor(S, lower=True)
    information = X.T @ cho_solve(factor, X)
    hat_part = np.einsum("ip,pq,iq->i", X, np.linalg.inv(information), X)
    return r / np.sqrt(np.diag(S) - hat_part)


def whitened_residuals(fit: Any) -> np.ndarray:
    """``L^-1 r`` with ``S = L L'`` (Cholesky): independent standard normal under the model, but
    the i-th mixes rows 1..i of the data, so it belongs to no single row."""
    from ..inference.marginal import marginal_covariance

    r = fit.design.y - fit.predict(re_form=False).to_numpy()
    return solve_triangular(np.linalg.cholesky(marginal_covariance(fit)), r, lower=True)


def qq_table(fit: Any, level: float = 0.95, *, residuals: str = "standardized") -> pd.DataFrame:
    """Sorted residuals against normal quantiles, with a pointwise band.

    ``residuals="standardized"`` (default): metafor's ``rstandard``, as its ``qqnorm`` draws
    (see :func:`standardized_residuals`), or for a robust fit (``student()``,
    ``normal_mixture()``) the quantile residuals ``Phi^-1(F_i(y_i))`` of
    :func:`drmpy.inference.robust_residuals.quantile_residuals`; ``row`` is the data's label of each.  ``"whitened"``:
    ``L^-1 (y - X beta)`` (:func:`whitened_residuals`), exactly independent under the model
    but each a mix of rows, so the table has no ``row`` column.  ``theoretical``: ``Phi^-1``
    of R's ``ppoints(n)``; ``band_low``/``band_high``: the ``level`` pointwise interval of the
    i-th of n independent standard normal order statistics (``Phi^-1`` of Beta(i, n - i + 1)
    quantiles; for correlated standardized residuals a guide, not an exact band).
    """
    require_univariate(fit, "qq_table")
    from ..results.robust_fit import RobustFit

    if isinstance(fit, RobustFit):
        if residuals not in ("standardized", "quantile"):
            raise DrmError(f"qq(residuals={residuals!r}) assumes a Gaussian random-effects model; a {fit.family!r} "
                           "fit has quantile residuals (residuals='quantile', what 'standardized' gives it).")
        from ..inference.robust_residuals import quantile_residuals

        e = quantile_residuals(fit)
        residuals = "quantile"
    elif residuals == "standardized":
        e = standardized_residuals(fit)
    elif residuals == "whitened":
        e = whitened_residuals(fit)
    else:
        raise DrmError(f"qq: residuals must be 'standardized' or 'whitened', got {residuals!r}.")
    n = len(e)
    order = np.argsort(e, kind="stable")
    i = np.arange(1, n + 1)
    a = 3.0 / 8.0 if n <= 10 else 0.5
    alpha = 1.0 - level
    table = pd.DataFrame({
        "theoretical": stats.norm.ppf((i - a) / (n + 1 - 2 * a)),
        "sample": e[order],
        "band_low": stats.norm.ppf(stats.beta.ppf(alpha / 2.0, i, n - i + 1)),
        "band_high": stats.norm.ppf(stats.beta.ppf(1.0 - alpha / 2.0, i, n - i + 1)),
    })
    if residuals in ("standardized", "quantile"):
        table["row"] = np.asarray(fit.design.row_labels)[order]
    return tag_table(table, "qq", level=float(level), residuals=residuals)


def qq(fit: Any, *, level: float | None = None, residuals: str | None = None, xlab: str | None = None,
       ylab: str | None = None, ax: Any = None, **kwargs: Any):
    """QQ plot of :func:`qq_table` (or of such a table passed as ``fit``): points, the identity
    line over the points' range of theoretical quantiles, and the shaded pointwise band.
    ``kwargs`` style the points."""
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        table = qq_table(fit, 0.95 if level is None else level, residuals=residuals or "standardized")
        residuals = None  # the table was made with it (a robust fit's 'standardized' is 'quantile')
    settings = table_settings(table, "qq", columns=("theoretical", "sample", "band_low", "band_high"),
                              given={"level": level, "residuals": residuals})
    level = settings["level"]
    ax = new_axes(ax, (4.8, 4.6))
    ax.fill_between(table["theoretical"], table["band_low"], table["band_high"], color="0.85",
                    linewidth=0, zorder=0, label=f"{level:.0%} pointwise band")
    span = [float(table["theoretical"].min()), float(table["theoretical"].max())]
    ax.plot(span, span, color="0.3", linewidth=0.9, zorder=1, label="identity")
    point_kw = {"s": 16, "facecolor": "white", "edgecolor": "0.1", "linewidths": 0.8, "zorder": 2}
    point_kw.update(kwargs)
    ax.scatter(table["theoretical"], table["sample"], label="_residuals", **point_kw)
    ax.set_xlabel(xlab if xlab is not None else "Standard normal quantile")
    ax.set_ylabel(ylab if ylab is not None else _YLABELS[settings["residuals"]])
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    return ax
