"""design.frame: the retained rows of the columns the model read (what plots read moderators from)."""

import numpy as np

import drmpy as drm


def test_design_frame_holds_retained_rows_of_model_columns():
    data = drm.datasets.restoration()
    data.loc[5, "yi"] = np.nan
    before = data.copy()
    fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=data)
    frame = fit.design.frame
    assert list(frame.index) == list(fit.design.row_labels) and 5 not in frame.index
    assert set(frame.columns) == {"yi", "habitat", "duration", "vi"}
    np.testing.assert_array_equal(frame["yi"].to_numpy(), fit.design.y)
    assert frame["habitat"].dtype == data["habitat"].dtype  # categories kept for marginal means
    assert before.equals(data)  # the caller's data untouched
