"""Compiled programs that fit many independent problems at once (``jax.vmap`` over groups).

* :func:`pool_program` (``fit_batch``): the location-scale model with a diagonal V and no
  random effects (``y_i ~ N(x_i'beta, v_i + exp(2 z_i'gamma))``) for a pool of groups,
  ``lanes`` optimisers side by side, each lane refilled with the next group as soon as its
  group finishes.
* :func:`diag_program`: the same model, one lane per group (``jax.vmap`` of a whole
  optimiser run); with ``shared_design=True`` for refits of simulated responses.
* :func:`generic_program`: ``vmap`` of the engine's own program for any structure, over
  the response only (every lane shares one design): parametric-bootstrap refits.
* :func:`deletion_program`: ``vmap`` of the engine's own program over row-deletion masks
  (every lane shares one design and drops its own rows, :func:`drop_rows`): leave-one-out
  and influence refits, any structure.

The diagonal model's gradient and Hessian in gamma are written in closed form (below)
instead of ``jax.hessian`` of the engine's objective: per fit and iteration they cost
O(n (p+k)^2) and are about 4x cheaper under ``vmap`` than automatic differentiation.
Estimates, log-likelihoods and covariances are those of
:func:`drmpy.engine._program_fn` for the ``diag`` structure (tested against it).
All programs use :mod:`drmpy.small_linalg` for the small dense algebra (batched LAPACK
kernels can deadlock on CPU inside the vmapped optimiser loop).

Closed form (ML profiled over beta, and drmTMB's REML).  With
``t_i = exp(2 z_i'gamma)``, ``s_i = v_i + t_i``, ``u_i = w_i / s_i``,
``A = sum u_i x_i x_i'``, ``beta = A^-1 sum u_i x_i y_i``, ``r_i = y_i - x_i'beta``,
``h_ij = x_i'A^-1 x_j`` and ``rho = 1`` for REML (0 for ML):

    f = 1/2 [(n - rho p) log 2pi + sum w_i log s_i + sum u_i r_i^2 + rho log|A|]

``Q(u) = min_beta sum u_i r_i^2`` has ``dQ/du_i = r_i^2`` and
``d2Q/du_i du_j = -2 r_i r_j h_ij``; ``log|A|`` has ``h_ii`` and ``-h_ij^2``.  With
``a_i = 2 t_i / s_i``, ``u'_i = du_i/deta_i = -u_i a_i`` and
``u''_i = -4 w_i t_i (v_i - t_i) / s_i^3``:

    grad = Z' e,  e_i = 1/2 [w_i a_i + u'_i (r_i^2 + rho h_ii)]
    Hess = Z' diag(d) Z - T'A^-1 T - rho/2 [tr(A^-1 P_k A^-1 P_l)]_kl
    d_i = 1/2 [4 w_i t_i v_i / s_i^2 + u''_i (r_i^2 + rho h_ii)]
    T = sum_i x_i (u'_i r_i z_i)'   (p x k),   P_k = sum_i u'_i z_ik x_i x_i'

and ``d beta / d gamma = A^-1 T`` (the ``J`` of REML standard errors; ML's joint Hessian
block is ``H_beta,gamma = -T``).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .likelihood import gaussian_objective, small_cholesky_solve
from .optimize import (CONVERGED, NONFINITE, RUNNING, SolverOutput, newton_trust_region, trust_region_init,
                       trust_region_output, trust_region_step)
from .small_linalg import jacobi_eigh, sym_inverse
from .start import _solve_small, diag_start_values
from .structures import get_structure

__all__ = ["DiagArrays", "diag_program", "pool_program", "run_pool", "refill_lanes", "generic_program",
           "diag_derivatives", "derivative_row_terms", "location_covariance",
           "drop_rows", "deletion_program", "zero_variance_fit"]


class DiagArrays(NamedTuple):
    """One group's arrays (a leading group axis when batched); padding rows have w = 0, v = 1."""

    y: jax.Array  # (N,) response minus X beta0 (the start value), 0 on padding
    X: jax.Array  # (N, p)
    Z: jax.Array  # (N, k) sigma design
    v: jax.Array  # (N,) known sampling variances
    w: jax.Array  # (N,) 1 on data rows, 0 on padding


