"""``block``: S block-diagonal (V blocks and/or random effects nested in clusters); one
batched Cholesky per bucket of equal-sized padded blocks."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ...model.design import ModelDesign
from ..likelihood import Arrays, BlockBucket, chol_gram, level_covariances
from .base import CovarianceStructure

__all__ = ["Block", "BlockArrays", "block_buckets", "bucket_size", "MAX_BLOCK_ROWS"]

# the automatic choice takes blocks of up to this many rows (larger ones: woodbury or dense)
MAX_BLOCK_ROWS = 256


class BlockArrays(NamedTuple):
    buckets: tuple  # of BlockBucket, one per padded block size


class Block(CovarianceStructure):
    name = "block"

    def refusal(self, design, clusters, automatic):
        if not automatic and design.weights is not None and np.any(design.weights != 1.0):
            return ("does not take row weights; non-unit weights need structure='diag' "
                    "(a diagonal V without random effects).")
        if clusters is None:
            return "is not available with relmat() terms."
        if automatic and np.bincount(clusters).max() > MAX_BLOCK_ROWS:
            return f"takes blocks of at most {MAX_BLOCK_ROWS} rows."
        return None

    def build(self, design, clusters, n_rows):
        assert clusters is not None  # refusal() keeps designs without clusters out
        return BlockArrays(tuple(block_buckets(design, clusters))), None

    def gram(self, sigma2, re_terms, arrs, struct, B):
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
        for bucket in arrs.extra.buckets:
            S = bucket.V + jax.vmap(jnp.diag)(s2_ext[bucket.rows])
            for z_ext, G, lev in zip(zs, covs, bucket.levels):
                zb = z_ext[bucket.rows]  # (nb, m, q)
                Gb = G[lev]  # (nb, m, q, q)
                same = (lev[:, :, None] == lev[:, None, :]).astype(S.dtype)
                S = S + same * jnp.einsum("bia,biac,bjc->bij", zb, Gb, zb)
            ld, Mb = chol_gram(S, B_ext[bucket.rows])
            logdet = logdet + ld
            M = M + Mb
        return logdet, M

    def drop_rows(self, extra, on, struct):
        return BlockArrays(drop_bucket_rows(extra.buckets, on, struct))


def drop_bucket_rows(buckets: tuple, on, struct) -> tuple:
    """Buckets whose slots of dropped rows are padding: identity V, no level."""
    on_ext = jnp.concatenate([on, jnp.ones((1,), bool)])  # index N: the dummy row, already padding
    out = []
    for bucket in buckets:
        kb = on_ext[bucket.rows]  # (nb, m)
        m = bucket.V.shape[-1]
        V = jnp.where(kb[:, :, None] & kb[:, None, :], bucket.V, jnp.eye(m, dtype=bucket.V.dtype))
        levels = tuple(jnp.where(kb, lev, rs.n_levels) for lev, rs in zip(bucket.levels, struct.random))
        out.append(bucket._replace(V=V, levels=levels))
    return tuple(out)


def block_buckets(design: ModelDesign, clusters: np.ndarray) -> list[BlockBucket]:
    """Group clusters by size; each bucket is (nb, m) row positions with padding -> n."""
    from ..program import _device, padded_count

    n = design.nobs
    order = np.argsort(clusters, kind="stable")
    labels_sorted = clusters[order]
    splits = np.flatnonzero(np.diff(labels_sorted)) + 1
    members = np.split(order, splits)
    sizes = np.array([len(m) for m in members])
    V = design.known_v.matrix
    diag_ext = np.concatenate([design.known_v.diag, [1.0]])
    slot_sizes = _slot_sizes(sizes)
    out = []
    for m in np.unique(slot_sizes):
        sel = [members[i] for i in np.flatnonzero(slot_sizes == m)]
        # pad the number of blocks (padded_count), so new data of a similar size re-use
        # the compiled program (all-padding blocks are identity matrices)
        n_blocks = padded_count(len(sel))
        rows = np.full((n_blocks, m), n, dtype=np.int64)
        for b, idx in enumerate(sel):
            rows[b, : len(idx)] = idx
        real = rows < n
        Vb = np.zeros((n_blocks, m, m))
        Vb[:, np.arange(m), np.arange(m)] = diag_ext[rows]
        if V is not None:
            safe = np.where(real, rows, 0)
            full = V[safe[:, :, None], safe[:, None, :]]
            both = real[:, :, None] & real[:, None, :]
            Vb = np.where(both, full, Vb)
        levels = tuple(
            _device(np.where(real, np.concatenate([rd.level_index, [0]])[rows], padded_count(rd.n_levels)))
            for rd in design.random
        )
        out.append(BlockBucket(_device(rows), _device(Vb), levels))
    return out


_BUCKET_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def _slot_sizes(sizes: np.ndarray) -> np.ndarray:
    """Padded size of every block.

    Each extra bucket is another batched Cholesky in the compiled program (compile time
    grows with the number of buckets), so all blocks share the largest size unless that
    costs over 4x the flops of the unpadded blocks (and more than 1e7 flops).
    """
    m_max = int(sizes.max())
    exact = float(np.sum(sizes.astype(float) ** 3))
    if len(sizes) * float(m_max) ** 3 <= max(4.0 * exact, 1e7):
        return np.full(len(sizes), bucket_size(m_max))
    return np.array([bucket_size(int(s)) for s in sizes])


def bucket_size(m: int) -> int:
    """Block size padded up a short ladder, so a design compiles a handful of bucket shapes."""
    for size in _BUCKET_SIZES:
        if m <= size:
            return size
    return int(m)
