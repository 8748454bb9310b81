"""Full-precision agreement with R's metaplus 1.0-8 (tests/reference_extra/robust/robust_metaplus.json,
written by make_robust.R there).  metaplus's tau2, vinv, tau2out, lpoutlier are our
exp(2 sigma), exp(-nu), exp(2 sigma_out), p_out (logit link).  The CDP t model is compared with
the exact maximum computed in R (integrate() split at the t spike, nlminb): metaplus's own t
optimum sits on a likelihood its single integrate() call under-estimates (see that README)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

REF = json.loads((Path(__file__).resolve().parents[1] / "reference_extra" / "robust" / "robust_metaplus.json").read_text())
FORMULA = "yi ~ 1 + meta_V(V=vi)"


@pytest.fixture(scope="module")
def exercise():
    data = pd.read_csv(Path(__file__).with_name("exercise.csv"))
    return data.assign(vi=data["sei"] ** 2)


def test_cdp_t_is_the_exact_maximum(cdp_t):
    fit = cdp_t
    mle = REF["extra"]["exact_t_cdp"]["mle"]
    assert fit.loglik == pytest.approx(mle["logLik"], abs=1e-9)  # -4.0576834
    assert fit.loglik > REF["fits"]["cdp"]["t"]["logLik"] + 2e-4  # metaplus 1.0-8: -4.0579797
    assert fit.params["mu:(Intercept)"] == pytest.approx(mle["muhat"], abs=2e-6)
    # the likelihood is flat along tau2-vinv (R's nlminb: "singular convergence")
    assert float(np.exp(2 * fit.params["sigma:(Intercept)"])) == pytest.approx(mle["tau2"], rel=1e-3)
    assert float(np.exp(-fit.params["nu:(Intercept)"])) == pytest.approx(mle["vinv"], rel=1e-3)


def test_cdp_mixture_full_precision(cdp, cdp_mix):
    fit = cdp_mix
    ref = REF["fits"]["cdp"]["mixture"]
    # sigma runs to its zero boundary (metaplus: tau2 on its bound 0), where the likelihood is flat in
    # log sigma (gradient ~ sigma^2): the solver stops at log sigma ~ -11, 1.3e-8 below the boundary's
    # logLik, within the 1e-6 max(1, |f|) the Gaussian engine allows before it moves to a boundary
    # point (drmpy.engine.program.BOUNDARY_GAIN_MIN)
    assert fit.loglik == pytest.approx(ref["logLik"], abs=3e-8)
    assert fit.params["mu:(Intercept)"] == pytest.approx(ref["coef"]["muhat"], abs=1e-6)
    assert float(np.exp(2 * fit.params["sigma_out:(Intercept)"])) == pytest.approx(ref["coef"]["tau2out"], rel=1e-5)
    assert fit.params["p_out:(Intercept)"] == pytest.approx(ref["coef"]["lpoutlier"], abs=1e-5)
    assert float(np.exp(2 * fit.params["sigma:(Intercept)"])) < 1e-8  # tau2 = 0 (metaplus: on its bound)
    probs = fit.outlier_probabilities()
    want = cdp["study"].map(ref["outlier_prob"]).to_numpy()
    np.testing.assert_allclose(probs.to_numpy(), want, atol=1e-6)
    # standard error of mu: exact observed information vs numDeriv on metaplus's likelihood
    assert fit.std_errors["mu:(Intercept)"] == pytest.approx(ref["hessian"]["se"]["muhat"], rel=1e-4)


def test_mag_t_full_precision():
    fit = drm.fit(FORMULA, drm.datasets.mag(), family=drm.student())
    ref = REF["fits"]["mag"]["t"]
    assert ref["coef"]["vinv"] == 0 and fit.at_boundary
    assert fit.loglik == pytest.approx(ref["logLik"], abs=1e-9)
    assert fit.params["mu:(Intercept)"] == pytest.approx(ref["coef"]["muhat"], abs=1e-6)
    assert fit.std_errors["mu:(Intercept)"] == pytest.approx(ref["hessian"]["se"]["muhat"], rel=1e-4)


def test_exercise_mixture_meta_regression(exercise):
    """metaplus's mods = duration: mu:duration, outlier probabilities by study."""
    fit = drm.fit("yi ~ duration + meta_V(V=vi)", exercise, family=drm.normal_mixture())
    ref = REF["fits"]["exercise"]["mixture"]
    assert fit.loglik == pytest.approx(ref["logLik"], abs=1e-8)
    assert fit.params["mu:(Intercept)"] == pytest.approx(ref["coef"]["muhat"], abs=1e-5)
    assert fit.params["mu:duration"] == pytest.approx(ref["coef"]["duration"], abs=1e-6)
    assert float(np.exp(2 * fit.params["sigma_out:(Intercept)"])) == pytest.approx(ref["coef"]["tau2out"], rel=1e-5)
    assert fit.params["p_out:(Intercept)"] == pytest.approx(ref["coef"]["lpoutlier"], abs=1e-5)
    np.testing.assert_allclose(fit.outlier_probabilities().to_numpy(),
                               exercise["study"].map(ref["outlier_prob"]).to_numpy(), atol=1e-6)
    normal = drm.fit("yi ~ duration + meta_V(V=vi)", exercise)
    assert normal.loglik == pytest.approx(REF["fits"]["exercise"]["normal"]["logLik"], abs=1e-8)


def test_sim30_mixture_is_at_least_the_normal_model():
    """On 30 studies without outliers metaplus's mixture (-8.6646004) ends below its own normal
    fit (-8.6645992); the mixture contains the normal model, so ours is at least the normal fit."""
    data = pd.read_csv(Path(__file__).resolve().parents[1] / "reference_extra" / "robust" / "sim30.csv")
    if "vi" not in data:
        data = data.assign(vi=data["sei"] ** 2)
    fit = drm.fit(FORMULA, data, family=drm.normal_mixture())
    normal = REF["fits"]["sim30"]["normal"]["logLik"]
    assert fit.loglik >= normal - 1e-9
    assert fit.loglik >= REF["fits"]["sim30"]["mixture"]["logLik"]
    assert fit.params["mu:(Intercept)"] == pytest.approx(REF["fits"]["sim30"]["normal"]["coef"]["muhat"], abs=1e-4)
