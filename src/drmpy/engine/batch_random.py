"""Many three-level meta-analyses at once: one random intercept ``(1|g)`` per group, diagonal V.

Every group is the model of a single :func:`drmpy.fit` with one random-intercept term
and a diagonal V, ``y_i ~ N(x_i'beta, v_i + sigma_i^2 + tau_l(i)^2)``, whose likelihood
is the engine's closed-form ``intercepts`` structure (segment sums per level,
:mod:`drmpy.engine.structures.intercepts`).  Groups are packed into arrays of one
common shape (rows padded to ``N``, levels to ``L``, rows per level to ``M``; a padding
row has zero response and design, unit variance and no level, a padding level no rows),
and one compiled program fits a pool of groups of a shape: ``lanes`` trust-region
optimisers of the engine's objective (automatic derivatives, elementwise small linear
algebra) advance side by side and a lane whose group has finished takes the next one;
the engine's program (:func:`drmpy.engine.program._program_fn`) then gives every group's
covariance and zero-variance candidates at its estimate.  Estimates, objective,
covariance and candidates are those of the single fit's program on the same rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .likelihood import Arrays, BlockBucket, RandomArrays, RandomStatic, Structure
from .structures.block import BlockArrays

__all__ = ["intercepts_structure", "intercepts_pool_program", "run_intercepts_pool", "pack_intercepts"]


def intercepts_structure(p: int, k_sigma: int, k_sd: int, n_levels: int, method: str) -> Structure:
    """The engine's ``intercepts`` structure for ``p`` mu, ``k_sigma`` sigma and ``k_sd``
    sd coefficients, ``n_levels`` (padded) levels per group."""
    return Structure("intercepts", p, k_sigma, (RandomStatic(n_levels, 1, (k_sd,), 0, False),), method)


def pack_intercepts(y: np.ndarray, X: np.ndarray, Z: np.ndarray, v: np.ndarray, level: np.ndarray,
                    slot: np.ndarray, W: np.ndarray, row_start: np.ndarray, n_rows: np.ndarray,
                    level_start: np.ndarray, n_levels: np.ndarray, N: int, L: int, M: int) -> Arrays:
    """The engine's ``intercepts`` arrays of several groups, with a leading group axis.

    Rows of all groups are sorted by group; group ``c`` owns rows
    ``row_start[c] : row_start[c] + n_rows[c]`` (``y`` already centred at the group's
    start value), with ``level`` its level within the group and ``slot`` its position
    within that level.  ``W`` holds one sd-design row per (group, level), group ``c``
    owning ``level_start[c] : level_start[c] + n_levels[c]``.  Padded to ``N`` rows, ``L``
    levels and ``M`` rows per level.
    """
    C = len(n_rows)
    col = np.arange(N)
    real = col[None, :] < n_rows[:, None]  # (C, N)
    idx = np.where(real, row_start[:, None] + col[None, :], 0)

    def rows(a, fill):
        if a.ndim == 1:
            return np.where(real, a[idx], fill)
        return np.where(real[..., None], a[idx], fill)

    lev = np.where(real, level[idx], L)
    # one block per level: block l of group c lists that level's row positions (padding -> N)
    block_rows = np.full((C, L, M), N, dtype=np.int64)
    cc = np.broadcast_to(np.arange(C)[:, None], (C, N))
    block_rows[cc[real], lev[real], slot[idx][real]] = np.broadcast_to(col, (C, N))[real]
    block_levels = np.where(block_rows < N, np.arange(L)[None, :, None], L)
    lcol = np.arange(L)
    lreal = lcol[None, :] < n_levels[:, None]
    lidx = np.where(lreal, level_start[:, None] + lcol[None, :], 0)
    sd_design = np.where(lreal[..., None], W[lidx], 0.0)
    w = real.astype(np.float64)
    # (the intercepts structure reads neither the blocks' V nor a relatedness factor)
    # host (numpy) arrays in the engine's array tuples: the runner puts them on the devices
    bucket = BlockBucket(block_rows, np.zeros((C, L, 1, 1)), (block_levels,))  # type: ignore[arg-type]
    random = RandomArrays(lev, w[..., None], (sd_design,), np.zeros((C, 0, 0)))  # type: ignore[arg-type]
    return Arrays(
        y=rows(y, 0.0), X=rows(X, 0.0), Z_sigma=rows(Z, 0.0), w=w, mask=w,  # type: ignore[arg-type]
        n_obs=n_rows.astype(np.float64), v=rows(v, 1.0),  # type: ignore[arg-type]
        random=(random,), extra=BlockArrays((bucket,)),
    )


@functools.lru_cache(maxsize=32)
def intercepts_pool_program(struct: Structure, lanes: int):
    """Fit a pool of packed groups with ``lanes`` optimisers side by side, each lane taking the
    next group of the pool as soon as its group finishes (as
    :func:`drmpy.engine.batch.pool_program`), so a slow group (a variance walking to zero)
    holds one lane instead of the whole chunk.

    Arguments ``(Arrays (P, ...), phi0 (P, k), masks (c, k), values (P, c, k), n_real,
    max_iter, gtol)``: every leaf of the arrays has a group axis; ``masks``/``values`` are the
    zero-variance candidates of :func:`drmpy.engine.program.boundary_candidates` (masks
    common to all groups).  Only the first ``n_real`` groups are fitted.  Returns per group
    ``beta`` (centred coordinates of ``y``), ``phi``, ``f``, ``var`` (diagonal of the
    covariance of (beta, phi)), ``max_gradient``, ``status``, ``iterations`` and
    ``boundary_f`` (the objective at each candidate).  Each group's iterations are those
    of its own :func:`~drmpy.engine.optimize.newton_trust_region` run; the covariance, the
    gradient and the zero-variance candidates are then computed at each group's estimate by
    the engine's program (:func:`drmpy.engine.program._program_fn` started there), with the
    optimiser's objective, status and iteration count.
    """
    from .batch import _pool_summary, refill_lanes
    from .likelihood import elementwise_linalg, variance_objective
    from .optimize import value_grad_hessian
    from .program import _program_fn

    objective = variance_objective(struct)
    derivatives = value_grad_hessian(objective)
    run = _program_fn(struct, elementwise=True)

    def evaluate(x, a):
        return derivatives(x, a, struct)

    def program(arrs: Arrays, phi0, masks, values, n_real, max_iter, gtol):
        with elementwise_linalg():
            return _program(arrs, phi0, masks, values, n_real, max_iter, gtol)

    def _program(arrs, phi0, masks, values, n_real, max_iter, gtol):
        final = refill_lanes(evaluate, arrs, phi0, n_real, lanes, max_iter, gtol)

        def post(a, x, vals):
            out = run(a, x, jnp.asarray(0), gtol, (masks, vals))  # no step: the estimate's covariance
            summary = _pool_summary(out)  # with cov_phi: fit_batch maps standardised designs back
            summary["boundary_f"] = out["boundary_f"]
            return summary

        out = jax.vmap(post)(arrs, final["x"], values)
        out["f"] = final["f"]
        out["status"] = final["status"]
        out["iterations"] = final["it"]
        return out

    return jax.jit(program)


def run_intercepts_pool(struct: Structure, arrs: Arrays, phi0, masks, values, n_real: int, max_iter: int,
                        gtol: float, lanes: int, *, device=None, block: bool = True) -> dict:
    """Fit one pool of packed groups (see :func:`intercepts_pool_program`); ``device`` as in
    :func:`drmpy.engine.batch.run_pool` (a Device, or a mesh for pools stacked one per device)."""
    from .batch import exported_call

    out = exported_call(("intercepts", struct, int(lanes)), intercepts_pool_program(struct, int(lanes)),
                        arrs, phi0, masks, values, np.int64(n_real), np.int64(max_iter), np.float64(gtol),
                        device=device)
    if block:
        return {k: np.asarray(val) for k, val in jax.device_get(out).items()}
    return out
