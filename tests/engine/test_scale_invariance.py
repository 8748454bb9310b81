"""Scale predictors on awkward scales: the optimiser sees standardised designs (engine.scaling),
so results do not depend on the units of a sigma, sd(g) or rho12 predictor.

metafor references: tests/reference_extra/scale/make_scale.R (its output is quoted there).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.engine.scaling import column_standardizer, grouped_standardizers

REF = Path(__file__).parents[1] / "reference"
BCG = pd.read_csv(REF / "bcg_ablat_ml" / "data.csv")
SCALES = (1e-6, 1e6)


def _fit(formula: drm.Formula, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", drm.ConvergenceWarning)
        return drm.fit(formula, data, **kw)


def _statuses(fit) -> pd.Series:
    """check() statuses, without ``standard_errors_inflated``: drmTMB's absolute SE threshold
    (>= 50) is in the coefficient's units, which a rescaled predictor changes by design."""
    return fit.check().set_index("check")["status"].drop("standard_errors_inflated")


def _assert_rescaled(base, other, scaled: dict[str, float], rel=1e-6):
    """``other`` is ``base`` with each named coefficient's predictor multiplied by c: that
    coefficient (and its SE) divided by c, every other number unchanged."""
    assert other.converged and base.converged
    assert other.loglik == pytest.approx(base.loglik, rel=1e-9, abs=1e-9)
    factor = pd.Series(1.0, index=base.params.index)
    for name, c in scaled.items():
        factor[name] = 1.0 / c
    np.testing.assert_allclose(other.params.to_numpy(), (base.params * factor).to_numpy(), rtol=rel, atol=0)
    np.testing.assert_allclose(other.std_errors.to_numpy(), (base.std_errors * factor).to_numpy(), rtol=rel)
    cov = other.vcov().to_numpy() / np.outer(factor, factor)
    np.testing.assert_allclose(cov, base.vcov().to_numpy(), rtol=rel, atol=1e-12 * np.abs(cov).max())
    pd.testing.assert_series_equal(_statuses(other), _statuses(base))


# ------------------------------------------------------------------------------------------
# the two fits of issue 22 item 5, against metafor


def test_sigma_year_times_10_converges_to_metafor_optimum():
    fit = _fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ I(year*10)"), BCG)
    assert fit.converged and fit.iterations < 50
    assert fit.loglik == pytest.approx(-7.66034859091, abs=1e-8)
    np.testing.assert_allclose(fit.params.to_numpy(),
                               [0.3448623054146, -0.0317046197244, 49.62603379684973, -0.00262104287673], rtol=1e-5)
    np.testing.assert_allclose(fit.std_errors.iloc[2:].to_numpy(), [243.0874606013409, 0.0124276039019], rtol=1e-5)


@pytest.mark.parametrize("method, slope, loglik", [
    ("ML", 0.0192966304936, -7.53929025009),
    ("REML", -0.000365070119966, None),
])
def test_sigma_slope_times_1e_minus_6_reaches_the_optimum(method, slope, loglik):
    fit = _fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ I(ablat*1e-6)"), BCG, method=method)
    assert fit.converged
    assert fit.params["sigma:I(ablat * 1e-06)"] == pytest.approx(slope * 1e6, rel=1e-5)
    if loglik is not None:
        assert fit.loglik == pytest.approx(loglik, abs=1e-8)
    gradient = fit.check().set_index("check").loc["fixed_gradient", "status"]
    assert gradient == "ok"


# ------------------------------------------------------------------------------------------
# invariance to the units of a predictor


@pytest.fixture(scope="module", params=["ML", "REML"])
def bcg_fits(request):
    data = BCG.assign(**{f"x{i}": BCG["ablat"] * c for i, c in enumerate(SCALES)})
    fits = {c: _fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", f"sigma ~ {name}"), data, method=request.param)
            for c, name in zip((1.0,) + SCALES, ("ablat", "x0", "x1"))}
    return fits


@pytest.mark.parametrize("c", SCALES)
def test_sigma_predictor_units_do_not_matter(bcg_fits, c):
    base, other = bcg_fits[1.0], bcg_fits[c]
    name = "sigma:x0" if c == SCALES[0] else "sigma:x1"
    _assert_rescaled(base, _renamed(other, name, "sigma:ablat"), {"sigma:ablat": c})


