"""Fits are immutable to users and show later stages one public, read-only face (issue 24, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import drmpy as drm

MU = "yi ~ habitat + duration + meta_V(V=vi)"
SIGMA = "sigma ~ habitat"
BERKEY = Path(__file__).parents[1] / "reference" / "berkey_bivariate_ml"


@pytest.fixture(scope="module")
def dat():
    return drm.datasets.restoration()


@pytest.fixture(scope="module")
def fit(dat):
    return drm.fit(drm.Formula(MU, SIGMA), data=dat)


@pytest.fixture(scope="module")
def biv():
    spec = json.loads((BERKEY / "case.json").read_text())
    import pandas as pd

    V = np.loadtxt(BERKEY / "V.csv", delimiter=",")
    return drm.fit(drm.Formula(**spec["formulas"]), data=pd.read_csv(BERKEY / "data.csv"), env={"V": V},
                   family=drm.biv_gaussian())


@pytest.mark.parametrize("name", ["method", "params", "control", "theta", "data", "new_attribute", "_raw", "_control"])
def test_assigning_any_attribute_of_a_fit_raises(fit, biv, name):
    for result in (fit, biv):
        before = result.__dict__.get(name, "absent")
        with pytest.raises(AttributeError, match="immutable"):
            setattr(result, name, 1)
        assert result.__dict__.get(name, "absent") is before


def test_deleting_an_attribute_raises(fit):
    with pytest.raises(AttributeError, match="immutable"):
        del fit._raw
    with pytest.raises(AttributeError, match="immutable"):
        del fit.params  # a cached_property once computed: still not deletable
    assert fit.loglik == fit._raw.loglik


def test_cached_tables_and_stage_cache_still_work(fit):
    first = fit.params
    assert fit.params is first  # cached_property stores past the __setattr__ guard
    assert fit.stage_cache("tests.immutable", lambda: object()) is fit.stage_cache("tests.immutable", object)
    q = fit.q_test()
    assert q.equals(fit.q_test())


def test_public_face_equals_the_engine_result(fit, dat):
    np.testing.assert_array_equal(fit.theta, fit.params.to_numpy())
    assert not fit.theta.flags.writeable
    with pytest.raises(ValueError):
        fit.theta[0] = 0.0
    assert fit.n_location == len(fit.coef("mu"))
    assert fit.control == drm.Control()
    assert fit.data is dat and fit.env is None
    assert not fit.information.flags.writeable
    from drmpy.inference.marginal import gls

    np.testing.assert_allclose(np.linalg.inv(fit.information), gls(fit).vcov, rtol=1e-10)


def test_bivariate_face(biv):
    assert biv.n_location == len(biv.coef("mu1")) + len(biv.coef("mu2"))
    assert biv.data is None
    var1, var2, cov = biv.study_covariances()
    assert var1.shape == var2.shape == cov.shape == (biv.nobs,)
