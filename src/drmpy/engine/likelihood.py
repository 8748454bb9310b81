"""Exact Gaussian marginal likelihood ``y ~ MVN(X beta, S)`` in JAX, for every covariance structure.

``S = V + diag(sigma_i^2) + sum_g Z_g G_g Z_g'``.  Each structure returns the same two
things for the augmented matrix ``B = [X, y]``: ``log|S|`` and the Gram matrix
``B' S^-1 B`` (a Cholesky factor is formed once; nothing is inverted).  From the Gram
matrix every objective follows in closed form:

* ML, joint:    ``0.5 [n log 2pi + log|S| + c - 2 beta'b + beta'A beta]``
* ML, profiled: the same at the GLS ``beta_hat = A^-1 b``
* REML:         ``0.5 [(n-p) log 2pi + log|S| + log|A| + c - b'A^-1 b]`` (drmTMB's convention)

with ``A = X'S^-1X``, ``b = X'S^-1y``, ``c = y'S^-1y``.  Objectives are negative
log-likelihoods.  Variance parameters ``phi`` are on link scales: log-SD for sigma and
every sd(g), guarded atanh (``0.999999 tanh``) for random-effect correlations.

The structures themselves (diag, block, woodbury, intercepts, dense, tree, pair) live one
per module in :mod:`drmpy.engine.structures`; ``Structure.kind`` names one of its registry
and :func:`gram` hands the evaluation to it.  This module holds what they share: the static
description (:class:`Structure`), the arrays every structure reads (:class:`Arrays`; each
structure's own arrays ride in ``Arrays.extra``), the variance components, the small SPD
linear algebra and the objectives.

Bivariate models (``Structure.pairs``) stack the two responses row-paired
``(y1_1, y2_1, y1_2, ...)``; a response that is not kept is a zero row with unit
variance and no covariance, so it adds nothing (the study keeps its 1 x 1 marginal).
Their ``phi`` is ``(gamma_sigma1, gamma_sigma2, eta_rho12)`` and their per-study arrays
are ``Arrays.pairs`` (:class:`PairArrays`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from collections.abc import Hashable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

__all__ = ["Structure", "RandomStatic", "Arrays", "BlockBucket", "RandomArrays", "PairArrays",
           "negloglik_joint", "negloglik_profiled", "neg_reml", "gls_beta"]

LOG_2PI = math.log(2.0 * math.pi)
RHO_GUARD = 0.999999


def gaussian_objective(n, p, base, logdet_A, reml: bool):
    """Negative log-likelihood of a Gaussian model from its pieces: ``base = log|S| +
    r'S^-1 r``; ML (``reml=False``, ``logdet_A`` unused) or drmTMB's restricted likelihood,
    with ``logdet_A = log|X'S^-1X|``, ``p`` location coefficients and ``n`` observations."""
    if reml:
        return 0.5 * ((n - p) * LOG_2PI + base + logdet_A)
    return 0.5 * (n * LOG_2PI + base)


@dataclass(frozen=True)
class RandomStatic:
    """Static shape information of one random-effect term."""

    n_levels: int
    n_coef: int
    sd_sizes: tuple[int, ...]  # columns of each coefficient's sd design
    n_cor: int
    relmat: bool


@dataclass(frozen=True)
class Structure:
    """Static description of the likelihood: which code path and the parameter sizes.

    Hashable: it keys the compiled programs, so ``extra`` (a structure's own static part,
    e.g. the tree's :class:`~drmpy.phylo.likelihood.TreeStatic`) must be hashable too.
    """

    kind: str  # a name of the registry drmpy.engine.structures
    p: int
    k_sigma: int
    random: tuple[RandomStatic, ...] = ()
    method: str = "ML"
    pairs: bool = False  # bivariate: rows are row-paired responses of studies
    k_rho: int = 0
    extra: Hashable | None = None  # the structure's own static part (tree: TreeStatic), None for most


