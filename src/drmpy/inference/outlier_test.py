"""Parametric-bootstrap outlier test of a robust fit (metaplus's ``testOutliers``; issue 26).

The statistic is the likelihood-ratio statistic of the robust model (``student()`` or
``normal_mixture()``) against the normal model with the same formulas,
``LRT = 2 (logLik_robust - logLik_normal)``.  Its null distribution is simulated: ``nsim``
responses are drawn from the fitted normal model (ML estimates; same rows, designs and known
variances), the normal and the robust model are refitted to each, and

    p = (1 + #{simulated LRT >= observed LRT}) / (1 + #{refits that converged})

(metaplus's convention).  The refits run as compiled batches (:mod:`drmpy.robust.batch`):
the normal refits from the generating estimates, the robust refits from the same starts as the
fit of the observed data, taken from each replicate's normal refit.

Boundary: the normal model lies on the edge of both robust models (``1/nu = 0``; ``p_out = 0``).
A robust refit that gains no more than :data:`drmpy.robust.program.BOUNDARY_GAIN` in
log-likelihood over the normal refit has LRT 0 (the boundary), as the fit of the observed data
does (metaplus sets the LRT to 0 below a relative gain of 1e-4 and clamps negative values).  A
replicate whose normal refit did not converge, or whose best robust refit is above the boundary
but did not converge, is a failed refit: counted (``n_failed``), left out of the p-value, and
its statistic is NaN.

metaplus resamples the standard errors with replacement for every replicate
(``sample(sei, replace = TRUE)``); ``resample_v=True`` does the same with the sampling variances,
while the default keeps each row's own ``v_i`` (the usual parametric bootstrap given the known
variances, as :meth:`drmpy.DrmFit.simulate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DrmError

__all__ = ["OutlierTest", "outlier_test"]

# lanes (replicate x start) per compiled robust batch (small batches keep the quadrature's arrays
# in cache and the slowest lane of a batch holds few others: sim30 t, 999 refits, 2 loaded cores:
# 5.1 s at 16 lanes, 12.3 s at 32, 25.8 s at 64, 32.6 s at 256), and the iteration cap of the first pass
# (refits still running then are resumed together, so a few slow refits do not hold a batch)
ROBUST_LANES = 16
NORMAL_LANES = 256
FIRST_PASS_ITER = 8


@dataclass(frozen=True)
class OutlierTest:
    """Result of :func:`outlier_test`.

    ``statistic``: the observed LRT; ``p_value``; ``nsim``: replicates drawn; ``n_failed``:
    replicates left out (a refit did not converge); ``simulated``: the replicates' LRTs
    (NaN where failed); ``family``, ``seed`` and ``resample_v`` as given."""

    statistic: float
    p_value: float
    nsim: int
    n_failed: int
    family: str
    simulated: np.ndarray = field(repr=False)
    seed: Any = None
    resample_v: bool = False

    def __str__(self) -> str:
        return (f"Parametric-bootstrap outlier test ({self.family} vs normal random effects)\n"
                f"observed LRT statistic {self.statistic:.4f}, p value {self.p_value:.4g} "
                f"({self.nsim - self.n_failed} replicates; {self.n_failed} failed refits left out)")


def _check_fit(fit) -> None:
    from ..results.robust_fit import RobustFit

    if not isinstance(fit, RobustFit):
        raise DrmError("outlier_test() needs a fit with family=drm.student() or drm.normal_mixture() "
                       f"(it tests the robust model against the normal one); got {type(fit).__name__}.")
    family = fit.family
    if family.name == "student" and "nu" not in family.estimated_extra_dpars:
        raise DrmError(f"outlier_test(): {family!r} fixes nu, so the normal model is not nested in it; "
                       "estimate nu with drm.student().")
    if fit.normal_theta is None:
        raise DrmError("outlier_test(): this fit keeps no estimates of the normal model; refit it.")


def _check_nsim(nsim: Any) -> int:
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or int(nsim) < 1:
        raise DrmError(f"outlier_test(nsim=...) must be a positive integer, got {nsim!r}.")
    return int(nsim)


def _gain_statistic(robust_loglik: np.ndarray, normal_loglik: np.ndarray) -> np.ndarray:
    """``2 (robust - normal)``, 0 where the gain is at most BOUNDARY_GAIN (the boundary)."""
    from ..robust.program import BOUNDARY_GAIN

    gain = robust_loglik - normal_loglik
    return np.where(gain > BOUNDARY_GAIN, 2.0 * gain, 0.0)


def observed_statistic(fit) -> float:
    """The LRT of the fitted robust model against the fitted normal model (0 at the boundary)."""
    if fit.at_boundary:
        return 0.0
    return float(_gain_statistic(np.asarray(fit.loglik), np.asarray(fit.normal_loglik)))


def simulate_normal(fit, nsim: int, rng: np.random.Generator, resample_v: bool) -> tuple[np.ndarray, np.ndarray]:
    """(nsim, n) responses and sampling variances drawn from the fitted normal model:
    ``y = mu_i + b_g + sigma_i z_i + sqrt(v_i) e_i`` with ``b_g ~ N(0, sd_g^2)`` for a
    ``(1|g)`` term; ``v_i`` the row's own, or (``resample_v``) drawn with replacement from
    all rows' v (metaplus)."""
    design = fit.design
    theta = np.asarray(fit.normal_theta, dtype=np.float64)
    X = design.fixed["mu"].matrix
    Xs = design.fixed["sigma"].matrix
    p, q = X.shape[1], Xs.shape[1]
    mu = X @ theta[:p]
    sigma = np.exp(Xs @ theta[p:p + q])
    n = design.nobs
    Y = mu + sigma * rng.standard_normal((nsim, n))
    if design.random:
        rd = design.random[0]
        tau = np.exp(rd.sd_designs[0].matrix @ theta[p + q:])
        Y += (tau * rng.standard_normal((nsim, rd.n_levels)))[:, rd.level_index]
    v = np.asarray(design.known_v.diag, dtype=np.float64)
    V = v[rng.integers(0, n, size=(nsim, n))] if resample_v else np.broadcast_to(v, (nsim, n))
    Y += np.sqrt(V) * rng.standard_normal((nsim, n))
    return Y, np.ascontiguousarray(V)


