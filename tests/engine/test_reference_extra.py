"""Agreement with metafor rma.mv on random-effect designs drmTMB does not cover here
(crossed groups, a known relatedness matrix, nested effects with a dense V).

The cases and the R script that made them are in tests/reference_extra/.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

REF = Path(__file__).parents[1] / "reference_extra"
CASES = sorted(p.name for p in REF.iterdir() if (p / "case.json").exists())  # bivariate/: test_bivariate


def load(case: str):
    spec = json.loads((REF / case / "case.json").read_text())
    data = pd.read_csv(REF / case / "data.csv")
    env = {}
    if spec.get("V_matrix"):
        env["V"] = np.loadtxt(REF / case / "V.csv", delimiter=",")
    if spec.get("K_matrix"):
        env["K"] = pd.read_csv(REF / case / "K.csv", index_col=0)
    return spec, data, env


@pytest.fixture(scope="module", params=CASES)
def fitted(request):
    spec, data, env = load(request.param)
    fit = drm.fit(drm.Formula(*spec["formulas"]), data=data, method=spec["method"], env=env)
    return spec, fit


def test_six_cases():
    assert len(CASES) == 6


def test_loglik(fitted):
    spec, fit = fitted
    mf = spec["expected"]["metafor"]
    assert fit.converged
    assert fit.nobs == mf["nobs"]
    assert fit.loglik == pytest.approx(mf["loglik_drmpy"], abs=1e-6)
    X = fit.design.fixed["mu"].matrix
    assert 0.5 * np.linalg.slogdet(X.T @ X)[1] == pytest.approx(mf["half_logdet_XtX"], abs=1e-9)
    if spec["method"] == "REML":
        assert fit.loglik + mf["half_logdet_XtX"] == pytest.approx(mf["loglik"], abs=1e-6)


def test_location_coefficients(fitted):
    spec, fit = fitted
    mu = fit.coef("mu")
    for name, value in spec["expected"]["metafor"]["beta"].items():
        term = "(Intercept)" if name == "intrcpt" else name
        assert mu[term] == pytest.approx(value, abs=1e-5), name


def test_variance_components(fitted):
    spec, fit = fitted
    for name, value in spec["expected"]["metafor"]["sdpars_metafor"].items():
        if name == "sigma":
            got = fit.sigma().iloc[0]
        else:
            got = fit.sd(name[3:-1])["(Intercept)"].iloc[0]
        assert got == pytest.approx(value, abs=1e-5), name


def test_structures_agree_with_dense(fitted):
    spec, fit = fitted
    _, data, env = load(spec["name"])
    dense = drm.fit(drm.Formula(*spec["formulas"]), data=data, method=spec["method"], env=env,
                    control={"structure": "dense"})
    assert dense.loglik == pytest.approx(fit.loglik, abs=1e-8)
    assert np.allclose(dense.params, fit.params, atol=1e-6)
    assert np.allclose(dense.std_errors, fit.std_errors, rtol=1e-5)


def test_relmat_array_with_levels_equals_dataframe():
    spec, data, env = load("relmat_ml")
    K = env["K"]
    by_frame = drm.fit(drm.Formula(*spec["formulas"]), data=data, env=env)
    f = drm.Formula("yi ~ x + relmat(1|species, K=Kmat, levels=labels) + meta_V(V=vi)")
    # reversed label order: the labels, not the positions, must decide
    order = np.arange(len(K))[::-1]
    by_array = drm.fit(f, data=data, env={"Kmat": K.to_numpy()[np.ix_(order, order)],
                                          "labels": list(K.index[order])})
    assert by_array.loglik == pytest.approx(by_frame.loglik, abs=1e-10)
    with pytest.raises(drm.RandomEffectsError, match="levels="):
        drm.fit(drm.Formula("yi ~ x + relmat(1|species, K=Kmat) + meta_V(V=vi)"), data=data,
                env={"Kmat": K.to_numpy()})
