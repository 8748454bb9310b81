"""Dense linear algebra on small matrices written with elementwise operations only.

Used where the compiled program is ``jax.vmap``-ed over many independent problems (batch
fits, bootstrap refits): on CPU, jaxlib's batched LAPACK kernels (``syevd``, ``potrf``,
``getrf``) split a batch over XLA's thread pool and deadlock for some batch sizes when
called inside a compiled ``while_loop`` (seen with 2,000 restoration-sized fits).  The
functions here only use arithmetic, ``where`` and static indexing, so under ``vmap`` they
become fused loops over the batch.  They are meant for k x k matrices with k up to about
a dozen (the variance parameters of one fit, or its full Hessian).

Re-tested 2026-12-04 with ``benchmarks/repro_lapack_vmap.py`` on jaxlib 0.10.2 (2 cores):
second derivatives through batched ``cholesky``/``solve`` in a vmapped loop still deadlock
when run on two CPU devices at once (3 of 26 cases: 2,000 lanes of 3 x 3 from two threads,
257 lanes of 8 x 8 and 2,000 of 3 x 3 under ``shard_map``; the process sleeps at 0 % CPU
until killed after 240 s, while the same cases on one device finish in about 11 s;
``benchmarks/repro_lapack_vmap_jax0.10.2.out``).  A compact version of the
reproducer without the second-derivative cases ran clean on jaxlib 0.11.2
(``benchmarks/jax011_device/lapack_vmap.out``).  drmpy on Python 3.11 gets jaxlib 0.10, so
these routines stay.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["jacobi_eigh", "sym_inverse", "sym_min_eigenvalue"]


# cyclic Jacobi converges quadratically: 10 sweeps take any k <= 16 well below double
# rounding (off-diagonal mass squares each sweep); a 2 x 2 is one rotation (_eigh_2x2)
SWEEPS = 10


def _jacobi_rotation(app, apq, aqq):
    """(t, c, s) of the Jacobi rotation that zeroes a_pq: t = tan, c = cos, s = sin."""
    nonzero = apq != 0
    theta = (aqq - app) / (2.0 * jnp.where(nonzero, apq, 1.0))
    # t = sign(theta) / (|theta| + sqrt(theta^2 + 1)), written to avoid overflow
    abst = jnp.abs(theta)
    big = abst > 1e150
    root = jnp.where(big, abst, jnp.sqrt(jnp.where(big, 1.0, theta * theta) + 1.0))
    t = jnp.where(nonzero, jnp.where(theta >= 0, 1.0, -1.0) / (abst + root), 0.0)
    c = 1.0 / jnp.sqrt(t * t + 1.0)
    return t, c, t * c


def _eigh_2x2(A: jax.Array) -> tuple[jax.Array, jax.Array]:
    """jacobi_eigh of a 2 x 2 matrix: its one rotation in closed form (the rotated diagonal
    is a_pp - t a_pq and a_qq + t a_pq), ordered with ``where`` instead of a sort (under
    ``vmap`` over 512 problems about 4 times faster than the general sweep)."""
    app, apq, aqq = A[0, 0], 0.5 * (A[0, 1] + A[1, 0]), A[1, 1]
    t, c, s = _jacobi_rotation(app, apq, aqq)
    lp, lq = app - t * apq, aqq + t * apq
    vp, vq = jnp.stack([c, -s]), jnp.stack([s, c])
    swap = lp > lq
    evals = jnp.where(swap, jnp.stack([lq, lp]), jnp.stack([lp, lq]))
    evecs = jnp.where(swap, jnp.stack([vq, vp], axis=1), jnp.stack([vp, vq], axis=1))
    return evals, evecs


def jacobi_eigh(A: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (ascending) and eigenvectors (columns) of a symmetric k x k matrix.

    Cyclic Jacobi rotations with a fixed number of sweeps (exact for k <= 2).  Same
    contract as ``jnp.linalg.eigh`` for one matrix (no batch dimensions; use ``vmap``).
    """
    k = A.shape[-1]
    if k == 0:
        return jnp.zeros((0,), A.dtype), jnp.zeros((0, 0), A.dtype)
    if k == 1:
        return A[0], jnp.ones((1, 1), A.dtype)
    if k == 2:
        return _eigh_2x2(A)
    A = 0.5 * (A + A.T)
    pairs = [(p, q) for p in range(k) for q in range(p + 1, k)]

    def rotate(A, V, p, q):
        _, c, s = _jacobi_rotation(A[p, p], A[p, q], A[q, q])
        rp, rq = A[p], A[q]
        A = A.at[p].set(c * rp - s * rq).at[q].set(s * rp + c * rq)
        cp, cq = A[:, p], A[:, q]
        A = A.at[:, p].set(c * cp - s * cq).at[:, q].set(s * cp + c * cq)
        A = A.at[p, q].set(0.0).at[q, p].set(0.0)
        vp, vq = V[:, p], V[:, q]
        V = V.at[:, p].set(c * vp - s * vq).at[:, q].set(s * vp + c * vq)
        return A, V

    def sweep(_, carry):
        A, V = carry
        for p, q in pairs:
            A, V = rotate(A, V, p, q)
        return A, V

    A, V = jax.lax.fori_loop(0, SWEEPS, sweep, (A, jnp.eye(k, dtype=A.dtype)))
    evals = jnp.diagonal(A)
    order = jnp.argsort(evals)
    return evals[order], V[:, order]