def _location(A, b):
    """(log|A|, A^-1, A^-1 b) from one unrolled Cholesky factor of the p x p matrix A."""
    p = A.shape[-1]
    logdet, sol = small_cholesky_solve(A, jnp.concatenate([jnp.eye(p, dtype=A.dtype), b[:, None]], axis=1))
    return logdet, sol[:, :p], sol[:, p]


def _pieces(gamma, a: DiagArrays, reml: bool):
    """Everything the value and derivatives share, at gamma."""
    data = a.w > 0
    t = jnp.where(data, jnp.exp(2.0 * (a.Z @ gamma)), 0.0)
    s = jnp.where(data, a.v + t, 1.0)
    u = a.w / s
    Xu = a.X * u[:, None]
    A = Xu.T @ a.X
    A = 0.5 * (A + A.T)
    b = Xu.T @ a.y
    logdet_A, A_inv, beta = _location(A, b)
    r = a.y - a.X @ beta
    return t, s, u, A, b, logdet_A, A_inv, beta, r


def diag_value(gamma, a: DiagArrays, reml: bool):
    """Negative (restricted) log-likelihood at gamma, beta profiled (ML) or integrated (REML)."""
    t, s, u, A, b, logdet_A, A_inv, beta, r = _pieces(gamma, a, reml)
    p = a.X.shape[1]
    n = jnp.sum(a.w)
    return gaussian_objective(n, p, jnp.sum(a.w * jnp.log(s)) + jnp.sum(u * r * r), logdet_A, reml)


def derivative_row_terms(w, v, t, s, u, q):
    """Per-row factors of the closed-form derivatives in gamma (any layout; elementwise):
    ``u1 = d(w/s)/d(log sigma)`` per row, ``e`` (gradient = Z' e) and ``d`` (first Hessian
    term = Z' diag(d) Z), with ``t = sigma_i^2``, ``s = v_i + t``, ``u = w/s`` and ``q`` the
    squared residual (plus the REML leverage term)."""
    a_ = 2.0 * t / s
    u1 = -u * a_
    u2 = -4.0 * w * t * (v - t) / (s * s * s)
    e = 0.5 * (w * a_ + u1 * q)
    d = 0.5 * (4.0 * w * t * v / (s * s) + u2 * q)
    return u1, e, d


def diag_derivatives(gamma, a: DiagArrays, reml: bool):
    """(f, gradient, Hessian) in gamma, in closed form (see the module docstring)."""
    t, s, u, A, b, logdet_A, A_inv, beta, r = _pieces(gamma, a, reml)
    p = a.X.shape[1]
    n = jnp.sum(a.w)
    r2 = r * r
    base = jnp.sum(a.w * jnp.log(s)) + jnp.sum(u * r2)
    q = r2 + jnp.sum((a.X @ A_inv) * a.X, axis=1) if reml else r2
    f = gaussian_objective(n, p, base, logdet_A, reml)
    u1, e, d = derivative_row_terms(a.w, a.v, t, s, u, q)
    g = a.Z.T @ e
    T = a.X.T @ ((u1 * r)[:, None] * a.Z)  # (p, k)
    H = (a.Z * d[:, None]).T @ a.Z - T.T @ A_inv @ T
    if reml:
        C = u1[:, None] * a.Z  # (N, k)
        P = jnp.einsum("nk,na,nb->kab", C, a.X, a.X)  # (k, p, p)
        AP = jnp.einsum("ab,kbc->kac", A_inv, P)
        H = H - 0.5 * jnp.einsum("kab,lba->kl", AP, AP)
    H = 0.5 * (H + H.T)
    return f, g, H


def location_covariance(beta, A, b, A_inv, T, grad_phi, H_phi, reml: bool):
    """(full gradient, covariance of (beta, gamma)) of a finished diagonal fit from its
    location pieces at the estimate: ``A = X'S^-1X``, ``b = X'S^-1y``, ``A_inv``, ``beta``
    and ``T = sum_i x_i (u'_i r_i z_i)'``.

    REML (drmTMB): [[A^-1 + J C J', J C], [C J', C]] with C = H_phi^-1 and
    J = d beta/d gamma = A^-1 T.  ML: the inverse of the joint Hessian
    [[A, -T], [-T', H_phi + T'A^-1 T]], whose Schur complement is H_phi, is the same matrix.
    """
    J = A_inv @ T
    C = sym_inverse(H_phi)
    cross = J @ C
    vcov = jnp.block([[A_inv + cross @ J.T, cross], [cross.T, C]])
    score_beta = jnp.zeros_like(beta) if reml else A @ beta - b
    return jnp.concatenate([score_beta, grad_phi]), vcov


