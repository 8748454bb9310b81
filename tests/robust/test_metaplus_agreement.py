"""Agreement with R's metaplus (issue 26 done-means 1) on its vignette data, cdp and mag.

Parameterisation: our ``sigma`` is metaplus's ``sqrt(tau2)`` (for the t model the scale of the
t random effect, not its SD), ``nu`` is ``1/vinv``, ``sigma_out`` is ``sqrt(tau2out)`` and
``p_out`` metaplus's outlier probability (``lpoutlier`` = logit(p_out)).  Numbers: metaplus
1.0-8 vignette (printed digits).

metaplus's t log-likelihood, -4.058334, is below the exact maximum: R's integrate() over
``y - mu +- 12 sei`` has no break point at the spike of the t density (scale 0.0067, nu 0.49)
and under-estimates each study's integral.  The exact log-likelihood at metaplus's own printed
estimates is -4.057684 (ours at our estimates: -4.0576834), and the same quadrature done the
metaplus way (scipy quad, no break point) reproduces -4.058334: the test below shows both.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

import drmpy as drm
from drmpy.families.student_marginal import student_normal_logpdf

FORMULA = "yi ~ 1 + meta_V(V=vi)"


def test_cdp_normal(cdp_normal):
    fit = cdp_normal
    assert round(fit.params["mu:(Intercept)"], 5) == 0.38944
    assert round(float(np.exp(2 * fit.params["sigma:(Intercept)"])), 5) == 0.14666
    assert round(fit.loglik, 6) == -8.198544


def test_cdp_student(cdp_t):
    assert cdp_t.converged and not cdp_t.at_boundary
    p = cdp_t.params
    assert list(p.index) == ["mu:(Intercept)", "sigma:(Intercept)", "nu:(Intercept)"]
    assert abs(p["mu:(Intercept)"] - 0.1945) < 1e-4  # metaplus 0.1945 (its optimum of a noisier likelihood)
    assert round(float(np.exp(2 * p["sigma:(Intercept)"])), 6) == pytest.approx(4.504e-05, abs=0.03e-05)
    assert float(np.exp(-p["nu:(Intercept)"])) == pytest.approx(2.023, abs=0.002)  # vinv
    # the exact maximum is above metaplus's -4.058334 (see the module docstring)
    assert round(cdp_t.loglik, 6) == -4.057683
    lrt = cdp_t.lrt_normal()
    assert round(lrt["statistic"], 1) == 8.3  # metaplus's LRT 8.3


def test_metaplus_t_loglik_is_its_quadrature(cdp):
    """At metaplus's printed estimates: the exact log-likelihood is -4.057684; quad over
    y - mu +- 12 sei without a break point at the t spike (R integrate's way) gives -4.058334."""
    mu, tau2, vinv = 0.1945, 4.504e-05, 2.023
    y, v = cdp["yi"].to_numpy(), cdp["vi"].to_numpy()
    exact = float(np.sum(student_normal_logpdf(y - mu, v, np.full(10, np.sqrt(tau2)), np.full(10, 1 / vinv))))
    assert round(exact, 6) == -4.057684
    total = 0.0
    for yi, s in zip(y, np.sqrt(v)):
        c = yi - mu
        def f(u):
            return stats.norm.pdf(u, c, s) * stats.t.pdf(u / np.sqrt(tau2), 1 / vinv) / np.sqrt(tau2)
        total += np.log(integrate.quad(f, c - 12 * s, c + 12 * s, limit=300)[0])
    assert round(total, 6) == -4.058334


def test_cdp_mixture(cdp_mix):
    assert cdp_mix.converged
    p = cdp_mix.params
    assert list(p.index) == ["mu:(Intercept)", "sigma:(Intercept)", "sigma_out:(Intercept)", "p_out:(Intercept)"]
    assert round(p["mu:(Intercept)"], 4) == 0.1910
    assert round(cdp_mix.loglik, 6) == -3.007145
    assert round(float(np.exp(2 * p["sigma_out:(Intercept)"])), 4) == 3.1558  # tau2out
    assert round(float(np.exp(2 * p["sigma:(Intercept)"])), 4) == 0.0  # tau2 0.0000
    p_out = float(1 / (1 + np.exp(-p["p_out:(Intercept)"])))
    assert round(p_out, 4) == 0.1237


def test_cdp_outlier_probabilities(cdp_mix, cdp):
    """Bonavita 1983 (yi 2.22, five SDs above the rest) is the outlier, probability 0.9997.  The
    vignette's text names Senin 2003, but at the vignette's own estimates (mu 0.1910, tau2 0,
    tau2out 3.1558, p 0.1237) Senin 2003 (yi 0.15, sei 0.097, next to mu) has probability 0.008;
    the vignette's Figure 4 labels Bonavita 1983 among its studies."""
    probs = cdp_mix.outlier_probabilities()
    assert probs.index.equals(cdp.index)
    assert cdp.loc[probs.idxmax(), "study"] == "Bonavita 1983"  # metaplus's outlier
    assert probs.max() > 0.999 and probs.drop(probs.idxmax()).max() < 0.05
    # the mean posterior probability is the fitted p_out (an EM fixed point of the ML fit)
    assert probs.mean() == pytest.approx(float(cdp_mix.dpar_values("p_out").iloc[0]), abs=1e-6)


def test_mag_student_collapses_to_normal():
    mag = drm.datasets.mag()
    fit = drm.fit(FORMULA, mag, family=drm.student())
    normal = drm.fit(FORMULA, mag)
    assert fit.at_boundary and fit.params["nu:(Intercept)"] == np.inf
    assert round(fit.params["mu:(Intercept)"], 4) == -0.7463  # metaplus: muhat -0.7463, vinv 0
    assert round(float(np.exp(2 * fit.params["sigma:(Intercept)"])), 4) == 0.2540
    assert fit.loglik == normal.loglik
    check = fit.check().set_index("check")
    assert check.loc["nu_boundary", "value"] == "1/nu=0"
    assert "1/nu = 0" in str(fit.summary())
    assert fit.lrt_normal()["statistic"] == 0.0 and fit.lrt_normal()["p_value"] == 1.0


def test_mag_mixture_collapses_to_normal():
    """metaplus: tau2 0.2539984, tau2out 0.2539985, logLik -19.684594 (the normal model's)."""
    fit = drm.fit(FORMULA, drm.datasets.mag(), family=drm.normal_mixture())
    assert round(fit.loglik, 5) == -19.68459 and abs(fit.loglik - fit.normal_loglik) < 1e-6
    assert round(fit.params["mu:(Intercept)"], 4) == -0.7463
    for dpar in ("sigma", "sigma_out"):
        assert round(float(np.exp(2 * fit.params[f"{dpar}:(Intercept)"])), 4) == 0.2540
    assert fit.check().set_index("check").loc["mixture_collapsed", "value"] == "sigma_out=sigma"