class BlockBucket(NamedTuple):
    rows: jax.Array  # (nb, m) int: row positions, padding -> N (a zero dummy row)
    V: jax.Array  # (nb, m, m) known V of each block, padding identity
    levels: tuple  # per random term: (nb, m) int level of each slot, padding -> n_levels


class RandomArrays(NamedTuple):
    level_index: jax.Array  # (N,) int, padding rows -> n_levels
    z: jax.Array  # (N, q)
    sd_designs: tuple  # per coefficient: (L, k)
    relmat_chol: jax.Array  # (L, L) lower Cholesky factor of K, or (0, 0)


class PairArrays(NamedTuple):
    """Per study of a bivariate model (N/2 of them)."""

    v12: jax.Array  # (N/2,) known sampling covariance of the pair; 0 unless both kept
    Z_rho: jax.Array  # (N/2, k_rho) rho12 design; 0 where not a correlated pair
    pair: jax.Array  # (N/2,) 1 for a correlated pair, else 0


class Arrays(NamedTuple):
    """The arrays of one fit: the parts every structure reads, and the structure's own."""

    y: jax.Array  # (N,)
    X: jax.Array  # (N, p)
    Z_sigma: jax.Array  # (N, k_sigma)
    w: jax.Array  # (N,) row weights; 0 on padding rows
    mask: jax.Array  # (N,) 1 on data rows, 0 on padding rows
    n_obs: jax.Array  # () sum of weights
    v: jax.Array  # (N,) diagonal of V; 1 on padding rows
    random: tuple = ()  # of RandomArrays
    pairs: PairArrays | None = None  # bivariate models only
    extra: tuple | None = None  # the structure's own arrays (its module's NamedTuple), None for most


# ----------------------------------------------------------------------------------------
# variance components


def split_phi(phi: jax.Array, struct: Structure):
    """phi -> (gamma, [(alphas per coefficient, cor etas) per random term])."""
    gamma = phi[: struct.k_sigma]
    pos = struct.k_sigma
    if struct.pairs:
        return gamma, phi[pos : pos + struct.k_rho]
    terms = []
    for r in struct.random:
        alphas = []
        for k in r.sd_sizes:
            alphas.append(phi[pos : pos + k])
            pos += k
        etas = phi[pos : pos + r.n_cor]
        pos += r.n_cor
        terms.append((alphas, etas))
    return gamma, terms


def row_sigma2(gamma: jax.Array, arrs: Arrays) -> jax.Array:
    """sigma_i^2 = exp(2 z_i'gamma) on data rows, 0 on padding rows; 0 everywhere for the
    common-effect model (``sigma ~ 0``: no sigma coefficients)."""
    if gamma.shape[0] == 0:
        return jnp.zeros(arrs.mask.shape, arrs.y.dtype)
    return jnp.exp(2.0 * (arrs.Z_sigma @ gamma)) * arrs.mask


def level_sds(alphas, ra: RandomArrays) -> jax.Array:
    """(L, q) response-scale SD of every coefficient at every level."""
    return jnp.stack([jnp.exp(W @ a) for W, a in zip(ra.sd_designs, alphas)], axis=1)


def correlation_matrix(etas: jax.Array, q: int) -> jax.Array:
    """Correlation matrix from pairwise guarded-atanh parameters (upper triangle, row-major)."""
    if q == 1 or etas.shape[0] == 0:
        return jnp.eye(q)
    rho = RHO_GUARD * jnp.tanh(etas)
    iu = jnp.triu_indices(q, 1)
    C = jnp.zeros((q, q)).at[iu].set(rho)
    return C + C.T + jnp.eye(q)


def level_covariances(alphas, etas, ra: RandomArrays, rs: RandomStatic) -> jax.Array:
    """(L, q, q) covariance of the random coefficients at each level."""
    sd = level_sds(alphas, ra)
    C = correlation_matrix(etas, rs.n_coef)
    return sd[:, :, None] * C[None] * sd[:, None, :]