def _padded(a: np.ndarray, lanes: int) -> np.ndarray:
    """``a`` with its first axis padded to ``lanes`` by repeating its first row."""
    if a.shape[0] == lanes:
        return a
    return np.concatenate([a, np.repeat(a[:1], lanes - a.shape[0], axis=0)])


def _batches(total: int, lanes: int):
    for start in range(0, total, lanes):
        yield np.arange(start, min(start + lanes, total))


def _on_devices(program, parts):
    """``(key, program(*arrays))`` per part, the parts dealt round-robin to the local devices
    and dispatched before any result is read, so that the devices (on CPU, one per core:
    :mod:`drmpy._jax`) run batches at the same time."""
    import jax

    devices = jax.local_devices()
    pending = []
    for i, (key, arrays) in enumerate(parts):
        device = devices[i % len(devices)]
        pending.append((key, program(*(jax.device_put(a, device) for a in arrays))))
    return pending


def run_refits(fit, Y: np.ndarray, V: np.ndarray) -> dict[str, np.ndarray]:
    """Normal and robust refits of the rows of ``Y`` (with variances ``V``): per replicate the
    normal log-likelihood and status, per replicate and start the robust log-likelihood, status
    and iterations.  The refits run in the fit's units (``Y / c``, ``V / c^2``,
    :class:`drmpy.robust.program.ResponseScale`); the log-likelihoods are the user's."""
    import jax.numpy as jnp

    from ..engine.optimize import MAX_ITER
    from ..robust.batch import normal_refits, robust_refits, start_plan
    from ..robust.program import BOUNDARY_GAIN, normal_positions, prepare_scaled

    family = fit.family
    arrays, layout, scale = prepare_scaled(fit.design, family)
    Y, V = np.asarray(Y, dtype=np.float64) / scale.c, np.asarray(V, dtype=np.float64) / scale.c**2
    plan = start_plan(arrays, layout, family)
    ctrl = fit.control
    max_iter, gtol = int(ctrl.max_iter), float(ctrl.gtol)
    normal_scale = scale.take(normal_positions(layout))
    theta_n0 = jnp.asarray(normal_scale.to_internal(fit.normal_theta), dtype=jnp.float64)
    nsim = Y.shape[0]
    normal_ll = np.empty(nsim)
    normal_status = np.empty(nsim, dtype=np.int64)
    starts = []
    normal_parts = [(ids, (_padded(Y[ids], NORMAL_LANES), _padded(V[ids], NORMAL_LANES)))
                    for ids in _batches(nsim, NORMAL_LANES)]
    for ids, out in _on_devices(lambda y, v: normal_refits(y, v, arrays, theta_n0, plan, jnp.asarray(max_iter), gtol,
                                                           layout, family), normal_parts):
        m = len(ids)
        normal_ll[ids] = -np.asarray(out.f)[:m]
        normal_status[ids] = np.asarray(out.status)[:m]
        starts.append(np.asarray(out.starts)[:m])
    S = np.concatenate(starts)  # (nsim, starts, k)
    n_starts, k = S.shape[1], S.shape[2]
    # one lane per (replicate, start), replicate-major
    theta = S.reshape(nsim * n_starts, k)
    lane_rep = np.repeat(np.arange(nsim), n_starts)
    f = np.full(len(theta), np.inf)
    status = np.full(len(theta), MAX_ITER, dtype=np.int64)
    iterations = np.zeros(len(theta), dtype=np.int64)
    todo = np.arange(len(theta))
    first = min(FIRST_PASS_ITER, max_iter)
    for budget in (first, max_iter - first):
        if budget <= 0 or len(todo) == 0:
            break
        parts = []
        for part in _batches(len(todo), ROBUST_LANES):
            lanes = todo[part]
            reps = lane_rep[lanes]
            parts.append((lanes, (_padded(theta[lanes], ROBUST_LANES), _padded(Y[reps], ROBUST_LANES),
                                  _padded(V[reps], ROBUST_LANES), _padded(-normal_ll[reps], ROBUST_LANES))))

        def solve(th0, y, v, fn, budget=budget):
            return robust_refits(th0, y, v, fn, arrays, jnp.asarray(budget), gtol, BOUNDARY_GAIN, layout, family)

        for lanes, out in _on_devices(solve, parts):
            m = len(lanes)
            f[lanes] = np.asarray(out.f)[:m]
            status[lanes] = np.asarray(out.status)[:m]
            iterations[lanes] += np.asarray(out.iterations)[:m]
            theta[lanes] = np.asarray(out.theta)[:m]
        todo = todo[status[todo] == MAX_ITER]
    return {"normal_loglik": scale.loglik_to_user(normal_ll), "normal_status": normal_status,
            "robust_loglik": scale.loglik_to_user(-f.reshape(nsim, n_starts)), "robust_status": status.reshape(nsim, n_starts),
            "robust_iterations": iterations.reshape(nsim, n_starts)}


