"""Issue 23 item 7: QQ of metafor's rstandard residuals (one row each), identity over the data."""

import json
import pathlib

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy import plots
from _plot_asserts import artist

REFERENCE = pathlib.Path(__file__).parents[1] / "reference_extra" / "plots" / "qq_reference.json"


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


def test_standardized_residuals_equal_metafor_rstandard(three_level_fit, lim, reference):
    ref = reference["lim_three_level"]
    assert three_level_fit.loglik == pytest.approx(ref["loglik"], abs=1e-5)  # the same ML fit
    table = plots.qq_table(three_level_fit)
    by_row = table.set_index("row")["sample"]
    z = pd.Series(ref["z"], index=[str(v) for v in ref["es_id"]])
    drawn = by_row.rename(index=dict(zip(lim.index, lim["es_id"])))
    np.testing.assert_allclose(drawn.loc[z.index], z, rtol=2e-5, atol=2e-6)
    assert table["row"].is_unique and len(table) == len(lim)


def test_standardized_residuals_of_a_reml_random_effects_model(restoration, reference):
    fit = drm.fit("yi ~ 1 + meta_V(V=vi)", data=restoration, method="REML")
    table = plots.qq_table(fit)
    z = np.asarray(reference["restoration_random"]["z"])
    np.testing.assert_allclose(table.sort_values("row")["sample"], z[np.argsort(restoration.index)],
                               rtol=2e-5, atol=2e-6)


def test_qq_identity_line_only_over_the_points(three_level_fit):
    table = plots.qq_table(three_level_fit)
    ax = plots.qq(table)
    line = artist(ax, "identity")
    np.testing.assert_allclose(line.get_xdata(), [table["theoretical"].min(), table["theoretical"].max()])
    np.testing.assert_allclose(line.get_ydata(), line.get_xdata())
    assert ax.get_ylabel() == "Standardized residual"
    assert plots.qq(three_level_fit, residuals="whitened").get_ylabel().startswith("Whitened residual")
    with pytest.raises(drm.DrmError, match="residuals"):
        plots.qq(table, residuals="whitened")