# ----------------------------------------------------------------------------------------
# small SPD linear algebra shared by the structures

# Largest matrix factored by unrolled elementwise code.  Unrolled code is fastest for tiny
# blocks, but its program grows as m^3 and is traced again inside every derivative: blocks
# of 18 rows (a three-level model with a paper of 18 effect sizes) took 5 minutes to compile.
UNROLL_MAX = 8


def unrolled_cholesky(S):
    """Lower Cholesky factor of a batch of small SPD matrices, unrolled over columns.

    Returns ``L`` as nested lists of (batch,) arrays, ``L[i][j]`` for i >= j.  Only
    elementwise operations: jaxlib's batched LAPACK kernels (potrf/trsm) split the batch
    over XLA's CPU thread pool and deadlock when called from inside the compiled optimiser
    loop on large batches (thousands of study blocks), and they compile slowly once
    differentiated twice.
    """
    m = S.shape[-1]
    L = [[None] * m for _ in range(m)]
    for j in range(m):
        d = S[..., j, j]
        for k in range(j):
            d = d - L[j][k] ** 2
        L[j][j] = jnp.sqrt(d)
        for i in range(j + 1, m):
            e = S[..., i, j]
            for k in range(j):
                e = e - L[i][k] * L[j][k]
            L[i][j] = e / L[j][j]
    return L


def unrolled_cholesky_solve(S, R):
    """Batched log|S| and S^-1 R for small SPD S (see :func:`unrolled_cholesky`)."""
    m = S.shape[-1]
    L = unrolled_cholesky(S)
    logdet = 2.0 * sum(jnp.log(L[j][j]) for j in range(m))
    # forward substitution L z = R, then backward L' x = z (rows of R: R[..., i, :])
    z = []
    for i in range(m):
        acc = R[..., i, :]
        for k in range(i):
            acc = acc - L[i][k][..., None] * z[k]
        z.append(acc / L[i][i][..., None])
    x = [None] * m
    for i in reversed(range(m)):
        acc = z[i]
        for k in range(i + 1, m):
            acc = acc - L[k][i][..., None] * x[k]
        x[i] = acc / L[i][i][..., None]
    return logdet, jnp.stack(x, axis=-2)


def small_cholesky_solve(S, R):
    """``(log|S|, S^-1 R)`` for SPD ``S`` without a LAPACK call (usable under vmap on CPU):
    unrolled up to ``UNROLL_MAX`` rows, a loop of matrix-vector products beyond (an unrolled
    30 x 30 factor made a fit with a 30-level factor in mu compile for minutes)."""
    if S.shape[-1] <= UNROLL_MAX:
        return unrolled_cholesky_solve(S, R)
    from .small_linalg import loop_cholesky_solve

    return loop_cholesky_solve(S, R)


_ELEMENTWISE = contextvars.ContextVar("drmpy_elementwise_linalg", default=False)


@contextlib.contextmanager
def elementwise_linalg():
    """While tracing inside this context, small SPD solves use the unrolled Cholesky.

    A trace-time switch for programs that are ``vmap``-ed over many fits: there the p x p
    solves become batched LAPACK calls, which can deadlock on CPU (see ``spd_solve_terms``).
    Compiled programs keep what they were traced with.
    """
    token = _ELEMENTWISE.set(True)
    try:
        yield
    finally:
        _ELEMENTWISE.reset(token)