def _diag_post(a: DiagArrays, gamma, f, grad_phi, H_phi, status, iterations, reml: bool) -> dict:
    """Location estimate, covariance and ``information`` (X'S^-1X) of one finished fit
    (engine's conventions)."""
    t, s, u, A, b, logdet_A, A_inv, beta, r = _pieces(gamma, a, reml)
    u1 = -u * (2.0 * t / s)
    T = a.X.T @ ((u1 * r)[:, None] * a.Z)
    full_grad, vcov = location_covariance(beta, A, b, A_inv, T, grad_phi, H_phi, reml)
    return dict(beta=beta, phi=gamma, f=f, grad=full_grad, vcov=vcov, status=status, iterations=iterations,
                information=A)


def zero_variance_fit(a: DiagArrays, reml: bool) -> dict:
    """The model with sigma = 0 (``y ~ N(X beta, V)``, GLS) of one group: ``f`` (negative
    (restricted) log-likelihood), ``beta`` and ``var_beta`` (diagonal of ``(X'V^-1X)^-1``).
    Meaningful when every sampling variance is positive (the boundary rule's candidate)."""
    data = a.w > 0
    u = jnp.where(data & (a.v > 0), a.w / jnp.where(data & (a.v > 0), a.v, 1.0), 0.0)
    Xu = a.X * u[:, None]
    logdet_A, A_inv, beta = _location(Xu.T @ a.X, Xu.T @ a.y)
    r = a.y - a.X @ beta
    p = a.X.shape[1]
    n = jnp.sum(a.w)
    base = jnp.sum(a.w * jnp.log(jnp.where(data, a.v, 1.0))) + jnp.sum(u * r * r)
    return dict(f=gaussian_objective(n, p, base, logdet_A, reml), beta=beta, var_beta=jnp.diagonal(A_inv))


def _diag_run(a: DiagArrays, gamma0, max_iter, gtol, reml: bool):
    """One group's fit: optimiser, location estimate, covariance (engine's conventions)."""
    sol = newton_trust_region(None, gamma0, max_iter=max_iter, gtol=gtol, eigh=jacobi_eigh,
                              derivatives=lambda x: diag_derivatives(x, a, reml))
    return _diag_post(a, sol.x, sol.f, sol.grad, sol.hess, sol.status, sol.iterations, reml)


def _summary(out: dict) -> dict:
    """What a batch keeps of one fit: estimates, variances, objective, gradient size, status."""
    return dict(beta=out["beta"], phi=out["phi"], f=out["f"], var=jnp.diagonal(out["vcov"]),
                max_gradient=jnp.max(jnp.abs(out["grad"]), initial=0.0),
                status=out["status"], iterations=out["iterations"])


def _pool_summary(out: dict) -> dict:
    """:func:`_summary` plus ``cov_phi``, the covariance block of the log-SD coefficients
    (fit_batch maps standardised sigma designs back to the user's coefficients with it)."""
    k = out["phi"].shape[0]
    return dict(_summary(out), cov_phi=out["vcov"][-k:, -k:] if k else out["vcov"][:0, :0])


def _start_or_resume(starts, gamma0_in, beta0_in):
    """(beta0, gamma0) of one lane: its ``starts`` (start values) when ``gamma0_in`` is NaN
    (a fresh group), else the given point (a resumed fit)."""
    b0, g0 = starts
    fresh = jnp.isnan(gamma0_in[0])
    return jnp.where(fresh, b0, beta0_in), jnp.where(fresh, g0, gamma0_in)


def _with_zero_candidate(out: dict, zero: dict) -> dict:
    """A group's summary with the boundary rule's candidate, its fit with sigma = 0."""
    return dict(out, zero_f=zero["f"], zero_beta=zero["beta"], zero_var_beta=zero["var_beta"])


