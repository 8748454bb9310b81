"""Bad input: every problem raises the right DrmError subclass with a message that names it."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drmpy as drm
from drmpy.model.design import build_design
from drmpy.errors import CovarianceError, DataError, FormulaError, RandomEffectsError

MU = "yi ~ habitat + duration + meta_V(V=vi)"


@pytest.fixture(scope="module")
def dat() -> pd.DataFrame:
    return drm.datasets.restoration()


@pytest.fixture(scope="module")
def grouped() -> pd.DataFrame:
    """Restoration data with 20 groups of 4 rows (numeric ids 0..19) and a few helper columns."""
    d = drm.datasets.restoration()
    d["g"] = np.arange(len(d)) // 4
    d["gx"] = d["g"].astype(float)  # constant within g
    d["label"] = np.where(np.arange(len(d)) % 2 == 0, "a", "b")  # non-numeric
    return d


@pytest.fixture(scope="module")
def pair_v(dat) -> np.ndarray:
    """A valid dense V: rows (2k, 2k+1) correlated 0.5 within pairs."""
    vi = dat["vi"].to_numpy()
    n = len(vi)
    V = np.diag(vi)
    for k in range(0, n, 2):
        c = 0.5 * np.sqrt(vi[k] * vi[k + 1])
        V[k, k + 1] = V[k + 1, k] = c
    return V


# --------------------------------------------------------------------------- meta_V parsing


@pytest.mark.parametrize(
    "formulas, message",
    [
        (("yi ~ habitat + meta_V(vi)",), r"positional arguments are not accepted"),
        (("yi ~ habitat + meta_V(W=vi)",), r"unknown argument `W=`.*only `V = <name>`"),
        (("yi ~ habitat + meta_V(V=np.sqrt(vi))",), r"bare name.*not an expression"),
        (("yi ~ habitat", "sigma ~ habitat + meta_V(V=vi)"), r"meta_V\(\) belongs in the mu formula only.*sigma formula"),
        (("yi ~ habitat + meta_V(V=vi) + meta_V(V=vi)",), r"two meta_V\(\) markers"),
        (("yi ~ habitat + habitat:meta_V(V=vi)",), r"must stand alone"),
    ],
    ids=["positional", "unknown-argument", "expression", "in-sigma-formula", "two-markers", "inside-term"],
)
def test_meta_v_marker_rejected(formulas, message):
    with pytest.raises(FormulaError, match=message):
        drm.Formula(*formulas)


@pytest.mark.parametrize("extra", ["w=x", "scale=x"])
def test_meta_v_reserved_arguments(extra):
    arg = extra.split("=")[0]
    with pytest.raises(FormulaError, match=rf"`{arg}=` is reserved.*proportional"):
        drm.Formula(f"yi ~ habitat + meta_V(V=vi, {extra})")


# --------------------------------------------------------------------------- V resolution/validation


def test_unknown_v_name(dat):
    with pytest.raises(CovarianceError, match=r"`v_nowhere_xyz` is not a column of the data"):
        drm.fit(drm.Formula("yi ~ habitat + meta_V(V=v_nowhere_xyz)"), data=dat)


def test_v_vector_wrong_length(dat):
    short = dat["vi"].to_numpy()[:-1]
    with pytest.raises(CovarianceError, match=r"length 79 but the data have 80 rows"):
        drm.fit(drm.Formula("yi ~ habitat + meta_V(V=Vshort)"), data=dat, env={"Vshort": short})


def test_v_matrix_wrong_shape(dat):
    V = np.eye(79) * 0.05
    with pytest.raises(CovarianceError, match=r"shape \(79, 79\).*expected \(80, 80\)"):
        drm.fit(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), data=dat, env={"Vm": V})


def test_v_matrix_not_square(dat):
    V = np.ones((80, 2))
    with pytest.raises(CovarianceError, match=r"shape \(80, 2\)"):
        drm.fit(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), data=dat, env={"Vm": V})


def test_v_not_symmetric(dat, pair_v):
    V = pair_v.copy()
    V[2, 3] += 0.01
    with pytest.raises(CovarianceError, match=r"not symmetric.*rows \(2, 3\)"):
        drm.fit(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), data=dat, env={"Vm": V})


def test_v_negative_diagonal(dat, pair_v):
    V = pair_v.copy()
    V[5, 5] = -0.01
    with pytest.raises(CovarianceError, match=r"diagonal of V must be >= 0; row 5 has -0\.01"):
        drm.fit(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), data=dat, env={"Vm": V})


def test_v_indefinite_fails_even_when_tiny(dat, pair_v):
    # eigenvalues of [[1, 2], [2, 1]] are 3 and -1: indefinite at any scale
    V = pair_v.copy()
    V[0:2, 0:2] = [[1.0, 2.0], [2.0, 1.0]]
    with pytest.raises(CovarianceError, match=r"not positive semidefinite"):
        drm.fit(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), data=dat, env={"Vm": V * 1e-6})


def test_v_huge_scale_passes_and_fits_equivariantly(dat, pair_v):
    """A valid V scaled by 1e8 (with y scaled by 1e4) is accepted and gives the equivalent fit."""
    f = drm.Formula("yi ~ habitat + meta_V(V=Vm)")
    fit1 = drm.fit(f, data=dat, env={"Vm": pair_v})
    big = dat.copy()
    big["yi"] = big["yi"] * 1e4
    fit2 = drm.fit(f, data=big, env={"Vm": pair_v * 1e8})
    assert fit1.converged and fit2.converged
    assert fit2.design.known_v.kind == "dense"
    n = len(dat)
    assert fit2.loglik == pytest.approx(fit1.loglik - n * np.log(1e4), abs=1e-6)
    np.testing.assert_allclose(fit2.params["mu:(Intercept)"], 1e4 * fit1.params["mu:(Intercept)"], rtol=1e-6)
    np.testing.assert_allclose(fit2.params["sigma:(Intercept)"],
                               fit1.params["sigma:(Intercept)"] + np.log(1e4), atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(log10_scale=st.integers(min_value=-10, max_value=10), rho=st.floats(min_value=-0.95, max_value=0.95))
def test_v_check_is_scale_free(dat, pair_v, log10_scale, rho):
    """Positive semidefiniteness is judged relative to V's own scale: valid V passes at any scale,
    an indefinite V fails at any scale."""
    vi = dat["vi"].to_numpy()
    V = pair_v.copy()
    V[0, 1] = V[1, 0] = rho * np.sqrt(vi[0] * vi[1])
    scale = 10.0**log10_scale
    design = build_design(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), dat, env={"Vm": V * scale})
    assert design.known_v.kind == "dense"
    assert design.known_v.rank == len(vi)
    bad = V.copy()
    bad[0, 1] = bad[1, 0] = 1.5 * np.sqrt(vi[0] * vi[1])  # |correlation| > 1: indefinite block
    with pytest.raises(CovarianceError, match=r"not positive semidefinite"):
        build_design(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), dat, env={"Vm": bad * scale})


def test_v_matrix_non_finite_entry_in_retained_rows(dat, pair_v):
    V = pair_v.copy()
    V[10, 11] = V[11, 10] = np.nan
    with pytest.raises(CovarianceError, match=r"non-finite entry at rows \(10, 11\)"):
        build_design(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), dat, env={"Vm": V})


def test_v_matrix_non_finite_entry_in_dropped_row_is_ignored(dat, pair_v):
    """V is subset by the retained rows and columns together: NaN in a dropped row does not matter."""
    V = pair_v.copy()
    V[10, :] = V[:, 10] = np.nan
    d = dat.copy()
    d.loc[10, "yi"] = np.nan
    design = build_design(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), d, env={"Vm": V})
    assert design.nobs == 79 and 10 not in set(design.row_labels)
    keep = np.delete(np.arange(80), 10)
    np.testing.assert_array_equal(design.known_v.matrix, pair_v[np.ix_(keep, keep)])


def test_negative_vi_column(dat):
    d = dat.copy()
    d.loc[3, "vi"] = -0.2
    d.loc[7, "vi"] = -0.1
    with pytest.raises(CovarianceError, match=r"must be >= 0; row 3 has -0\.2 \(2 negative in all\)"):
        drm.fit(drm.Formula(MU), data=d)


def test_non_numeric_vi_column(dat):
    d = dat.copy()
    d["vs"] = "x"
    with pytest.raises(CovarianceError, match=r"meta_V\(V = vs\): V must be numeric"):
        drm.fit(drm.Formula("yi ~ habitat + meta_V(V=vs)"), data=d)


# --------------------------------------------------------------------------- data problems


def test_non_numeric_response(dat):
    d = dat.copy()
    d["ytxt"] = d["yi"].astype(str)
    with pytest.raises(DataError, match=r"response `ytxt` must be numeric"):
        drm.fit(drm.Formula("ytxt ~ habitat + meta_V(V=vi)"), data=d)


def test_missing_column_in_mu_formula(dat):
    with pytest.raises(DataError, match=r"Column `nocol` used in the mu formula"):
        drm.fit(drm.Formula("yi ~ habitat + nocol + meta_V(V=vi)"), data=dat)


def test_missing_column_in_sigma_formula(dat):
    with pytest.raises(DataError, match=r"Column `nocol2` used in the sigma formula `sigma ~ nocol2`"):
        drm.fit(drm.Formula(MU, "sigma ~ nocol2"), data=dat)


def test_empty_model_after_filtering(dat):
    d = dat.copy()
    d["yi"] = np.nan
    with pytest.raises(DataError, match=r"No rows remain.*80 rows in the data"):
        drm.fit(drm.Formula(MU), data=d)


def test_all_zero_weights(dat):
    with pytest.raises(DataError, match=r"weights are all zero"):
        drm.fit(drm.Formula(MU), data=dat, weights=np.zeros(len(dat)))


def test_negative_weights_name_the_row_label(dat):
    d = dat.copy()
    d.index = [f"es{i}" for i in range(len(d))]
    d["w"] = 1.0
    d.loc["es17", "w"] = -2.0
    with pytest.raises(DataError, match=r"weights must be >= 0; row 'es17' has -2"):
        drm.fit(drm.Formula(MU), data=d, weights="w")


def test_weights_wrong_length(dat):
    with pytest.raises(DataError, match=r"expected 80 values"):
        drm.fit(drm.Formula(MU), data=dat, weights=np.ones(10))


def test_missing_weights_column(dat):
    with pytest.raises(DataError, match=r"column `wt_missing` is not in the data"):
        drm.fit(drm.Formula(MU), data=dat, weights="wt_missing")


def test_non_unit_weights_with_dense_v_rejected(dat, pair_v):
    w = np.ones(len(dat))
    w[4] = 2.0
    with pytest.raises(DataError, match=r"non-unit weights with a non-diagonal V"):
        drm.fit(drm.Formula("yi ~ habitat + meta_V(V=Vm)"), data=dat, env={"Vm": pair_v}, weights=w)


def test_non_unit_weights_with_random_effects_rejected(dat):
    d = dat.copy()
    d["g"] = np.arange(len(d)) // 4
    w = np.ones(len(d))
    w[0] = 3.0
    with pytest.raises(DataError, match=r"non-unit weights with random effects"):
        drm.fit(drm.Formula("yi ~ habitat + (1|g) + meta_V(V=vi)"), data=d, weights=w)


def test_meta_known_v_deprecation_points_at_caller(dat):
    """The DeprecationWarning is attributed to the user's line (so Python's default filters show it),
    whether the Formula is built directly or drm.fit() is given a formula string."""
    with pytest.warns(DeprecationWarning) as rec:
        drm.Formula("yi ~ habitat + meta_known_V(V=vi)")
    assert rec[0].filename == __file__
    with pytest.warns(DeprecationWarning) as rec:
        drm.fit("yi ~ habitat + duration + meta_known_V(V=vi)", data=dat)
    assert [r.filename for r in rec if issubclass(r.category, DeprecationWarning)][0] == __file__


def test_meta_known_v_deprecated_but_equivalent(dat):
    with pytest.warns(DeprecationWarning, match=r"meta_known_V\(\) is deprecated"):
        f_old = drm.Formula("yi ~ habitat + duration + meta_known_V(V=vi)")
    assert f_old.meta_v is not None and f_old.meta_v.name == "vi"
    fit_old = drm.fit(f_old, data=dat)
    fit_new = drm.fit(drm.Formula(MU), data=dat)
    assert fit_old.design.known_v.kind == "diagonal"
    assert fit_old.loglik == pytest.approx(fit_new.loglik, abs=1e-10)
    pdt.assert_series_equal(fit_old.params, fit_new.params, atol=1e-10, rtol=0)


def test_sd_formula_without_random_term():
    with pytest.raises(FormulaError, match=r"no random-effect term for `sd\(study\)`.*\(1\|study\)"):
        drm.Formula("yi ~ duration + meta_V(V=vi)", "sd(study) ~ duration")


def test_unknown_dpar_keyword():
    with pytest.raises(FormulaError, match=r"Unknown distributional parameter `tau`"):
        drm.Formula("yi ~ duration", tau="~ x")


def test_bad_method_and_control(dat):
    with pytest.raises(drm.DrmError, match=r"method must be 'ML' or 'REML'"):
        drm.fit(drm.Formula(MU), data=dat, method="OLS")
    with pytest.raises(drm.DrmError, match=r"unknown option\(s\) \['maxit'\]"):
        drm.fit(drm.Formula(MU), data=dat, control={"maxit": 3})


@pytest.mark.parametrize("control, words", [
    (drm.Control(structure="bogus"), r"structure must be one of"),
    (drm.Control(max_iter=-1), r"max_iter must be >= 0"),
])
def test_control_instance_validated_like_dict(dat, control, words):
    """A Control object is checked exactly as the equivalent dict, before any work is done."""
    as_dict = {"structure": control.structure, "max_iter": control.max_iter}
    with pytest.raises(drm.DrmError, match=words):
        drm.fit(drm.Formula(MU), data=dat, control=as_dict)
    with pytest.raises(drm.DrmError, match=words):
        drm.fit(drm.Formula(MU), data=dat, control=control)


# --------------------------------------------------------------------------- random effects


def test_random_term_in_sigma_formula_rejected():
    with pytest.raises(FormulaError, match=r"`\(1\|study\)` belong in the mu formula"):
        drm.Formula("yi ~ habitat", "sigma ~ habitat + (1|study)")



def test_grouping_column_missing(dat):
    with pytest.raises(RandomEffectsError, match=r"Column `nogroup` of the random-effect term `\(1\|nogroup\)`"):
        drm.fit(drm.Formula("yi ~ habitat + (1|nogroup) + meta_V(V=vi)"), data=dat)


def test_grouping_column_all_missing(dat):
    d = dat.copy()
    d["gna"] = np.nan
    with pytest.raises(RandomEffectsError, match=r"Grouping column `gna`.*entirely missing"):
        drm.fit(drm.Formula("yi ~ habitat + (1|gna) + meta_V(V=vi)"), data=d)


def test_random_slope_non_numeric(grouped):
    with pytest.raises(RandomEffectsError, match=r"Random slope `label`.*must be a numeric column"):
        drm.fit(drm.Formula("yi ~ habitat + (1 + label|g) + meta_V(V=vi)"), data=grouped)


def test_random_slope_expression_rejected():
    with pytest.raises(FormulaError, match=r"random slopes must be plain numeric column names"):
        drm.Formula("yi ~ habitat + (1 + log(x)|g) + meta_V(V=vi)")


def _k_frame(levels, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    A = rng.normal(size=(len(levels), len(levels)))
    K = A @ A.T / len(levels) + np.eye(len(levels))
    return pd.DataFrame(K, index=levels, columns=levels)


def test_relmat_k_missing_level(grouped):
    levels = [str(i) for i in range(20)]
    K = _k_frame(levels).drop(index="7", columns="7")
    with pytest.raises(RandomEffectsError, match=r"level `7` of `g` is not in K \(1 observed"):
        drm.fit(drm.Formula("yi ~ habitat + relmat(1|g, K=Kg) + meta_V(V=vi)"), data=grouped, env={"Kg": K})


def test_relmat_k_not_symmetric(grouped):
    levels = [str(i) for i in range(20)]
    K = _k_frame(levels)
    K.iloc[0, 1] += 0.5
    with pytest.raises(RandomEffectsError, match=r"K is not symmetric"):
        drm.fit(drm.Formula("yi ~ habitat + relmat(1|g, K=Kg) + meta_V(V=vi)"), data=grouped, env={"Kg": K})


def test_relmat_k_not_positive_definite(grouped):
    levels = [str(i) for i in range(20)]
    K = _k_frame(levels)
    K.iloc[:, :] = K.to_numpy() - 10.0 * np.eye(20)  # symmetric, with negative eigenvalues
    with pytest.raises(RandomEffectsError, match=r"K is not positive definite"):
        drm.fit(drm.Formula("yi ~ habitat + relmat(1|g, K=Kg) + meta_V(V=vi)"), data=grouped, env={"Kg": K})


def test_relmat_k_unknown_name(grouped):
    with pytest.raises(RandomEffectsError, match=r"`K_nowhere_xyz` is not a key of `env=`"):
        drm.fit(drm.Formula("yi ~ habitat + relmat(1|g, K=K_nowhere_xyz) + meta_V(V=vi)"), data=grouped)


def test_non_constant_sd_predictors_name_first_level(grouped):
    d = grouped.copy()
    d.loc[d.index[13], "gx"] = 99.0  # row 13 is in level 3
    d.loc[d.index[29], "gx"] = 98.0  # row 29 is in level 7
    with pytest.raises(RandomEffectsError, match=r"constant within each level of `g`, but level `3` has"):
        drm.fit(drm.Formula("yi ~ habitat + (1|g) + meta_V(V=vi)", "sd(g) ~ gx"), data=d)


def test_singleton_group_confounded_with_sigma(dat):
    # restoration has one row per study
    with pytest.raises(RandomEffectsError, match=r"single row.*confounded with the row-level sigma; drop the term"):
        drm.fit(drm.Formula("yi ~ habitat + (1|study) + meta_V(V=vi)"), data=dat)


def test_singleton_nested_inner_level(dat):
    d = dat.copy()
    d["district"] = np.arange(len(d)) // 8
    d["school"] = np.arange(len(d))  # one row per school
    with pytest.raises(RandomEffectsError, match=r"`district:school` has a single row.*sigma.*drop this level"):
        drm.fit(drm.Formula("yi ~ habitat + (1|district/school) + meta_V(V=vi)"), data=d)


def test_duplicate_random_terms_for_one_group():
    with pytest.raises(FormulaError, match=r"more than one random-effect term for group `g`"):
        drm.Formula("yi ~ x + (1|g) + (0 + x|g)")


# --------------------------------------------------------------------------- data never modified


def test_caller_frame_unchanged_after_fit_with_missing_values(dat):
    d = dat.copy()
    d.loc[[2, 11], "yi"] = np.nan
    d.loc[5, "duration"] = np.nan
    d.loc[20, "vi"] = np.nan
    before = copy.deepcopy(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error", drm.ConvergenceWarning)
        fit = drm.fit(drm.Formula(MU, "sigma ~ habitat"), data=d)
    assert fit.nobs == 76
    assert set(fit.design.dropped_labels) == {2, 5, 11, 20}
    pdt.assert_frame_equal(d, before)
    assert d["habitat"].cat.categories.tolist() == ["grassland", "forest"]


@pytest.mark.parametrize("formula", [
    ("yi ~ 1", "sigma ~ 0"),  # sigma ~ 0 (common-effect model) needs meta_V
    ("yi ~ 1 + (1|study)", "sigma ~ -1"),
    ("yi ~ 1 + meta_V(V=vi) + (1|study)", "sd(study) ~ 0"),
])
def test_scale_formula_without_coefficients_is_refused(formula):
    # without coefficients the log-SD would be 0 (an SD of 1): refuse instead of fitting that
    dat = pd.DataFrame({"yi": [0.1, 0.3, 0.2, 0.5, 0.4, 0.0], "vi": 0.01, "study": [1, 1, 2, 2, 3, 3]})
    with pytest.raises(drm.FormulaError, match="has no coefficients"):
        drm.fit(drm.Formula(*formula), data=dat)


def test_bivariate_sigma_without_coefficients_is_refused_but_rho12_0_means_uncorrelated():
    dat = pd.DataFrame({"y1": [0.1, 0.3, 0.2, 0.5, 0.4], "y2": [0.0, 0.2, 0.1, 0.6, 0.3]})
    with pytest.raises(drm.FormulaError, match="sigma2 formula .* has no coefficients"):
        drm.fit(drm.Formula(mu1="y1 ~ 1", mu2="y2 ~ 1", sigma2="~ 0"), data=dat)
    fit = drm.fit(drm.Formula(mu1="y1 ~ 1", mu2="y2 ~ 1", rho12="~ 0"), data=dat)
    separate = [drm.fit(f"{y} ~ 1", data=dat).loglik for y in ("y1", "y2")]
    assert fit.loglik == pytest.approx(sum(separate), abs=1e-8)
    assert "rho12:(Intercept)" not in fit.params


# --------------------------------------------------------------------------- unsupported special terms (issue 14)


@pytest.mark.parametrize("formula, term, where", [
    (dict(mu1="y1 ~ x + phylo(1 | species, tree = tree)", mu2="y2 ~ 1"),
     "phylo(1 | species, tree = tree)", "bivariate mu1 formula"),
    (dict(mu1="y1 ~ 1", mu2="y2 ~ spatial(1 | site, coords = coords) + x"),
     "spatial(1 | site, coords = coords)", "bivariate mu2 formula"),
    (dict(mu1="y1 ~ 1", mu2="y2 ~ 1", sigma1="~ phylo(1 | species, tree = tree)"),
     "phylo(1 | species, tree = tree)", "sigma1 formula"),
    (dict(mu1="y1 ~ 1", mu2="y2 ~ 1", rho12="~ x + gp(lat, lon)"), "gp(lat, lon)", "rho12 formula"),
])
def test_unsupported_special_in_bivariate_formula_names_the_term(formula, term, where):
    with pytest.raises(FormulaError) as err:
        drm.Formula(**formula)
    msg = str(err.value)
    assert f"`{term}`" in msg and where in msg and "not supported there" in msg
    assert "not in the data" not in msg


@pytest.mark.parametrize("mu, sigma, term", [
    ("yi ~ duration + spatial(1 | site, coords = coords)", None, "spatial(1 | site, coords = coords)"),
    ("yi ~ duration + ar1(0 + time | study)", None, "ar1(0 + time | study)"),
    ("yi ~ duration + animal(1 | id, A = A)", None, "animal(1 | id, A = A)"),
    ("yi ~ duration + us(1 + duration | study)", None, "us(1 + duration | study)"),
    ("yi ~ duration + gp(duration)", None, "gp(duration)"),
    ("yi ~ duration", "sigma ~ spatial(1 | site, coords = coords)", "spatial(1 | site, coords = coords)"),
    ("yi ~ duration", "sigma ~ habitat + animal(1 | id, A = A)", "animal(1 | id, A = A)"),
])
def test_unsupported_special_in_univariate_formula_names_the_term(dat, mu, sigma, term):
    with pytest.raises(FormulaError) as err:
        drm.fit(drm.Formula(mu, sigma) if sigma else drm.Formula(mu), data=dat)
    msg = str(err.value)
    assert f"`{term}`" in msg and "not supported there" in msg
    assert "not in the data" not in msg


def test_generic_names_are_special_only_around_a_bar(dat):
    """exp() and diag() are numpy functions in a fixed-effect term; with a bar they are
    glmmTMB covariance structures."""
    f = drm.fit(drm.Formula("yi ~ np.exp(duration) + meta_V(V=vi)"), data=dat)
    assert "mu:np.exp(duration)" in f.params.index
    with pytest.raises(FormulaError, match=r"`exp\(1 \| study\)` in the mu formula"):
        drm.Formula("yi ~ exp(1 | study)")
