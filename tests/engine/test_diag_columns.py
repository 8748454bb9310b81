"""The column-layout closed form of the single diagonal fit equals the matrix form of
``engine.batch`` (value, gradient, Hessian and covariance), padding rows included."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from drmpy.engine import diag_columns as dc
from drmpy.engine.batch import DiagArrays, _diag_post, diag_derivatives, diag_value


def _arrays(p, k, n=60, pad=4, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    Z = np.column_stack([np.ones(n), rng.normal(size=(n, k - 1))])
    v = rng.uniform(0.05, 0.2, n)
    y = X @ rng.normal(size=p) + rng.normal(size=n) * np.sqrt(v + 0.1)
    padded = lambda a, fill: np.concatenate([a, np.full((pad,) + a.shape[1:], fill)])  # noqa: E731
    a = DiagArrays(*(jnp.asarray(t) for t in (padded(y, 0.0), padded(X, 0.0), padded(Z, 0.0),
                                              padded(v, 1.0), padded(np.ones(n), 0.0))))
    c = dc.DiagColumns(a.y, a.X.T, a.Z.T, a.v, a.w)
    gamma = jnp.asarray(np.r_[-1.0, 0.3 * rng.normal(size=k - 1)])
    return a, c, gamma


@pytest.mark.slow
@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("p,k", [(1, 1), (3, 2), (dc.MAX_COLUMNS, 3)])
def test_columns_equal_matrix_form(p, k, reml):
    a, c, gamma = _arrays(p, k)
    f0, g0, H0 = diag_derivatives(gamma, a, reml)
    f1, g1, H1, location = dc.columns_derivatives(gamma, c, reml, location=True)
    np.testing.assert_allclose(f1, f0, rtol=1e-12)
    np.testing.assert_allclose(dc.columns_value(gamma, c, reml), diag_value(gamma, a, reml), rtol=1e-12)
    np.testing.assert_allclose(g1, g0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(H1, H0, rtol=1e-9, atol=1e-9)
    post = _diag_post(a, gamma, f0, g0, H0, 0, 0, reml)
    np.testing.assert_allclose(dc.columns_derivatives(gamma, c, reml)[2], H1, rtol=1e-12)
    beta, grad, vcov = dc.location_post(location, g0, H0, reml)
    np.testing.assert_allclose(location.A, post["information"], rtol=1e-12)
    np.testing.assert_allclose(beta, post["beta"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, post["grad"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(vcov, post["vcov"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("p,k", [(1, 1), (3, 2)])
def test_pool_pieces_equal_matrix_form(p, k, reml):
    """What fit_batch's pool computes before and after the optimiser in the column layout
    (start values, the covariance from the location pieces, the sigma = 0 fit) equals the
    matrix form."""
    from drmpy.engine.batch import zero_variance_fit
    from drmpy.engine.start import diag_start_values as start_values

    a, c, gamma = _arrays(p, k, seed=3)
    for case in ("all v > 0", "a zero v", "no v"):
        v = np.asarray(a.v).copy()
        if case == "a zero v":
            v[5] = 0.0
        elif case == "no v":
            v[: len(v) - 4] = 0.0
        a2 = a._replace(v=jnp.asarray(v))
        c2 = c._replace(v=jnp.asarray(v))
        for got, want in zip(dc.columns_start_values(c2), start_values(a2)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        # (with a zero v the sigma = 0 model does not exist: both forms give the same -inf
        # or NaN, and fit_batch never offers it)
        zero_c, zero_m = dc.columns_zero_variance_fit(c2, reml), zero_variance_fit(a2, reml)
        for key in ("f", "beta", "var_beta"):
            np.testing.assert_allclose(zero_c[key], zero_m[key], rtol=1e-12)
    f, g, H = diag_derivatives(gamma, a, reml)
    post = _diag_post(a, gamma, f, g, H, 0, 0, reml)
    location = dc.columns_derivatives(gamma, c, reml, location=True)[3]  # what the pool keeps
    beta, grad, vcov = dc.location_post(location, g, H, reml)
    np.testing.assert_allclose(beta, post["beta"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, post["grad"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(vcov, post["vcov"], rtol=1e-10, atol=1e-13)
