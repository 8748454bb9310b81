"""The elementwise small-matrix routines used under vmap (engine.small_linalg) against LAPACK."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import drmpy  # noqa: F401  (float64)
from drmpy.engine.small_linalg import jacobi_eigh, sym_inverse


def _matrices(k: int, n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + k)
    A = rng.normal(size=(n, k, k)) * rng.uniform(1e-3, 1e3, (n, 1, 1))
    S = A + A.transpose(0, 2, 1)  # indefinite too
    S[0] = np.diag(np.arange(k, 0, -1.0))  # diagonal, descending
    S[1] = np.eye(k)  # repeated eigenvalue
    S[2] = np.full((k, k), 2.0) + np.eye(k)  # equal diagonal, nonzero off-diagonal
    S[3] = -S[3] @ S[3].T  # negative semi-definite
    return S


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_jacobi_eigh_matches_lapack(k):
    S = _matrices(k)
    evals, evecs = jax.jit(jax.vmap(jacobi_eigh))(S)
    evals, evecs = np.asarray(evals), np.asarray(evecs)
    ref = np.linalg.eigvalsh(S)
    scale = np.abs(ref).max(axis=1, keepdims=True)
    assert np.max(np.abs(evals - ref) / scale) < 1e-13
    assert np.all(np.diff(evals, axis=1) >= 0)  # ascending
    eye = np.broadcast_to(np.eye(k), S.shape)
    assert np.max(np.abs(evecs.transpose(0, 2, 1) @ evecs - eye)) < 1e-13  # orthonormal
    back = evecs @ (evals[:, :, None] * evecs.transpose(0, 2, 1))
    assert np.max(np.abs(back - S) / scale[:, :, None]) < 1e-13  # S = V diag(e) V'


@pytest.mark.parametrize("k", [1, 2, 4])
def test_sym_inverse_matches_lapack(k):
    rng = np.random.default_rng(k)
    A = rng.normal(size=(32, k, k))
    S = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(k)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(sym_inverse))(S)), np.linalg.inv(S), rtol=1e-9, atol=1e-12)
