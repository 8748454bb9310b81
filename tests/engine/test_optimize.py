"""The trust-region Newton minimiser (engine.optimize): its step against the defining
equations, per problem and side by side under vmap, and a full minimisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drmpy  # noqa: F401  (float64)
from drmpy.engine.optimize import CONVERGED, _trust_step, newton_trust_region, value_grad_hessian
from drmpy.engine.small_linalg import jacobi_eigh


def _problem(k, seed, definite=True):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(k, k))
    H = A @ A.T + 0.5 * np.eye(k) if definite else A + A.T
    return rng.normal(size=k), H


def _step(g, H, radius):
    evals, evecs = np.linalg.eigh(H)
    return np.asarray(_trust_step(jnp.asarray(g), jnp.asarray(evals), jnp.asarray(evecs), jnp.asarray(radius)))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_newton_step_inside_the_radius(k):
    g, H = _problem(k, 1)
    d = _step(g, H, 1e6)
    np.testing.assert_allclose(d, -np.linalg.solve(H, g), rtol=1e-12)


@pytest.mark.parametrize("k,definite", [(2, True), (2, False), (4, True), (4, False)])
def test_step_on_the_boundary_solves_the_shifted_system(k, definite):
    g, H = _problem(k, 2, definite)
    radius = 0.1 * min(np.linalg.norm(np.linalg.lstsq(H, g, rcond=None)[0]), 1.0)
    d = _step(g, H, radius)
    assert abs(np.linalg.norm(d) - radius) < 1e-9 * radius
    # (H + lam I) d = -g with one lam >= max(0, -lambda_min(H))
    lam = -(g + H @ d) / d
    assert np.ptp(lam) < 1e-7 * max(1.0, abs(lam.mean()))
    assert lam.mean() >= max(0.0, -np.linalg.eigvalsh(H)[0]) - 1e-9
    assert g @ d + 0.5 * d @ H @ d < 0


def test_hard_case_takes_the_smallest_shift():
    # g has no component along the negative eigenvalue's vector: no lam > 1 reaches the
    # radius, so the step is the one at the smallest admissible shift
    H = np.diag([-1.0, 2.0])
    g = np.array([0.0, 1.0])
    d = _step(g, H, 10.0)
    np.testing.assert_allclose(d, [0.0, -1.0 / 3.0], rtol=1e-10)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_constrained_steps_reach_the_radius_on_random_problems(k):
    # definite and indefinite Hessians over eight orders of magnitude, radii from 1e-6 to
    # 1e3: every step that the radius constrains lies on it.  (With the iterations in lam
    # itself, a root next to the pole lam = -lambda_min could not be resolved: 740 of 4,000
    # such problems ran all 100 iterations and stopped up to 5e-4 short of the radius.)
    rng = np.random.default_rng(k)
    n = 2000
    A = rng.normal(size=(n, k, k)) * rng.uniform(1e-4, 1e4, (n, 1, 1))
    H = np.where(rng.uniform(size=(n, 1, 1)) < 0.5, A @ A.transpose(0, 2, 1), A + A.transpose(0, 2, 1))
    g = rng.normal(size=(n, k)) * 10 ** rng.uniform(-8, 4, (n, 1))
    radius = 10 ** rng.uniform(-6, 3, n)
    evals, evecs = np.linalg.eigh(H)
    d = np.asarray(jax.jit(jax.vmap(_trust_step))(jnp.asarray(g), jnp.asarray(evals), jnp.asarray(evecs),
                                                    jnp.asarray(radius)))
    newton = -np.linalg.solve(H, g[:, :, None])[:, :, 0]
    scale = np.maximum(np.abs(evals).max(axis=1), 1.0)
    free = (evals[:, 0] > 1e-12 * scale) & (np.linalg.norm(newton, axis=1) <= radius)
    # the Newton step where it fits: H d = -g to rounding (a backward error; a forward
    # comparison with a solve would measure H's conditioning)
    residual = np.linalg.norm(np.einsum("nij,nj->ni", H, d) + g, axis=1)
    size = np.linalg.norm(H, axis=(1, 2)) * np.linalg.norm(d, axis=1) + np.linalg.norm(g, axis=1)
    assert np.max((residual / size)[free]) < 1e-12
    # the hard case: even the smallest admissible shift gives a step inside the radius
    gt = np.einsum("nji,nj->ni", evecs, g)
    shift = np.maximum(evals[:, 0], 0.0) + 1e-12 * scale - evals[:, 0]
    hard = ~free & (np.linalg.norm(gt / (evals + shift[:, None]), axis=1) <= radius)
    on_radius = ~free & ~hard
    assert on_radius.sum() > n // 3
    ratio = np.linalg.norm(d, axis=1) / radius
    assert np.max(np.abs(ratio[on_radius] - 1.0)) < 1e-12
    assert np.all(ratio[hard] <= 1.0 + 1e-12)


def test_steps_side_by_side_equal_steps_one_at_a_time():
    # under vmap the bisection runs while any problem needs it; problems that take the
    # Newton step must get exactly what they get alone
    probs = [_problem(3, s, definite=s % 2 == 0) for s in range(16)]
    g = np.stack([p[0] for p in probs])
    H = np.stack([p[1] for p in probs])
    radius = np.where(np.arange(16) % 3 == 0, 1e-2, 1e6)
    evals, evecs = jax.vmap(jacobi_eigh)(jnp.asarray(H))
    together = np.asarray(jax.jit(jax.vmap(_trust_step))(jnp.asarray(g), evals, evecs, jnp.asarray(radius)))
    alone = np.stack([np.asarray(jax.jit(_trust_step)(jnp.asarray(g[i]), evals[i], evecs[i], jnp.asarray(radius[i])))
                      for i in range(16)])
    np.testing.assert_array_equal(together, alone)
    # inactive problems (finished ones) that would need the bisection change nothing
    active = np.arange(16) % 2 == 0
    mixed = np.asarray(jax.jit(jax.vmap(_trust_step))(jnp.asarray(g), evals, evecs, jnp.asarray(radius),
                                                      jnp.asarray(active)))
    np.testing.assert_array_equal(mixed[active], alone[active])


def test_minimises_rosenbrock_from_far():
    def rosen(x):
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    out = newton_trust_region(rosen, jnp.array([-1.2, 1.0, -0.5, 2.0]), max_iter=jnp.asarray(200), gtol=1e-10)
    assert int(out.status) == CONVERGED
    np.testing.assert_allclose(np.asarray(out.x), np.ones(4), atol=1e-8)


def test_value_grad_hessian_in_one_pass():
    # a log-determinant objective with an extra (non-differentiated) argument, against the
    # dense closed forms: f = log|A + diag(e^x)| + b'(A + diag(e^x))^-1 b
    rng = np.random.default_rng(4)
    M = rng.normal(size=(3, 3))
    A = jnp.asarray(M @ M.T + np.eye(3))
    b = jnp.asarray(rng.normal(size=3))
    x = jnp.asarray(rng.normal(size=3))

    def fun(x, b):
        S = A + jnp.diag(jnp.exp(x))
        return jnp.linalg.slogdet(S)[1] + b @ jnp.linalg.solve(S, b)

    f, g, H = value_grad_hessian(fun)(x, b)
    S_inv = np.linalg.inv(np.asarray(A) + np.diag(np.exp(np.asarray(x))))
    u = S_inv @ np.asarray(b)
    e = np.exp(np.asarray(x))
    assert f == pytest.approx(np.linalg.slogdet(np.linalg.inv(S_inv))[1] + np.asarray(b) @ u, rel=1e-13)
    np.testing.assert_allclose(g, e * (np.diag(S_inv) - u**2), rtol=1e-12)
    # d g_i / d x_j = delta_ij g_i - e_i e_j (S_ij^2 - 2 u_i u_j S_ij)
    H_dense = np.diag(e * (np.diag(S_inv) - u**2)) - np.outer(e, e) * (S_inv**2 - 2 * np.outer(u, u) * S_inv)
    np.testing.assert_allclose(H, H_dense, rtol=1e-11, atol=1e-13)
