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

from drmpy.families.student_marginal import log_gamma_mixing, student_normal_logpdf


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