@jax.custom_jvp
def spd_solve_terms(S, B):
    """For SPD S (batched): per-matrix log|S|, S^-1 and S^-1 B, from one Cholesky factor.

    The derivative rule is written out (d log|S| = tr(S^-1 dS), d S^-1 = -S^-1 dS S^-1,
    d S^-1B = -S^-1 dS S^-1 B + S^-1 dB) so that second derivatives never differentiate
    XLA's Cholesky and triangular-solve kernels: on CPU those hang for some batch sizes
    (1024 or 2000 blocks) once differentiated twice, and they compile slowly.  So batches of
    blocks, and every matrix while tracing under :func:`elementwise_linalg` (programs
    ``vmap``-ed over many fits, where a single matrix becomes a batch), never use a LAPACK
    kernel: up to ``UNROLL_MAX`` rows they are factored by unrolled elementwise code, larger
    ones by a loop of matrix-vector products (batched ``potrf`` deadlocked even for 16 lanes
    of 64 x 64).  A single matrix outside such programs uses LAPACK.
    """
    eye = jnp.broadcast_to(jnp.eye(S.shape[-1], dtype=S.dtype), S.shape)
    m = S.shape[-1]
    elementwise = _ELEMENTWISE.get()
    if m > 0 and (S.ndim == 3 or elementwise):
        logdet, X = small_cholesky_solve(S, jnp.concatenate([eye, B], axis=-1))
        return logdet, X[..., :m], X[..., m:]
    L = jnp.linalg.cholesky(S)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    P = cho_solve((L, True), eye)
    W = cho_solve((L, True), B)
    return logdet, P, W


@spd_solve_terms.defjvp
def _spd_solve_terms_jvp(primals, tangents):
    S, B = primals
    dS, dB = tangents
    logdet, P, W = spd_solve_terms(S, B)
    dlogdet = jnp.einsum("...ij,...ji->...", P, dS)
    PdS = P @ dS
    dP = -PdS @ P
    dW = -PdS @ W + P @ dB
    return (logdet, P, W), (dlogdet, dP, dW)


def chol_gram(S, Bb):
    """log|S| (summed over a batch) and sum of B'S^-1B, from one Cholesky per matrix."""
    logdet, _, W = spd_solve_terms(S, Bb)
    M = jnp.einsum("...mi,...mj->ij", Bb, W)
    M = 0.5 * (M + M.T)
    return jnp.sum(logdet), M


def random_factor(re_terms, randoms: tuple, statics: tuple):
    """Block-diagonal factor L of G = LL' over all random-effect columns (level-major), for
    the terms ``randoms`` (RandomArrays) with static parts ``statics`` (RandomStatic)."""
    blocks = []
    for (alphas, etas), ra, rs in zip(re_terms, randoms, statics):
        if rs.relmat:
            sd = level_sds(alphas, ra)[:, 0]
            blocks.append(sd[:, None] * ra.relmat_chol)
        else:
            G = level_covariances(alphas, etas, ra, rs)  # (L, q, q)
            factor = unrolled_cholesky(G)
            zero = jnp.zeros(G.shape[:-2], G.dtype)
            Lg = jnp.stack([jnp.stack([factor[i][j] if j <= i else zero for j in range(rs.n_coef)], axis=-1)
                            for i in range(rs.n_coef)], axis=-2)  # (L, q, q)
            L, q = rs.n_levels, rs.n_coef
            eye = jnp.eye(L, dtype=Lg.dtype)
            blocks.append((eye[:, None, :, None] * Lg[:, :, None, :]).reshape(L * q, L * q))
    return jax.scipy.linalg.block_diag(*blocks)


def random_design(randoms: tuple, statics: tuple):
    """(N, Q) dense random-effect design of the terms ``randoms``, level-major within each term."""
    cols = []
    for ra, rs in zip(randoms, statics):
        onehot = jax.nn.one_hot(ra.level_index, rs.n_levels, dtype=ra.z.dtype)  # pad -> zeros
        cols.append((onehot[:, :, None] * ra.z[:, None, :]).reshape(onehot.shape[0], -1))
    return jnp.concatenate(cols, axis=1)


