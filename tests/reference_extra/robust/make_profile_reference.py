"""Profile-likelihood 95% intervals for mu on the cdp data, computed without drmpy's likelihood
code: scipy optimisers (Nelder-Mead then BFGS, from a grid of starts) maximise the other
parameters at each fixed mu, and brentq finds where ``2 (l_hat - l_p(mu)) = qchisq(0.95, 1)``.

* normal (ML): ``y_i ~ N(mu, v_i + tau^2)``;
* normal mixture: ``(1 - p) N(mu, v_i + sigma^2) + p N(mu, v_i + sigma_out^2)`` (closed form);
* t: the t-plus-normal density as an integral over the sampling error, ``e = r - sigma sinh(s)``,
  by a fine trapezoid in ``s`` (checked against the ``scipy.integrate.quad`` oracle of
  tests/robust/test_student_marginal.py at six points from the t estimate to far corners:
  ``t_grid_check`` in the output).

metaplus 1.0-8's own intervals (robust_metaplus.json) come from bbmle's interpolated profile
and differ from these by up to 5e-4; this file is the exact reference the tests use.

    python3 tests/reference_extra/robust/make_profile_reference.py   # about 9 minutes
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "tests" / "robust"))

from test_student_marginal import oracle_logpdf  # noqa: E402

CDP = pd.read_csv(ROOT / "src" / "drmpy" / "datasets" / "cdp.csv")
Y = CDP["yi"].to_numpy()
V = CDP["sei"].to_numpy() ** 2
CUT = float(stats.chi2.ppf(0.95, 1))


def nll_normal(par, mu):
    return -np.sum(stats.norm.logpdf(Y, mu, np.sqrt(V + np.exp(2 * par[0]))))


def nll_mixture(par, mu):
    ls, lo, lp = par
    a = special.log_expit(-lp) + stats.norm.logpdf(Y, mu, np.sqrt(V + np.exp(2 * ls)))
    b = special.log_expit(lp) + stats.norm.logpdf(Y, mu, np.sqrt(V + np.exp(2 * lo)))
    return -np.sum(np.logaddexp(a, b))


# the t marginal as an integral over the sampling error e, centred where the t factor peaks
# (u = r - e = 0) with e = r - sigma sinh(s): the t factor is smooth in s at every scale of
# sigma, and the normal factor is resolved out to 12 sampling SDs (its width in s is at least
# sqrt(v) / (|r| + 12 sqrt(v))); 8001 trapezoid nodes.  Checked against the quad oracle at the t
# fit and at far corners (see main).
_S = np.linspace(-1.0, 1.0, 8001)


def t_logpdf_grid(r: np.ndarray, v: np.ndarray, sigma: float, nu: float) -> np.ndarray:
    reach = np.arcsinh((np.abs(r) + 12.0 * np.sqrt(v)) / sigma)  # per row
    s = _S[None, :] * reach[:, None]
    step = reach * (_S[1] - _S[0])
    x = np.sinh(s)  # u / sigma
    log_t = (special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
             - (nu + 1) / 2 * np.log1p(x**2 / nu))  # density of u/sigma; du = sigma cosh(s) ds
    e = r[:, None] - sigma * x
    log_n = -0.5 * np.log(2 * np.pi * v[:, None]) - 0.5 * e**2 / v[:, None]
    return special.logsumexp(log_t + np.log(np.cosh(s)) + log_n, axis=1) + np.log(step)


def nll_t(par, mu):
    sigma, nu = np.exp(par[0]), np.exp(par[1])
    if not (1e-8 < sigma < 1e3 and 1e-2 < nu < 1e8):
        return np.inf
    return -float(np.sum(t_logpdf_grid(Y - mu, V, sigma, nu)))


MODELS = {
    "normal": (nll_normal, [(-3.0,), (-1.0,), (0.0,)]),
    "normal_mixture": (nll_mixture, list(itertools.product((-20.0, -3.0, -1.0), (-1.0, 0.5, 1.5), (-4.0, -2.0, 0.0)))),
    "student": (nll_t, [(-10.0, -1.2), (-8.0, -0.7), (-4.0, 0.0), (-1.5, 1.5), (-1.0, 3.0)]),
}


def profile(model: str, mu: float) -> tuple[float, list[float]]:
    """min over the other parameters of -logLik at mu, and where."""
    nll, starts = MODELS[model]
    best = (np.inf, None)
    for start in starts:
        r = optimize.minimize(nll, np.array(start), args=(mu,), method="Nelder-Mead",
                              options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000})
        r2 = optimize.minimize(nll, r.x, args=(mu,), method="BFGS", options={"gtol": 1e-9})
        r = r2 if r2.fun < r.fun else r
        if r.fun < best[0]:
            best = (float(r.fun), [float(x) for x in r.x])
    return best


def interval(model: str) -> dict:
    t0 = time.perf_counter()
    f_hat = optimize.minimize_scalar(lambda m: profile(model, m)[0], bounds=(0.0, 0.6), method="bounded",
                                     options={"xatol": 1e-8}).x
    f_min = profile(model, f_hat)[0]

    def crit(m):
        return 2.0 * (profile(model, m)[0] - f_min) - CUT

    lower = optimize.brentq(crit, f_hat - 0.5, f_hat, xtol=1e-9)
    upper = optimize.brentq(crit, f_hat, f_hat + 0.6, xtol=1e-9)
    return {"mu_hat": float(f_hat), "loglik": -f_min, "lower": lower, "upper": upper,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    out = {"generator": "tests/reference_extra/robust/make_profile_reference.py", "data": "drm.datasets.cdp()",
           "level": 0.95, "method": __doc__.split("\n\n")[0].replace("\n", " "), "mu": {}}
    worst = 0.0
    for log_sigma, log_nu, mu in [(-5.0069, -0.70496, 0.1946), (-8.05, -1.18, 0.19), (-12.0, -1.5, 0.05),
                                  (-1.0, 3.0, 0.4), (-3.0, 0.5, 0.36), (0.5, -1.0, 0.0)]:
        sigma, nu = np.exp(log_sigma), np.exp(log_nu)
        grid = t_logpdf_grid(Y - mu, V, sigma, nu)
        quad = np.array([oracle_logpdf(y - mu, v, sigma, nu) for y, v in zip(Y, V)])
        worst = max(worst, float(np.max(np.abs(grid - quad))))
    out["t_grid_check"] = {"largest_abs_difference_of_row_logpdf": worst,
                           "points": "(log sigma, log nu, mu) in (-5.0069, -0.70496, 0.1946), (-8.05, -1.18, 0.19), "
                                     "(-12, -1.5, 0.05), (-1, 3, 0.4), (-3, 0.5, 0.36), (0.5, -1, 0)"}
    print(out["t_grid_check"], flush=True)
    for model in ("normal", "normal_mixture", "student"):
        out["mu"][model] = interval(model)
        print(model, out["mu"][model], flush=True)
    (HERE / "profile_reference.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
