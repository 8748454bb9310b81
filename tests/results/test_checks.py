"""fit.check(): every diagnostic row is 'ok' on a healthy fit and can also fail.

Real fits drive most rows (iteration limits, zero-heterogeneity data, dropped rows,
degenerate V, wide designs, singleton levels); rows that are hard to reach with real
data are driven by a DrmFit built around a modified RawFit.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from scipy import stats

import drmpy as drm
from drmpy.engine.optimize import NONFINITE, RADIUS_COLLAPSED

MU = "yi ~ habitat + duration + meta_V(V=vi)"
SIGMA = "sigma ~ habitat"

BASE_ROWS = {
    "optimizer_convergence", "optimizer_budget", "finite_objective", "fixed_gradient",
    "hessian_positive_definite", "standard_errors_finite", "standard_errors_inflated",
    "dropped_rows", "positive_scale", "boundary", "known_sampling_covariance",
    "fixed_effect_design_size",
}


def rows(fit) -> pd.DataFrame:
    table = fit.check()
    assert list(table.columns) == ["check", "status", "value", "message"]
    assert table["check"].is_unique
    return table.set_index("check")


def fit_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", drm.ConvergenceWarning)
        return drm.fit(*args, **kwargs)


def with_raw(fit, **changes):
    raw = dataclasses.replace(fit._raw, **changes)
    return drm.DrmFit(fit.design, raw, fit.method, fit._control, fit._clusters)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dat() -> pd.DataFrame:
    return drm.datasets.restoration()


@pytest.fixture(scope="module")
def good_fit(dat):
    return fit_quiet(drm.Formula(MU, SIGMA), data=dat)


@pytest.fixture(scope="module")
def short_fit(dat):
    with pytest.warns(drm.ConvergenceWarning, match="did not converge"):
        return drm.fit(drm.Formula(MU, SIGMA), data=dat, control={"max_iter": 2})


@pytest.fixture(scope="module")
def zero_het(dat) -> pd.DataFrame:
    """Effect sizes with sampling error only: yi ~ N(0, vi) (seed chosen so that tau^2_ML = 0)."""
    vi = dat["vi"].to_numpy()
    rng = np.random.default_rng(1)
    out = dat[["habitat", "duration", "vi"]].copy()
    out["yi"] = rng.normal(0.0, np.sqrt(vi))
    # precondition: the ML score of tau^2 at 0 is negative, so the MLE is on the boundary
    w = 1 / vi
    mu = np.sum(w * out["yi"]) / np.sum(w)
    assert np.sum(w**2 * (out["yi"] - mu) ** 2 - w) < 0
    return out


@pytest.fixture(scope="module")
def re_null(dat) -> pd.DataFrame:
    """20 groups of 4 rows, no between-group variance: sd(g) runs to zero."""
    vi = dat["vi"].to_numpy()
    rng = np.random.default_rng(3)
    return pd.DataFrame({"yi": rng.normal(0.0, np.sqrt(vi)), "vi": vi, "g": np.arange(80) // 4})


@pytest.fixture(scope="module")
def re_real(dat) -> pd.DataFrame:
    """21 groups (level 0 a singleton) with real between-group variance (SD 0.5)."""
    vi = dat["vi"].to_numpy()
    rng = np.random.default_rng(11)
    g = (np.arange(80) + 3) // 4
    b = rng.normal(0.0, 0.5, size=g.max() + 1)
    y = b[g] + rng.normal(0.0, np.sqrt(vi + 0.2**2))
    return pd.DataFrame({"yi": y, "vi": vi, "g": g})


def pair_v(vi: np.ndarray, rho: float) -> np.ndarray:
    V = np.diag(vi).astype(float)
    for k in range(0, len(vi), 2):
        c = rho * np.sqrt(vi[k] * vi[k + 1])
        V[k, k + 1] = V[k + 1, k] = c
    return V


# --------------------------------------------------------------------------- healthy fit


def test_healthy_fit_every_row_ok(good_fit):
    table = rows(good_fit)
    assert set(table.index) == BASE_ROWS
    assert (table["status"] == "ok").all(), table[table["status"] != "ok"]


def test_drm_check_equals_method(good_fit, short_fit):
    pdt.assert_frame_equal(drm.check(good_fit), good_fit.check())
    pdt.assert_frame_equal(drm.check(short_fit), short_fit.check())


def test_random_effect_rows_present(re_real):
    fit = fit_quiet(drm.Formula("yi ~ 1 + (1|g) + meta_V(V=vi)"), data=re_real)
    table = rows(fit)
    assert set(table.index) == BASE_ROWS | {"sd_boundary[g]", "level_replication[g]",
                                            "sd_predictors_constant[g]"}
    assert table.loc["sd_predictors_constant[g]", "status"] == "ok"
    assert table.loc["sd_predictors_constant[g]", "value"] == "sd_coefficients=1"


# --------------------------------------------------------------------------- optimizer rows


def test_optimizer_convergence_ok_and_warning(good_fit, short_fit):
    assert good_fit.converged and not short_fit.converged
    ok = rows(good_fit).loc["optimizer_convergence"]
    bad = rows(short_fit).loc["optimizer_convergence"]
    assert ok["status"] == "ok" and ok["value"] == "converged"
    assert bad["status"] == "warning" and bad["value"] == "max_iter"
    assert "did not converge" in bad["message"] and "max_iter" in bad["message"]


@pytest.mark.parametrize("status, words", [(NONFINITE, "non-finite"), (RADIUS_COLLAPSED, "trust region collapsed")])
def test_optimizer_convergence_other_failures(good_fit, status, words):
    fit = with_raw(good_fit, status=status)
    assert not fit.converged
    row = rows(fit).loc["optimizer_convergence"]
    assert row["status"] == "warning" and words in row["message"]
    # not an iteration-limit failure: the budget row stays ok
    assert rows(fit).loc["optimizer_budget", "status"] == "ok"


def test_optimizer_budget_ok_and_note(good_fit, short_fit):
    ok = rows(good_fit).loc["optimizer_budget"]
    assert ok["status"] == "ok"
    assert ok["value"] == f"iterations={good_fit.iterations}; max_iter=200; evaluations={good_fit.evaluations}"
    note = rows(short_fit).loc["optimizer_budget"]
    assert note["status"] == "note"
    assert note["value"].startswith("iterations=2; max_iter=2;")
    assert "iteration limit" in note["message"]


def test_fixed_gradient_ok_warning_error(good_fit, short_fit):
    ok = rows(good_fit).loc["fixed_gradient"]
    assert ok["status"] == "ok"
    assert float(ok["value"].split(";")[0].split("=")[1]) <= 1e-3
    warn = rows(short_fit).loc["fixed_gradient"]
    assert warn["status"] == "warning"
    g = np.abs(short_fit._raw.gradient)
    assert g.max() > 1e-3
    assert warn["value"] == f"max={g.max():.3g}; component={short_fit.params.index[int(np.argmax(g))]}"
    grad = good_fit._raw.gradient.copy()
    grad[0] = np.nan
    err = rows(with_raw(good_fit, gradient=grad)).loc["fixed_gradient"]
    assert err["status"] == "error" and err["value"] == "non-finite"


def test_fixed_gradient_names_component(good_fit):
    grad = np.zeros_like(good_fit._raw.gradient)
    grad[3] = -0.5
    row = rows(with_raw(good_fit, gradient=grad)).loc["fixed_gradient"]
    assert row["status"] == "warning"
    assert row["value"] == f"max=0.5; component={good_fit.params.index[3]}"


def test_finite_objective_ok_and_error(good_fit):
    ok = rows(good_fit).loc["finite_objective"]
    assert ok["status"] == "ok" and ok["value"] == pytest.approx(good_fit.loglik, abs=1e-4)
    for bad_value in (np.nan, -np.inf):
        row = rows(with_raw(good_fit, loglik=bad_value)).loc["finite_objective"]
        assert row["status"] == "error" and "not finite" in row["message"]


def test_hessian_positive_definite_ok_and_warning(good_fit):
    ok = rows(good_fit).loc["hessian_positive_definite"]
    assert ok["status"] == "ok" and good_fit._raw.hessian_min_eigenvalue > 0
    for eig in (-0.25, 0.0, np.nan):
        row = rows(with_raw(good_fit, hessian_min_eigenvalue=eig)).loc["hessian_positive_definite"]
        assert row["status"] == "warning", eig
        assert "not positive definite" in row["message"]


# --------------------------------------------------------------------------- standard errors


def test_standard_errors_finite_ok_and_warning(good_fit):
    ok = rows(good_fit).loc["standard_errors_finite"]
    assert ok["status"] == "ok"
    vcov = good_fit._raw.vcov.copy()
    vcov[1, 1] = -1.0
    fit = with_raw(good_fit, vcov=vcov)
    assert np.isnan(fit.std_errors.iloc[1])
    row = rows(fit).loc["standard_errors_finite"]
    assert row["status"] == "warning"
    assert row["value"] == "n_nonfinite=1"
    assert good_fit.params.index[1] in row["message"]


def test_standard_errors_inflated_synthetic(good_fit):
    ok = rows(good_fit).loc["standard_errors_inflated"]
    assert ok["status"] == "ok" and ok["value"].startswith("n_inflated=0;")
    vcov = good_fit._raw.vcov.copy()
    vcov[4, 4] = 1e6  # SE 1000: >= 50 and >= 1000 x median
    row = rows(with_raw(good_fit, vcov=vcov)).loc["standard_errors_inflated"]
    assert row["status"] == "note"
    assert row["value"].startswith("n_inflated=1;")
    assert good_fit.params.index[4] in row["message"]
    # large in absolute terms but < 1000 x median: not inflated
    vcov = good_fit._raw.vcov.copy()
    vcov[4, 4] = 60.0**2
    vcov[np.diag_indices(5)] = np.maximum(np.diag(vcov), 1.0)
    row = rows(with_raw(good_fit, vcov=vcov)).loc["standard_errors_inflated"]
    assert row["status"] == "ok"


def test_standard_errors_inflated_no_finite_se(good_fit):
    vcov = -np.eye(len(good_fit.params))
    row = rows(with_raw(good_fit, vcov=vcov)).loc["standard_errors_inflated"]
    assert row["status"] == "warning" and row["value"] == "no finite SE"


def test_standard_errors_inflated_real_boundary_fit(zero_het):
    """sigma at its zero boundary: its SE is huge next to the location SEs."""
    fit = fit_quiet(drm.Formula(MU), data=zero_het)
    table = rows(fit)
    assert table.loc["boundary", "status"] == "note"
    row = table.loc["standard_errors_inflated"]
    assert row["status"] == "note", row
    assert "sigma:(Intercept)" in row["message"]


# --------------------------------------------------------------------------- boundary


def test_boundary_zero_heterogeneity(zero_het, good_fit):
    fit = fit_quiet(drm.Formula("yi ~ 1 + meta_V(V=vi)"), data=zero_het)
    assert fit.converged
    row = rows(fit).loc["boundary"]
    assert row["status"] == "note"
    assert "sigma ran toward a zero SD" in row["message"]
    # logLik equals the fixed-effect (common-effect) model's, computed directly
    y = zero_het["yi"].to_numpy()
    v = zero_het["vi"].to_numpy()
    mu_hat = np.sum(y / v) / np.sum(1 / v)
    ll_fe = float(np.sum(stats.norm.logpdf(y, mu_hat, np.sqrt(v))))
    assert fit.loglik == pytest.approx(ll_fe, abs=1e-6)
    assert fit.params["mu:(Intercept)"] == pytest.approx(mu_hat, abs=1e-8)
    assert fit.std_errors["mu:(Intercept)"] == pytest.approx(np.sqrt(1 / np.sum(1 / v)), rel=1e-4)
    ok = rows(good_fit).loc["boundary"]
    assert ok["status"] == "ok" and ok["value"] == f"min_sigma={good_fit.sigma().min():.3g}"


def test_positive_scale_ok_and_error(good_fit):
    ok = rows(good_fit).loc["positive_scale"]
    assert ok["status"] == "ok"
    for bad in (0.0, np.nan, -1.0):
        sigma = good_fit._raw.sigma.copy()
        sigma[7] = bad
        row = rows(with_raw(good_fit, sigma=sigma)).loc["positive_scale"]
        assert row["status"] == "error", bad
        assert "zero, negative or non-finite" in row["message"]


# --------------------------------------------------------------------------- data rows


def test_dropped_rows_ok_and_note(dat, good_fit):
    ok = rows(good_fit).loc["dropped_rows"]
    assert ok["status"] == "ok" and ok["value"] == "nobs=80; dropped=0"
    d = dat.copy()
    d.loc[[4, 9], "yi"] = np.nan
    d.loc[30, "vi"] = np.nan
    fit = fit_quiet(drm.Formula(MU, SIGMA), data=d)
    row = rows(fit).loc["dropped_rows"]
    assert row["status"] == "note"
    assert row["value"] == "nobs=77; dropped=3"
    assert "4, 9, 30" in row["message"]
    assert "missing values in model variables: 2" in row["message"]
    assert "sampling variance `vi`: 1" in row["message"]


def test_fixed_effect_design_size(dat, good_fit):
    ok = rows(good_fit).loc["fixed_effect_design_size"]
    assert ok["status"] == "ok" and "max_cols=3; largest=mu" in ok["value"]
    d = dat.copy()
    d["f30"] = [f"L{i:02d}" for i in np.arange(80) % 30]
    fit = fit_quiet(drm.Formula("yi ~ f30 + meta_V(V=vi)"), data=d)
    assert fit.params.index.str.startswith("mu:").sum() == 30
    row = rows(fit).loc["fixed_effect_design_size"]
    assert row["status"] == "note"
    assert "max_cols=30; largest=mu" in row["value"]


def test_known_sampling_covariance_none_and_diagonal(dat, good_fit):
    ok = rows(good_fit).loc["known_sampling_covariance"]
    assert ok["status"] == "ok" and ok["value"].startswith("type=diagonal; n=80;")
    fit = fit_quiet(drm.Formula("yi ~ habitat + duration", SIGMA), data=dat)
    row = rows(fit).loc["known_sampling_covariance"]
    assert row["status"] == "ok" and row["value"] == "type=none"


@pytest.fixture(scope="module")
def dense_v_fits(dat):
    vi = dat["vi"].to_numpy()
    good = pair_v(vi, 0.5)
    deficient = pair_v(vi, 0.5)
    c = np.sqrt(vi[0] * vi[1])
    deficient[0, 1] = deficient[1, 0] = c  # perfectly correlated pair: rank 79
    ill = pair_v(vi, 0.5)
    ill[0, 1] = ill[1, 0] = (1 - 1e-9) * c  # full rank, condition ~ 1e9
    f = drm.Formula("yi ~ habitat + duration + meta_V(V=Vm)")
    return {name: fit_quiet(f, data=dat, env={"Vm": V})
            for name, V in (("good", good), ("deficient", deficient), ("ill", ill))}


def test_known_sampling_covariance_dense_ok(dense_v_fits):
    fit = dense_v_fits["good"]
    row = rows(fit).loc["known_sampling_covariance"]
    assert row["status"] == "ok"
    assert "type=dense; n=80" in row["value"] and "rank=80" in row["value"] and "blocks=40" in row["value"]


def test_known_sampling_covariance_rank_deficient(dense_v_fits):
    fit = dense_v_fits["deficient"]
    row = rows(fit).loc["known_sampling_covariance"]
    assert row["status"] == "warning"
    assert "rank-deficient (rank 79 of 80)" in row["message"]
    assert np.isfinite(fit.loglik)


def test_known_sampling_covariance_ill_conditioned(dense_v_fits):
    fit = dense_v_fits["ill"]
    kv = fit.design.known_v
    assert kv.rank == 80 and kv.condition > 1e8
    row = rows(fit).loc["known_sampling_covariance"]
    assert row["status"] == "warning"
    assert "ill-conditioned" in row["message"]


# --------------------------------------------------------------------------- random-effect rows


def test_sd_boundary_note_and_ok(re_null, re_real):
    null = fit_quiet(drm.Formula("yi ~ 1 + (1|g) + meta_V(V=vi)"), data=re_null)
    assert null.converged
    row = rows(null).loc["sd_boundary[g]"]
    assert row["status"] == "note" and "zero boundary" in row["message"]
    assert "sd(g)" in rows(null).loc["boundary", "message"]
    assert rows(null).loc["boundary", "status"] == "note"
    real = fit_quiet(drm.Formula("yi ~ 1 + (1|g) + meta_V(V=vi)"), data=re_real)
    row = rows(real).loc["sd_boundary[g]"]
    assert row["status"] == "ok", row
    sd = real.sd("g")["(Intercept)"]
    assert row["value"] == f"min_sd={sd.min():.3g}; max_sd={sd.max():.3g}"
    assert sd.min() > 0.1


def test_level_replication_ok_and_note(re_null, re_real):
    null = fit_quiet(drm.Formula("yi ~ 1 + (1|g) + meta_V(V=vi)"), data=re_null)
    ok = rows(null).loc["level_replication[g]"]
    assert ok["status"] == "ok" and ok["value"] == "levels=20; singletons=0; min_rows=4"
    real = fit_quiet(drm.Formula("yi ~ 1 + (1|g) + meta_V(V=vi)"), data=re_real)
    note = rows(real).loc["level_replication[g]"]
    assert note["status"] == "note"
    assert note["value"] == "levels=21; singletons=1; min_rows=1"
    assert "1 level(s) of g have fewer than 2 rows" in note["message"]


# --------------------------------------------------------------------------- random-effect design (issue 14)

WEAK_DESIGN_MESSAGE = ("At least one random-slope or correlated random-effect block has weak within-group "
                       "design variation; interpret slope SDs or correlations cautiously.")


@pytest.fixture(scope="module")
def slope_data(dat) -> pd.DataFrame:
    """20 groups of 4 rows; x_const is constant within every group, x_vary is not."""
    rng = np.random.default_rng(5)
    g = np.arange(80) // 4
    x_vary = dat["duration"].to_numpy()
    x_const = np.repeat(rng.normal(size=20), 4)
    b0, b1 = rng.normal(0, 0.3, 20), rng.normal(0, 0.2, 20)
    y = b0[g] + b1[g] * x_vary + rng.normal(0, np.sqrt(dat["vi"].to_numpy() + 0.1**2))
    return pd.DataFrame({"yi": y, "vi": dat["vi"].to_numpy(), "g": g, "x_vary": x_vary, "x_const": x_const})


def fit_any(*args, **kwargs):
    """A fit whose convergence does not matter to the test (check() rows about the design)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", drm.ConvergenceWarning)
        return drm.fit(*args, **kwargs)