def replicate_statistics(refits: dict[str, np.ndarray]) -> np.ndarray:
    """Per replicate the LRT, NaN for a failed replicate (see the module docstring): the best
    robust start with a finite log-likelihood, as :func:`drmpy.robust.program.fit_robust`."""
    from ..engine.optimize import CONVERGED, CONVERGED_FLAT
    from ..robust.program import BOUNDARY_GAIN

    ll = refits["robust_loglik"]
    ll = np.where(np.isfinite(ll), ll, -np.inf)
    best = np.argmax(ll, axis=1)
    rows = np.arange(ll.shape[0])
    best_ll = ll[rows, best]
    best_ok = np.isin(refits["robust_status"][rows, best], (CONVERGED, CONVERGED_FLAT))
    normal_ok = np.isin(refits["normal_status"], (CONVERGED, CONVERGED_FLAT))
    normal_ll = refits["normal_loglik"]
    boundary = ~(best_ll > normal_ll + BOUNDARY_GAIN)
    stat = _gain_statistic(best_ll, normal_ll)
    ok = normal_ok & np.isfinite(normal_ll) & (boundary | best_ok)
    return np.where(ok, stat, np.nan)


def outlier_test(fit, nsim: int = 999, *, seed: Any = None, resample_v: bool = False) -> OutlierTest:
    """Parametric-bootstrap test of the robust model against the normal model (see the module
    docstring): ``nsim`` replicates from the fitted normal model, each refitted under both.

    ``fit``: a :class:`~drmpy.results.robust_fit.RobustFit` (``family=drm.student()`` with nu
    estimated, or ``drm.normal_mixture()``).  ``seed``: anything ``numpy.random.default_rng``
    accepts (the same seed gives the same result).  ``resample_v``: draw each replicate's
    sampling variances with replacement from the data's, as metaplus does."""
    from ..simulation.simulate import random_generator

    _check_fit(fit)
    nsim = _check_nsim(nsim)
    rng = random_generator(seed, "outlier_test")
    Y, V = simulate_normal(fit, nsim, rng, bool(resample_v))
    stats = replicate_statistics(run_refits(fit, Y, V))
    observed = observed_statistic(fit)
    valid = stats[np.isfinite(stats)]
    p = (1.0 + np.sum(valid >= observed)) / (1.0 + len(valid))
    return OutlierTest(statistic=observed, p_value=float(p), nsim=nsim, n_failed=int(nsim - len(valid)),
                       family=repr(fit.family), simulated=stats, seed=seed, resample_v=bool(resample_v))