@functools.lru_cache(maxsize=32)
def diag_program(reml: bool, shared_design: bool = False):
    """jit(vmap) of one group's diag fit.

    Arguments ``(DiagArrays, gamma0 (G, k), beta0 (G, p), max_iter, gtol)``; ``y`` is the
    raw response.  A lane whose ``gamma0`` is NaN starts from
    :func:`drmpy.engine.start.diag_start_values`; the
    others resume from ``gamma0`` with the response centred at ``beta0`` (as the first
    pass centred it).  ``shared_design=True``: only ``y`` carries the lane axis; X, Z, v, w
    are one design shared by every lane (refits of simulated responses).
    """

    def run(a, gamma0_in, beta0_in, max_iter, gtol):
        beta0, gamma0 = _start_or_resume(diag_start_values(a), gamma0_in, beta0_in)
        centred = a._replace(y=(a.y - a.X @ beta0) * (a.w > 0))
        out = _summary(_diag_run(centred, gamma0, max_iter, gtol, reml))
        out["beta"] = out["beta"] + beta0
        out["beta0"] = beta0
        return out

    # a vmap in_axes tree (0: mapped, None: shared), not arrays
    axes = DiagArrays(0, None, None, None, None) if shared_design else 0  # type: ignore[arg-type]
    return jax.jit(jax.vmap(run, in_axes=(axes, 0, 0, None, None)))


def _select(mask, new, old):
    """Per-lane choice between two pytrees with a leading lane axis."""
    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


# lanes of the draining program: a quarter of the pool program's, when that is at least 128
# (pools of 512 lanes or more: there the idle lanes of the tail cost most; the second copy of
# the optimiser's step adds about 3 s of compiling, which smaller pools are spared)
DRAIN_FACTOR = 4
MIN_DRAIN_LANES = 128


def refill_lanes(evaluate, arrays, x0, n_real, lanes: int, max_iter, gtol) -> dict:
    """:func:`~drmpy.engine.optimize.newton_trust_region` for the first ``n_real`` problems of a
    pool, ``lanes`` of them side by side (inside a traced program).

    ``arrays`` (every leaf with the pool axis first) and ``x0`` (pool, k) describe the
    problems; ``evaluate(x, a) -> (f, g, H)`` or ``(f, g, H, aux)`` for one problem's arrays
    ``a`` (``aux``, a pytree, is kept with the accepted point, as in
    :func:`~drmpy.engine.optimize.newton_trust_region`).  Each step
    advances every busy lane by one trust-region iteration (``jax.vmap`` of
    :func:`drmpy.engine.optimize.trust_region_step`); a lane whose problem has finished takes
    the next problem of the pool at once; once every problem has been handed out and at most
    ``lanes // DRAIN_FACTOR`` lanes are busy, those lanes continue in a program that much
    narrower.  Every problem's iterations are exactly those of its own run.  Returns per
    problem ``x``, ``f``, ``g``, ``H``, ``status``, ``it`` and, when ``evaluate`` returns it,
    ``aux`` (rows beyond ``n_real`` are zeros).
    """
    M = x0.shape[0]
    L = lanes

    def take(idx):
        return jax.tree_util.tree_map(lambda x: x[idx], arrays)

    def lane_step(state, a):
        return trust_region_step(state, lambda x: evaluate(x, a), max_iter=max_iter, gtol=gtol, eigh=jacobi_eigh)

    step = jax.vmap(lane_step)
    k = x0.shape[1]
    dtype = x0.dtype
    final0 = dict(x=jnp.zeros((M + 1, k), dtype), f=jnp.zeros(M + 1, dtype), g=jnp.zeros((M + 1, k), dtype),
                  H=jnp.zeros((M + 1, k, k), dtype), status=jnp.zeros(M + 1, jnp.int64),
                  it=jnp.zeros(M + 1, jnp.int64))
    shapes = jax.eval_shape(evaluate, x0[0], take(0))
    aux0 = ()
    if len(shapes) > 3:
        aux0 = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes[3])
        final0["aux"] = jax.tree_util.tree_map(lambda a: jnp.zeros((M + 1,) + a.shape, a.dtype), shapes[3])
    init = jax.vmap(lambda x: trust_region_init(x, aux=aux0))
    prob0 = jnp.where(jnp.arange(L) < n_real, jnp.arange(L), M)

    def body(carry, refill_on: bool):
        state, prob, nxt, lane, final = carry
        busy = prob < M
        state = _select(busy, step(state, lane), state)
        done = busy & (state.status != RUNNING)
        out = trust_region_output(state)
        slot = jnp.where(done, prob, M)  # finished problems write their row; others row M
        final = dict(x=final["x"].at[slot].set(out.x), f=final["f"].at[slot].set(out.f),
                     g=final["g"].at[slot].set(out.grad), H=final["H"].at[slot].set(out.hess),
                     status=final["status"].at[slot].set(out.status),
                     it=final["it"].at[slot].set(out.iterations),
                     **({"aux": jax.tree_util.tree_map(lambda a, o: a.at[slot].set(o), final["aux"], out.aux)}
                        if "aux" in final else {}))
        if not refill_on:  # every problem has been handed out: a finished lane goes idle
            return state, jnp.where(done, M, prob), nxt, lane, final
        want = nxt + jnp.cumsum(done) - 1
        prob = jnp.where(done, jnp.where(want < n_real, want, M), prob)
        nxt = nxt + jnp.sum(done)

        def refill(args):
            state, lane = args
            idx = jnp.minimum(prob, M - 1)
            return _select(done, init(x0[idx]), state), _select(done, take(idx), lane)

        state, lane = jax.lax.cond(jnp.any(done), refill, lambda args: args, (state, lane))
        return state, prob, nxt, lane, final

    # Draining: once every problem has been handed out and at most a quarter of the lanes
    # are busy, the busy lanes move to a program a quarter as wide (each lane's arithmetic
    # is unchanged, so are its iterations), which spares the idle lanes' work while the
    # slowest problems finish.
    narrow = L // DRAIN_FACTOR if L // DRAIN_FACTOR >= MIN_DRAIN_LANES else 0

    def cond(carry):
        busy = carry[1] < M
        go = jnp.any(busy)
        if narrow:
            go = go & ~((carry[2] >= n_real) & (jnp.sum(busy) <= narrow))
        return go

    first = jnp.minimum(jnp.arange(L), M - 1)
    carry = (init(x0[first]), prob0, jnp.asarray(L), take(first), final0)
    carry = jax.lax.while_loop(cond, lambda c: body(c, True), carry)
    if narrow:
        state, prob, nxt, lane, final = carry
        keep = jnp.argsort(prob >= M, stable=True)[:narrow]  # the busy lanes first
        carry = (jax.tree_util.tree_map(lambda x: x[keep], state), prob[keep], nxt,
                 jax.tree_util.tree_map(lambda x: x[keep], lane), final)
        carry = jax.lax.while_loop(lambda c: jnp.any(c[1] < M), lambda c: body(c, False), carry)
    return jax.tree_util.tree_map(lambda val: val[:M], carry[4])


