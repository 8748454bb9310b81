"""Responses drawn from a fitted model's marginal distribution (``DrmFit.simulate``).

``y* = X beta_hat + e_V + sigma_i eps_i + sum_g Z_g b_g``: the known sampling errors
``e_V ~ N(0, V)``, the row-level heterogeneity with the fitted ``sigma_i``, and every
random effect redrawn from its fitted distribution (``b ~ N(0, G_hat)``), so that
``y* ~ MVN(X beta_hat, V + diag(sigma^2) + Z G Z')``, the fitted marginal model.  The
pieces are drawn separately (V block by block, G level by level, relmat through the
Cholesky factor of K), so no n x n covariance is formed unless V itself is one block.

Bivariate fits: per study ``(y1*, y2*) ~ MVN((mu1, mu2), V_i + B_i)``, each study's 2 x 2
block (its 1 x 1 marginal for a study with one kept response); a V that correlates
studies is drawn through the factor of the whole V, and ``B_i`` study by study.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DrmError
from ..results.random_effects import term_params, level_covariances, level_sds

__all__ = ["simulate_responses", "simulate_bivariate_draws", "simulate_bivariate_responses", "random_generator"]


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
    sigma = fit.sigma().to_numpy()
    out += sigma[:, None] * rng.standard_normal((n, nsim))
    if design.random:
        _, terms = term_params(design, theta)
        for rd, (alphas, etas) in zip(design.random, terms):
            L, q = rd.n_levels, rd.n_coef
            if rd.is_relmat:
                sd = level_sds(rd, alphas)[:, 0]
                b = sd[:, None] * (np.linalg.cholesky(rd.relatedness()) @ rng.standard_normal((L, nsim)))
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
    nsim = _check_nsim(nsim)
    rng = random_generator(seed)
    draws = simulate_draws(fit, int(nsim), rng)
    columns = [f"sim_{i + 1}" for i in range(int(nsim))]
    return pd.DataFrame(draws, index=fit.design.row_labels, columns=columns)


def random_generator(seed, where: str = "simulate") -> np.random.Generator:
    """``numpy.random.default_rng(seed)``; a seed numpy refuses is a DrmError naming ``seed``."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise DrmError(f"{where}: `seed` must be None, a non-negative integer, a sequence of them, or a "
                       f"numpy Generator/SeedSequence; got {seed!r} ({' '.join(str(exc).split())}).") from exc


def _check_nsim(nsim) -> int:
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or int(nsim) < 1:
        raise DrmError(f"nsim must be a positive integer, got {nsim!r}.")
    return int(nsim)


def simulate_bivariate_draws(fit, nsim: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2, nsim) responses of a bivariate fit for the retained studies, NaN where a
    response is not kept."""
    design = fit.design
    n = design.nobs
    kept = design.kept
    mean = fit.fitted().to_numpy()  # (n, 2), NaN where not kept
    z = rng.standard_normal((n, 2, nsim))
    if design.v.block_diagonal:
        # V_i + B_i in closed form: Cholesky of each study's 2 x 2 block (1 x 1 marginals alone)
        var1, var2, cov = fit.study_covariances()
        both = kept.all(axis=1)
        l11 = np.sqrt(np.where(kept[:, 0], var1, 1.0))
        l21 = np.where(both, np.nan_to_num(cov) / l11, 0.0)
        l22 = np.sqrt(np.where(kept[:, 1], var2 - l21**2, 1.0))
        e1 = l11[:, None] * z[:, 0]
        e2 = l21[:, None] * z[:, 0] + l22[:, None] * z[:, 1]
        out = np.stack([e1, e2], axis=1)
    else:
        # e_V through the factor of the whole V (kept entries, row-paired), B_i study by study
        entries = np.flatnonzero(kept.reshape(-1))
        e_v = np.zeros((2 * n, nsim))
        e_v[entries] = _psd_factor(design.v.known.matrix) @ rng.standard_normal((len(entries), nsim))
        s = fit.sigma()
        s1, s2 = np.nan_to_num(s["sigma1"]), np.nan_to_num(s["sigma2"])
        r = np.where(design.pair, np.nan_to_num(fit.rho12()), 0.0)
        b1 = s1[:, None] * z[:, 0]
        b2 = s2[:, None] * (r[:, None] * z[:, 0] + np.sqrt(1.0 - r**2)[:, None] * z[:, 1])
        out = e_v.reshape(n, 2, nsim) + np.stack([b1, b2], axis=1)
    out = out + mean[:, :, None]
    return np.where(kept[:, :, None], out, np.nan)


def simulate_bivariate_responses(fit, nsim: int, seed=None) -> pd.DataFrame:
    """See :meth:`drmpy.BivariateFit.simulate`."""
    nsim = _check_nsim(nsim)
    draws = simulate_bivariate_draws(fit, nsim, random_generator(seed))  # (n, 2, nsim)
    names = fit.design.responses
    columns = [f"sim_{i + 1}_{name}" for i in range(nsim) for name in names]
    return pd.DataFrame(draws.transpose(0, 2, 1).reshape(fit.nobs, 2 * nsim), index=fit.row_labels,
                        columns=columns)
