"""Cluster-robust (sandwich) covariance of the location coefficients, clubSandwich's way.

With working weights ``W_j = S_jj^-1`` (the inverse of the fitted marginal covariance
within cluster j), ``B = (sum_j X_j' W_j X_j)^-1`` and marginal residuals
``r = y - X beta_hat``,

    V_CR = B [sum_j X_j' W_j A_j r_j r_j' A_j' W_j X_j] B,

with ``A_j = I`` (CR0), ``sqrt(J / (J - 1)) I`` (CR1), or for CR2 the bias-reduced
linearisation adjustment of Pustejovsky and Tipton (2018) with the working model as target,
``A_j = U_j' (U_j (I - X_j B X_j' W_j) S_jj U_j')^{-1/2} U_j`` (``U_j`` the upper Cholesky
factor of ``S_jj``; symmetric inverse square root, eigenvalues below 1e-12 set to zero).
The Satterthwaite df of coefficient i is ``2 E^2 / V`` with ``E = tr(P_i)``,
``V = 2 ||P_i||_F^2`` and the J x J matrix
``P_i[j, k] = delta_jk ||g_ij||^2 - h_ij' h_ik``, ``g_ij = (B X_j' W_j A_j L_j)[i]``,
``h_ij = (B X_j' W_j A_j X_j L_B)[i]`` (``L_j``, ``L_B`` lower Cholesky factors of ``S_jj``
and ``B``).  This is clubSandwich's ``vcovCR(fit, cluster, type)`` and ``coef_test(...,
test = "Satterthwaite")`` for ``rma``/``rma.mv`` fits (``inverse_var = TRUE``), which
metafor's ``robust(fit, cluster, clubSandwich = TRUE)`` calls.

The blocks ``S_jj`` are built cluster by cluster (no n x n matrix), after checking that S
is block-diagonal by cluster (:func:`check_nested`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ..errors import DrmError
from ..results.random_effects import row_covariance

__all__ = ["RobustVcov", "cluster_robust", "cluster_codes"]

TYPES = ("CR0", "CR1", "CR2")


class RobustVcov(NamedTuple):
    """``vcov`` (p x p, location coefficients), ``df`` (Satterthwaite, per coefficient) and
    the number of clusters."""

    vcov: np.ndarray
    df: np.ndarray
    n_clusters: int


def cluster_codes(fit, cluster: Any) -> np.ndarray:
    """Integer cluster code per retained row.

    ``cluster``: a column name of the data given to ``drm.fit`` (values at the retained
    rows), a pandas Series (indexed like that data: taken by position; another index is aligned
    by label), or an array with one value per retained row (or per data row).  Values are
    taken by row position, so a data index with repeated labels works.  Missing values are
    an error that names the row.
    """
    from ..bias.refit import retained_values
    from ..model import frames

    labels = fit.design.row_labels
    if cluster is None:
        raise DrmError("Cluster-robust vcov ('CR0', 'CR1', 'CR2') needs cluster= (a column name or array).")
    name = f"`{cluster}`" if isinstance(cluster, str) else "cluster"
    if isinstance(cluster, str) and fit.data is None:
        raise DrmError(f"cluster=`{cluster}`: this fit keeps no reference to its data; pass the cluster "
                       "values (an array per retained row, or a Series indexed like the data).")
    if isinstance(cluster, str) and cluster not in frames.column_names(fit.data):
        raise DrmError(f"cluster=`{cluster}` is not a column of the data given to drm.fit.")
    if not isinstance(cluster, (str, pd.Series)) and np.ndim(cluster) == 1 and len(cluster) not in (fit.nobs, fit.design.n_data):
        raise DrmError(f"cluster has {np.size(cluster)} values; give one per row the fit used ({fit.nobs}), "
                       "a column name, or a Series indexed like the data.")
    # by row position: the data's index may repeat labels (pd.concat without ignore_index)
    values = pd.Series(retained_values(fit, cluster, "cluster"))
    na = pd.isna(values.to_numpy())
    if na.any():
        raise DrmError(f"{name} has a missing value at row {labels[np.flatnonzero(na)[0]]!r}; "
                       "every row the fit used needs a cluster.")
    codes, uniques = pd.factorize(values.to_numpy(), sort=True)
    if len(uniques) < 2:
        raise DrmError(f"{name} has a single cluster; cluster-robust variances need at least two.")
    return codes


def check_nested(fit, codes: np.ndarray) -> None:
    """The fitted marginal covariance must be block-diagonal by cluster (clubSandwich's
    requirement that the random effects be nested within the clusters): every level of every
    random-effect group, every pair of related levels (relmat), and every block of a full V
    lies within one cluster.  A ``DrmError`` names the group or row otherwise."""
    d = fit.design
    labels = d.row_labels
    for rd in d.random:
        level_cluster = np.full(rd.n_levels, -1)
        level_cluster[rd.level_index] = codes
        crossed = np.flatnonzero(level_cluster[rd.level_index] != codes)
        if len(crossed):
            level = rd.levels[rd.level_index[crossed[0]]]
            raise DrmError(
                f"Level `{level}` of random-effect group `{rd.group}` has rows in more than one cluster: "
                "the random effects must be nested within the clusters (clubSandwich refuses the same); "
                f"cluster by `{rd.group}` or a coarser grouping."
            )
        if rd.is_relmat:
            related = np.argwhere(rd.relatedness() != 0.0)
            apart = related[level_cluster[related[:, 0]] != level_cluster[related[:, 1]]]
            if len(apart):
                a, b = apart[0]
                raise DrmError(
                    f"relmat K relates levels `{rd.levels[a]}` and `{rd.levels[b]}` of `{rd.group}`, which lie "
                    "in different clusters: the fitted covariance must be block-diagonal by cluster."
                )
    if d.known_v.matrix is not None and d.known_v.blocks is not None:
        for block in d.known_v.blocks:
            if len(np.unique(codes[block])) > 1:
                raise DrmError(
                    f"The known sampling covariance V correlates row {labels[block[0]]!r} with rows of "
                    "another cluster: the fitted covariance must be block-diagonal by cluster."
                )


def _inverse_sqrt(M: np.ndarray) -> np.ndarray:
    """Symmetric ``M^{-1/2}`` with eigenvalues below 1e-12 set to zero (clubSandwich's matrix_power)."""
    vals, vecs = np.linalg.eigh(0.5 * (M + M.T))
    inv = np.where(vals > 1e-12, 1.0 / np.sqrt(np.where(vals > 1e-12, vals, 1.0)), 0.0)
    return (vecs * inv) @ vecs.T


def cluster_robust(fit, cluster: Any, type: str = "CR2") -> RobustVcov:
    """Cluster-robust covariance of the mu coefficients and Satterthwaite df (see module docstring)."""
    if type not in TYPES:
        raise DrmError(f"Cluster-robust vcov must be one of {', '.join(TYPES)}, got {type!r}.")
    codes = cluster_codes(fit, cluster)
    J = int(codes.max()) + 1
    rows = [np.flatnonzero(codes == j) for j in range(J)]
    check_nested(fit, codes)
    d = fit.design
    X = d.fixed["mu"].matrix
    p = X.shape[1]
    r = d.y - X @ fit.theta[:p]
    blocks = []
    info = np.zeros((p, p))
    sigma = fit.sigma().to_numpy()
    for idx in rows:
        Sj = row_covariance(d, fit.theta, sigma, idx)
        Lj = np.linalg.cholesky(Sj)
        Wj = np.linalg.inv(Sj)
        Wj = 0.5 * (Wj + Wj.T)
        Xj = X[idx]
        info += Xj.T @ Wj @ Xj
        blocks.append((idx, Sj, Lj, Wj, Xj))
    B = np.linalg.inv(info)
    B = 0.5 * (B + B.T)
    meat = np.zeros((p, p))
    estimating = []  # E_j = X_j' W_j A_j, p x n_j
    for idx, Sj, Lj, Wj, Xj in blocks:
        XW = Xj.T @ Wj
        if type == "CR0":
            E = XW
        elif type == "CR1":
            E = XW * np.sqrt(J / (J - 1.0))
        else:
            U = Lj.T  # upper factor, Sj = U' U
            IH = np.eye(len(idx)) - Xj @ B @ XW
            G = U @ IH @ Sj @ U.T
            A = U.T @ _inverse_sqrt(G) @ U
            E = XW @ A
        estimating.append(E)
        u = E @ r[idx]
        meat += np.outer(u, u)
    vcov = B @ meat @ B
    vcov = 0.5 * (vcov + vcov.T)
    LB = np.linalg.cholesky(B)
    g_norm2 = np.empty((p, J))
    H = np.empty((p, p, J))  # H[i, :, j] = h_ij
    for j, ((idx, Sj, Lj, Wj, Xj), E) in enumerate(zip(blocks, estimating)):
        ME = B @ E
        g_norm2[:, j] = np.sum((ME @ Lj) ** 2, axis=1)
        H[:, :, j] = ME @ Xj @ LB
    df = np.empty(p)
    for i in range(p):
        P = -(H[i].T @ H[i])
        P[np.diag_indices(J)] += g_norm2[i]
        df[i] = 2.0 * np.trace(P) ** 2 / (2.0 * np.sum(P**2))
    return RobustVcov(vcov, df, J)
