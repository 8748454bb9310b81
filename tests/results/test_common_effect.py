"""The common-effect model ``sigma ~ 0`` (sigma fixed at 0) against metafor 3.8-1.

References: tests/reference_extra/inference_profile/make_references.R (rma(method = "EE") on
dat.bcg with and without ablat; rma.mv with a district level and no row level on
dat.konstantopoulos2011).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.inference.marginal import location_vcov

HERE = Path(__file__).resolve().parents[1] / "reference_extra" / "inference_profile"
REF = json.loads((HERE / "references.json").read_text())


@pytest.fixture(scope="module")
def bcg():
    return pd.read_csv(HERE / "bcg.csv")


@pytest.fixture(scope="module")
def kon():
    return pd.read_csv(HERE / "konstantopoulos.csv")


@pytest.mark.parametrize("case, mu", [("ee_bcg", "yi ~ 1 + meta_V(V=vi)"),
                                      ("ee_bcg_ablat", "yi ~ ablat + meta_V(V=vi)")])
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_common_effect_equals_metafor_EE(bcg, case, mu, method):
    ref = REF[case]
    fit = drm.fit(drm.Formula(mu, "sigma ~ 0"), data=bcg, method=method)
    assert fit.converged
    assert not any(n.startswith("sigma") for n in fit.params.index)
    expected_ll = ref["loglik_ml"] if method == "ML" else ref["loglik_reml_drmTMB"]
    assert fit.loglik == pytest.approx(expected_ll, abs=1e-8)
    np.testing.assert_allclose(fit.params.to_numpy(), np.atleast_1d(ref["beta"]), rtol=1e-9, atol=1e-12)
    # no variance parameter: the observed information of beta is X'V^-1X itself
    np.testing.assert_allclose(fit.std_errors.to_numpy(), np.atleast_1d(ref["se_beta"]), rtol=1e-8)
    np.testing.assert_allclose(np.sqrt(np.diag(location_vcov(fit, "gls"))), np.atleast_1d(ref["se_beta"]), rtol=1e-8)
    assert (fit.sigma() == 0).all()
    chk = fit.check().set_index("check")
    assert chk.loc["common_effect", "status"] == "ok"
    assert "positive_scale" not in chk.index
    assert chk.loc["boundary", "status"] == "ok"
    assert "sigma fixed at 0" in str(fit.summary())
    assert fit.iterations == 0  # closed form: no optimiser iteration


@pytest.mark.parametrize("structure", ["block", "dense"])
def test_common_effect_every_structure_without_random_effects(bcg, structure):
    f = drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ 0")
    base = drm.fit(f, data=bcg)
    other = drm.fit(f, data=bcg, control={"structure": structure})
    assert other.structure == structure
    assert other.loglik == pytest.approx(base.loglik, abs=1e-10)
    np.testing.assert_allclose(other.std_errors, base.std_errors, rtol=1e-10)


@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("structure", [None, "woodbury", "dense"])
def test_random_effects_without_residual_level_equals_rma_mv(kon, method, structure):
    ref = REF[f"mv_district_{method.lower()}"]
    fit = drm.fit(drm.Formula("yi ~ 1 + (1|district) + meta_V(V=vi)", "sigma ~ 0"), data=kon,
                  method=method, control={"structure": structure})
    assert fit.converged
    assert list(fit.params.index) == ["mu:(Intercept)", "sd(district):(Intercept)"]
    assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-8)
    # metafor's BFGS stops ~1e-6 short in sigma2 where the logLik is flat (it agrees to 1e-11)
    assert np.exp(2 * fit.params["sd(district):(Intercept)"]) == pytest.approx(ref["sigma2"], rel=1e-5)
    assert fit.params["mu:(Intercept)"] == pytest.approx(ref["beta"], abs=1e-7)
    assert np.sqrt(location_vcov(fit, "gls")[0, 0]) == pytest.approx(ref["se_beta"], rel=1e-6)
    assert (fit.sigma() == 0).all()


def test_common_effect_predicts_zero_sigma(bcg):
    fit = drm.fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ 0"), data=bcg)
    assert (fit.predict(bcg.head(3), dpar="sigma") == 0).all()
    assert (fit.predict(dpar="sigma") == 0).all()
    assert fit.heterogeneity()["fitted_extra_heterogeneity_variance"].eq(0).all()


def test_common_effect_refusals(bcg, kon):
    with pytest.raises(drm.FormulaError, match="common-effect model .* meta_V"):
        drm.fit(drm.Formula("yi ~ 1", "sigma ~ 0"), data=bcg)
    with pytest.raises(drm.FormulaError, match=r"sd\(district\) formula .* has no coefficients.*drop its"):
        drm.fit(drm.Formula("yi ~ 1 + (1|district) + meta_V(V=vi)", "sd(district) ~ 0"), data=kon)
    with pytest.raises(drm.FormulaError, match="fit_batch does not fit the common-effect model"):
        drm.fit_batch(drm.Formula("yi ~ 1 + meta_V(V=vi)", "sigma ~ 0"), bcg.assign(g=bcg["trial"] % 2), by="g")


def test_one_row_per_level_is_allowed_without_sigma(bcg):
    # with sigma ~ 0, (1|trial) with one row per trial is the random-effects model itself
    re = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), data=bcg)
    alt = drm.fit(drm.Formula("yi ~ 1 + (1|trial) + meta_V(V=vi)", "sigma ~ 0"), data=bcg)
    assert alt.loglik == pytest.approx(re.loglik, abs=1e-8)
    assert alt.params["sd(trial):(Intercept)"] == pytest.approx(re.params["sigma:(Intercept)"], abs=1e-5)
