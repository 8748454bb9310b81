"""Many random-effects meta-regressions at once: one heterogeneity variance per group.

The model of every group is ``y_i ~ N(x_i'beta, v_i + tau^2)`` (``sigma ~ 1``, a per-row
sampling variance ``v_i > 0``), fitted by ML (beta profiled) or drmTMB's REML.  With one
variance parameter the likelihood needs no trust region in the log-SD: the score and
information in ``tau^2`` are closed forms of a few weighted sums per group, and Newton's
method on ``tau^2`` itself, projected onto ``tau^2 >= 0``, reaches a zero variance in one
step instead of creeping along the log-SD toward -infinity.

With ``W = diag(1/(v_i + tau^2))``, ``A = X'WX``, ``P = W - W X A^-1 X'W`` and the GLS
residual ``r`` (so that ``Py = Wr``), for ``l`` the (restricted) log-likelihood:

    ML:    dl/dtau^2 = -1/2 [tr(W) - y'PPy],   d2l = 1/2 tr(W^2) - y'PPPy
    REML:  dl/dtau^2 = -1/2 [tr(P) - y'PPy],   d2l = 1/2 tr(PP)  - y'PPPy

with ``tr(P) = tr(W) - tr(A^-1 X'W^2X)``, ``tr(PP) = tr(W^2) - 2 tr(A^-1 X'W^3X) +
tr((A^-1 X'W^2X)^2)``, ``y'PPy = sum w_i^2 r_i^2`` and ``y'PPPy = q'Wq - (X'Wq)'A^-1(X'Wq)``
with ``q = Wr``.  A step uses the observed information where it is positive, else the
expected one (``1/2 tr(PP)``, Fisher scoring), and is halved until the objective does not
get worse.  The start is the DerSimonian-Laird moment estimate.

Boundary rule: the likelihood in ``tau^2`` can be bimodal (an interior local maximum
lower than the value at ``tau^2 = 0``, or a local maximum at zero lower than an interior
one).  The value at zero is evaluated first (it also gives the moment start), and after
convergence the better of the interior optimum and ``tau^2 = 0`` is kept; a lane that
stopped at zero probes the criterion at ``PROBE_FRACTIONS`` of its mean sampling variance
and climbs again from a probe that fits better or where the criterion still rises.  A zero
variance is reported as ``log sigma = -inf``.

The reported estimates, standard errors and gradients are those of the engine's diagonal
structure at the optimum (:func:`drmpy.engine.batch._diag_post`), from the same sums:
drmTMB's observed information on the log-SD scale, and the location covariance with the
``J`` term.  At ``tau^2 = 0`` the location covariance is ``(X'V^-1X)^-1`` (the limit of both)
and the log-SD has no finite standard error.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .likelihood import gaussian_objective, small_cholesky_solve
from .optimize import CONVERGED, MAX_ITER, RADIUS_COLLAPSED, RUNNING
from .start import dersimonian_laird

__all__ = ["BOUNDARY", "BOUNDARY_BETTER", "BOUNDARY_MESSAGES", "tau2_program", "run_tau2"]

# status codes beyond optimize's: converged with the variance at zero
BOUNDARY = 6  # the iteration itself ended at tau^2 = 0 (score pointing outwards)
BOUNDARY_BETTER = 7  # an interior local optimum was found, but tau^2 = 0 is better
BOUNDARY_MESSAGES = {
    BOUNDARY: "converged: heterogeneity variance at its zero boundary (sigma = 0)",
    BOUNDARY_BETTER: ("converged: heterogeneity variance at its zero boundary (sigma = 0), which "
                      "fits better than the interior local optimum"),
}
# the boundary replaces a converged interior optimum only when better by more than this
# (relative to max(1, |f|)): an optimiser that walked toward zero stops within ~1e-7 of the
# boundary's value, and such a fit is kept as it is (its estimates already say sigma ~ 0)
BOUNDARY_MARGIN = 1e-6
# iterations every lane of a chunk runs before the running ones are gathered into M / 4 lanes
FULL_WIDTH_ITERATIONS = 4
# probes of the criterion for lanes that stop at tau^2 = 0, as fractions of the group's mean
# sampling variance (an interior maximum above the boundary's value, missed by the climb
# from the moment start, was found at ~1/20 of it in 1 of 1e6 simulated meta-analyses)
PROBE_FRACTIONS = (1.0 / 32.0, 1.0 / 8.0, 0.5, 2.0)
# stop when the Newton decrement score^2 / information <= DECREMENT * max(1, |f|), after
# taking that last (quadratically convergent) step
DECREMENT = 1e-12


class _Stats(NamedTuple):
    f: jax.Array  # (M,) negative (restricted) log-likelihood
    score: jax.Array  # (M,) dl/dtau^2
    observed: jax.Array  # (M,) -d2l/dtau^2
    expected: jax.Array  # (M,) Fisher information in tau^2
    beta: jax.Array  # (M, p) GLS estimate (of the centred response)
    A_inv: jax.Array  # (M, p, p)
    quad: jax.Array  # (M,) r'Wr
    trP: jax.Array  # (M,) tr(P)
    dbeta: jax.Array  # (M, p) d beta / d tau^2 = -A^-1 X'W^2 r


def _stats(tau2, y, X, v, w, reml: bool) -> _Stats:
    """Objective, score and informations in tau^2 for every group (arrays (M, N[, p]))."""
    if X is None or X.shape[-1] == 1:
        return _stats_one_column(tau2, y, None if X is None else X[..., 0], v, w, reml)
    p = X.shape[-1]
    data = w > 0
    s = jnp.where(data, v + tau2[:, None], 1.0)
    u = w / s
    # (sums over rows written as broadcast products and reductions: XLA fuses them into
    # one loop, where einsum would call a batched matrix product per group)
    XX = X[..., :, None] * X[..., None, :]  # (M, N, p, p)
    A = _rowsum(u, XX)
    b = _rowsum(u * y, X)
    B = _rowsum(u * u, XX)  # X'W^2X
    eye = jnp.broadcast_to(jnp.eye(p, dtype=y.dtype), A.shape)
    logdet_A, sol = small_cholesky_solve(A, jnp.concatenate([eye, b[..., None], B], axis=-1))
    A_inv, beta, AiB = sol[..., :p], sol[..., p], sol[..., p + 1:]
    r = y - jnp.sum(X * beta[:, None, :], axis=-1)
    q = u * r
    quad = jnp.sum(q * r, axis=1)  # r'Wr
    qq = jnp.sum(q * q, axis=1)  # y'PPy
    Xq = _rowsum(u * q, X)
    qPq = jnp.sum(u * q * q, axis=1) - jnp.sum(Xq[:, :, None] * A_inv * Xq[:, None, :], axis=(1, 2))  # y'PPPy
    n = jnp.sum(w, axis=1)
    logs = jnp.sum(w * jnp.log(s), axis=1)
    trW = jnp.sum(u, axis=1)
    trW2 = jnp.sum(u * u, axis=1)
    trP = trW - jnp.trace(AiB, axis1=-2, axis2=-1)
    trPP = None
    if reml:
        C = _rowsum(u * u * u, XX)  # X'W^3X
        trPP = trW2 - 2.0 * jnp.sum(A_inv * C, axis=(1, 2)) + jnp.sum(AiB * jnp.swapaxes(AiB, 1, 2), axis=(1, 2))
    f, score, observed, expected = _criterion(reml, n, p, logs, logdet_A, quad, qq, qPq, trP, trW, trW2, trPP)
    return _Stats(f, score, observed, expected, beta, A_inv, quad, trP, -jnp.sum(A_inv * Xq[:, None, :], axis=-1))


def _criterion(reml, n, p, logs, logdet_A, quad, qq, qPq, trP, trW, trW2, trPP):
    """(f, score, observed, expected information) from the traces and quadratic forms."""
    f = gaussian_objective(n, p, logs + quad, logdet_A, reml)
    if reml:
        return f, -0.5 * (trP - qq), qPq - 0.5 * trPP, 0.5 * trPP
    return f, -0.5 * (trW - qq), qPq - 0.5 * trW2, 0.5 * trW2


def _stats_one_column(tau2, y, x, v, w, reml: bool) -> _Stats:
    """:func:`_stats` for a one-column location design x (None: the intercept), from row sums.

    The residual sums are expanded in moments, e.g. ``sum u r^2 = sum u y^2 - beta sum u x y``;
    the response is centred at the common-effect estimate, so these differences lose no
    more than a few bits.
    """
    data = w > 0
    s = jnp.where(data, v + tau2[:, None], 1.0)
    u = w / s
    u2 = u * u
    u3 = u2 * u
    yy = y * y
    if x is None:
        terms = [u, u * y, u * yy, u2, u2 * y, u2 * yy, u3, u3 * y, u3 * yy, w * jnp.log(s), u, u2, w]
    else:
        xy = x * y
        xx = x * x
        terms = [u * xx, u * xy, u * yy, u2 * xx, u2 * xy, u2 * yy, u3 * xx, u3 * xy, u3 * yy,
                 w * jnp.log(s), u, u2, w]
    # (separate reductions: XLA on CPU runs a stacked (M, N, 13) reduction far slower)
    A, b, Syy, B, B_y, S2yy, C, C_y, S3yy, logs, trW, trW2, n = (jnp.sum(t, axis=1) for t in terms)
    beta = b / A
    quad = Syy - beta * b
    qq = S2yy - 2.0 * beta * B_y + beta * beta * B
    Xq = B_y - beta * B
    qPq = S3yy - 2.0 * beta * C_y + beta * beta * C - Xq * Xq / A
    trP = trW - B / A
    trPP = trW2 - 2.0 * C / A + (B / A) ** 2 if reml else None
    f, score, observed, expected = _criterion(reml, n, 1, logs, jnp.log(A), quad, qq, qPq, trP, trW, trW2, trPP)
    return _Stats(f, score, observed, expected, beta[:, None], (1.0 / A)[:, None, None], quad, trP,
                  (-Xq / A)[:, None])


def _value_score(tau2, y, X, v, w, reml: bool):
    """(f, score) alone: :func:`_stats` without the informations (7 row sums instead of 13
    for a one-column design), for probing the criterion."""
    if X is not None and X.shape[-1] > 1:
        st = _stats(tau2, y, X, v, w, reml)
        return st.f, st.score
    x = None if X is None else X[..., 0]
    data = w > 0
    s = jnp.where(data, v + tau2[:, None], 1.0)
    u = w / s
    u2 = u * u
    xy = y if x is None else x * y
    xx = None if x is None else x * x
    trW, b, Syy, B_y, S2yy, logs, n = (jnp.sum(t, axis=1) for t in (u, u * xy, u * y * y, u2 * xy, u2 * y * y,
                                                                   w * jnp.log(s), w))
    A = trW if x is None else jnp.sum(u * xx, axis=1)
    B = jnp.sum(u2, axis=1) if x is None else jnp.sum(u2 * xx, axis=1)
    beta = b / A
    quad = Syy - beta * b
    qq = S2yy - 2.0 * beta * B_y + beta * beta * B
    zero = jnp.zeros_like(A)
    f, score, _, _ = _criterion(reml, n, 1, logs, jnp.log(A), quad, qq, zero, trW - B / A, trW, zero, zero)
    return f, score


def _rowsum(c, T):
    """sum_n c[m, n] T[m, n, ...] (M, ...)."""
    return jnp.sum(c.reshape(c.shape + (1,) * (T.ndim - 2)) * T, axis=1)


def _newton_step(st: _Stats):
    """Step in tau^2: observed information where positive, else Fisher scoring."""
    info = jnp.where(st.observed > 0, st.observed, st.expected)
    info = jnp.where(info > 0, info, 1.0)
    return st.score / info, st.score * st.score / info


@functools.lru_cache(maxsize=16)
def tau2_program(reml: bool):
    """jit of the fit of a chunk of groups.

    Arguments ``(y, X, v, w, max_iter)``: ``y`` (M, N) raw responses, ``X`` (M, N, p) (None:
    the intercept alone),
    ``v`` (M, N) sampling variances (> 0 on data rows), ``w`` (M, N) 1 on data rows and 0
    on padding.  Returns the per-group summary of :func:`drmpy.engine.batch._summary`
    (``beta``, ``phi`` = log sigma, ``f``, ``var``, ``max_gradient``, ``status``,
    ``iterations``) plus ``tau2``.
    """

    def run(y, X, v, w, max_iter):
        M, N = y.shape
        p = 1 if X is None else X.shape[-1]
        data = w > 0
        zero = jnp.zeros(M, y.dtype)
        beta_fe = _gls_at_zero(y, X, v, w)  # common-effect estimate: the centring point
        yc = (y - _fitted(X, beta_fe)) * data
        st0 = _stats(zero, yc, X, v, w, reml)
        n = jnp.sum(w, axis=1)
        scale = jnp.sum(w * v, axis=1) / n
        # DerSimonian-Laird: Q = r'V^-1 r and tr(P) at tau^2 = 0 (the usual denominator)
        tau2_dl = dersimonian_laird(st0.quad, n, p, st0.trP, xp=jnp)
        start = _stats(tau2_dl, yc, X, v, w, reml)
        st = jax.tree_util.tree_map(lambda a, b: jnp.where(_expand(tau2_dl > 0, a), a, b), start, st0)

        def check(tau2, st):
            step, dec = _newton_step(st)
            at_zero = (tau2 <= 0.0) & (st.score <= 0.0)
            small = dec <= DECREMENT * jnp.maximum(1.0, jnp.abs(st.f))
            return at_zero | small, step

        done0, _ = check(tau2_dl, st)
        status = jnp.where(done0, CONVERGED, RUNNING)
        carry = (tau2_dl, st, jnp.ones(M, y.dtype), status, jnp.zeros(M, jnp.int64), jnp.asarray(0))

        def iterate(carry, arrays, limit):
            yc_, X_, v_, w_, scale_ = arrays

            def cond(c):
                return jnp.any(c[3] == RUNNING) & (c[5] < limit)

            def body(c):
                tau2, st, lam, status, its, it = c
                running = status == RUNNING
                step, _ = _newton_step(st)
                cap = tau2 + 10.0 * (tau2 + scale_)  # no jump beyond ten times the variance scale
                prop = jnp.clip(tau2 + lam * step, 0.0, cap)
                new = _stats(prop, yc_, X_, v_, w_, reml)
                ok = jnp.isfinite(new.f) & (new.f <= st.f + 1e-13 * jnp.maximum(1.0, jnp.abs(st.f)))
                accept = running & ok
                tau2 = jnp.where(accept, prop, tau2)
                st = jax.tree_util.tree_map(lambda a, b: jnp.where(_expand(accept, a), a, b), new, st)
                lam = jnp.where(accept, 1.0, jnp.where(running, 0.25 * lam, lam))
                finished, _ = check(tau2, st)
                stuck = running & ~accept & (jnp.abs(lam * step) <= 1e-15 * (tau2 + scale_))
                status = jnp.where(running & finished, CONVERGED,
                                   jnp.where(stuck, RADIUS_COLLAPSED, status))
                its = its + running
                return tau2, st, lam, status, its, it + 1

            return jax.lax.while_loop(cond, body, carry)

        # Lanes iterate in step, so the chunk costs as many iterations as its slowest lane:
        # after FULL_WIDTH_ITERATIONS the (few) running lanes move to a chunk of M / 4 lanes.
        arrays = (yc, X, v, w, scale)
        carry = iterate(carry, arrays, jnp.minimum(max_iter, FULL_WIDTH_ITERATIONS))
        K = max(M // 4, 1)

        def compacted(carry):
            idx = jnp.argsort(carry[3] != RUNNING, stable=True)[:K]  # running lanes first
            sub = jax.tree_util.tree_map(lambda a: a[idx], (carry[:5], arrays))
            part = iterate(sub[0] + (carry[5],), sub[1], max_iter)
            merged = jax.tree_util.tree_map(lambda a, b: a.at[idx].set(b), carry[:5], part[:5])
            return merged + (part[5],)

        carry = jax.lax.cond(jnp.sum(carry[3] == RUNNING) <= K, compacted,
                             lambda c: iterate(c, arrays, max_iter), carry)

        # A lane that stopped at tau^2 = 0 is a local maximum there, not necessarily the
        # global one: probe PROBE_FRACTIONS of the mean sampling variance (on the boundary
        # lanes gathered into fewer lanes), and restart Newton from the best probe that fits
        # better than zero or where the criterion still rises.
        at_bound = (carry[3] == CONVERGED) & (carry[0] <= 0.0)
        f_bound = carry[1].f  # the criterion at tau^2 = 0 on those lanes

        def probe(lanes_arrays, f_zero):
            yc_, X_, v_, w_, scale_ = lanes_arrays
            best_f = jnp.full_like(scale_, jnp.inf)
            best_t = jnp.zeros_like(scale_)
            tol = 1e-12 * jnp.maximum(1.0, jnp.abs(f_zero))
            for frac in PROBE_FRACTIONS:
                t = frac * scale_
                f_t, score_t = _value_score(t, yc_, X_, v_, w_, reml)
                take = jnp.isfinite(f_t) & ((f_t < f_zero - tol) | (score_t > 0.0)) & (f_t < best_f)
                best_f = jnp.where(take, f_t, best_f)
                best_t = jnp.where(take, t, best_t)
            return best_t

        def probe_compacted(width):
            def run_probe(_):
                idx = jnp.argsort(~at_bound, stable=True)[:width]  # boundary lanes first
                sub = jax.tree_util.tree_map(lambda a: a[idx], arrays)
                found = jnp.where(at_bound[idx], probe(sub, f_bound[idx]), 0.0)
                return jnp.zeros(M, y.dtype).at[idx].set(found)
            return run_probe

        def probe_all(_):
            return jnp.where(at_bound, probe(arrays, f_bound), 0.0)

        n_bound = jnp.sum(at_bound)
        quarter, half = max(M // 4, 1), max(M // 2, 1)
        # the probes run on M / 4, M / 2 or M lanes, whichever holds every boundary lane
        restart_t = jax.lax.switch((n_bound > quarter).astype(jnp.int32) + (n_bound > half).astype(jnp.int32),
                                   [probe_compacted(quarter), probe_compacted(half), probe_all], None)
        restart = at_bound & (restart_t > 0.0)

        def second_start(carry):
            tau2, st, lam, status, its, _ = carry
            st = jax.tree_util.tree_map(lambda a, b: jnp.where(_expand(restart, a), a, b),
                                        _stats(restart_t, yc, X, v, w, reml), st)
            again = iterate((jnp.where(restart, restart_t, tau2), st, jnp.where(restart, 1.0, lam),
                             jnp.where(restart, RUNNING, status), its, jnp.asarray(0)), arrays, max_iter)
            # a second climb that does not converge leaves the lane at its boundary optimum
            keep = restart & (again[3] == CONVERGED)
            merged = jax.tree_util.tree_map(lambda a, b: jnp.where(_expand(keep, a), a, b), again[:4], carry[:4])
            return merged + (again[4], again[5])

        carry = jax.lax.cond(jnp.any(restart), second_start, lambda c: c, carry)
        tau2, st, _, status, its, _ = carry
        status = jnp.where(status == RUNNING, MAX_ITER, status)
        # the last, quadratically small Newton step of a converged interior lane
        step, _ = _newton_step(st)
        tau2 = jnp.where((status == CONVERGED) & (tau2 > 0), jnp.maximum(tau2 + step, 0.0), tau2)
        at_zero = tau2 <= 0.0
        fin = _stats(tau2, yc, X, v, w, reml)
        interior = _log_sd_summary(fin, tau2)
        better0 = fin.f - st0.f > BOUNDARY_MARGIN * jnp.maximum(1.0, jnp.abs(fin.f))
        converged = status == CONVERGED
        use0 = converged & (at_zero | better0)
        status = jnp.where(use0, jnp.where(at_zero, BOUNDARY, BOUNDARY_BETTER), status)
        var0 = jnp.concatenate([jnp.diagonal(st0.A_inv, axis1=-2, axis2=-1), jnp.full((M, 1), jnp.nan)], axis=1)
        out = dict(
            beta=jnp.where(use0[:, None], st0.beta, fin.beta) + beta_fe,
            phi=jnp.where(use0[:, None], -jnp.inf, interior["phi"]),
            f=jnp.where(use0, st0.f, fin.f),
            var=jnp.where(use0[:, None], var0, interior["var"]),
            max_gradient=jnp.where(use0, 0.0, interior["max_gradient"]),
            status=status, iterations=its, tau2=jnp.where(use0, 0.0, tau2),
        )
        return out

    return jax.jit(run)


def _gls_at_zero(y, X, v, w):
    """GLS estimate with weights 1/v (the common-effect model), (M, p)."""
    u = jnp.where(w > 0, w / v, 0.0)
    if X is None:
        return (jnp.sum(u * y, axis=1) / jnp.sum(u, axis=1))[:, None]
    p = X.shape[-1]
    A = _rowsum(u, X[..., :, None] * X[..., None, :])
    b = _rowsum(u * y, X)
    return small_cholesky_solve(A, b[..., None])[1][..., 0] if p > 1 else b / A[..., 0]


def _log_sd_summary(st: _Stats, tau2):
    """Estimates on the log-SD scale and drmTMB's covariance at tau^2 > 0 (the engine's
    conventions, :func:`drmpy.engine.batch._diag_post`, in closed form for one variance).

    With ``gamma = log sigma = 1/2 log tau^2`` and ``c = d tau^2 / d gamma = 2 tau^2``: the
    gradient of the objective is ``-c score``, its Hessian ``H = c^2 observed - 2 c score``;
    ``Cov(gamma) = 1/H``, ``J = d beta / d gamma = c dbeta``, ``Cov(beta) = A^-1 + J J' / H``
    and ``Cov(beta, gamma) = J / H`` (for ML the inverse of the joint Hessian is the same).
    """
    pos = tau2 > 0
    safe = jnp.where(pos, tau2, 1.0)
    c = 2.0 * safe
    grad = -c * st.score
    H = c * c * st.observed - 2.0 * c * st.score
    C = 1.0 / H
    J = c[:, None] * st.dbeta
    var_beta = jnp.diagonal(st.A_inv, axis1=-2, axis2=-1) + J * J * C[:, None]
    return dict(phi=(0.5 * jnp.log(safe))[:, None], var=jnp.concatenate([var_beta, C[:, None]], axis=1),
                max_gradient=jnp.abs(grad))


def _fitted(X, beta):
    """X beta per group (M, N); X None is the intercept."""
    if X is None:
        return jnp.broadcast_to(beta[:, :1], beta.shape[:1] + (1,))
    return jnp.sum(X * beta[:, None, :], axis=-1)


def _expand(mask, a):
    return mask.reshape(mask.shape + (1,) * (a.ndim - 1))


def run_tau2(y, X, v, w, max_iter: int, reml: bool, *, device=None, block: bool = True) -> dict:
    """Fit one chunk (numpy arrays with a leading group axis) with :func:`tau2_program`;
    ``device`` as in :func:`drmpy.engine.batch.run_pool` (a Device or a mesh)."""
    from .batch import exported_call

    out = exported_call(("tau2", bool(reml)), tau2_program(bool(reml)), y, X, v, w, np.int64(max_iter),
                        device=device)
    if block:
        return {k: np.asarray(val) for k, val in jax.device_get(out).items()}
    return out
