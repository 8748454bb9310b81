"""Bivariate study weights: weight 2 is the study appearing twice (pair and single-response
studies, ML and REML); weights need a V that is block-diagonal by study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

FORMULA = dict(mu1="y1 ~ x + meta_V(V=V)", mu2="y2 ~ 1", sigma1="~ 1", sigma2="~ 1", rho12="~ 1")


def _data(n=24, seed=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    v1, v2 = rng.uniform(0.01, 0.08, n), rng.uniform(0.01, 0.08, n)
    cov = 0.3 * np.sqrt(v1 * v2)
    s1, s2, rho = 0.3, 0.4, 0.5
    y = np.empty((n, 2))
    for i in range(n):
        S = np.array([[v1[i] + s1**2, cov[i] + rho * s1 * s2], [cov[i] + rho * s1 * s2, v2[i] + s2**2]])
        y[i] = rng.multivariate_normal([0.1 + 0.4 * x[i], -0.2], S)
    d = pd.DataFrame({"y1": y[:, 0], "y2": y[:, 1], "x": x, "v1": v1, "v2": v2, "cov12": cov})
    d.loc[[3, 8], "y2"] = np.nan  # studies with one response
    d.loc[[5], "y1"] = np.nan
    return d


def _v(d):
    return drm.meta_vcov_bivariate(d["v1"], d["v2"], cov12=d["cov12"])


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_weight_two_equals_duplicated_studies(data, method):
    twice = [0, 3, 5, 9, 10]  # a pair, single y1, single y2, and plain pairs
    w = np.ones(len(data))
    w[twice] = 2.0
    weighted = drm.fit(drm.Formula(**FORMULA), data=data, env={"V": _v(data)}, weights=w, method=method)
    dup = pd.concat([data, data.iloc[twice]], ignore_index=True)
    plain = drm.fit(drm.Formula(**FORMULA), data=dup, env={"V": _v(dup)}, method=method)
    assert weighted.structure == "pair" and weighted.converged and plain.converged
    assert weighted.loglik == pytest.approx(plain.loglik, abs=1e-8)
    np.testing.assert_allclose(weighted.params, plain.params, atol=1e-6)
    np.testing.assert_allclose(weighted.std_errors, plain.std_errors, rtol=1e-5)
    # unit weights change nothing
    ones = drm.fit(drm.Formula(**FORMULA), data=data, env={"V": _v(data)}, weights=np.ones(len(data)), method=method)
    none = drm.fit(drm.Formula(**FORMULA), data=data, env={"V": _v(data)}, method=method)
    assert ones.loglik == pytest.approx(none.loglik, abs=1e-10)


def test_zero_weight_equals_dropping_the_study_and_column_name(data):
    d = data.assign(w=1.0)
    d.loc[[1, 6], "w"] = 0.0
    weighted = drm.fit(drm.Formula(**FORMULA), data=d, env={"V": _v(d)}, weights="w")
    rest = data.drop(index=[1, 6])
    dropped = drm.fit(drm.Formula(**FORMULA), data=rest, env={"V": _v(rest)})
    assert weighted.loglik == pytest.approx(dropped.loglik, abs=1e-8)
    np.testing.assert_allclose(weighted.params, dropped.params, atol=1e-6)


def test_missing_weight_drops_the_study_and_is_counted(data):
    w = np.ones(len(data))
    w[2] = np.nan
    fit = drm.fit(drm.Formula(**FORMULA), data=data, env={"V": _v(data)}, weights=w)
    assert fit.nobs == len(data) - 1 and 2 not in fit.row_labels
    assert fit.design.dropped == {"y1: missing response": 1, "y1: missing weight": 1,
                                  "y2: missing response": 2, "y2: missing weight": 1}


def test_weight_errors(data):
    V = _v(data)
    f = drm.Formula(**FORMULA)
    w = np.ones(len(data))
    w[4] = -1.0
    with pytest.raises(drm.DataError, match="weights must be >= 0; row 4 has -1"):
        drm.fit(f, data=data, env={"V": V}, weights=w)
    with pytest.raises(drm.DataError, match="expected 24 values"):
        drm.fit(f, data=data, env={"V": V}, weights=np.ones(3))
    with pytest.raises(drm.DataError, match="column `nope` is not in the data"):
        drm.fit(f, data=data, env={"V": V}, weights="nope")
    with pytest.raises(drm.DataError, match="all zero"):
        drm.fit(f, data=data, env={"V": V}, weights=np.zeros(len(data)))
    with pytest.raises(drm.DrmError, match="structure='dense' does not take study weights"):
        drm.fit(f, data=data, env={"V": V}, weights=np.full(len(data), 2.0), control={"structure": "dense"})
    cross = V.toarray()
    cross[0, 2] = cross[2, 0] = 0.2 * np.sqrt(cross[0, 0] * cross[2, 2])
    with pytest.raises(drm.DataError, match="V correlates different studies"):
        drm.fit(f, data=data, env={"V": cross}, weights=np.full(len(data), 2.0))
    # unit weights with such a V are no weights at all
    fit = drm.fit(f, data=data, env={"V": cross}, weights=np.ones(len(data)))
    assert fit.structure == "dense"