def _by_blocks(fn, args, n_real, block: int):
    """``jax.vmap(fn)(*args)`` over the first ``n_real`` rows of ``args`` (pytrees whose leaves
    have a leading axis that is a multiple of ``block``), ``block`` rows at a time; rows of
    blocks past ``n_real`` are zeros.  Padding groups cost nothing, and each block's arrays
    stay in cache while ``fn`` reads them several times."""
    M = jax.tree_util.tree_leaves(args)[0].shape[0]
    vfn = jax.vmap(fn)

    def rows(tree, start):
        return jax.tree_util.tree_map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, block, 0), tree)

    shapes = jax.eval_shape(vfn, *rows(args, 0))
    out0 = jax.tree_util.tree_map(lambda s: jnp.zeros((M,) + s.shape[1:], s.dtype), shapes)

    def body(b, out):
        start = b * block
        part = vfn(*rows(args, start))
        return jax.tree_util.tree_map(lambda o, x: jax.lax.dynamic_update_slice_in_dim(o, x, start, 0), out, part)

    return jax.lax.fori_loop(0, (n_real + block - 1) // block, body, out0)


@functools.lru_cache(maxsize=32)
def pool_program(reml: bool, lanes: int):
    """Fit a pool of M groups with ``lanes`` optimisers side by side, refilling lanes.

    Arguments ``(DiagArrays (M, ...), gamma0 (M, k), beta0 (M, p), n_real, max_iter, gtol)``
    as :func:`diag_program` (NaN ``gamma0``: start values computed here); only the first
    ``n_real`` groups are fitted (the rest is padding, never loaded into a lane).  Each step advances
    every busy lane by one trust-region iteration (``jax.vmap`` of
    :func:`drmpy.optimize.trust_region_step`); a lane whose group has finished takes the
    next group of the pool at once, so a slow group (a variance walking to its zero
    boundary) occupies one lane instead of holding a whole chunk back, and the last busy
    lanes finish in a program a quarter as wide (:func:`refill_lanes`).  Every group's
    iterations are exactly those of its own :func:`newton_trust_region` run.  Start values,
    covariances and the sigma = 0 candidates are computed ``lanes`` groups at a time over the
    first ``n_real`` groups only (:func:`_by_blocks`); padding groups get zeros.
    """
    from . import diag_columns as dc

    def prepare(a, gamma0_in, beta0_in):
        beta0, gamma0 = _start_or_resume(diag_start_values(a), gamma0_in, beta0_in)
        return beta0, gamma0, (a.y - a.X @ beta0) * (a.w > 0)

    def finish(a, x, f, g, H, st, it):
        return _with_zero_candidate(_pool_summary(_diag_post(a, x, f, g, H, st, it, reml)), zero_variance_fit(a, reml))

    # the same two steps in the column layout (every row sum a reduction over the last
    # axis): under vmap the matrix form's small products are batched XLA dots, which made
    # start values and covariances cost as much as the optimiser
    def prepare_columns(a, gamma0_in, beta0_in):
        Xt, Zt = a.X.T, a.Z.T
        starts = dc.columns_start_values(dc.DiagColumns(a.y, Xt, Zt, a.v, a.w))
        beta0, gamma0 = _start_or_resume(starts, gamma0_in, beta0_in)
        return beta0, gamma0, (a.y - dc.row_combination(beta0, Xt)) * (a.w > 0), Xt, Zt

    def finish_columns(c, x, f, g, H, st, it, location):
        beta, grad, vcov = dc.location_post(location, g, H, reml)
        out = _pool_summary(dict(beta=beta, phi=x, f=f, grad=grad, vcov=vcov, status=st, iterations=it))
        return _with_zero_candidate(out, dc.columns_zero_variance_fit(c, reml))

    def run(data: DiagArrays, gamma0_in, beta0_in, n_real, max_iter, gtol):
        if max(data.X.shape[2], data.Z.shape[2]) <= dc.MAX_COLUMNS:
            beta0, gamma0, y_centred, Xt, Zt = _by_blocks(prepare_columns, (data, gamma0_in, beta0_in), n_real,
                                                          lanes)
            problems: dc.DiagColumns | DiagArrays = dc.DiagColumns(y_centred, Xt, Zt, data.v, data.w)
            # the optimiser's derivatives in the column layout (about 10% less CPU per
            # iteration than the matrix form under vmap), with the location pieces of each
            # accepted point: the covariance needs no further pass over the rows
            final = refill_lanes(lambda x, c: dc.columns_derivatives(x, c, reml, location=True), problems, gamma0,
                                 n_real, lanes, max_iter, gtol)
            post_fn: Callable[..., dict] = finish_columns
            extra: tuple = (final["aux"],)
        else:
            beta0, gamma0, y_centred = _by_blocks(prepare, (data, gamma0_in, beta0_in), n_real, lanes)
            problems = data._replace(y=y_centred)
            final = refill_lanes(lambda x, a: diag_derivatives(x, a, reml), problems, gamma0, n_real, lanes,
                                 max_iter, gtol)
            post_fn, extra = finish, ()
        post = _by_blocks(post_fn, (problems, final["x"], final["f"], final["g"], final["H"], final["status"],
                                    final["it"]) + extra, n_real, lanes)
        post["beta"] = post["beta"] + beta0
        post["beta0"] = beta0
        post["zero_beta"] = post["zero_beta"] + beta0
        return post

    return jax.jit(run)


def exported_call(tag: tuple, jitted, *args, device=None):
    """``jitted(*args)`` on ``device``, through a serialized ``jax.export`` module kept on disk.

    A fresh process then skips tracing the program (about a second for the pool program)
    and XLA's persistent cache supplies the binary, as for single fits
    (:func:`drmpy.engine.program._compiled`; same folder, keyed by the engine's source).
    ``tag`` names the program and its closure constants; the argument shapes complete the key.
    Without drmpy's persistent cache, or if exporting fails, ``jitted`` runs as it is.

    ``device``: None (JAX's default placement), a jax Device, or a mesh
    (:func:`device_mesh`).  With a mesh the arguments hold one problem per device, stacked
    along a leading axis (0-d leaves are shared), and one program runs them all: ``jitted``
    under ``jax.shard_map``, compiled once for every device (a program placed on one device
    is compiled again for each other device; XLA's CPU cache key holds the device).  The
    results then have the leading device axis too.
    """
    from jax.sharding import Mesh

    from .program import _exported

    leaves, treedef = jax.tree_util.tree_flatten(args)
    signature = (tag, str(treedef), tuple((np.shape(x), str(x.dtype if hasattr(x, "dtype") else np.result_type(x)))
                                          for x in leaves),
                 jax.default_backend())

    def flat_program(*flat):
        # a function of the flat leaves: the arguments' containers (DiagArrays, None) need no
        # serialization
        return jitted(*jax.tree_util.tree_unflatten(treedef, flat))

    if not isinstance(device, Mesh):
        if device is not None:
            leaves = jax.device_put(leaves, device)
        return _exported(signature, leaves, lambda: jax.jit(flat_program))(*leaves)
    stacked = tuple(np.ndim(x) > 0 for x in leaves)
    leaves = place_on_mesh(leaves, device)
    fn = _exported(("spmd", device.devices.size) + signature, leaves,
                   lambda: _spmd_program(flat_program, stacked, device))
    return fn(*leaves)


def device_mesh(devices) -> "jax.sharding.Mesh":
    """A one-axis mesh ``("d",)`` over ``devices`` (one problem per device)."""
    from jax.sharding import Mesh

    return Mesh(np.asarray(devices), ("d",))


def place_on_mesh(leaves, mesh):
    """Arrays split along their leading axis over the mesh's devices; 0-d leaves shared."""
    from jax.sharding import NamedSharding, PartitionSpec

    split = NamedSharding(mesh, PartitionSpec("d"))
    shared = NamedSharding(mesh, PartitionSpec())
    return [jax.device_put(x, split if np.ndim(x) > 0 else shared) for x in leaves]


def _spmd_program(flat_program, stacked: tuple, mesh):
    """``flat_program`` run on every device of ``mesh`` on its slice of the stacked leaves."""
    from jax.sharding import PartitionSpec

    def per_device(*flat):
        flat = [x[0] if s else x for x, s in zip(flat, stacked)]
        return jax.tree_util.tree_map(lambda a: a[None], flat_program(*flat))

    specs = tuple(PartitionSpec("d") if s else PartitionSpec() for s in stacked)
    # every device runs its own loops (no collective), so the replication checks of
    # shard_map (which would ask for pcast on loop carries) are not needed
    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=PartitionSpec("d"),
                                 check_vma=False))


