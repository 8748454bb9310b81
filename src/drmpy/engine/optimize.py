"""Exact-Hessian trust-region Newton minimiser, one ``lax.while_loop`` (runs inside ``jit``).

The step solves ``(H + lam I) d = -g`` in H's eigenbasis with the smallest ``lam >= 0``
that keeps ``||d|| <= radius`` (to a relative ``SECULAR_RTOL``) and makes ``H + lam I`` positive definite, so
indefinite Hessians and long flat directions are handled.  Acceptance uses the ratio
of actual to predicted reduction (classical trust-region constants).

Stopping (status codes, see :data:`STATUS_MESSAGES`):

* ``CONVERGED``: ``max|g| <= gtol * max(1, |f|)``, or, at a positive definite Hessian,
  the Newton decrement ``g'H^-1 g <= 1e-12 * max(1, |f|)`` (for large n the objective's
  rounding cannot resolve a smaller step);
* ``CONVERGED_FLAT``: the objective changed by less than ``ftol * max(1, |f|)`` over
  ``flat_steps`` consecutive accepted steps while the Newton decrement is negligible.
  This is how a variance running to zero ends: its log-SD runs toward -infinity where
  the likelihood is flat.
* ``MAX_ITER``, ``NONFINITE``, ``RADIUS_COLLAPSED``: failures, reported, never raised.
  (The callers also report ``NONFINITE`` for a finished fit whose objective or estimates
  are not finite: a non-finite result is never converged.)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

RUNNING, CONVERGED, CONVERGED_FLAT, MAX_ITER, NONFINITE, RADIUS_COLLAPSED = range(6)

# Converged also when the Newton decrement g'H^-1 g <= DECREMENT_TOL * max(1, |f|): the
# remaining step is then below 1e-6 standard errors per unit of |f|^(1/2).
DECREMENT_TOL = 1e-12

STATUS_NAMES = {
    RUNNING: "running",
    CONVERGED: "converged",
    CONVERGED_FLAT: "converged_flat",
    MAX_ITER: "max_iter",
    NONFINITE: "nonfinite",
    RADIUS_COLLAPSED: "radius_collapsed",
}

STATUS_MESSAGES = {
    RUNNING: "running",
    CONVERGED: "converged: gradient below tolerance",
    CONVERGED_FLAT: "converged: objective no longer changes (a variance at its zero boundary)",
    MAX_ITER: "iteration limit reached before convergence",
    NONFINITE: "the objective, its derivatives or the estimates are non-finite",
    RADIUS_COLLAPSED: "trust region collapsed: no step reduces the objective",
}


class SolverOutput(NamedTuple):
    x: jax.Array
    f: jax.Array
    grad: jax.Array
    hess: jax.Array
    status: jax.Array
    iterations: jax.Array
    evaluations: jax.Array
    aux: Any = ()  # what ``derivatives`` returned beside (f, g, H) at x, if anything


class _State(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    H: jax.Array
    radius: jax.Array
    it: jax.Array
    nfev: jax.Array
    flat: jax.Array
    status: jax.Array
    evals: jax.Array  # eigen-decomposition of H (ascending), shared by the stopping test
    evecs: jax.Array  # and the next trust-region step
    aux: Any = ()  # the evaluation's extra output at x (a pytree), kept with f, g, H


# the shift lam of a constrained step is accepted when ||d(lam)|| is within this relative
# distance of the radius (or no smaller lam exists: the "hard case")
SECULAR_RTOL = 1e-12


def _trust_step(g, evals, evecs, radius, active=True):
    """Minimiser of g'd + d'Hd/2 subject to ||d|| <= radius, from H's eigen-decomposition.

    ``d(lam) = -(H + lam I)^-1 g`` with ``lam = 0`` when that Newton step fits, else the
    ``lam >= max(0, -lambda_min)`` with ``||d(lam)|| = radius``: safeguarded Newton
    iterations on ``1/||d|| - 1/radius`` (nearly linear in lam; Moré and Sorensen 1983)
    from the left end of a bracket, falling back to the geometric midpoint of the bracket
    when an iterate leaves it.  The iterations run on ``delta = lambda_min + lam``, so that
    ``H + lam I`` has the eigenvalues ``(lambda_i - lambda_min) + delta``, exact near the
    pole ``delta = 0`` (in lam itself ``lambda_min + lam`` loses its digits to cancellation
    there, and the iterations stalled).  Used by every fit; in the batch programs, where
    80 bisection halvings made this step cost more than the likelihood, 2 to 3 iterations
    on average (closed form for one parameter).  ``active=False`` (a problem whose step is
    not used) skips the iterations; its result is then meaningless.
    """
    if g.shape[0] == 1:
        e, gg = evals[0], g[0]
        scale = jnp.maximum(jnp.abs(e), 1.0)
        newton_ok = (e > 1e-12 * scale) & (jnp.abs(gg) <= radius * jnp.where(e > 0, e, 1.0))
        step = jnp.where(newton_ok, -gg / jnp.where(newton_ok, e, 1.0), -jnp.sign(gg) * radius)
        return step[None]
    gt = evecs.T @ g
    scale = jnp.maximum(jnp.max(jnp.abs(evals)), 1.0)
    gaps = evals - evals[0]  # >= 0, the first exactly 0
    newton_ok = (evals[0] > 1e-12 * scale) & (jnp.linalg.norm(gt / evals) <= radius)
    # the smallest admissible delta (lam >= 0 and H + lam I positive definite), and one
    # whose step is inside: ||d(delta_hi)|| <= ||g|| / delta_hi <= radius
    delta_lo = jnp.maximum(evals[0], 0.0) + 1e-12 * scale
    delta_hi = delta_lo + jnp.linalg.norm(g) / radius + scale

    def norm_at(delta):
        return jnp.linalg.norm(gt / (gaps + delta))

    def solved(delta, n):
        # at the radius, or at the smallest admissible shift and already inside
        return (jnp.abs(n / radius - 1.0) <= SECULAR_RTOL) | ((n <= radius) & (delta <= delta_lo))

    def running(st):
        i, delta, lo, hi, n = st
        # Under vmap the loop runs while any problem needs it, so problems whose step is
        # not used (finished ones: a zero variance leaves H near singular) must not ask,
        # nor problems whose bracket is down to adjacent floats.
        resolvable = hi - lo > 4.0 * jnp.finfo(hi.dtype).eps * hi
        return (i < 100) & ~newton_ok & active & ~solved(delta, n) & resolvable

    def body(st):
        i, delta, lo, hi, n = st
        too_long = n > radius
        lo = jnp.where(too_long, delta, lo)
        hi = jnp.where(too_long, hi, delta)
        q = gt / (gaps + delta)
        slope = jnp.sum(q * q / (gaps + delta)) / n**3  # d/d delta of 1/||d||
        new = delta - (1.0 / n - 1.0 / radius) / slope
        inside = jnp.isfinite(new) & (new > lo) & (new < hi)
        new = jnp.where(inside, new, jnp.sqrt(lo * hi))
        return i + 1, new, lo, hi, norm_at(new)

    _, delta, _, hi, n = jax.lax.while_loop(running, body, (0, delta_lo, delta_lo, delta_hi, norm_at(delta_lo)))
    # unsolved (out of iterations): the bracket's right end, whose step is inside the radius
    delta = jnp.where(solved(delta, n), delta, hi)
    return -evecs @ jnp.where(newton_ok, gt / evals, gt / (gaps + delta))


def trust_region_init(x0: jax.Array, radius0: float = 1.0, aux: Any = ()) -> _State:
    """Solver state before the first iteration, which evaluates ``x0`` (a zero step that is
    always accepted, so the derivative code appears once in a compiled loop).  ``aux``: a
    placeholder of the evaluation's extra output (same shapes), when it has one."""
    k = x0.shape[0]
    return _State(x0, jnp.asarray(jnp.inf), jnp.zeros(k), jnp.eye(k), jnp.asarray(radius0), jnp.asarray(-1),
                  jnp.asarray(0), jnp.asarray(0), jnp.asarray(RUNNING), jnp.ones(k), jnp.eye(k), aux)


