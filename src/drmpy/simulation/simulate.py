"""Responses drawn from a fitted model's marginal distribution (``DrmFit.simulate``).

``y* = X beta_hat + e_V + sigma_i eps_i + sum_g Z_g b_g``: the known sampling errors
``e_V ~ N(0, V)``, the row-level heterogeneity with the fitted ``sigma_i``, and every
random effect redrawn from its fitted distribution (``b ~ N(0, G_hat)``), so that
``y* ~ MVN(X beta_hat, V + diag(sigma^2) + Z G Z')``, the fitted marginal model.  The
pieces are drawn separately (V block by block, G level by level, relmat through the
Cholesky factor of K), so no n x n covariance is formed unless V itself is one block.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DrmError
from ..results.random_effects import _term_params, level_covariances, level_sds

__all__ = ["simulate_responses"]


def _psd_factor(M: np.ndarray) -> np.ndarray:
    """A square root F of a symmetric PSD matrix (F F' = M), also for singular M."""
    try:
        return np.linalg.cholesky(M)
    except np.linalg.LinAlgError:
        lam, Q = np.linalg.eigh(0.5 * (M + M.T))
        return Q * np.sqrt(np.clip(lam, 0.0, None))[None, :]


def simulate_draws(fit, nsim: int, rng: np.random.Generator) -> np.ndarray:
    """(n, nsim) responses for the retained rows, in the fit's row order."""
    design = fit.design
    theta = np.asarray(fit.params.to_numpy(), dtype=float)
    n = design.nobs
    p = design.fixed["mu"].matrix.shape[1]
    mean = design.fixed["mu"].matrix @ theta[:p]
    out = np.repeat(mean[:, None], nsim, axis=1)
    kv = design.known_v
    if kv.matrix is None:
        out += np.sqrt(kv.diag)[:, None] * rng.standard_normal((n, nsim))
    else:
        for rows in kv.blocks:
            F = _psd_factor(kv.matrix[np.ix_(rows, rows)])
            out[rows] += F @ rng.standard_normal((len(rows), nsim))
    sigma = np.asarray(fit._sigma_values)
    out += sigma[:, None] * rng.standard_normal((n, nsim))
    if design.random:
        _, terms = _term_params(design, theta)
        for rd, (alphas, etas) in zip(design.random, terms):
            L, q = rd.n_levels, rd.n_coef
            if rd.relmat is not None:
                sd = level_sds(rd, alphas)[:, 0]
                b = sd[:, None] * (np.linalg.cholesky(rd.relmat) @ rng.standard_normal((L, nsim)))
                out += rd.z[:, :1] * b[rd.level_index]
                continue
            G = level_covariances(rd, alphas, etas)  # (L, q, q)
            if q == 1:
                b = np.sqrt(G[:, 0, 0])[:, None, None] * rng.standard_normal((L, 1, nsim))
            else:
                F = np.stack([_psd_factor(G[l]) for l in range(L)])
                b = F @ rng.standard_normal((L, q, nsim))
            out += np.einsum("nq,nqs->ns", rd.z, b[rd.level_index])
    return out


def simulate_responses(fit, nsim: int, seed=None) -> pd.DataFrame:
    """See :meth:`drmpy.DrmFit.simulate`."""
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or int(nsim) < 1:
        raise DrmError(f"nsim must be a positive integer, got {nsim!r}.")
    rng = np.random.default_rng(seed)
    draws = simulate_draws(fit, int(nsim), rng)
    columns = [f"sim_{i + 1}" for i in range(int(nsim))]
    return pd.DataFrame(draws, index=fit.design.row_labels, columns=columns)
