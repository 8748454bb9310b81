"""drm.lrt at the common-effect boundary (sigma ~ 0 against sigma ~ 1)."""

import numpy as np
import pandas as pd

import drmpy as drm


def test_lrt_common_effect_against_random_effects_is_a_boundary_test():
    """sigma ~ 0 against sigma ~ 1 on dat.bcg (ML): metafor's anova(EE, RE) statistic from its
    two logLiks, and the p-value halved (one variance added at its boundary)."""
    import json
    from pathlib import Path

    from scipy.stats import chi2

    here = Path(__file__).parents[1] / "reference_extra" / "inference_profile"
    ref = json.loads((here / "references.json").read_text())
    bcg = pd.read_csv(here / "bcg.csv")
    fit0 = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)", "sigma ~ 0"), data=bcg)
    fit1 = drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), data=bcg)
    out = drm.lrt(fit0, fit1)
    statistic = 2 * (ref["bcg_tau_ml"]["loglik"] - ref["ee_bcg"]["loglik_ml"])
    assert out["boundary"]
    assert out["df"] == 1
    np.testing.assert_allclose(out["statistic"], statistic, rtol=1e-8)
    np.testing.assert_allclose(out["p_value"], 0.5 * chi2.sf(statistic, 1), rtol=1e-6)
