"""Per-row diagnostics of a robust fit: the weight each study has in the estimate of mu, and
quantile residuals.

**Weights.**  For ``student()`` and ``normal_mixture()`` the score of ``mu`` is
``sum_i x_i w_i r_i`` with ``r_i = y_i - mu_i`` and

    w_i = E[1 / (v_i + var(u_i | mixing)) | r_i],

the posterior mean of the row's precision: for the t model ``E[1/q | r_i]``,
``q = v_i + sigma_i^2 / lambda``, over the posterior of the gamma mixing variable ``lambda``
(:func:`drmpy.families.student_marginal.posterior_precision_mean`, with the marginal's own quadrature); for the
mixture ``(1 - pi_i) / (v_i + sigma_i^2) + pi_i / (v_i + sigma_out^2)`` with ``pi_i`` the
posterior outlier probability.  So at the estimates ``mu_hat`` solves the weighted
least-squares equations with these weights (for ``mu ~ 1``: ``mu_hat = sum w_i y_i / sum w_i``):
the robust counterpart of metafor's ``weights()`` (``1 / (v_i + tau^2)``), which they equal
at ``1/nu = 0`` or ``p_out = 0``.  A far-out study gets a small weight.  Models without a
``(1|group)`` term (with one the weights depend on the group effects).

**Quantile residuals** (Dunn and Smyth 1996): ``Phi^-1(F_i(y_i))`` with ``F_i`` row i's fitted
marginal CDF (the t-plus-normal or mixture-plus-normal distribution of ``y_i`` at the
estimates; :mod:`drmpy.inference.robust_prediction`).  Standard normal under the model (at
the true parameters), so a normal QQ plot of them checks the robust model as
``rstandard`` checks the normal one; no leverage adjustment.  Upper-tail rows are computed
from the lower tail of ``-r_i`` (no loss to ``1 - F``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

from ..errors import DrmError

__all__ = ["robust_weights", "quantile_residuals"]


def _require_robust_without_groups(fit, what: str) -> None:
    family = getattr(fit, "family", None)
    if family is None or family.name not in ("student", "normal_mixture"):
        raise DrmError(f"{what} is for a student() or normal_mixture() fit; this fit's family is {family!r}.")
    if fit.design.random:
        raise DrmError(f"{what} of a {family!r} model with a (1|group) effect is not defined at fixed estimates "
                       "(it depends on the group effects); drop the random-effect term.")


def _row_values(fit) -> dict[str, np.ndarray]:
    """Every row-level parameter of the family per retained row (a fixed nu included)."""
    return {d: fit.dpar_values(d).to_numpy(dtype=np.float64) for d in ("mu", "sigma", *fit.family.extra_dpars)}


def robust_weights(fit) -> pd.Series:
    """Percentage weight of each retained row in the robust fit's estimate of ``mu`` (sums to
    100): ``100 w_i / sum(w)``, ``w_i`` the posterior mean precision (module docstring),
    times the likelihood weight ``a_i`` of ``drm.fit(weights=)`` when given."""
    from ..families.student_marginal import posterior_precision_mean

    _require_robust_without_groups(fit, "robust_weights()")
    values = _row_values(fit)
    v = np.asarray(fit.design.known_v.diag, dtype=np.float64)
    r = np.asarray(fit.design.y, dtype=np.float64) - values["mu"]
    if fit.family.name == "student":
        w = posterior_precision_mean(r, v, values["sigma"], values["nu"])
    else:
        pi = fit.outlier_probabilities().to_numpy(dtype=np.float64)
        w = (1.0 - pi) / (v + values["sigma"] ** 2) + pi / (v + values["sigma_out"] ** 2)
    if fit.design.weights is not None:
        w = w * np.asarray(fit.design.weights, dtype=np.float64)
    return pd.Series(100.0 * w / np.sum(w), index=fit.design.row_labels, name="weight")


def quantile_residuals(fit) -> np.ndarray:
    """``Phi^-1(F_i(y_i))`` per retained row of a robust fit (module docstring)."""
    from .robust_prediction import mixture_cdf, student_cdf

    _require_robust_without_groups(fit, "quantile residuals")
    values = _row_values(fit)
    v = np.asarray(fit.design.known_v.diag, dtype=np.float64)
    r = np.asarray(fit.design.y, dtype=np.float64) - values["mu"]
    lower = -np.abs(r)  # the lower tail of |r| keeps every digit
    if fit.family.name == "student":
        F = student_cdf(lower, v, values["sigma"], values["nu"])
    else:
        F = mixture_cdf(lower, v, values["sigma"], values["sigma_out"], values["p_out"])
    return np.sign(r) * -special.ndtri(F)
