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

Structures (``Structure.kind``):

* ``diag``: V diagonal, no random effects; O(n), optionally row-weighted.
* ``block``: S block-diagonal (V blocks and/or random effects nested in clusters);
  batched Cholesky per bucket of equal-sized padded blocks.
* ``woodbury``: V diagonal with random effects that do not nest (crossed, relmat);
  ``log|S| = log|R| + log|I + L'Z'R^-1ZL|`` with ``G = LL'``.
* ``dense``: S formed and factored in full (dense V, or any design as an oracle).
* ``intercepts``: V diagonal and one random-intercept term ``(1|g)`` (no slopes, no relmat):
  closed form per level by segment sums, O(n) (used by the deletion refits of
  :func:`drmpy.engine.batch.deletion_program`; ``choose_structure`` does not pick it).
* ``pair``: the bivariate model with V block-diagonal by study: closed-form 2 x 2
  determinant and inverse per study, O(studies), optionally study-weighted.

Bivariate models (``Structure.pairs``) stack the two responses row-paired
``(y1_1, y2_1, y1_2, ...)``; a response that is not kept is a zero row with unit
variance and no covariance, so it adds nothing (the study keeps its 1 x 1 marginal).
Their ``phi`` is ``(gamma_sigma1, gamma_sigma2, eta_rho12)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