def run_pool(y, X, Z, v, w, gamma0, beta0, n_real: int, max_iter: int, gtol: float, reml: bool,
             lanes: int, *, device=None, block: bool = True) -> dict:
    """Fit one pool of groups (numpy arrays with a leading group axis; see :func:`pool_program`).

    Returns per group ``beta`` (location), ``phi`` (log-SD coefficients), ``f`` (the
    minimised negative log-likelihood), ``var`` (diagonal of the covariance of
    (beta, phi)), ``cov_phi`` (its phi block), ``max_gradient``, ``status``, ``iterations``
    and ``beta0``.  With
    ``block=False`` the result stays on the device (JAX dispatches asynchronously); the
    default returns numpy arrays, as a dask worker must.  ``device``: a jax Device, or a
    mesh (:func:`device_mesh`) when every array holds one pool per device, stacked along a
    new leading axis (the results then have that axis too).
    """
    out = exported_call(("pool", bool(reml), int(lanes)), pool_program(bool(reml), int(lanes)),
                        DiagArrays(y, X, Z, v, w), gamma0, beta0, np.int64(n_real), np.int64(max_iter),
                        np.float64(gtol), device=device)
    if block:
        return {k: np.asarray(val) for k, val in jax.device_get(out).items()}
    return out


@functools.lru_cache(maxsize=32)
def generic_program(struct, treedef):
    """jit(vmap) of the engine's whole fit (any structure) over the response only.

    Arguments: (Arrays whose ``y`` has a leading lane axis, phi0 (lanes, k), max_iter, gtol);
    the small dense algebra is elementwise (``engine._program_fn(elementwise=True)``).
    """
    from .program import _program_fn

    run = _program_fn(struct, elementwise=True)

    def lane(arrs, phi0, max_iter, gtol):
        out = run(arrs, phi0, max_iter, gtol)
        return _summary(out)

    template = jax.tree_util.tree_unflatten(treedef, [None] * treedef.num_leaves)
    axes = template._replace(y=0)
    return jax.jit(jax.vmap(lane, in_axes=(axes, 0, None, None)))


