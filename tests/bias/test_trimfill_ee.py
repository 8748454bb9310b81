"""trim_and_fill of a common-effect model (``sigma ~ 0``) against metafor 3.8-1's
``trimfill(rma(yi, vi, method = "EE"))`` (issue 22 item 12): the trimmed refits and the final
refit are common-effect fits.  Numbers: tests/reference_extra/bias/make_trimfill_ee.R."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

REF_DIR = Path(__file__).resolve().parents[1] / "reference_extra" / "bias"
REF = json.loads((REF_DIR / "trimfill_ee_reference.json").read_text())["sets"]
EE = drm.Formula("yi ~ 1 + meta_V(V = vi)", "sigma ~ 0")


def _num(x):
    return np.asarray([np.nan if isinstance(v, str) or v is None else v for v in np.atleast_1d(x)], dtype=float)


@pytest.fixture(scope="module")
def fits():
    return {nm: drm.fit(EE, pd.read_csv(REF_DIR / f"data_{nm}.csv")) for nm in REF}


@pytest.mark.parametrize("name", sorted(REF))
@pytest.mark.parametrize("estimator", ["L0", "R0"])
@pytest.mark.parametrize("side", [None, "left", "right"])
def test_common_effect_trim_and_fill_equals_metafor_ee(fits, name, estimator, side):
    key = estimator if side is None else f"{estimator}_{side}"
    r = REF[name][key]
    t = drm.trim_and_fill(fits[name], side=side, estimator=estimator)
    assert t.k0 == r["k0"]
    if side is None:
        assert t.side == r["side"]
        if estimator == "R0":
            np.testing.assert_allclose(t.p_k0, r["p_k0"], rtol=1e-12)
    se_ref = _num(r["se_k0"])
    if np.isfinite(se_ref).all():
        np.testing.assert_allclose(t.se_k0, se_ref[0], rtol=1e-9)
    # closed-form GLS refits: no optimiser tolerance in between
    np.testing.assert_allclose(t.fit.params.iloc[0], r["beta"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(t.fit.std_errors.iloc[0], r["se"], rtol=1e-7)
    np.testing.assert_allclose(t.filled["yi"], _num(r["filled_yi"]) if r["filled_yi"] else np.zeros(0),
                               rtol=1e-9, atol=1e-12)
    assert t.fit.formula.text["sigma"] == "sigma ~ 0" and len(t.fit.params) == 1
    assert t.fit.nobs == fits[name].nobs + t.k0


def test_refusals_name_what_is_refused():
    d = pd.read_csv(REF_DIR / "data_bcg.csv")
    with pytest.raises(drm.DrmError, match="sigma formula `sigma ~ ablat`"):
        drm.trim_and_fill(drm.fit(drm.Formula("yi ~ 1 + meta_V(V = vi)", "sigma ~ ablat"), d))
    with pytest.raises(drm.DrmError, match="mu formula"):
        drm.trim_and_fill(drm.fit(drm.Formula("yi ~ ablat + meta_V(V = vi)", "sigma ~ 0"), d))
