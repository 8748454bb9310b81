"""drm.datasets.cdp() and mag(): metaplus's data as shipped, and its normal-model fits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import drmpy as drm


@pytest.mark.parametrize("loader, nrows", [(drm.datasets.cdp, 10), (drm.datasets.mag, 16)])
def test_columns_are_metaplus_s_plus_vi(loader, nrows):
    frame = loader()
    assert list(frame.columns) == ["study", "yi", "sei", "vi"]
    assert len(frame) == nrows and frame["study"].is_unique
    assert frame["study"].map(type).eq(str).all()
    # vi is exactly sei^2, the variance metaplus's likelihood uses
    assert np.array_equal(frame["vi"].to_numpy(), frame["sei"].to_numpy() ** 2)


def test_values_are_the_exact_doubles_metaplus_stores():
    cdp = drm.datasets.cdp()
    # R: sprintf("%.17g", cdp$sei[8]) on metaplus 1.0-8's data
    assert cdp.loc[7, "study"] == "Senin 2003" and cdp.loc[7, "sei"] == 0.09693877449194414
    assert cdp.loc[2, "study"] == "Bonavita 1983" and cdp.loc[2, "yi"] == 2.22
    mag = drm.datasets.mag()
    assert mag.loc[15, "study"] == "ISIS-4" and mag.loc[15, "yi"] == 0.0575873
    assert mag.loc[15, "sei"] == 0.03164209221906794


def test_loaders_return_fresh_frames():
    first = drm.datasets.cdp()
    first.loc[0, "yi"] = 99.0
    assert drm.datasets.cdp().loc[0, "yi"] == 0.26


@pytest.mark.parametrize(
    "loader, mu, tau2, loglik",
    [
        # metaplus vignette (Beath), summary(metaplus(yi, sei, data = cdp)) and mag: printed digits
        (drm.datasets.cdp, "0.38944", "0.14666", "-8.198544"),
        (drm.datasets.mag, "-0.7463", "0.2540", "-19.68459"),
    ],
)
def test_normal_ml_fit_reproduces_metaplus_vignette(loader, mu, tau2, loglik):
    fit = drm.fit("yi ~ 1 + meta_V(V = vi)", data=loader(), method="ML")
    tau2_hat = float(np.exp(2 * fit.params["sigma:(Intercept)"]))
    for value, printed in [(fit.params["mu:(Intercept)"], mu), (tau2_hat, tau2), (fit.loglik, loglik)]:
        decimals = len(printed.split(".")[1])
        assert f"{float(value):.{decimals}f}" == printed


REF = Path(__file__).parents[1] / "reference_extra" / "robust" / "robust_metaplus.json"


@pytest.mark.parametrize("name", ["cdp", "mag"])
def test_normal_ml_fit_equals_metaplus_at_full_precision(name):
    """metaplus 1.0-8's normal fit (robust_metaplus.json, made by make_robust.R): mu, tau2 and
    logLik; the SE of mu from numDeriv's Hessian of metaplus's likelihood."""
    ref = json.loads(REF.read_text())["fits"][name]["normal"]
    fit = drm.fit("yi ~ 1 + meta_V(V = vi)", data=getattr(drm.datasets, name)(), method="ML")
    assert fit.params["mu:(Intercept)"] == pytest.approx(ref["coef"]["muhat"], abs=1e-6)
    assert np.exp(2 * fit.params["sigma:(Intercept)"]) == pytest.approx(ref["coef"]["tau2"], rel=1e-5)
    assert fit.loglik == pytest.approx(ref["logLik"], abs=1e-9)
    tidy = fit.tidy()
    se_mu = float(tidy.loc[tidy["dpar"].eq("mu"), "std_error"].iloc[0])
    assert se_mu == pytest.approx(ref["hessian"]["se"]["muhat"], rel=1e-6)