def test_mu_random_effect_design_note_when_slope_constant_within_levels(slope_data):
    fit = fit_any(drm.Formula("yi ~ x_const + (1 + x_const | g) + meta_V(V=vi)"), data=slope_data)
    row = rows(fit).loc["mu_random_effect_design"]
    # independent count: distinct x within each level, and the rank of [1, x] within each level
    n_unique = slope_data.groupby("g")["x_const"].nunique().min()
    ranks = slope_data.groupby("g")["x_const"].apply(
        lambda x: np.linalg.matrix_rank(np.column_stack([np.ones(len(x)), x.to_numpy()])))
    assert n_unique == 1 and ranks.min() == 1
    assert row["status"] == "note"
    assert row["value"] == "min_unique=g|x_const=1; min_rank=g=1/2"
    assert row["message"] == WEAK_DESIGN_MESSAGE


def test_mu_random_effect_design_ok_when_slope_varies(slope_data):
    fit = fit_any(drm.Formula("yi ~ x_vary + (1 + x_vary | g) + meta_V(V=vi)"), data=slope_data)
    row = rows(fit).loc["mu_random_effect_design"]
    assert slope_data.groupby("g")["x_vary"].nunique().min() == 4
    assert row["status"] == "ok"
    assert row["value"] == "min_unique=g|x_vary=4; min_rank=g=2/2"


