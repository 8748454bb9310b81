"""Start values (src/drmpy/engine/start.py): one set of moment rules for single and batch programs.

The DerSimonian-Laird estimate is metafor's (reference_start/dl.json, made by make_dl.R); the
rules give the same bits in numpy and jax.numpy; a single fit, the batched diagonal program and
the batched random-intercept fits start from the same values.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.engine import start
from drmpy.model.design import build_design

DL = json.loads((Path(__file__).parent / "reference_start" / "dl.json").read_text())


def test_moment_start_is_metafors_dersimonian_laird():
    y, v = np.asarray(DL["yi"]), np.asarray(DL["vi"])
    ones = np.ones_like(y)
    _, _, tau2, scale2 = start.moment_start(ones[:, None], y, v, ones)
    np.testing.assert_allclose(tau2, DL["tau2_intercept"], rtol=1e-12)
    assert scale2 == pytest.approx(np.mean(v), rel=1e-15)
    X = np.column_stack([ones, DL["ablat"]])
    _, _, tau2_mod, _ = start.moment_start(X, y, v, ones)
    np.testing.assert_allclose(tau2_mod, DL["tau2_ablat"], rtol=1e-12)
    # Q < n - p: truncated at 0
    assert start.moment_start(ones[:, None], np.full_like(y, 0.3), v, ones)[2] == 0.0


def test_rules_floor_at_the_variance_scale():
    scale2 = np.array([2.0, 2.0, 2.0, 0.5])
    tau2 = np.array([0.0, 1e-3, 1.0, 0.0])
    np.testing.assert_array_equal(start.start_variance(tau2, scale2),
                                  [start.BOUNDARY_START * 2.0, 0.02, 1.0, start.BOUNDARY_START * 0.5])
    # no usable V: the residual variance (plus 1e-12) is the scale
    np.testing.assert_array_equal(start.variance_scale(np.array([0.3, 0.0]), np.array([5.0, 5.0])), [0.3, 5.0 + 1e-12])
    # one level: sigma's start SD; never below the term's floored share
    np.testing.assert_array_equal(start.level_sd_start(np.array([0.7, 0.7, 1e-9]), np.array([3, 1, 3]), 0.25, 0.01, 2.0),
                                  [0.7, 0.5, np.sqrt(0.02)])


@pytest.mark.parametrize("rule, args", [
    (start.dersimonian_laird, (np.array([30.0, 5.0, 12.0]), np.array([13.0, 13.0, 10.0]), 2, np.array([40.0, 3.0, -1.0]))),
    (start.residual_variance, (np.array([3.0, 0.5]), np.array([10.0, 2.0]), 2)),
    (start.start_variance, (np.array([0.0, 1e-4, 0.3]), np.array([0.05, 0.05, 0.05]))),
    (start.level_sd_start, (np.array([0.2, 0.0]), np.array([4.0, 1.0]), np.array([0.01, 0.04]), np.array([0.3, 0.0]),
                            np.array([0.05, 0.05]))),
], ids=lambda x: getattr(x, "__name__", ""))
def test_rules_give_the_same_bits_in_numpy_and_jax(rule, args):
    got_np = rule(*args)
    got_jax = jax.device_get(rule(*(jnp.asarray(a) for a in args), xp=jnp))
    np.testing.assert_array_equal(got_np, got_jax)


def _restoration():
    dat = drm.datasets.restoration()
    return dat.assign(g=[f"g{i // 4}" for i in range(len(dat))])


def test_batched_diagonal_start_equals_the_single_fit_start():
    from drmpy.engine.batch import DiagArrays

    design = build_design(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), _restoration())
    beta0, phi0 = start.start_values(design)
    a = DiagArrays(*(jnp.asarray(t) for t in (design.y, design.fixed["mu"].matrix, design.fixed["sigma"].matrix,
                                              design.known_v.diag, np.ones(design.nobs))))
    b_batch, g_batch = jax.device_get(start.diag_start_values(a))
    np.testing.assert_allclose(b_batch, beta0, rtol=1e-10)
    np.testing.assert_allclose(g_batch, phi0, rtol=1e-10, atol=1e-12)  # the single fit sets 0 exactly


def test_batched_random_intercept_start_equals_the_single_fit_start():
    from drmpy.batch import batch_random as br

    dat = _restoration().assign(gene=lambda d: np.where(np.arange(len(d)) < 40, "a", "b"))
    formula = drm.Formula("yi ~ duration + meta_V(V=vi) + (1|g)", "sigma ~ 1")
    gr, lv, _ = br._build(formula, dat, "gene")
    ok = br._check_groups(gr, formula, "vi")
    br._check_levels(gr, lv, ok, formula)
    assert ok.all()
    beta0, phi0, _, _ = br.start_values(gr, lv, np.flatnonzero(ok))
    for i, gene in enumerate(gr.labels):
        design = build_design(formula, dat[dat.gene == gene].reset_index(drop=True))
        b_single, p_single = start.start_values(design)
        np.testing.assert_allclose(beta0[i], b_single, rtol=1e-10)
        np.testing.assert_allclose(phi0[i], p_single, rtol=1e-10)
