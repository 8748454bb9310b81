"""Issue 22, item 13: a sampling-variance column stored as text is rejected, as a text response is."""

from __future__ import annotations

import pandas as pd
import pytest

import drmpy as drm


@pytest.fixture(scope="module")
def restoration():
    return drm.datasets.restoration()


@pytest.mark.parametrize("column,match", [("yi", "The response `yi` must be numeric, but has dtype"),
                                          ("vi", "V must be numeric, but the sampling variance column `vi` has dtype")])
def test_fit_rejects_text_yi_and_vi_alike(restoration, column, match):
    d = restoration.assign(**{column: restoration[column].astype(str)})
    with pytest.raises(drm.DataError, match=match):
        drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), d)


def test_fit_rejects_text_vi_in_polars(restoration):
    pl = pytest.importorskip("polars")
    d = pl.DataFrame({"yi": restoration["yi"].to_numpy(), "vi": restoration["vi"].astype(str).tolist()})
    with pytest.raises(drm.CovarianceError, match=r"meta_V\(V = vi\): V must be numeric, but the sampling variance column `vi`"):
        drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi)"), d)


@pytest.mark.parametrize("formula", ["yi ~ 1 + meta_V(V=vi)", "yi ~ 1 + (1|study) + meta_V(V=vi)"])
def test_fit_batch_rejects_text_vi(restoration, formula):
    b = pd.concat([restoration.assign(rep=i) for i in range(2)], ignore_index=True)
    with pytest.raises(drm.CovarianceError, match="V must be numeric, but the sampling variance column `vi`"):
        drm.fit_batch(drm.Formula(formula), b.assign(vi=b["vi"].astype(str)), by="rep", progress=False)