def trust_region_output(s: _State) -> SolverOutput:
    """The solution of a finished (or stopped) state; RUNNING counts as MAX_ITER."""
    status = jnp.where(s.status == RUNNING, MAX_ITER, s.status)
    return SolverOutput(s.x, s.f, s.g, s.H, status, s.it, s.nfev, s.aux)


def trust_region_step(s: _State, evaluate: Callable, *, max_iter, gtol, ftol: float = 1e-12,
                      flat_steps: int = 3, max_radius: float = 8.0,
                      eigh: Callable = jnp.linalg.eigh) -> _State:
    """One iteration of :func:`newton_trust_region` (the body of its loop).

    ``evaluate(x) -> (f, g, H)`` or ``(f, g, H, aux)`` (aux is kept with the accepted point).
    The first call (``it == -1``) evaluates the start point; a state whose ``status`` is not
    RUNNING is finished.
    """
    first = s.it < 0
    d = jnp.where(first, 0.0, _trust_step(s.g, s.evals, s.evecs, s.radius, active=~first & (s.status == RUNNING)))
    predicted = s.g @ d + 0.5 * d @ s.H @ d
    x_new = s.x + d
    evaluated = evaluate(x_new)
    f_new, g_new, H_new = evaluated[:3]
    aux_new = evaluated[3] if len(evaluated) > 3 else ()
    finite = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new)) & jnp.all(jnp.isfinite(H_new))
    actual = f_new - s.f
    rho = jnp.where(predicted < 0, actual / jnp.where(predicted < 0, predicted, -1.0), -1.0)
    fscale = jnp.maximum(1.0, jnp.abs(s.f))
    tiny_change = jnp.abs(actual) <= ftol * fscale
    accept = first | (finite & ((rho > 1e-4) | (tiny_change & (actual <= 0))))
    dnorm = jnp.linalg.norm(d)
    radius = jnp.where(
        first,
        s.radius,
        jnp.where(
        ~finite | (rho < 0.25),
        0.25 * dnorm,
        jnp.where((rho > 0.75) & (dnorm >= 0.99 * s.radius), jnp.minimum(2.0 * s.radius, max_radius), s.radius),
    ))
    x = jnp.where(accept, x_new, s.x)
    f = jnp.where(accept, f_new, s.f)
    g = jnp.where(accept, g_new, s.g)
    H = jnp.where(accept, H_new, s.H)
    aux = jax.tree_util.tree_map(lambda new, old: jnp.where(accept, new, old), aux_new, s.aux)
    flat = jnp.where(first, 0, jnp.where(accept & tiny_change, s.flat + 1, jnp.where(accept, 0, s.flat)))
    it = s.it + 1
    gmax = jnp.max(jnp.abs(g), initial=0.0)
    fscale_new = jnp.maximum(1.0, jnp.abs(f))
    # Newton decrement g'H^-1 g of the accepted point: tiny when only flat (boundary)
    # directions remain, or when the remaining Newton step is below what the objective's
    # rounding (a sum over n rows) can resolve.
    evals, evecs = eigh(H)
    gt = evecs.T @ g
    decrement = jnp.sum(gt**2 / jnp.maximum(evals, 1e-12 * jnp.maximum(jnp.max(jnp.abs(evals)), 1.0)))
    converged = (gmax <= gtol * fscale_new) | (
        (evals[0] > 0) & (decrement <= DECREMENT_TOL * fscale_new)
    )
    flat_done = (flat >= flat_steps) & (decrement <= 1e-6 * jnp.maximum(1.0, jnp.abs(f)))
    collapsed = radius < 1e-14
    status = jnp.where(
        first & ~finite,
        NONFINITE,
        jnp.where(
        converged,
        CONVERGED,
        jnp.where(
            flat_done,
            CONVERGED_FLAT,
            jnp.where(collapsed, RADIUS_COLLAPSED, jnp.where(it >= max_iter, MAX_ITER, RUNNING)),
        ),
    ))
    return _State(x, f, g, H, radius, it, s.nfev + 1, flat, status, evals, evecs, aux)