def sym_min_eigenvalue(A: jax.Array) -> jax.Array:
    """Smallest eigenvalue of a symmetric matrix (see :func:`jacobi_eigh`)."""
    if A.shape[-1] == 0:
        return jnp.asarray(jnp.inf, A.dtype)
    return jacobi_eigh(A)[0][0]


def sym_inverse(A: jax.Array) -> jax.Array:
    """Inverse of a symmetric matrix from its eigen-decomposition (``V diag(1/lam) V'``).

    For a non-singular matrix this equals ``jnp.linalg.inv`` to rounding; a singular one
    gives infinities or very large entries (as ``inv`` would).
    """
    if A.shape[-1] == 0:
        return A
    evals, V = jacobi_eigh(A)
    return (V / evals[None, :]) @ V.T


def loop_cholesky_solve(S: jax.Array, R: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log|S|, S^-1 R)`` for SPD ``S`` (``(..., m, m)``, ``R`` ``(..., m, r)``).

    A column-by-column Cholesky factorisation and two substitutions, each a
    ``lax.fori_loop`` of m steps of matrix-vector products: O(m^3) like LAPACK, but no
    LAPACK call (for matrices too large to unroll inside vmapped programs).
    """
    m = S.shape[-1]
    idx = jnp.arange(m)

    def chol_step(j, L):
        v = S[..., :, j] - jnp.einsum("...ik,...k->...i", L, L[..., j, :])
        d = jnp.sqrt(v[..., j])
        col = jnp.where(idx > j, v / d[..., None], jnp.where(idx == j, d[..., None], 0.0))
        return L.at[..., :, j].set(col)

    L = jax.lax.fori_loop(0, m, chol_step, jnp.zeros_like(S))
    diag = jnp.diagonal(L, axis1=-2, axis2=-1)

    def forward(i, z):
        zi = (R[..., i, :] - jnp.einsum("...k,...kr->...r", L[..., i, :], z)) / diag[..., i, None]
        return z.at[..., i, :].set(zi)

    z = jax.lax.fori_loop(0, m, forward, jnp.zeros_like(R))

    def backward(t, x):
        i = m - 1 - t
        xi = (z[..., i, :] - jnp.einsum("...k,...kr->...r", L[..., :, i], x)) / diag[..., i, None]
        return x.at[..., i, :].set(xi)

    x = jax.lax.fori_loop(0, m, backward, jnp.zeros_like(R))
    return 2.0 * jnp.sum(jnp.log(diag), axis=-1), x
