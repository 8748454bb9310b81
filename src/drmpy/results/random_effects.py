"""Random-effect quantities after a fit: level covariances, conditional modes (BLUPs) and SDs.

With ``S = R + Z G Z'`` (``R = V + diag(sigma^2)``) and marginal residual ``r = y - X beta``:
``b_hat = G Z' S^-1 r`` and ``Cov(b | y) = G - G Z' S^-1 Z G``, evaluated per cluster of
rows when S is block-diagonal, otherwise over all levels at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..model.design import ModelDesign, RandomDesign
from ..engine.likelihood import RHO_GUARD

__all__ = ["level_sd_table", "conditional_modes", "row_covariance"]


def term_params(design: ModelDesign, theta: np.ndarray):
    """Split theta into (gamma, per-term (alphas, etas)), as the likelihood does."""
    from ..engine.likelihood import RandomStatic, Structure, split_phi

    p = design.fixed["mu"].matrix.shape[1]
    layout = Structure(
        "layout", p, design.fixed["sigma"].matrix.shape[1],
        tuple(RandomStatic(rd.n_levels, rd.n_coef, tuple(d.matrix.shape[1] for d in rd.sd_designs),
                           rd.n_cor, rd.is_relmat) for rd in design.random),
    )
    # type checker: split_phi only slices: numpy in, numpy out
    return split_phi(np.asarray(theta)[p:], layout)  # type: ignore[arg-type]


def level_sds(rd: RandomDesign, alphas) -> np.ndarray:
    """(L, q) SD of each random coefficient at each level."""
    return np.stack([np.exp(d.matrix @ a) for d, a in zip(rd.sd_designs, alphas)], axis=1)


def level_covariances(rd: RandomDesign, alphas, etas) -> np.ndarray:
    sd = level_sds(rd, alphas)
    q = rd.n_coef
    C = np.eye(q)
    if rd.n_cor:
        iu = np.triu_indices(q, 1)
        C[iu] = RHO_GUARD * np.tanh(etas)
        C = C + np.triu(C, 1).T
    return sd[:, :, None] * C[None] * sd[:, None, :]


def level_sd_table(design: ModelDesign, theta: np.ndarray, group: str) -> pd.DataFrame:
    """Fitted SD(s) per level of ``group``: one row per level, one column per coefficient."""
    _, terms = term_params(design, theta)
    for rd, (alphas, _) in zip(design.random, terms):
        if rd.group == group:
            sd = level_sds(rd, alphas)
            return pd.DataFrame(sd, index=pd.Index(rd.levels, name=group),
                                columns=list(rd.term.coefficient_names))
    groups = ", ".join(r.group for r in design.random) or "none"
    from ..errors import DrmError

    raise DrmError(f"No random-effect term for group `{group}` (groups in this model: {groups}).")


def row_covariance(design: ModelDesign, theta: np.ndarray, sigma: np.ndarray, rows: np.ndarray,
                   include_random: bool = True) -> np.ndarray:
    """Marginal covariance S restricted to ``rows`` (dense)."""
    kv = design.known_v
    if kv.matrix is not None:
        S = kv.matrix[np.ix_(rows, rows)].copy()
    else:
        S = np.diag(kv.diag[rows])
    S[np.diag_indices_from(S)] += sigma[rows] ** 2
    if include_random and design.random:
        _, terms = term_params(design, theta)
        for rd, (alphas, etas) in zip(design.random, terms):
            lev = rd.level_index[rows]
            z = rd.z[rows]
            if rd.is_relmat:
                sd = level_sds(rd, alphas)[:, 0]
                Kl = sd[:, None] * rd.relatedness() * sd[None, :]
                S += (z[:, 0:1] * Kl[np.ix_(lev, lev)] * z[:, 0][None, :])
            else:
                covs = level_covariances(rd, alphas, etas)
                same = lev[:, None] == lev[None, :]
                S += same * np.einsum("ia,iab,jb->ij", z, covs[lev], z)
    return S


def _local_design(design: ModelDesign, terms, rows: np.ndarray):
    """Z (rows x Q_c), G (Q_c x Q_c) and global column positions of the levels these rows touch."""
    from scipy.linalg import block_diag

    Zs, Gs, cols = [], [], []
    offset = 0
    for rd, (alphas, etas) in zip(design.random, terms):
        L, q = rd.n_levels, rd.n_coef
        lev = rd.level_index[rows]
        present = np.unique(lev)
        local = np.searchsorted(present, lev)
        Z = np.zeros((len(rows), len(present) * q))
        for c in range(q):
            Z[np.arange(len(rows)), local * q + c] = rd.z[rows, c]
        if rd.is_relmat:
            sd = level_sds(rd, alphas)[present, 0]
            G = sd[:, None] * rd.relatedness()[np.ix_(present, present)] * sd[None, :]
        else:
            covs = level_covariances(rd, alphas, etas)[present]
            G = block_diag(*covs) if len(present) else np.zeros((0, 0))
        Zs.append(Z)
        Gs.append(G)
        cols.append(offset + (present[:, None] * q + np.arange(q)[None, :]).reshape(-1))
        offset += L * q
    return np.concatenate(Zs, axis=1), block_diag(*Gs), np.concatenate(cols), offset


def conditional_modes(design: ModelDesign, theta: np.ndarray, sigma: np.ndarray,
                      clusters: np.ndarray | None) -> list[pd.DataFrame]:
    """Per term: DataFrame of conditional modes and conditional SDs by level and coefficient."""
    p = design.fixed["mu"].matrix.shape[1]
    beta = theta[:p]
    r = design.y - design.fixed["mu"].matrix @ beta
    _, terms = term_params(design, theta)
    Q = sum(rd.n_levels * rd.n_coef for rd in design.random)
    modes = np.zeros(Q)
    cond_var = np.zeros(Q)
    if _one_term_per_cluster(design, clusters):
        rd = design.random[0]
        modes, cond_var = _single_term_modes(design, theta, sigma, r, rd, *terms[0])
        groups: list[np.ndarray] = []
    else:
        groups = [np.arange(design.nobs)] if clusters is None else _members(clusters)
    for rows in groups:
        Zc, Gc, cols, _ = _local_design(design, terms, rows)
        S = row_covariance(design, theta, sigma, rows)
        cf = np.linalg.cholesky(S)
        W = np.linalg.solve(cf, Zc @ Gc)  # L^-1 Z G
        u = np.linalg.solve(cf, r[rows])
        modes[cols] = W.T @ u
        cond_var[cols] = np.diag(Gc) - np.sum(W * W, axis=0)
    out = []
    offset = 0
    for rd in design.random:
        L, q = rd.n_levels, rd.n_coef
        block = slice(offset, offset + L * q)
        m = modes[block].reshape(L, q)
        sd = np.sqrt(np.maximum(cond_var[block], 0.0)).reshape(L, q)
        frames = []
        for c, name in enumerate(rd.term.coefficient_names):
            frames.append(pd.DataFrame({
                "group": rd.group, "level": list(rd.levels), "term": name,
                "estimate": m[:, c], "cond_sd": sd[:, c], "n_rows": rd.level_counts,
            }))
        out.append(pd.concat(frames, ignore_index=True))
        offset += L * q
    return out


def _one_term_per_cluster(design: ModelDesign, clusters: np.ndarray | None) -> bool:
    """True when there is one (non-relmat) term and the clusters are exactly its levels."""
    if clusters is None or len(design.random) != 1 or design.random[0].is_relmat:
        return False
    lev = design.random[0].level_index
    pairs = np.unique(np.stack([lev, clusters]), axis=1)
    return pairs.shape[1] == design.random[0].n_levels == len(np.unique(clusters))


def _single_term_modes(design: ModelDesign, theta, sigma, r, rd: RandomDesign, alphas, etas):
    """Conditional modes and variances level by level, batched over levels of equal size."""
    covs = level_covariances(rd, alphas, etas)  # (L, q, q)
    q = rd.n_coef
    modes = np.zeros((rd.n_levels, q))
    cond_var = np.zeros((rd.n_levels, q))
    members = _members(rd.level_index)
    sizes = np.array([len(m) for m in members])
    kv = design.known_v
    for m in np.unique(sizes):
        idx = np.flatnonzero(sizes == m)
        rows = np.stack([members[i] for i in idx])  # (nb, m)
        levels = rd.level_index[rows[:, 0]]
        if kv.matrix is not None:
            S = kv.matrix[rows[:, :, None], rows[:, None, :]].copy()
        else:
            S = np.zeros((len(idx), m, m))
            S[:, np.arange(m), np.arange(m)] = kv.diag[rows]
        S[:, np.arange(m), np.arange(m)] += sigma[rows] ** 2
        z = rd.z[rows]  # (nb, m, q)
        G = covs[levels]  # (nb, q, q)
        ZG = z @ G
        S += ZG @ np.swapaxes(z, 1, 2)
        L = np.linalg.cholesky(S)
        W = np.linalg.solve(L, ZG)  # L^-1 Z G
        u = np.linalg.solve(L, r[rows][:, :, None])[:, :, 0]
        modes[levels] = np.einsum("bmq,bm->bq", W, u)
        cond_var[levels] = np.diagonal(G, axis1=1, axis2=2) - np.sum(W * W, axis=1)
    return modes.reshape(-1), cond_var.reshape(-1)


def _members(clusters: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(clusters, kind="stable")
    splits = np.flatnonzero(np.diff(clusters[order])) + 1
    return np.split(order, splits)
