"""Multilevel robust models: a Gaussian (1|study) beside the t or mixture residual, the study
effect integrated by adaptive Gauss-Hermite quadrature, checked against dense scipy
integration on a small case."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

import drmpy as drm
from drmpy.model.design import build_design
from drmpy.robust.likelihood import loglik
from drmpy.robust.program import prepare_robust, robust_formula

FORMULA = drm.Formula("yi ~ x + (1|study) + meta_V(V=vi)", "sd(study) ~ 1")


@pytest.fixture(scope="module")
def small():
    """Four studies with 1 to 3 effect sizes, one of them an outlier."""
    return pd.DataFrame({
        "study": ["a", "a", "b", "b", "b", "c", "d", "d"],
        "yi": [0.21, 0.35, -0.10, 0.05, 1.90, 0.40, 0.12, 0.30],
        "vi": [0.02, 0.05, 0.03, 0.01, 0.04, 0.06, 0.02, 0.03],
        "x": [0.0, 1.0, 0.5, -0.3, 0.2, 1.2, -1.0, 0.4],
    })


def oracle_loglik(data, mu, sigma, tau, row_logpdf):
    """sum over studies of log integral N(b; 0, tau^2) prod_i f(y_i - mu_i - b) db (quad)."""
    total = 0.0
    for _, rows in data.assign(mu=mu).groupby("study", sort=False):
        r, v = (rows["yi"] - rows["mu"]).to_numpy(), rows["vi"].to_numpy()

        def integrand(b):
            return np.exp(stats.norm.logpdf(b, scale=tau) + sum(row_logpdf(ri - b, vi) for ri, vi in zip(r, v)))

        pieces = sorted({-8 * tau, 0.0, 8 * tau, *r})
        edges = [-np.inf, *pieces, np.inf]
        total += np.log(sum(integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-11, limit=200)[0]
                            for a, b in zip(edges[:-1], edges[1:]) if a < b))
    return total


def _ours(data, family, theta):
    design = build_design(robust_formula(FORMULA, family), data)
    arrays, layout = prepare_robust(design, family)
    return float(loglik(jnp.asarray(theta, dtype=jnp.float64), arrays, layout, family))


def test_mixture_with_study_effect_matches_quad(small):
    b0, b1, sigma, s_out, p, tau = 0.2, 0.05, 0.15, 0.9, 0.1, 0.25
    theta = [b0, b1, np.log(sigma), np.log(s_out), np.log(p / (1 - p)), np.log(tau)]

    def row(r, v):
        return np.log((1 - p) * stats.norm.pdf(r, scale=np.sqrt(v + sigma**2))
                      + p * stats.norm.pdf(r, scale=np.sqrt(v + s_out**2)))

    want = oracle_loglik(small, b0 + b1 * small["x"], sigma, tau, row)
    assert _ours(small, drm.normal_mixture(), theta) == pytest.approx(want, rel=1e-10)


@pytest.mark.slow
def test_student_with_study_effect_matches_nested_quad(small):
    b0, b1, sigma, nu, tau = 0.2, 0.05, 0.1, 2.5, 0.3
    theta = [b0, b1, np.log(sigma), np.log(nu), np.log(tau)]

    theta_grid = np.linspace(-np.pi / 2, np.pi / 2, 40001)[1:-1]
    tan = np.tan(theta_grid)
    t_part = stats.t.pdf(tan, nu) / np.cos(theta_grid) ** 2  # u = sigma tan(theta): du = sigma sec^2
    step = theta_grid[1] - theta_grid[0]

    def row(r, v):  # the t + normal marginal, integrated over u (independent of drmpy's quadrature)
        return np.log(np.sum(t_part * stats.norm.pdf(r - sigma * tan, scale=np.sqrt(v))) * step)

    want = oracle_loglik(small, b0 + b1 * small["x"], sigma, tau, row)
    assert _ours(small, drm.student(), theta) == pytest.approx(want, rel=1e-9)


def test_gaussian_family_terms_are_refused(small):
    with pytest.raises(drm.DrmError, match="random intercept"):
        drm.fit(drm.Formula("yi ~ 1 + (1 + x|study) + meta_V(V=vi)"), small, family=drm.student())


@pytest.mark.slow
def test_multilevel_t_fit_beats_or_equals_the_normal_fit():
    rng = np.random.default_rng(11)
    k = 12
    study = np.repeat(np.arange(k), 3)
    b = rng.normal(0, 0.3, k)[study]
    vi = rng.uniform(0.01, 0.05, 3 * k)
    yi = 0.4 + b + 0.1 * rng.standard_t(2.0, 3 * k) + rng.normal(0, np.sqrt(vi))
    data = pd.DataFrame({"yi": yi, "vi": vi, "study": study.astype(str), "x": rng.normal(size=3 * k)})
    formula = drm.Formula("yi ~ 1 + (1|study) + meta_V(V=vi)")
    t_fit = drm.fit(formula, data, family=drm.student())
    normal = drm.fit(formula, data)
    assert t_fit.converged
    assert list(t_fit.params.index) == ["mu:(Intercept)", "sigma:(Intercept)", "nu:(Intercept)",
                                        "sd(study):(Intercept)"]
    assert t_fit.loglik >= normal.loglik - 1e-9
    with pytest.raises(drm.DrmError, match="student"):
        t_fit.ranef()
    with pytest.raises(drm.DrmError, match="outlier_probabilities\\(\\) is for family normal_mixture"):
        t_fit.outlier_probabilities()


def test_outlier_probabilities_with_a_study_effect_match_quad(small):
    """P(row i from the outlier component | all rows of its study), at the estimates: the ratio
    of two quad integrals over the study effect b (numerator: row i's outlier component in
    place of its mixture density)."""
    fit = drm.fit(FORMULA, small, family=drm.normal_mixture())
    assert fit.converged
    got = fit.outlier_probabilities()
    values = {d: fit.dpar_values(d).to_numpy() for d in ("mu", "sigma", "sigma_out", "p_out")}
    tau = float(fit.sd("study").iloc[0, 0])
    r = small["yi"].to_numpy() - values["mu"]
    v = small["vi"].to_numpy()
    s, so, p = values["sigma"], values["sigma_out"], values["p_out"]

    def main(i, x):
        return (1 - p[i]) * stats.norm.pdf(x, scale=np.sqrt(v[i] + s[i] ** 2))

    def out(i, x):
        return p[i] * stats.norm.pdf(x, scale=np.sqrt(v[i] + so[i] ** 2))

    want = np.empty(len(small))
    for _, rows in small.groupby("study", sort=False):
        idx = rows.index.to_numpy()
        edges = [-np.inf, *sorted({-8 * tau, 0.0, 8 * tau, *r[idx]}), np.inf]

        def integral(f):
            return sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-11, limit=200)[0]
                       for a, b in zip(edges[:-1], edges[1:]) if a < b)

        def joint(b, swap=None):
            dens = [out(j, r[j] - b) if j == swap else main(j, r[j] - b) + out(j, r[j] - b) for j in idx]
            return stats.norm.pdf(b, scale=tau) * np.prod(dens)

        total = integral(joint)
        for i in idx:
            want[i] = integral(lambda b, i=i: joint(b, swap=i)) / total
    np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-7, atol=1e-12)
    assert got.idxmax() == 4  # the 1.90 in study b
