"""drm.datasets.bcg(): metafor's dat.bcg as shipped, and its escalc("RR") effect sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

import drmpy as drm

REF = Path(__file__).parents[1] / "reference" / "bcg_random_reml"


def test_bcg_columns_and_levels_are_metadat_s():
    bcg = drm.datasets.bcg()
    assert list(bcg.columns) == ["trial", "author", "year", "tpos", "tneg", "cpos", "cneg", "ablat", "alloc"]
    assert len(bcg) == 13 and bcg["trial"].tolist() == list(range(1, 14))
    assert list(bcg["alloc"].cat.categories) == ["alternate", "random", "systematic"]
    assert bcg.loc[7, "tpos"] == 505 and bcg.loc[7, "author"] == "TPT Madras"


def test_bcg_log_risk_ratios_equal_escalc_and_metafor_tau2():
    ref = pd.read_csv(REF / "data.csv")
    es = drm.effect_size("RR", drm.datasets.bcg(), ai="tpos", bi="tneg", ci="cpos", di="cneg")
    np.testing.assert_allclose(es["yi"], ref["yi"], rtol=1e-12)
    np.testing.assert_allclose(es["vi"], ref["vi"], rtol=1e-12)
    fit = drm.fit("yi ~ 1 + meta_V(V = vi)", data=es, method="REML")
    tau2 = json.loads((REF / "case.json").read_text())["expected"]["metafor"]["tau2"]
    assert abs(np.exp(2 * fit.params["sigma:(Intercept)"]) - tau2) < 1e-5 * tau2