def drop_rows(arrs, keep, struct):
    """The engine's arrays with every row whose ``keep`` is 0 turned into a padding row.

    A padding row has zero response and design, unit variance, no sigma, no random-effect
    level and no covariance with any other row, so it adds nothing to ``log|S|`` or to
    ``[X y]'S^-1[X y]``: the likelihood is exactly that of the kept rows, for every
    structure (diag, block, woodbury, dense), with the same shapes (one compiled program
    serves every deletion).  ``n_obs`` becomes the kept rows' weight (REML's ``n``).
    """
    on = keep > 0
    kf = on.astype(arrs.y.dtype)
    w = arrs.w * kf
    out = arrs._replace(y=arrs.y * kf, X=arrs.X * kf[:, None], w=w, mask=arrs.mask * kf,
                        n_obs=jnp.sum(w), v=jnp.where(on, arrs.v, 1.0))
    if arrs.extra is not None:  # the structure's own arrays (V blocks, a dense V)
        out = out._replace(extra=get_structure(struct.kind).drop_rows(arrs.extra, on, struct))
    if arrs.random:
        out = out._replace(random=tuple(
            ra._replace(level_index=jnp.where(on, ra.level_index, rs.n_levels), z=ra.z * kf[:, None])
            for ra, rs in zip(arrs.random, struct.random)))
    return out