def value_grad_hessian(fun: Callable) -> Callable:
    """``x, *args -> (f, g, H)``: the value, gradient and Hessian of ``fun`` in x (its first
    argument) from one forward-over-reverse pass.  The value and gradient ride along as the
    pass's auxiliary output, so the objective is traced, compiled and run once per
    evaluation (``value_and_grad`` beside ``jax.hessian`` holds it three times over)."""

    def grad_and_value(x, *args):
        f, g = jax.value_and_grad(fun)(x, *args)
        return g, (f, g)

    def evaluate(x, *args):
        H, (f, g) = jax.jacfwd(grad_and_value, has_aux=True)(x, *args)
        return f, g, H

    return evaluate


def value_grad_hessian_forward(fun: Callable) -> Callable:
    """As :func:`value_grad_hessian`, by forward-over-forward differentiation: cheaper to
    compile where reverse mode is costly (the tree pass's level-by-level scatters, whose
    transposes and stored residuals dominate the compile), and as fast to run for the few
    variance parameters a model has (k + k^2 tangents of one pass)."""

    def value_pair(x, *args):
        v = fun(x, *args)
        return v, v

    def grad_and_value(x, *args):
        g, f = jax.jacfwd(value_pair, has_aux=True)(x, *args)
        return g, (f, g)

    def evaluate(x, *args):
        H, (f, g) = jax.jacfwd(grad_and_value, has_aux=True)(x, *args)
        return f, g, H

    return evaluate


