"""Duval and Tweedie's trim-and-fill (estimators L0 and R0), as metafor's ``trimfill``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..errors import DrmError
from .refit import require_drm_fit

__all__ = ["TrimAndFill", "trim_and_fill"]


@dataclass(frozen=True)
class TrimAndFill:
    """Result of :func:`trim_and_fill`.

    ``k0``: number of imputed effect sizes; ``se_k0``: its standard error; ``side``: the
    side of the funnel where effect sizes were imputed (``"left"`` or ``"right"``);
    ``estimator``; ``p_k0``: for R0, the p-value of k0 (NaN for L0); ``fit``: the model
    refitted to the data plus the imputed rows (the original fit when ``k0 == 0``);
    ``filled``: DataFrame of the imputed ``yi`` and ``vi``.
    """

    k0: int
    se_k0: float
    side: str
    estimator: str
    p_k0: float
    fit: object = field(repr=False)
    filled: pd.DataFrame = field(repr=False)
    iterations: int = 0


def _check_model(fit) -> None:
    """Refuse a model trim-and-fill cannot refit with the filled rows, naming what it has."""
    design = fit.design
    why = None
    if design.random:
        why = "it has random effects"
    elif tuple(design.fixed["mu"].terms) != ("(Intercept)",):
        why = f"the mu formula `{fit.formula.text['mu']}` has moderators"
    elif not design.common_effect and tuple(design.fixed["sigma"].terms) != ("(Intercept)",):
        why = f"the sigma formula `{fit.formula.text['sigma']}` has moderators (location-scale model)"
    elif not design.known_v.is_diagonal:
        why = "its sampling covariance V is not diagonal"
    elif design.weights is not None and np.any(design.weights != 1.0):
        why = "it has row weights"
    if why is not None:
        raise DrmError(
            f"trim_and_fill needs a model without moderators, as metafor's trimfill: random-effects "
            f"(yi ~ 1 + meta_V(V = vi), sigma ~ 1) or common-effect (sigma ~ 0), one effect size per row; "
            f"this fit cannot be used: {why}."
        )


def _intercept_fit(y: np.ndarray, v: np.ndarray, method: str, control, common_effect: bool = False):
    """The intercept-only fit of ``y`` with sampling variances ``v``: random-effects
    (``sigma ~ 1``), or common-effect (``sigma ~ 0``: the inverse-variance weighted mean)."""
    from ..api import fit as drm_fit
    from ..model.formula import Formula

    frame = pd.DataFrame({"yi": y, "vi": v})
    formula = Formula("yi ~ 1 + meta_V(V = vi)", "sigma ~ 0") if common_effect else Formula("yi ~ 1 + meta_V(V = vi)")
    return drm_fit(formula, frame, method=method, control=control)


def trim_and_fill(fit, side: str | None = None, estimator: str = "L0", max_iter: int = 100) -> TrimAndFill:
    """Trim-and-fill for a model without moderators (metafor's ``trimfill``): a random-effects
    model (``sigma ~ 1``) or a common-effect model (``sigma ~ 0``, metafor's ``method="EE"``),
    whose trimmed refits and final refit are then common-effect fits too.

    ``side``: where effect sizes are missing, ``"left"``, ``"right"`` or None (chosen from
    the sign of Egger's slope: negative -> right, as metafor).  ``estimator``: ``"L0"``
    (default) or ``"R0"``.  The trimmed refits and the final refit use the fit's method.
    Models with moderators, random effects, a sigma formula with moderators, a non-diagonal V
    or weights raise a :class:`~drmpy.DrmError` naming which (the filled rows would need
    values for them).
    """
    require_drm_fit(fit, "trim_and_fill")
    _check_model(fit)
    common_effect = bool(fit.design.common_effect)
    if estimator not in ("L0", "R0"):
        raise DrmError(f"estimator must be 'L0' or 'R0', got {estimator!r}.")
    y0 = np.asarray(fit.design.y, dtype=np.float64)
    v0 = np.asarray(fit.design.known_v.diag, dtype=np.float64)
    k = len(y0)
    if k < 3:
        raise DrmError(f"trim_and_fill needs at least 3 effect sizes, the fit has {k}.")
    if side is None:
        from .egger import egger_test

        side = "right" if egger_test(fit, "sei")["estimate"] < 0 else "left"
    elif side not in ("left", "right"):
        raise DrmError(f"side must be 'left', 'right' or None, got {side!r}.")
    sign = -1.0 if side == "right" else 1.0
    order = np.argsort(sign * y0, kind="stable")
    yi, vi = sign * y0[order], v0[order]
    k0, k0_prev, it = 0, -1, 0
    se_k0 = math.nan
    beta = math.nan
    while k0 != k0_prev:
        k0_prev = k0
        it += 1
        if it > max_iter:
            raise DrmError(f"trim_and_fill did not converge in {max_iter} iterations.")
        trimmed = _intercept_fit(yi[: k - k0], vi[: k - k0], fit.method, fit.control, common_effect)
        beta = float(trimmed.params.iloc[0])
        dev = yi - beta
        signed = np.sign(dev) * rankdata(np.abs(dev), method="ordinal")
        if estimator == "R0":
            neg = -signed[signed < 0]
            k0_raw: float = (k - (neg.max() if neg.size else 0)) - 1
            se = math.sqrt(2.0 * max(0.0, k0_raw) + 2.0)
        else:
            Sr = float(np.sum(signed[signed > 0]))
            k0_raw = (4.0 * Sr - k * (k + 1)) / (2 * k - 1)
            var_sr = (k * (k + 1) * (2 * k + 1) + 10 * k0_raw**3 + 27 * k0_raw**2 + 17 * k0_raw
                      - 18 * k * k0_raw**2 - 18 * k * k0_raw + 6 * k**2 * k0_raw) / 24.0
            se = 4.0 * math.sqrt(var_sr) / (2 * k - 1) if var_sr >= 0 else math.nan
        k0 = int(max(0, np.round(k0_raw)))
        se_k0 = max(0.0, se)
    p_k0 = math.nan
    if estimator == "R0":
        m = np.arange(-1, k0)
        p_k0 = 1.0 - float(np.sum([math.comb(int(j) + 1, int(j) + 1) * 0.5 ** (j + 2) for j in m]))
    if k0 > 0:
        # mirror the k0 most extreme effect sizes about the trimmed estimate (original scale)
        filled_y = sign * (2.0 * beta - yi[k - k0:])
        filled_v = vi[k - k0:]
        filled = pd.DataFrame({"yi": filled_y, "vi": filled_v})
        refit = _intercept_fit(np.concatenate([y0, filled_y]), np.concatenate([v0, filled_v]),
                               fit.method, fit.control, common_effect)
    else:
        filled = pd.DataFrame({"yi": np.zeros(0), "vi": np.zeros(0)})
        refit = fit
    return TrimAndFill(k0, se_k0, side, estimator, p_k0, refit, filled, it)