@functools.lru_cache(maxsize=32)
def deletion_program(struct, with_gls: bool = False):
    """jit(vmap) of the engine's optimiser (any structure) over row-deletion masks.

    Arguments: (Arrays shared by every lane, keep (lanes, N) with 1 for the rows a lane
    keeps, phi0 (lanes, k), max_iter, gtol).  Returns per lane ``beta`` (GLS estimate at the
    lane's variance estimate, centred coordinates of the arrays), ``phi``, ``f`` (minimised
    objective), ``status`` and ``iterations``: the optimiser and stopping rule of
    :func:`drmpy.engine.program._program_fn`, without its covariance step.  ``with_gls``
    adds ``A_kept`` (``X'S^-1X`` over the kept rows at the lane's estimate: the inverse of
    metafor's ``vb`` of the refit) and ``A_all`` (the same over every row at the lane's
    variance estimate: metafor's ``vb.del`` of dfbetas).
    """
    from .likelihood import elementwise_linalg, gram, variance_objective

    objective = variance_objective(struct)
    p = struct.p

    def lane(arrs, keep, phi0, max_iter, gtol):
        kept = drop_rows(arrs, keep, struct)
        with elementwise_linalg():
            if phi0.shape[0] == 0:  # no variance parameter: the GLS estimate is the refit
                sol = SolverOutput(phi0, objective(phi0, kept, struct), jnp.zeros(0), jnp.zeros((0, 0)),
                                   jnp.asarray(CONVERGED), jnp.asarray(0), jnp.asarray(1))
            else:
                sol = newton_trust_region(lambda ph: objective(ph, kept, struct), phi0,
                                          max_iter=max_iter, gtol=gtol, eigh=jacobi_eigh)
            # one more Newton step from the converged point (its gradient and Hessian are at
            # hand): the stopping rule leaves up to ~1e-6 standard errors, which ratios of
            # determinants (metafor's cov.r) magnify; skipped at a flat (boundary) end
            if phi0.shape[0]:
                step = _solve_small(sol.hess, sol.grad[:, None])[:, 0]
                polish = ((sol.status == CONVERGED) & jnp.all(jnp.isfinite(step))
                          & (jnp.max(jnp.abs(step), initial=0.0) < 1e-3))
                phi = jnp.where(polish, sol.x - step, sol.x)
                f = jnp.where(polish, objective(phi, kept, struct), sol.f)
            else:
                phi, f = sol.x, sol.f
            _, M = gram(phi, kept, struct)
            A = M[:p, :p]
            beta = _solve_small(A, M[:p, p:])[:, 0]
            # a non-finite objective or estimate is never converged
            finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(beta)) & jnp.all(jnp.isfinite(phi))
            out = dict(beta=beta, phi=phi, f=f, status=jnp.where(finite, sol.status, NONFINITE),
                       iterations=sol.iterations)
            if with_gls:
                out["A_kept"] = A
                out["A_all"] = gram(phi, arrs, struct)[1][:p, :p]
        return out

    return jax.jit(jax.vmap(lane, in_axes=(None, 0, 0, None, None)))
