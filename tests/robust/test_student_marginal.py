"""The Student-t + normal marginal density (drmpy.families.student_marginal) against a
scipy.integrate.quad oracle over the random effect u, on a grid of (r, v, sigma, nu) that covers
small nu, sigma << sqrt(v) and sigma >> sqrt(v), and far tails."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from drmpy.families.student_marginal import _student_normal_logpdf_plain, log_gamma_mixing, student_normal_logpdf


def oracle_logpdf(r: float, v: float, sigma: float, nu: float) -> float:
    """log of the integral over u of t_nu(u; 0, sigma) N(r - u; 0, v), by quad on pieces split at
    the two peaks (u = 0, u = r) and at 1 and 10 of each scale from them."""
    sd = np.sqrt(v)

    def f(u):
        return stats.t.pdf(u / sigma, nu) / sigma * stats.norm.pdf(r - u, scale=sd)

    cuts = sorted({c + k * w for c in (0.0, r) for w in (sigma, sd) for k in (-10, -1, 0, 1, 10)})
    edges = [-np.inf, *cuts, np.inf]
    total = sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=500)[0]
                for a, b in zip(edges[:-1], edges[1:]) if a < b)
    return float(np.log(total))


NUS = (0.3, 1.0, 4.0, 30.0, 1e3, 1e6)
SIGMAS = (1e-3, 1.0, 1e3)  # sigma / sqrt(v)
ZS = (0.0, 3.0, 25.0)  # r in total SDs sqrt(v + sigma^2)
GRID = list(itertools.product(NUS, SIGMAS, ZS))


@pytest.fixture(scope="module")
def ours():
    nu, s, z = (np.array(x, dtype=np.float64) for x in zip(*GRID))
    v = np.full_like(nu, 0.7)
    sigma = s * np.sqrt(v)
    r = z * np.sqrt(v + sigma**2)
    got = np.asarray(jax.jit(student_normal_logpdf)(r, v, sigma, nu))
    return r, v, sigma, nu, got


def _worst(ours, rows):
    r, v, sigma, nu, got = (x[rows] for x in ours)
    want = np.array([oracle_logpdf(*args) for args in zip(r, v, sigma, nu)])
    rel = np.abs(np.expm1(got - want))  # relative error of the density
    worst = int(np.argmax(rel))
    return rel[worst], (GRID[rows[worst]], got[worst], want[worst])


@pytest.mark.slow
def test_marginal_matches_quad_to_1e9(ours):
    rel, where = _worst(ours, np.arange(len(GRID)))
    assert rel < 1e-9, where


def test_marginal_matches_quad_at_the_corners(ours):
    """The hardest corners of the grid (the full grid is the slow test above)."""
    corners = [(0.3, 1e-3, 25.0), (0.3, 1e3, 3.0), (1e6, 1e3, 3.0), (4.0, 1e-3, 3.0), (1e3, 1.0, 25.0)]
    rel, where = _worst(ours, np.array([GRID.index(c) for c in corners]))
    assert rel < 1e-9, where


def test_zero_v_gives_the_t_density():
    r = np.array([0.0, 0.4, -3.0, 40.0])
    got = np.asarray(student_normal_logpdf(r, np.zeros(4), np.full(4, 0.5), np.full(4, 2.5)))
    np.testing.assert_allclose(got, stats.t.logpdf(r / 0.5, 2.5) - np.log(0.5), rtol=1e-11)


def test_large_nu_tends_to_the_normal_marginal():
    r, v, sigma = np.array([0.3, 2.0]), np.array([0.2, 0.5]), np.array([0.4, 0.1])
    got = np.asarray(student_normal_logpdf(r, v, sigma, np.full(2, 1e9)))
    np.testing.assert_allclose(got, stats.norm.logpdf(r, scale=np.sqrt(v + sigma**2)), rtol=1e-8)


def test_mixing_density_integrates_to_one():
    """exp(log_gamma_mixing) is the density of log(lambda), lambda ~ Gamma(nu/2, rate nu/2)."""
    for nu in (0.5, 3.0, 200.0, 1e7):
        def f(t):
            return float(np.exp(log_gamma_mixing(jnp.asarray(t), nu)))
        width = min(1.0, np.sqrt(2.0 / nu))
        total = sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-12, limit=200)[0]
                    for a, b in ((-np.inf, -width), (-width, 0.0), (0.0, width), (width, np.inf)))
        assert abs(total - 1.0) < 1e-10, nu


def test_derivatives_match_differences_of_the_oracle():
    """Gradient in (sigma, nu) from JAX against central differences of the quad oracle."""
    r, v, sigma, nu = 1.3, 0.4, 0.3, 2.0
    g = jax.grad(lambda p: student_normal_logpdf(r, v, p[0], p[1]))(jnp.array([sigma, nu]))
    h = 1e-4
    d_sigma = (oracle_logpdf(r, v, sigma + h, nu) - oracle_logpdf(r, v, sigma - h, nu)) / (2 * h)
    d_nu = (oracle_logpdf(r, v, sigma, nu + h) - oracle_logpdf(r, v, sigma, nu - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(g), [d_sigma, d_nu], rtol=1e-6)


# --- the closed-form derivative rule against JAX's differentiation of the plain trapezoid ---------

DERIV_NUS = (0.3, 1.0, 4.0, 30.0, 1e3, 1e5)
DERIV_SIGMAS = (1e-3, 0.1, 1.0, 1e3)  # sigma / sqrt(v)
DERIV_ZS = (0.0, -0.7, 3.0, 20.0)  # r in total SDs
DERIV_GRID = np.array(list(itertools.product(DERIV_NUS, DERIV_SIGMAS, DERIV_ZS)))


def _as_vector_function(logpdf):
    """``(r, v, sigma, nu) -> log f`` as a function of one 4-vector."""
    return lambda x: logpdf(x[0], x[1], x[2], x[3])


def _derivatives(logpdf, points):
    """Per point: value, gradient and Hessian (forward over reverse, as the fits take it)."""
    f = _as_vector_function(logpdf)
    hess = jax.jit(jax.vmap(jax.jacfwd(jax.grad(f))))
    value_grad = jax.jit(jax.vmap(jax.value_and_grad(f)))
    value, grad = value_grad(points)
    return np.asarray(value), np.asarray(grad), np.asarray(hess(points))


def _grid_points():
    nu, s, z = DERIV_GRID.T
    v = np.full_like(nu, 0.7)
    sigma = s * np.sqrt(v)
    r = z * np.sqrt(v + sigma**2)
    return jnp.asarray(np.column_stack([r, v, sigma, nu]))


@pytest.fixture(scope="module")
def derivative_pair():
    points = _grid_points()
    return points, _derivatives(student_normal_logpdf, points), _derivatives(_student_normal_logpdf_plain, points)


def _log_scale_derivatives(points, grad, hess):
    """Gradient and Hessian in (r, log v, log sigma, log nu): the scale on which the fits move
    (and on which every entry is of order one or small where the likelihood is flat)."""
    x = np.asarray(points)
    jac = np.where(np.arange(4) == 0, 1.0, x)  # d x_i / d(log x_i), r unchanged
    g = grad * jac
    H = hess * jac[:, :, None] * jac[:, None, :] + np.einsum("ni,ij->nij", g, np.diag([0.0, 1.0, 1.0, 1.0]))
    return g, H


def test_values_are_those_of_the_plain_trapezoid(derivative_pair):
    points, (value, _, _), (value_plain, _, _) = derivative_pair
    direct = np.asarray(jax.jit(student_normal_logpdf)(*points.T))
    np.testing.assert_array_equal(direct, np.asarray(jax.jit(_student_normal_logpdf_plain)(*points.T)))
    # under differentiation the value comes from the moment pass: equal to rounding
    np.testing.assert_allclose(value, value_plain, rtol=1e-14, atol=0)


def test_first_and_second_derivatives_match_automatic_differentiation(derivative_pair):
    """Gradient and Hessian in (r, v, sigma, nu), mixed entries included, agree with JAX's
    derivatives of the same trapezoid to 1e-8 of each entry's size, on the log scale of the
    positive parameters (where the fit differentiates; an entry whose terms cancel to far
    below its neighbours is compared with 1e-3 of the row's largest: at nu = 1e5 the nu
    derivative is a difference of terms of order one that cancel to ~1e-10)."""
    points, (_, grad, hess), (_, grad_plain, hess_plain) = derivative_pair
    assert np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))
    g, H = _log_scale_derivatives(points, grad, hess)
    g0, H0 = _log_scale_derivatives(points, grad_plain, hess_plain)
    for name, got, want in (("gradient", g, g0), ("Hessian", H, H0)):
        axes = tuple(range(1, want.ndim))
        floor = 1e-3 * (1.0 + np.max(np.abs(want), axis=axes))
        error = np.abs(got - want) / np.maximum(np.abs(want), floor.reshape((-1,) + (1,) * len(axes)))
        worst = np.unravel_index(np.argmax(error), error.shape)
        assert error[worst] < 1e-8, (name, DERIV_GRID[worst[0]], got[worst], want[worst])
    np.testing.assert_array_equal(hess, np.swapaxes(hess, 1, 2))  # one closed form per pair


def test_hessian_through_broadcast_shapes():
    """jax.hessian of a sum over arrays of different shapes (as the random-effect integral
    calls it, with a node axis in front) in the parameters of r, sigma and nu."""
    rng = np.random.default_rng(11)
    y = jnp.asarray(rng.standard_normal((1, 7)))
    v = jnp.asarray(rng.uniform(0.05, 0.5, 7))
    nodes = jnp.asarray(np.linspace(-1.0, 1.0, 5)[:, None])  # (5, 1)

    def total(logpdf):
        def f(theta):
            r = y - theta[0] - theta[1] * nodes
            return jnp.sum(logpdf(r, v, jnp.exp(theta[2]), jnp.exp(theta[3])))
        return f

    theta = jnp.array([0.1, 0.3, np.log(0.4), np.log(3.0)])
    want = np.asarray(jax.jit(jax.hessian(total(_student_normal_logpdf_plain)))(theta))
    f = total(student_normal_logpdf)
    # forward over reverse (jax.hessian), forward over forward and reverse over reverse
    for how in (jax.hessian(f), jax.jacfwd(jax.jacfwd(f)), jax.jacrev(jax.grad(f))):
        np.testing.assert_allclose(np.asarray(jax.jit(how)(theta)), want, rtol=1e-10, atol=1e-12)


def test_derivatives_match_finite_differences():
    """Gradient against central differences of the value, Hessian against central differences
    of the gradient (step 1e-5 relative; agreement to the differences' own error)."""
    points = jnp.asarray([[1.3, 0.4, 0.3, 2.0], [-0.2, 0.05, 1.5, 0.5], [6.0, 1.0, 0.2, 40.0]])
    f = jax.jit(_as_vector_function(student_normal_logpdf))
    grad = jax.jit(jax.grad(f))
    hess = jax.jit(jax.jacfwd(jax.grad(f)))
    for x in np.asarray(points):
        step = 1e-5 * np.maximum(np.abs(x), 1.0)
        fd_grad = np.empty(4)
        fd_hess = np.empty((4, 4))
        for i in range(4):
            e = np.zeros(4)
            e[i] = step[i]
            fd_grad[i] = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * step[i])
            fd_hess[i] = (np.asarray(grad(jnp.asarray(x + e))) - np.asarray(grad(jnp.asarray(x - e)))) / (2 * step[i])
        np.testing.assert_allclose(np.asarray(grad(jnp.asarray(x))), fd_grad, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(np.asarray(hess(jnp.asarray(x))), fd_hess, rtol=1e-6, atol=1e-7)


def test_second_derivatives_with_different_inner_and_outer_arguments():
    """The rule forms moments only for arguments being differentiated: an outer derivative in an
    argument the inner one left alone (d/dv of d/dr, d/dnu of d/dsigma, d/dr of d/dnu) must still
    be the trapezoid's own."""
    r, v, sigma, nu = 0.9, 0.3, 0.5, 3.0

    def mixed(logpdf, inner, outer):
        def inner_derivative(x_outer):
            args = [r, v, sigma, nu]
            args[outer] = x_outer

            def f(x_inner):
                args_in = list(args)
                args_in[inner] = x_inner
                return logpdf(*args_in)
            return jax.grad(f)(jnp.float64([r, v, sigma, nu][inner]))
        x0 = jnp.float64([r, v, sigma, nu][outer])
        return float(jax.jit(jax.grad(inner_derivative))(x0)), float(jax.jit(jax.jacfwd(inner_derivative))(x0))

    for inner, outer in ((0, 1), (2, 3), (3, 0), (1, 2)):
        want, _ = mixed(_student_normal_logpdf_plain, inner, outer)
        for got in mixed(student_normal_logpdf, inner, outer):
            np.testing.assert_allclose(got, want, rtol=1e-10, err_msg=f"d/d{outer} d/d{inner}")