def test_mu_random_effect_design_independent_slopes_and_singleton_level(slope_data):
    """(1 + x || g): only the slope count (no correlated block); a level with one row has
    a single distinct value, so the row is a note."""
    d = slope_data.iloc[3:].copy()  # level 0 keeps one row
    fit = fit_any(drm.Formula("yi ~ x_vary + (1 + x_vary || g) + meta_V(V=vi)"), data=d)
    row = rows(fit).loc["mu_random_effect_design"]
    assert row["value"] == "min_unique=g|x_vary=1"
    assert row["status"] == "note" and row["message"] == WEAK_DESIGN_MESSAGE
    full = fit_any(drm.Formula("yi ~ x_vary + (0 + x_vary | g) + meta_V(V=vi)"), data=slope_data)
    row = rows(full).loc["mu_random_effect_design"]
    assert row["status"] == "ok" and row["value"] == "min_unique=g|x_vary=4"


def test_mu_random_effect_design_absent_without_slopes(re_real):
    fit = fit_quiet(drm.Formula("yi ~ 1 + (1|g) + meta_V(V=vi)"), data=re_real)
    assert "mu_random_effect_design" not in rows(fit).index


# --------------------------------------------------------------------------- dense V scale note (issue 14)


def one_block_v(vi: np.ndarray, deficient: bool = False) -> np.ndarray:
    """Compound-symmetric correlation 0.3 over all rows (one block); ``deficient``: rows 0
    and 1 perfectly correlated (rank n - 1)."""
    n = len(vi)
    R = 0.3 * np.ones((n, n)) + 0.7 * np.eye(n)
    if deficient:
        R[0, 1] = R[1, 0] = 1.0
    s = np.sqrt(vi)
    return s[:, None] * R * s[None, :]