def _renamed(fit, old: str, new: str):
    """A view of ``fit`` whose coefficient ``old`` is called ``new`` (params, SEs, vcov)."""

    class Renamed:
        converged = fit.converged
        loglik = fit.loglik
        params = fit.params.rename({old: new})
        std_errors = fit.std_errors.rename({old: new})

        @staticmethod
        def vcov():
            return fit.vcov().rename(index={old: new}, columns={old: new})

        @staticmethod
        def check():
            return fit.check()

    return Renamed


def _habitat_data():
    data = pd.read_csv(REF / "sd_study_habitat_ml" / "data.csv")
    # a numeric study-level predictor of sd(study) and a row-level one of sigma
    data["s"] = np.cos(data["study"].astype(float))
    return data


@pytest.mark.parametrize("c", SCALES)
def test_sd_and_sigma_predictor_units_do_not_matter(c):
    data = _habitat_data()
    data["s_c"] = data["s"] * c
    data["t_c"] = data["treatment"] * c
    base = _fit(drm.Formula("yi ~ treatment + (1|study) + meta_V(V=vi)", "sigma ~ treatment", "sd(study) ~ s"),
                data)
    other = _fit(drm.Formula("yi ~ treatment + (1|study) + meta_V(V=vi)", "sigma ~ t_c", "sd(study) ~ s_c"),
                 data)
    other = _renamed(_renamed(other, "sigma:t_c", "sigma:treatment"), "sd(study):s_c", "sd(study):s")
    _assert_rescaled(base, other, {"sigma:treatment": c, "sd(study):s": c})


def _bivariate_data(n=40, seed=3):
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=n), rng.normal(size=n)
    v1, v2 = rng.uniform(0.01, 0.1, n), rng.uniform(0.01, 0.1, n)
    s1, s2 = np.exp(-1.0 + 0.4 * z), np.exp(-0.8)
    rho = 0.9 * np.tanh(0.3 + 0.6 * x)
    y = np.empty((n, 2))
    for i in range(n):
        c12 = rho[i] * s1[i] * s2
        y[i] = rng.multivariate_normal([0.2, -0.1], [[v1[i] + s1[i] ** 2, c12], [c12, v2[i] + s2**2]])
    data = pd.DataFrame({"y1": y[:, 0], "y2": y[:, 1], "x": x, "z": z})
    return data, drm.meta_vcov_bivariate(v1, v2).toarray()


@pytest.mark.parametrize("c", SCALES)
def test_bivariate_sigma_and_rho12_predictor_units_do_not_matter(c):
    data, V = _bivariate_data()
    data["x_c"], data["z_c"] = data["x"] * c, data["z"] * c
    base = _fit(drm.Formula(mu1="y1 ~ 1 + meta_V(V=V)", mu2="y2 ~ 1", sigma1="~ z", sigma2="~ z", rho12="~ x"),
                data, env={"V": V})
    other = _fit(drm.Formula(mu1="y1 ~ 1 + meta_V(V=V)", mu2="y2 ~ 1", sigma1="~ z_c", sigma2="~ z_c",
                             rho12="~ x_c"), data, env={"V": V})
    for k in ("sigma1", "sigma2"):
        other = _renamed(other, f"{k}:z_c", f"{k}:z")
    other = _renamed(other, "rho12:x_c", "rho12:x")
    _assert_rescaled(base, other, {"sigma1:z": c, "sigma2:z": c, "rho12:x": c})


# ------------------------------------------------------------------------------------------
# the map itself


