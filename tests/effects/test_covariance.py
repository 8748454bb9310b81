"""sampling_covariance = metafor's vcalc; shared_control_covariance = the metafor docs' calc.v;
a fit on a vcalc V = rma.mv (tests/reference_extra/effects/vcalc_cases.R)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import drmpy as drm

REF = json.loads((Path(__file__).parents[1] / "reference_extra" / "effects" / "vcalc_cases.json").read_text())
DAT = pd.DataFrame(REF["data"])
N = len(DAT)

ARGS = {
    "rowobs_rho05": dict(rho=0.5),
    "rowobs_rho08": dict(rho=0.8),
    "outcome_rho06": dict(rho=0.6, obs="outcome"),
    "time_rowobs_rho05_phi09": dict(rho=0.5, time="esid", phi=0.9),
    "time_outcome_rho07_phi05": dict(rho=0.7, obs="outcome", time="year", phi=0.5),
}


def _dense(triplet, n):
    out = np.zeros((n, n))
    out[np.asarray(triplet["i"], int), np.asarray(triplet["j"], int)] = triplet["x"]
    return out


@pytest.mark.parametrize("name", list(ARGS))
def test_equals_vcalc(name):
    V = drm.sampling_covariance(DAT, vi="vi", cluster="study", **ARGS[name])
    assert isinstance(V, sp.csr_matrix)
    np.testing.assert_allclose(V.toarray(), _dense(REF["vcalc"][name], N), rtol=1e-12, atol=1e-15)


def test_dense_formula_and_data_order():
    rng = np.random.default_rng(3)
    n = 40
    d = pd.DataFrame({"study": rng.choice(list("pqrstu"), n), "vi": rng.uniform(0.01, 0.2, n),
                      "t": rng.integers(0, 5, n).astype(float)})
    V = drm.sampling_covariance(d, cluster="study", rho=0.3, time="t", phi=0.7).toarray()
    same = d["study"].to_numpy()[:, None] == d["study"].to_numpy()[None, :]
    lag = np.abs(d["t"].to_numpy()[:, None] - d["t"].to_numpy()[None, :])
    R = np.where(same, 0.3 * 0.7**lag, 0.0)
    np.fill_diagonal(R, 1.0)
    sd = np.sqrt(d["vi"].to_numpy())
    np.testing.assert_allclose(V, R * np.outer(sd, sd), rtol=1e-14)


def test_polars_and_arrays_agree():
    pl = pytest.importorskip("polars")
    V1 = drm.sampling_covariance(pl.DataFrame({c: DAT[c].to_numpy() for c in ["study", "vi"]}), rho=0.5)
    V2 = drm.sampling_covariance(vi=DAT["vi"].to_numpy(), cluster=DAT["study"].to_numpy(), rho=0.5)
    assert (V1 != V2).nnz == 0


def test_errors():
    with pytest.raises(drm.DataError, match="`rho` must be in"):
        drm.sampling_covariance(DAT, rho=1.5)
    with pytest.raises(drm.DataError, match="give `phi`"):
        drm.sampling_covariance(DAT, time="esid")
    with pytest.raises(drm.DataError, match="'studyx' is not a column"):
        drm.sampling_covariance(DAT, cluster="studyx")
    bad = DAT.assign(vi=DAT["vi"].where(DAT.index != 4, -1.0))
    with pytest.raises(drm.DataError, match="must be >= 0; first at row 4"):
        drm.sampling_covariance(bad)


SC = REF["shared_control"]


@pytest.mark.parametrize("measure", ["ROM", "SMD"])
def test_shared_control_equals_reference(measure):
    d = pd.DataFrame(SC["data"])
    es = drm.effect_size(measure, d, m1i="m1i", sd1i="sd1i", n1i="n1i", m2i="m2i", sd2i="sd2i", n2i="n2i")
    np.testing.assert_allclose(es["yi"], SC["V"][measure]["yi"], rtol=1e-10)
    V = drm.shared_control_covariance(es, measure, cluster="study", control_id="control")
    np.testing.assert_allclose(V.toarray(), _dense(SC["V"][measure], len(d)), rtol=1e-12, atol=1e-15)


def test_shared_control_must_agree():
    d = pd.DataFrame(SC["data"])
    es = drm.effect_size("ROM", d, m1i="m1i", sd1i="sd1i", n1i="n1i", m2i="m2i", sd2i="sd2i", n2i="n2i")
    es.loc[1, "m2i"] = 99.0
    with pytest.raises(drm.DataError, match="`m2i` differs between rows 0 and 1"):
        drm.shared_control_covariance(es, "ROM", cluster="study", control_id="control")


# two of the four metafor fits (one per method; each new shape compiles a program)
FITS = [f for f in REF["fits"] if (f["method"], f["mods"]) in {("REML", "~ deltype"), ("ML", "~ 1")}]


def _check_against_rma_mv(fit, ref, variances_rtol=2e-4):
    shift = ref["half_logdet_XtX"] if ref["method"] == "REML" else 0.0
    assert fit.loglik == pytest.approx(ref["loglik"] - shift, abs=1e-6)
    beta = [v for k, v in fit.params.items() if k.startswith("mu:")]
    np.testing.assert_allclose(beta, np.atleast_1d(ref["beta"]), atol=2e-5)
    group = next(k for k in fit.params.index if k.startswith("sd("))
    variances = np.exp(2 * np.array([fit.params[group], fit.params["sigma:(Intercept)"]]))
    np.testing.assert_allclose(variances, ref["sigma2"], rtol=variances_rtol, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("fit_ref", FITS, ids=[f"{f['method']}{f['mods']}" for f in FITS])
def test_three_level_fit_on_vcalc_V_equals_rma_mv(fit_ref):
    V = drm.sampling_covariance(DAT, vi="vi", cluster="study", rho=0.5)
    rhs = "1" if fit_ref["mods"] == "~ 1" else "deltype"
    fit = drm.fit(f"yi ~ {rhs} + (1|study) + meta_V(V = V)", data=DAT, method=fit_ref["method"], env={"V": V})
    _check_against_rma_mv(fit, fit_ref)


@pytest.mark.slow
def test_readme_worked_example_equals_rma_mv():
    raw = drm.datasets.curtis1998()
    es = drm.effect_size("ROM", raw, m1i="m1i", sd1i="sd1i", n1i="n1i", m2i="m2i", sd2i="sd2i", n2i="n2i")
    V = drm.sampling_covariance(es, vi="vi", cluster="paper", rho=0.5)
    fit = drm.fit("yi ~ fungrp + (1 | paper) + meta_V(V = V)", data=es, method="REML")
    # metafor's between-paper variance is 3e-12: compare it on the absolute scale
    _check_against_rma_mv(fit, REF["curtis_readme_fit"])