@pytest.fixture(scope="module")
def one_block_fits(dat):
    f = drm.Formula("yi ~ habitat + duration + meta_V(V=Vm)")
    vi = dat["vi"].to_numpy()
    return {name: fit_any(f, data=dat, env={"Vm": one_block_v(vi, name == "deficient")})
            for name in ("full", "deficient")}


def test_known_sampling_covariance_one_block_dense_is_a_note(one_block_fits):
    fit = one_block_fits["full"]
    kv = fit.design.known_v
    assert len(kv.blocks) == 1 and kv.rank == 80 and kv.condition < 1e8
    row = rows(fit).loc["known_sampling_covariance"]
    assert row["status"] == "note"
    assert "type=dense; n=80" in row["value"] and "blocks=1" in row["value"]
    assert "dense Cholesky" in row["message"] and "meta_V(V = Vm)" in row["message"]


def test_known_sampling_covariance_one_block_rank_deficient_stays_warning(one_block_fits):
    fit = one_block_fits["deficient"]
    assert len(fit.design.known_v.blocks) == 1
    row = rows(fit).loc["known_sampling_covariance"]
    assert row["status"] == "warning"
    assert "rank-deficient (rank 79 of 80)" in row["message"]


def test_bivariate_known_sampling_covariance_status():
    """Block-diagonal by study: ok; a V that correlates studies: note (warning when singular)."""
    rng = np.random.default_rng(2)
    n = 12
    data = pd.DataFrame({"y1": rng.normal(size=n), "y2": rng.normal(size=n)})
    V = drm.meta_vcov_bivariate(np.full(n, 0.05), np.full(n, 0.08), cor12=0.5).toarray()
    f = drm.Formula(mu1="y1 ~ 1 + meta_V(V=V)", mu2="y2 ~ 1")
    pair = fit_any(f, data=data, env={"V": V})
    assert rows(pair).loc["known_sampling_covariance", "status"] == "ok"
    cross = V.copy()
    cross[0, 2] = cross[2, 0] = 0.3 * 0.05
    dense = fit_any(f, data=data, env={"V": cross})
    row = rows(dense).loc["known_sampling_covariance"]
    assert row["status"] == "note" and "correlates different studies" in row["message"]
    singular = drm.meta_vcov_bivariate(np.full(n, 0.05), np.full(n, 0.08)).toarray()
    singular[0, 2] = singular[2, 0] = 0.05  # y1 of studies 0 and 1 perfectly correlated
    bad = fit_any(f, data=data, env={"V": singular})
    row = rows(bad).loc["known_sampling_covariance"]
    assert row["status"] == "warning" and "rank=23" in row["value"]