def newton_trust_region(
    fun: Callable[[jax.Array], jax.Array] | None,
    x0: jax.Array,
    *,
    max_iter: jax.Array,
    gtol: float = 1e-8,
    ftol: float = 1e-12,
    flat_steps: int = 3,
    radius0: float = 1.0,
    max_radius: float = 8.0,
    eigh: Callable = jnp.linalg.eigh,
    derivatives: Callable | None = None,
) -> SolverOutput:
    """Minimise ``fun`` from ``x0`` with exact gradient and Hessian (``jax.hessian``).

    ``derivatives(x) -> (f, g, H)`` replaces automatic differentiation when given (a
    closed form; ``fun`` is then unused); when it returns ``(f, g, H, aux)``, the solution's
    ``aux`` is that of its point (e.g. pieces a post-processing step would recompute).  ``eigh`` decomposes the Hessian; pass
    :func:`drmpy.small_linalg.jacobi_eigh` when the solver is vmapped over many problems
    (batched LAPACK can deadlock on CPU).
    """
    if derivatives is not None:
        evaluate = derivatives
    else:
        assert fun is not None, "newton_trust_region needs fun= or derivatives="
        evaluate = value_grad_hessian(fun)

    aux0 = ()
    if derivatives is not None:
        shapes = jax.eval_shape(derivatives, x0)
        if len(shapes) > 3:
            aux0 = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes[3])
    state = trust_region_init(x0, radius0, aux0)

    def cond(s):
        return (s.status == RUNNING) & ((s.it < max_iter) | (s.it < 0))

    def body(s):
        return trust_region_step(s, evaluate, max_iter=max_iter, gtol=gtol, ftol=ftol,
                                 flat_steps=flat_steps, max_radius=max_radius, eigh=eigh)

    return trust_region_output(jax.lax.while_loop(cond, body, state))
