"""pandas and polars inputs give identical fits; factor level order follows the data's categories."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

import drmpy as drm

pl = pytest.importorskip("polars")

MU = "yi ~ habitat + duration + meta_V(V=vi)"
SIGMA = "sigma ~ habitat"


def fit_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", drm.ConvergenceWarning)
        return drm.fit(*args, **kwargs)


def assert_same_fit(a, b, tol=1e-10):
    assert list(a.params.index) == list(b.params.index)
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(a.std_errors.to_numpy(), b.std_errors.to_numpy(), rtol=0, atol=tol)
    assert a.loglik == pytest.approx(b.loglik, abs=tol)
    assert a.nobs == b.nobs


@pytest.fixture(scope="module")
def pdat() -> pd.DataFrame:
    d = drm.datasets.restoration()
    d["grp"] = [f"s{i:02d}" for i in np.arange(len(d)) // 4]  # 20 groups of 4 rows
    d["habitat_str"] = d["habitat"].astype(str).astype(object)
    return d


@pytest.fixture(scope="module")
def pldat(pdat):
    return pl.DataFrame({
        "study": pdat["study"].astype(str).tolist(),
        "habitat": pl.Series(pdat["habitat"].astype(str).tolist(), dtype=pl.Enum(["grassland", "forest"])),
        "duration": pdat["duration"].to_numpy(),
        "vi": pdat["vi"].to_numpy(),
        "yi": pdat["yi"].to_numpy(),
        "grp": pdat["grp"].tolist(),
        "habitat_str": pdat["habitat"].astype(str).tolist(),
    })


@pytest.fixture(scope="module")
def pandas_fit(pdat):
    return fit_quiet(drm.Formula(MU, SIGMA), data=pdat)


def test_restoration_categorical_is_grassland_first(pdat):
    assert isinstance(pdat["habitat"].dtype, pd.CategoricalDtype)
    assert list(pdat["habitat"].cat.categories) == ["grassland", "forest"]


def test_polars_enum_matches_pandas_categorical(pandas_fit, pldat):
    fit_pl = fit_quiet(drm.Formula(MU, SIGMA), data=pldat)
    assert "mu:habitat[T.forest]" in fit_pl.params.index
    assert "sigma:habitat[T.forest]" in fit_pl.params.index
    assert_same_fit(pandas_fit, fit_pl)
    np.testing.assert_allclose(fit_pl.fitted().to_numpy(), pandas_fit.fitted().to_numpy(), atol=1e-10)


def test_polars_frame_not_modified(pldat):
    before = pldat.clone()
    fit_quiet(drm.Formula(MU, SIGMA), data=pldat)
    assert pldat.equals(before)
    assert pldat.schema["habitat"] == pl.Enum(["grassland", "forest"])


def test_string_columns_sorted_levels(pdat, pldat, pandas_fit):
    f = drm.Formula("yi ~ habitat_str + duration + meta_V(V=vi)", "sigma ~ habitat_str")
    fit_pd = fit_quiet(f, data=pdat)
    fit_pl = fit_quiet(f, data=pldat)
    # sorted levels: forest is the reference level
    assert "mu:habitat_str[T.grassland]" in fit_pd.params.index
    assert "sigma:habitat_str[T.grassland]" in fit_pd.params.index
    assert_same_fit(fit_pd, fit_pl)
    # a reparametrisation of the grassland-first model: same likelihood, negated contrasts
    assert fit_pd.loglik == pytest.approx(pandas_fit.loglik, abs=1e-8)
    assert fit_pd.params["mu:habitat_str[T.grassland]"] == pytest.approx(
        -pandas_fit.params["mu:habitat[T.forest]"], abs=1e-6)
    assert fit_pd.params["sigma:habitat_str[T.grassland]"] == pytest.approx(
        -pandas_fit.params["sigma:habitat[T.forest]"], abs=1e-6)
    assert fit_pd.params["mu:duration"] == pytest.approx(pandas_fit.params["mu:duration"], abs=1e-6)


def test_polars_string_column_for_habitat(pldat, pandas_fit):
    pl2 = pldat.with_columns(pl.col("habitat").cast(pl.String))
    fit = fit_quiet(drm.Formula(MU, SIGMA), data=pl2)
    assert "mu:habitat[T.grassland]" in fit.params.index
    assert fit.loglik == pytest.approx(pandas_fit.loglik, abs=1e-8)


def test_categorical_order_followed(pdat, pandas_fit):
    d = pdat.copy()
    d["habitat"] = pd.Categorical(d["habitat"].astype(str), categories=["forest", "grassland"])
    fit = fit_quiet(drm.Formula(MU, SIGMA), data=d)
    assert "mu:habitat[T.grassland]" in fit.params.index
    assert "mu:habitat[T.forest]" not in fit.params.index
    assert fit.params["mu:habitat[T.grassland]"] == pytest.approx(
        -pandas_fit.params["mu:habitat[T.forest]"], abs=1e-6)
    assert fit.loglik == pytest.approx(pandas_fit.loglik, abs=1e-8)
    # the same order declared as a polars Enum gives the same fit
    pl_d = pl.DataFrame({
        "habitat": pl.Series(d["habitat"].astype(str).tolist(), dtype=pl.Enum(["forest", "grassland"])),
        **{c: d[c].to_numpy() for c in ("duration", "vi", "yi")},
    })
    assert_same_fit(fit, fit_quiet(drm.Formula(MU, SIGMA), data=pl_d))


def test_random_effect_model_pandas_vs_polars(pdat, pldat):
    f = drm.Formula("yi ~ habitat + duration + (1|grp) + meta_V(V=vi)")
    fit_pd = fit_quiet(f, data=pdat)
    fit_pl = fit_quiet(f, data=pldat)
    assert "sd(grp):(Intercept)" in fit_pd.params.index
    assert_same_fit(fit_pd, fit_pl)
    re_pd, re_pl = fit_pd.ranef(), fit_pl.ranef()
    assert list(re_pd["level"]) == [f"s{i:02d}" for i in range(20)]
    assert list(re_pl["level"]) == list(re_pd["level"])
    np.testing.assert_allclose(re_pl["estimate"], re_pd["estimate"], atol=1e-10)
    pdt.assert_frame_equal(fit_pd.sd("grp"), fit_pl.sd("grp"), atol=1e-10, rtol=0)


def test_random_effect_group_as_polars_categorical(pdat, pldat):
    f = drm.Formula("yi ~ habitat + duration + (1|grp) + meta_V(V=vi)")
    fit_pd = fit_quiet(f, data=pdat)
    fit_cat = fit_quiet(f, data=pldat.with_columns(pl.col("grp").cast(pl.Categorical)))
    assert_same_fit(fit_pd, fit_cat)
    assert list(fit_cat.ranef()["level"]) == list(fit_pd.ranef()["level"])


def test_missing_values_polars_nulls_vs_pandas_nan(pdat, pldat):
    d = pdat.copy()
    d.loc[[3, 40], "yi"] = np.nan
    d.loc[10, "duration"] = np.nan
    fit_pd = fit_quiet(drm.Formula(MU, SIGMA), data=d)
    yi = pldat["yi"].to_list()
    dur = pldat["duration"].to_list()
    yi[3] = yi[40] = None
    dur[10] = None
    pl2 = pldat.with_columns(pl.Series("yi", yi, dtype=pl.Float64), pl.Series("duration", dur, dtype=pl.Float64))
    fit_pl = fit_quiet(drm.Formula(MU, SIGMA), data=pl2)
    assert fit_pd.nobs == fit_pl.nobs == 77
    assert_same_fit(fit_pd, fit_pl)
    assert list(fit_pl.fitted().index) == list(fit_pd.fitted().index)


def test_missing_group_values_pandas_nullable_vs_polars_null(pdat, pldat):
    """pandas nullable dtypes with pd.NA, numpy NaN, and polars nulls drop the same rows and agree."""
    f = drm.Formula("yi ~ habitat + duration + (1|gid) + meta_V(V=vi)")
    gid = (np.arange(len(pdat)) // 4).astype(float)
    gid[[5, 50]] = np.nan
    d_np = pdat.assign(gid=gid)
    d_na = pdat.assign(gid=pd.array([pd.NA if np.isnan(v) else int(v) for v in gid], dtype="Int64"),
                       yi=pdat["yi"].astype("Float64"))
    d_pl = pldat.with_columns(pl.Series("gid", [None if np.isnan(v) else int(v) for v in gid], dtype=pl.Int64))
    fits = [fit_quiet(f, data=d) for d in (d_np, d_na, d_pl)]
    for other in fits[1:]:
        assert other.nobs == 78
        assert dict(other.design.dropped) == {"missing values in model variables": 2}
        assert_same_fit(fits[0], other)
        assert list(other.ranef()["level"]) == [str(i) for i in range(20)]


def test_predict_newdata_polars_vs_pandas(pandas_fit, pdat, pldat):
    p_pd = pandas_fit.predict(pdat.iloc[:6])
    p_pl = pandas_fit.predict(pldat.head(6))
    np.testing.assert_allclose(p_pl.to_numpy(), p_pd.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(p_pd.to_numpy(), pandas_fit.fitted().to_numpy()[:6], atol=1e-12)
    s_pl = pandas_fit.predict(pldat.head(6), dpar="sigma")
    np.testing.assert_allclose(s_pl.to_numpy(), pandas_fit.sigma().to_numpy()[:6], rtol=1e-10)


def test_unsupported_data_type():
    with pytest.raises(drm.DataError, match=r"pandas or polars DataFrame"):
        drm.fit(drm.Formula(MU), data={"yi": [1.0, 2.0]})
