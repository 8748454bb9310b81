"""A REML fit whose optimiser stops at an interior local optimum worse than tau^2 = 0.

boundary_reml.csv (8 studies, simulated until the REML criterion had an interior local maximum
0.15 below its boundary value) with metafor's REML fit and profile in
tests/reference_extra/inference_profile/references.json (make_references.R).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.engine.program import Control, prepare, run_fit
from drmpy.model.design import build_design

HERE = Path(__file__).resolve().parents[1] / "reference_extra" / "inference_profile"
REF = json.loads((HERE / "references.json").read_text())["boundary_reml"]
FORMULA = drm.Formula("yi ~ 1 + meta_V(V=vi)")


@pytest.fixture(scope="module")
def data():
    return pd.read_csv(HERE / "boundary_reml.csv")


def test_data_reproduce_the_interior_local_optimum(data):
    # without the boundary comparison the optimiser stops inside, as metafor's grid shows
    (prepared, _) = prepare(build_design(FORMULA, data), "REML", Control())
    interior = run_fit(prepared, Control())
    assert np.exp(2 * interior.theta[1]) == pytest.approx(REF["interior_tau2"], rel=1e-2)
    assert interior.loglik == pytest.approx(REF["interior_loglik"], abs=1e-6)
    assert interior.loglik < REF["loglik_at_zero"] - 0.1


def test_fit_returns_the_global_optimum_at_zero(data):
    fit = drm.fit(FORMULA, data=data, method="REML")
    assert fit.converged
    assert fit.loglik == pytest.approx(REF["loglik_at_zero"], abs=1e-8)
    assert fit.loglik >= REF["max_over_grid"] - 1e-10
    assert fit.loglik >= REF["loglik_drmTMB"] - 1e-8  # never below metafor
    assert fit.sigma().max() < 1e-6
    chk = fit.check().set_index("check")
    assert chk.loc["boundary", "status"] == "note" and "sigma" in chk.loc["boundary", "message"]
    assert chk.loc["boundary_optimum", "status"] == "note"
    assert float(chk.loc["boundary_optimum", "value"].split("=")[1]) == pytest.approx(
        REF["loglik_at_zero"] - REF["interior_loglik"], abs=1e-6)


def test_no_boundary_note_for_an_ordinary_or_flat_boundary_fit(data):
    ml = drm.fit(FORMULA, data=data, method="ML")  # runs to tau^2 = 0 by itself
    assert "boundary_optimum" not in set(ml.check()["check"])
    assert ml._raw.boundary_gain == 0.0
    bcg = pd.read_csv(HERE / "bcg.csv")
    fit = drm.fit(FORMULA, data=bcg, method="REML")
    assert fit._raw.boundary_gain == 0.0 and fit.sigma().min() > 0.5