def woodbury_update(logdet_R, M_all, Q: int):
    """``(log|S|, B'S^-1B)`` for ``S = R + ZL (ZL)'`` from the pieces of R alone:
    ``logdet_R = log|R|`` and ``M_all = [ZL, B]' R^-1 [ZL, B]`` (its first Q columns ZL).
    ``log|S| = log|R| + log|I + L'Z'R^-1ZL|``, ``B'S^-1B = B'R^-1B - U'(I + L'Z'R^-1ZL)^-1 U``
    with ``U = L'Z'R^-1B``.  R is diagonal (woodbury) or a tree covariance (tree)."""
    Cap = jnp.eye(Q) + M_all[:Q, :Q]
    U = M_all[:Q, Q:]
    logdet_cap, _, W = spd_solve_terms(Cap, U)
    M = M_all[Q:, Q:] - U.T @ W
    return logdet_R + logdet_cap, 0.5 * (M + M.T)

# ----------------------------------------------------------------------------------------
# the Gram matrix through the structure registry


def gram(phi: jax.Array, arrs: Arrays, struct: Structure):
    """log|S| and [X y]'S^-1[X y] at variance parameters phi, by the structure
    ``struct.kind`` of :mod:`drmpy.engine.structures`."""
    from .structures import get_structure  # the structures import this module

    structure = get_structure(struct.kind)
    B = jnp.concatenate([arrs.X, arrs.y[:, None]], axis=1)
    if struct.pairs:
        gamma, eta = split_phi(phi, struct)
        return structure.gram_pairs(gamma, eta, arrs, struct, B)
    gamma, re_terms = split_phi(phi, struct)
    return structure.gram(row_sigma2(gamma, arrs), re_terms, arrs, struct, B)


def dense_covariance(phi: jax.Array, arrs: Arrays, struct: Structure) -> jax.Array:
    """The marginal covariance S = V + diag(sigma^2) + Z G Z' (bivariate: V + B) as one dense
    matrix, for arrays built with structure ``dense``.  Padding rows carry unit variance."""
    from .structures.dense import dense_covariance as covariance

    return covariance(phi, arrs, struct)


def _split_gram(M, p):
    return M[:p, :p], M[:p, p], M[p, p]


def _location_terms(A, b):
    """(log|A|, A^-1 b) for the p x p information A = X'S^-1X."""
    logdet, _, beta = spd_solve_terms(A, b[:, None])
    return logdet, beta[:, 0]


def gls_beta(phi, arrs: Arrays, struct: Structure):
    """GLS estimate (X'S^-1X)^-1 X'S^-1 y at phi (in the centred-y coordinates of ``arrs``)."""
    _, M = gram(phi, arrs, struct)
    A, b, _ = _split_gram(M, struct.p)
    return _location_terms(A, b)[1]


def negloglik_joint(beta, phi, arrs: Arrays, struct: Structure):
    """-log L(beta, phi), ML, on link scales."""
    logdet, M = gram(phi, arrs, struct)
    A, b, c = _split_gram(M, struct.p)
    quad = c - 2.0 * beta @ b + beta @ A @ beta
    return 0.5 * (arrs.n_obs * LOG_2PI + logdet + quad)


def negloglik_profiled(phi, arrs: Arrays, struct: Structure):
    """-log L(beta_hat(phi), phi): ML with beta profiled out."""
    logdet, M = gram(phi, arrs, struct)
    A, b, c = _split_gram(M, struct.p)
    _, beta = _location_terms(A, b)
    return gaussian_objective(arrs.n_obs, struct.p, logdet + c - b @ beta, 0.0, False)


def neg_reml(phi, arrs: Arrays, struct: Structure):
    """-l_R(phi) = 0.5[(n-p) log 2pi + log|S| + log|X'S^-1X| + r'S^-1 r] (drmTMB's REML)."""
    logdet, M = gram(phi, arrs, struct)
    A, b, c = _split_gram(M, struct.p)
    logdet_A, beta = _location_terms(A, b)
    return gaussian_objective(arrs.n_obs, struct.p, logdet + c - b @ beta, logdet_A, True)


def variance_objective(struct: Structure):
    """The objective the optimiser minimises over phi."""
    return neg_reml if struct.method == "REML" else negloglik_profiled
