"""The subsample start of a large single diagonal fit (``program._subsample_start``) changes
only where the full-data Newton starts: the optimum, the log-likelihood and the covariance
are those of the plain fit (same convergence test), reached in fewer full evaluations."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.engine import program
from drmpy.engine.program import Control, _diag_closed_form_fn, padded_size, prepare, subsample_stride
from drmpy.model.design import build_design

FORMULA = drm.Formula("yi ~ x + meta_V(V=vi)", "sigma ~ x2")


def _data(n: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, x2 = rng.normal(size=n), rng.normal(size=n)
    vi = rng.uniform(0.01, 0.1, size=n)
    yi = 0.3 + 0.2 * x + rng.normal(size=n) * np.sqrt(vi + np.exp(2 * (-1.0 + 0.5 * x2)))
    return pd.DataFrame({"yi": yi, "x": x, "x2": x2, "vi": vi})


def _fit(data: pd.DataFrame, method: str, stride) -> dict:
    (arrs, struct, beta0, phi0), _ = prepare(build_design(FORMULA, data), method, Control())
    ctrl = Control()
    run = jax.jit(_diag_closed_form_fn(struct, stride=stride))
    out = jax.device_get(run(arrs, jax.device_put(phi0), jax.device_put(int(ctrl.max_iter)),
                             jax.device_put(float(ctrl.gtol))))
    out["beta"] = out["beta"] + beta0
    return out


def _assert_same_optimum(plain: dict, sub: dict) -> None:
    assert int(plain["status"]) == int(sub["status"]) == program.CONVERGED
    np.testing.assert_allclose(sub["f"], plain["f"], rtol=0, atol=1e-8)  # -logLik
    np.testing.assert_allclose(sub["beta"], plain["beta"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(sub["phi"], plain["phi"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(sub["vcov"], plain["vcov"], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("method", [pytest.param("ML", marks=pytest.mark.slow), "REML"])
def test_forced_subsample_start_gives_the_plain_optimum(method):
    data = _data(4000)
    plain = _fit(data, method, None)
    sub = _fit(data, method, 8)  # Newton on 1 row in 8 first
    _assert_same_optimum(plain, sub)
    # the start was used: fewer full-data evaluations than from the moment start
    assert int(sub["evaluations"]) < int(plain["evaluations"])


def test_subsample_threshold_is_on_padded_rows():
    assert subsample_stride(program.SUBSAMPLE_MIN_ROWS - 1) is None
    assert subsample_stride(program.SUBSAMPLE_MIN_ROWS) == program.SUBSAMPLE_MIN_ROWS // program.SUBSAMPLE_ROWS
    assert subsample_stride(2**20) == 32


@pytest.mark.slow
def test_subsample_start_just_above_threshold():
    n = program.SUBSAMPLE_MIN_ROWS + 1000
    assert subsample_stride(padded_size(n)) is not None
    data = _data(n, seed=11)
    for method in ("ML", "REML"):
        _assert_same_optimum(_fit(data, method, None), _fit(data, method, "auto"))
