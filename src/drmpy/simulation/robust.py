"""Responses drawn from a fitted robust model (``student()``, ``normal_mixture()``).

Each draw is ``y_i = mu_i + b_g(i) + u_i + e_i`` for the retained rows: ``e_i ~ N(0, v_i)``
(the known sampling variance), ``u_i`` from the family's random-effect distribution at the row's
fitted parameters (``sigma_i T`` with ``T`` standard t on ``nu_i`` degrees of freedom, normal at
``nu = inf``; or ``N(0, sigma_i^2)`` with probability ``1 - p_i`` and ``N(0, sigma_out_i^2)``
with probability ``p_i``), and for a Gaussian ``(1|g)`` term ``b_g ~ N(0, sd_g^2)`` per level
(redrawn, not the conditional modes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["robust_draws", "simulate_robust"]


def _dpar(fit, dpar: str) -> np.ndarray:
    return fit.dpar_values(dpar).to_numpy(dtype=np.float64)  # a fixed nu included


def robust_draws(fit, nsim: int, rng: np.random.Generator) -> np.ndarray:
    """(n, nsim) responses for the retained rows, in the fit's row order (module docstring)."""
    design = fit.design
    n = design.nobs
    out = np.repeat(_dpar(fit, "mu")[:, None], nsim, axis=1)
    out += np.sqrt(np.asarray(design.known_v.diag, dtype=np.float64))[:, None] * rng.standard_normal((n, nsim))
    sigma = _dpar(fit, "sigma")
    if fit.family.name == "student":
        nu = _dpar(fit, "nu")
        finite = np.isfinite(nu)
        z = rng.standard_normal((n, nsim))
        # T = Z / sqrt(W / nu), W ~ chi2(nu); the normal draw where nu is infinite (the boundary)
        w = rng.chisquare(np.where(finite, nu, 1.0)[:, None], size=(n, nsim))
        scale = np.where(finite[:, None], np.sqrt(np.where(finite, nu, 1.0)[:, None] / w), 1.0)
        out += sigma[:, None] * z * scale
    elif fit.family.name == "normal_mixture":
        outlier = rng.random((n, nsim)) < _dpar(fit, "p_out")[:, None]
        sd = np.where(outlier, _dpar(fit, "sigma_out")[:, None], sigma[:, None])
        out += sd * rng.standard_normal((n, nsim))
    else:  # pragma: no cover - RobustFit only holds the two families
        raise NotImplementedError(fit.family)
    for rd in design.random:
        sd = fit.sd(rd.group).to_numpy(dtype=np.float64)[:, 0]  # (levels,)
        b = sd[:, None] * rng.standard_normal((rd.n_levels, nsim))
        out += b[rd.level_index]
    return out


def simulate_robust(fit, nsim: int, seed=None) -> pd.DataFrame:
    """See :meth:`drmpy.results.robust_fit.RobustFit.simulate`."""
    from .simulate import _check_nsim, random_generator

    nsim = _check_nsim(nsim)
    draws = robust_draws(fit, nsim, random_generator(seed))
    return pd.DataFrame(draws, index=fit.design.row_labels, columns=[f"sim_{i + 1}" for i in range(nsim)])