def test_column_standardizer_centres_and_scales_and_keeps_the_span():
    rng = np.random.default_rng(0)
    x = 1e4 + 50 * rng.normal(size=30)
    M = np.column_stack([np.ones(30), x, np.full(30, 3.0)])
    B = column_standardizer(M, np.ones(30, bool))
    S = M @ B
    np.testing.assert_allclose(S[:, 1].mean(), 0, atol=1e-9)
    np.testing.assert_allclose(S[:, 1].std(), 1, rtol=1e-12)
    np.testing.assert_array_equal(S[:, [0, 2]], M[:, [0, 2]])  # intercept and constant column kept
    # no intercept column: scaled only (centring would change the span)
    B = column_standardizer(M[:, 1:2], np.ones(30, bool))
    np.testing.assert_allclose(np.sqrt(np.mean((M[:, 1:2] @ B) ** 2)), 1.0)
    # rows that are not used (padding) do not enter the moments
    used = np.r_[np.ones(20, bool), np.zeros(10, bool)]
    B = column_standardizer(M, used)
    np.testing.assert_allclose((M @ B)[used, 1].std(), 1, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# fit_batch: the same standardisation in the pool of diagonal fits


def test_fit_batch_matches_single_fits_with_poorly_scaled_sigma_predictors():
    rng = np.random.default_rng(1)
    other = BCG.assign(yi=BCG["yi"] + rng.normal(0, 0.3, len(BCG)))
    data = pd.concat([BCG.assign(g="a"), other.assign(g="b")], ignore_index=True)
    for sigma in ("sigma ~ I(year*10)", "sigma ~ I(ablat*1e-6)"):
        formula = drm.Formula("yi ~ ablat + meta_V(V=vi)", sigma)
        batch = drm.fit_batch(formula, data, by="g", progress=False)
        for g, d in (("a", BCG), ("b", other)):
            single = _fit(formula, d)
            rows = batch[batch["g"] == g]
            assert rows["converged"].all() and single.converged
            assert rows["loglik"].iloc[0] == pytest.approx(single.loglik, abs=1e-8)
            np.testing.assert_allclose(rows["estimate"], single.params, rtol=1e-6)
            np.testing.assert_allclose(rows["std_error"], single.std_errors, rtol=1e-6)


def test_grouped_standardizers_equal_each_groups_own():
    rng = np.random.default_rng(2)
    Z = np.column_stack([np.ones(30), 1e8 + 1e2 * rng.normal(size=30), rng.integers(0, 2, 30)])
    sizes = np.array([10, 0, 20])
    B = grouped_standardizers(Z, sizes)
    np.testing.assert_allclose(B[0], column_standardizer(Z[:10], np.ones(10, bool)), rtol=1e-12)
    np.testing.assert_allclose(B[2], column_standardizer(Z[10:], np.ones(20, bool)), rtol=1e-12)
    np.testing.assert_array_equal(B[1], np.eye(3))  # an empty group
    no_intercept = grouped_standardizers(Z[:, 1:], sizes)
    np.testing.assert_allclose(no_intercept[2], column_standardizer(Z[10:, 1:], np.ones(20, bool)), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# the location design: profiled in closed form (GLS), invariant without standardisation


@pytest.mark.parametrize("c", SCALES)
def test_mu_predictor_units_do_not_matter(c):
    data = BCG.assign(x=BCG["ablat"] * c)
    base = _fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ ablat"), data)
    other = _renamed(_fit(drm.Formula("yi ~ x + meta_V(V=vi)", "sigma ~ ablat"), data), "mu:x", "mu:ablat")
    _assert_rescaled(base, other, {"mu:ablat": c})
    # REML (drmTMB's convention, without metafor's 1/2 log|X'X|): the criterion moves by -log|c|
    reml = _fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ ablat"), data, method="REML")
    reml_c = _fit(drm.Formula("yi ~ x + meta_V(V=vi)", "sigma ~ ablat"), data, method="REML")
    assert reml_c.loglik == pytest.approx(reml.loglik - np.log(c), abs=1e-8)
    np.testing.assert_allclose(reml_c.params.iloc[2:], reml.params.iloc[2:], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# the parametric bootstrap refits with the same standardisation


@pytest.mark.slow
def test_parametric_bootstrap_is_invariant_to_sigma_predictor_units():
    data = BCG.assign(x=BCG["ablat"] * 1e-6)
    base = _fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ ablat"), data)
    other = _fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ x"), data)
    a = drm.parametric_bootstrap(base, 32, seed=3, progress=False)
    b = drm.parametric_bootstrap(other, 32, seed=3, progress=False)
    assert (a["n_converged"] == 32).all() and (b["n_converged"] == 32).all()
    factor = np.array([1.0, 1.0, 1.0, 1e6])
    for col in ("boot_mean", "boot_se", "lower", "upper"):
        np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy() * factor, rtol=1e-5, err_msg=col)


# ------------------------------------------------------------------------------------------
# profile likelihood: the inner optimisations work in the standardised coordinates


def test_profile_interval_of_the_sigma_intercept_ignores_the_units_of_its_slope():
    data = BCG.assign(x=BCG["ablat"] * 1e-6)
    base = _fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ ablat"), data)
    other = _fit(drm.Formula("yi ~ ablat + meta_V(V=vi)", "sigma ~ x"), data)
    params = ["sigma:(Intercept)", "mu:ablat"]
    a = base.conf_int(method="profile", params=params)
    b = other.conf_int(method="profile", params=params)
    assert list(b["status"].str[:4]) == list(a["status"].str[:4])  # "ok", "open ..." alike
    np.testing.assert_allclose(b[["lower", "upper"]].to_numpy(), a[["lower", "upper"]].to_numpy(), rtol=1e-5)
    assert np.isfinite(a.loc["sigma:(Intercept)", "upper"])