__all__ = ["Structure", "RandomStatic", "Arrays", "BlockBucket", "RandomArrays",
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
    """Static description of the likelihood: which code path and the parameter sizes."""

    kind: str  # diag | block | woodbury | dense | pair
    p: int
    k_sigma: int
    random: tuple[RandomStatic, ...] = ()
    method: str = "ML"
    pairs: bool = False  # bivariate: rows are row-paired responses of studies
    k_rho: int = 0
    tree: Any = None  # kind tree: drmpy.phylo.likelihood.TreeStatic


class BlockBucket(NamedTuple):
    rows: jax.Array  # (nb, m) int: row positions, padding -> N (a zero dummy row)
    V: jax.Array  # (nb, m, m) known V of each block, padding identity
    levels: tuple  # per random term: (nb, m) int level of each slot, padding -> n_levels


class RandomArrays(NamedTuple):
    level_index: jax.Array  # (N,) int, padding rows -> n_levels
    z: jax.Array  # (N, q)
    sd_designs: tuple  # per coefficient: (L, k)
    relmat_chol: jax.Array  # (L, L) lower Cholesky factor of K, or (0, 0)


class Arrays(NamedTuple):
    y: jax.Array  # (N,)
    X: jax.Array  # (N, p)
    Z_sigma: jax.Array  # (N, k_sigma)
    w: jax.Array  # (N,) row weights; 0 on padding rows
    mask: jax.Array  # (N,) 1 on data rows, 0 on padding rows
    n_obs: jax.Array  # () sum of weights
    v: jax.Array  # (N,) diagonal of V; 1 on padding rows
    V_dense: jax.Array  # (N, N) for kind dense; (0, 0) otherwise
    buckets: tuple  # of BlockBucket, for kind block
    random: tuple  # of RandomArrays
    # bivariate models only (None otherwise); per study, N/2 of them
    pair_v12: jax.Array | None = None  # (N/2,) known sampling covariance of the pair; 0 unless both kept
    Z_rho: jax.Array | None = None  # (N/2, k_rho) rho12 design; 0 where not a correlated pair
    pair: jax.Array | None = None  # (N/2,) 1 for a correlated pair, else 0
    tree: Any = None  # kind tree: drmpy.phylo.likelihood.TreeArrays


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
# Gram matrices B'S^-1B and log|S| per structure


def _gram_diag(sigma2, arrs: Arrays, B):
    s = arrs.v + sigma2
    s = jnp.where(arrs.mask > 0, s, 1.0)
    wt = arrs.w / s
    M = (B * wt[:, None]).T @ B
    logdet = jnp.sum(arrs.w * jnp.log(s))
    return logdet, M


# Largest matrix factored by unrolled elementwise code.  Unrolled code is fastest for tiny
# blocks, but its program grows as m^3 and is traced again inside every derivative: blocks
# of 18 rows (a three-level model with a paper of 18 effect sizes) took 5 minutes to compile.
UNROLL_MAX = 8


def _unrolled_cholesky(S):
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


def _unrolled_cholesky_solve(S, R):
    """Batched log|S| and S^-1 R for small SPD S (see :func:`_unrolled_cholesky`)."""
    m = S.shape[-1]
    L = _unrolled_cholesky(S)
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
        return _unrolled_cholesky_solve(S, R)
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


def _chol_gram(S, Bb):
    """log|S| (summed over a batch) and sum of B'S^-1B, from one Cholesky per matrix."""
    logdet, _, W = spd_solve_terms(S, Bb)
    M = jnp.einsum("...mi,...mj->ij", Bb, W)
    M = 0.5 * (M + M.T)
    return jnp.sum(logdet), M


def _gram_block(sigma2, re_terms, arrs: Arrays, struct: Structure, B):
    B_ext = jnp.concatenate([B, jnp.zeros((1, B.shape[1]))], axis=0)
    s2_ext = jnp.concatenate([sigma2, jnp.zeros((1,))])
    # index L_pad of the level covariances and index N of the rows are "nothing" (zeros)
    covs, zs = [], []
    for (alphas, etas), ra, rs in zip(re_terms, arrs.random, struct.random):
        G = level_covariances(alphas, etas, ra, rs)
        covs.append(jnp.concatenate([G, jnp.zeros((1,) + G.shape[1:])], axis=0))
        zs.append(jnp.concatenate([ra.z, jnp.zeros((1, ra.z.shape[1]))], axis=0))
    logdet = 0.0
    M = jnp.zeros((B.shape[1], B.shape[1]))
    for bucket in arrs.buckets:
        S = bucket.V + jax.vmap(jnp.diag)(s2_ext[bucket.rows])
        for z_ext, G, lev in zip(zs, covs, bucket.levels):
            zb = z_ext[bucket.rows]  # (nb, m, q)
            Gb = G[lev]  # (nb, m, q, q)
            same = (lev[:, :, None] == lev[:, None, :]).astype(S.dtype)
            S = S + same * jnp.einsum("bia,biac,bjc->bij", zb, Gb, zb)
        ld, Mb = _chol_gram(S, B_ext[bucket.rows])
        logdet = logdet + ld
        M = M + Mb
    return logdet, M


def _lambda(re_terms, arrs: Arrays, struct: Structure):
    """Block-diagonal factor L of G = LL' over all random-effect columns (level-major)."""
    blocks = []
    for (alphas, etas), ra, rs in zip(re_terms, arrs.random, struct.random):
        if rs.relmat:
            sd = level_sds(alphas, ra)[:, 0]
            blocks.append(sd[:, None] * ra.relmat_chol)
        else:
            G = level_covariances(alphas, etas, ra, rs)  # (L, q, q)
            factor = _unrolled_cholesky(G)
            zero = jnp.zeros(G.shape[:-2], G.dtype)
            Lg = jnp.stack([jnp.stack([factor[i][j] if j <= i else zero for j in range(rs.n_coef)], axis=-1)
                            for i in range(rs.n_coef)], axis=-2)  # (L, q, q)
            L, q = rs.n_levels, rs.n_coef
            eye = jnp.eye(L, dtype=Lg.dtype)
            blocks.append((eye[:, None, :, None] * Lg[:, :, None, :]).reshape(L * q, L * q))
    return jax.scipy.linalg.block_diag(*blocks)


def _z_full(arrs: Arrays, struct: Structure):
    """(N, Q) dense random-effect design, level-major within each term."""
    cols = []
    for ra, rs in zip(arrs.random, struct.random):
        onehot = jax.nn.one_hot(ra.level_index, rs.n_levels, dtype=ra.z.dtype)  # pad -> zeros
        cols.append((onehot[:, :, None] * ra.z[:, None, :]).reshape(onehot.shape[0], -1))
    return jnp.concatenate(cols, axis=1)


def _gram_woodbury(sigma2, re_terms, arrs: Arrays, struct: Structure, B):
    Z = _z_full(arrs, struct)
    Lam = _lambda(re_terms, arrs, struct)
    ZL = Z @ Lam
    logdet_R, M_all = _gram_diag(sigma2, arrs, jnp.concatenate([ZL, B], axis=1))
    return woodbury_update(logdet_R, M_all, ZL.shape[1])


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


def _gram_intercepts(sigma2, re_terms, arrs: Arrays, struct: Structure, B):
    """One random intercept per level l of a single grouping factor, diagonal V.

    With ``D = diag(v_i + sigma_i^2)`` and level variance ``tau_l^2``, each level's block is
    ``D_l + tau_l^2 11'``: ``log|S| = sum log d_i + sum_l log(1 + tau_l^2 a_l)`` and
    ``B'S^-1B = B'D^-1B - sum_l tau_l^2 / (1 + tau_l^2 a_l) c_l c_l'``, with
    ``a_l = sum_{i in l} 1/d_i`` and ``c_l = sum_{i in l} B_i / d_i``.  The rows of each level
    sit in one block of the block structure's buckets (one level per block), so the sums
    over a level are sums over a block's slots: O(n), no scatter, no factorisation.
    """
    (alphas, _), = re_terms
    ra, = arrs.random
    L = struct.random[0].n_levels
    tau2 = jnp.exp(2.0 * (ra.sd_designs[0] @ alphas[0]))  # (L,)
    s = jnp.where(arrs.mask > 0, arrs.v + sigma2, 1.0)
    u = arrs.w / s
    Bu = B * u[:, None]
    M = Bu.T @ B
    logdet = jnp.sum(arrs.w * jnp.log(s))
    u_ext = jnp.concatenate([u, jnp.zeros((1,))])
    Bu_ext = jnp.concatenate([Bu, jnp.zeros((1, B.shape[1]))], axis=0)
    for bucket in arrs.buckets:
        a = jnp.sum(u_ext[bucket.rows], axis=1)  # (nb,)
        c = jnp.sum(Bu_ext[bucket.rows], axis=1)  # (nb, p + 1)
        level = jnp.min(bucket.levels[0], axis=1)  # a block's real slots share one level
        t = jnp.where(level < L, tau2[jnp.minimum(level, L - 1)], 0.0)
        e = 1.0 + t * a
        M = M - (c * (t / e)[:, None]).T @ c
        logdet = logdet + jnp.sum(jnp.log(e))
    return logdet, 0.5 * (M + M.T)


def _gram_tree(sigma2, re_terms, arrs: Arrays, struct: Structure, B):
    """A phylo() term (and a species term) by the linear-time tree pass (drmpy.phylo), any
    other random terms by Woodbury on top: with ``T`` the tree part of S and ``ZL`` the
    other terms' factor, ``log|S| = log|T| + log|I + L'Z'T^-1ZL|`` and
    ``B'S^-1B = B'T^-1B - U'(I + L'Z'T^-1ZL)^-1 U``, ``U = L'Z'T^-1B``; the tree pass gives
    every ``T^-1`` product at once for the columns ``[ZL, B]`` (:func:`woodbury_update`).
    Rows past ``n_obs`` are padding and left out."""
    from ..phylo.likelihood import edge_lengths, tree_gram  # imported when a tree is fitted

    ts, ta = struct.tree, arrs.tree
    n = ts.n_obs
    alphas_p, _ = re_terms[ts.phylo_term]
    tau2 = jnp.exp(2.0 * (arrs.random[ts.phylo_term].sd_designs[0][0] @ alphas_p[0]))
    if ts.species_term is None:
        species2 = jnp.zeros((), B.dtype)
    else:
        alphas_s, _ = re_terms[ts.species_term]
        level_sd2 = jnp.exp(2.0 * (arrs.random[ts.species_term].sd_designs[0] @ alphas_s[0]))
        species2 = level_sd2[ta.species_level]
    t = edge_lengths(tau2, species2, (arrs.v + sigma2)[:n], ta)
    others = [i for i in range(len(struct.random)) if i not in (ts.phylo_term, ts.species_term)]
    if not others:
        return tree_gram(t, B[:n], ta, ts)
    sub = Structure("woodbury", struct.p, struct.k_sigma, tuple(struct.random[i] for i in others), struct.method)
    sub_arrs = arrs._replace(random=tuple(arrs.random[i] for i in others))
    sub_terms = [re_terms[i] for i in others]
    ZL = (_z_full(sub_arrs, sub) @ _lambda(sub_terms, sub_arrs, sub))[:n]
    logdet_T, M_all = tree_gram(t, jnp.concatenate([ZL, B[:n]], axis=1), ta, ts)
    return woodbury_update(logdet_T, M_all, ZL.shape[1])


def _gram_dense(sigma2, re_terms, arrs: Arrays, struct: Structure, B):
    return _chol_gram(_dense_covariance(sigma2, re_terms, arrs, struct), B)


def _dense_covariance(sigma2, re_terms, arrs: Arrays, struct: Structure):
    S = arrs.V_dense + jnp.diag(sigma2)
    if struct.random:
        ZL = _z_full(arrs, struct) @ _lambda(re_terms, arrs, struct)
        S = S + ZL @ ZL.T
    return S


def pair_correlations(eta: jax.Array, arrs: Arrays) -> jax.Array:
    """rho12 per study: 0.999999 tanh(z_i'eta) for correlated pairs, 0 otherwise."""
    assert arrs.pair is not None and arrs.Z_rho is not None  # bivariate arrays (trace time only)
    if eta.shape[0] == 0:
        return jnp.zeros(arrs.pair.shape, arrs.y.dtype)
    return RHO_GUARD * jnp.tanh(arrs.Z_rho @ eta) * arrs.pair


def _pair_covariances(gamma, eta, arrs: Arrays):
    """Per study the entries (a, d, b) of S_i = V_i + B_i; unit variance for responses not kept."""
    sd = jnp.exp(arrs.Z_sigma @ gamma).reshape(-1, 2)  # unmasked: no sqrt(0) in derivatives
    v = arrs.v.reshape(-1, 2)
    kept = arrs.mask.reshape(-1, 2) > 0
    var = jnp.where(kept, v + sd**2, 1.0)
    assert arrs.pair_v12 is not None  # bivariate arrays (trace time only)
    cov = arrs.pair_v12 + pair_correlations(eta, arrs) * sd[:, 0] * sd[:, 1]
    return var[:, 0], var[:, 1], cov


def _gram_pair(gamma, eta, arrs: Arrays, B):
    """Per-study closed form, each study's terms multiplied by its weight (the larger of its
    two row weights: a response that is not kept has weight 0; padding studies 0)."""
    a, d, b = _pair_covariances(gamma, eta, arrs)
    det = a * d - b * b
    w = arrs.w.reshape(-1, 2)
    ws = jnp.maximum(w[:, 0], w[:, 1])
    Bp = B.reshape(-1, 2, B.shape[1])
    B1, B2 = Bp[:, 0], Bp[:, 1]
    cross = (B1 * (ws * b / det)[:, None]).T @ B2
    M = (B1 * (ws * d / det)[:, None]).T @ B1 + (B2 * (ws * a / det)[:, None]).T @ B2 - cross - cross.T
    return jnp.sum(ws * jnp.log(det)), 0.5 * (M + M.T)


def _gram_dense_pairs(gamma, eta, arrs: Arrays, B):
    return _chol_gram(_dense_pair_covariance(gamma, eta, arrs), B)


def _dense_pair_covariance(gamma, eta, arrs: Arrays):
    sigma2 = row_sigma2(gamma, arrs)
    sd = jnp.exp(arrs.Z_sigma @ gamma).reshape(-1, 2)
    off = pair_correlations(eta, arrs) * sd[:, 0] * sd[:, 1]
    first = 2 * jnp.arange(off.shape[0])
    S = arrs.V_dense + jnp.diag(sigma2)
    return S.at[first, first + 1].add(off).at[first + 1, first].add(off)


def dense_covariance(phi: jax.Array, arrs: Arrays, struct: Structure) -> jax.Array:
    """The marginal covariance S = V + diag(sigma^2) + Z G Z' (bivariate: V + B) as one dense
    matrix, for arrays built with structure ``dense``.  Padding rows carry unit variance."""
    if struct.pairs:
        gamma, eta = split_phi(phi, struct)
        return _dense_pair_covariance(gamma, eta, arrs)
    gamma, re_terms = split_phi(phi, struct)
    return _dense_covariance(row_sigma2(gamma, arrs), re_terms, arrs, struct)


def gram(phi: jax.Array, arrs: Arrays, struct: Structure):
    """log|S| and [X y]'S^-1[X y] at variance parameters phi."""
    if struct.pairs:
        gamma, eta = split_phi(phi, struct)
        B = jnp.concatenate([arrs.X, arrs.y[:, None]], axis=1)
        if struct.kind == "pair":
            return _gram_pair(gamma, eta, arrs, B)
        if struct.kind == "dense":
            return _gram_dense_pairs(gamma, eta, arrs, B)
        raise ValueError(f"structure {struct.kind} does not take bivariate models")
    gamma, re_terms = split_phi(phi, struct)
    sigma2 = row_sigma2(gamma, arrs)
    B = jnp.concatenate([arrs.X, arrs.y[:, None]], axis=1)
    if struct.kind == "diag":
        return _gram_diag(sigma2, arrs, B)
    if struct.kind == "block":
        return _gram_block(sigma2, re_terms, arrs, struct, B)
    if struct.kind == "woodbury":
        return _gram_woodbury(sigma2, re_terms, arrs, struct, B)
    if struct.kind == "dense":
        return _gram_dense(sigma2, re_terms, arrs, struct, B)
    if struct.kind == "intercepts":
        return _gram_intercepts(sigma2, re_terms, arrs, struct, B)
    if struct.kind == "tree":
        return _gram_tree(sigma2, re_terms, arrs, struct, B)
    raise ValueError(f"unknown structure {struct.kind}")


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
