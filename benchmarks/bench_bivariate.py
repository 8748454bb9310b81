"""Speed of the bivariate model (issue 4). Run: python3 benchmarks/bench_bivariate.py [--quick]

Two outcomes per study, V from meta_vcov_bivariate (block-diagonal by study), modelled
sigma1 and rho12 (``rho12 ~ x``), 10% of studies with one outcome missing.  For
n = 1e3 .. 1e5 studies: time to build V, the first fit (compile, or persistent-cache
load), warm fits on new data of the same size (formula handling included), and the
estimates against the truth.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pandas as pd

import drmpy as drm

TRUTH = {"mu1:(Intercept)": 0.3, "mu1:x": 0.2, "mu2:(Intercept)": -0.2, "sigma1:(Intercept)": math.log(0.25),
         "sigma1:x": 0.3, "sigma2:(Intercept)": math.log(0.4), "rho12:(Intercept)": 0.4, "rho12:x": 0.5}


def simulate(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    v1 = rng.uniform(0.01, 0.08, n)
    v2 = rng.uniform(0.01, 0.08, n)
    cor = np.full(n, 0.5)
    s1 = np.exp(TRUTH["sigma1:(Intercept)"] + TRUTH["sigma1:x"] * x)
    s2 = np.exp(TRUTH["sigma2:(Intercept)"])
    rho = 0.999999 * np.tanh(TRUTH["rho12:(Intercept)"] + TRUTH["rho12:x"] * x)
    a = np.sqrt(v1 + s1**2)
    c = cor * np.sqrt(v1 * v2) + rho * s1 * s2
    e1, e2 = rng.normal(size=(2, n))
    y1 = TRUTH["mu1:(Intercept)"] + TRUTH["mu1:x"] * x + a * e1
    y2 = TRUTH["mu2:(Intercept)"] + (c / a) * e1 + np.sqrt(v2 + s2**2 - (c / a) ** 2) * e2
    miss = rng.random(n) < 0.1
    y1[miss & (rng.random(n) < 0.5)] = np.nan
    y2[miss & np.isfinite(y1)] = np.nan
    return pd.DataFrame({"y1": y1, "y2": y2, "x": x, "v1": v1, "v2": v2, "cor12": cor})


FORMULA = dict(mu1="y1 ~ x + meta_V(V=V)", mu2="y2 ~ 1", sigma1="~ x", rho12="~ x")


def one(n: int, repeats: int) -> None:
    data = simulate(n, seed=1)
    t = time.perf_counter()
    V = drm.meta_vcov_bivariate(data.v1, data.v2, cor12=data.cor12)
    t_v = time.perf_counter() - t
    t = time.perf_counter()
    fit = drm.fit(drm.Formula(**FORMULA), data=data, env={"V": V})
    first = time.perf_counter() - t
    warm = []
    for r in range(repeats):
        d = simulate(n, seed=2 + r)
        Vd = drm.meta_vcov_bivariate(d.v1, d.v2, cor12=d.cor12)
        t = time.perf_counter()
        f = drm.fit(drm.Formula(**FORMULA), data=d, env={"V": Vd})
        warm.append(time.perf_counter() - t)
        assert f.converged
    print(f"n = {n} studies ({fit.n_responses} responses, {int(fit.design.pair.sum())} correlated pairs); "
          f"structure {fit.structure}; converged {fit.converged}; iterations {fit.iterations}")
    print(f"  meta_vcov_bivariate: {t_v:.3f} s; first fit: {first:.2f} s; warm fits (new data): "
          + ", ".join(f"{w:.3f}" for w in warm) + f" s (median {np.median(warm):.3f} s)")
    if n >= 10_000:
        z = {k: (fit.params[k] - v) / fit.std_errors[k] for k, v in TRUTH.items()}
        print("  (estimate - truth) / SE: " + ", ".join(f"{k} {v:+.2f}" for k, v in z.items()))


def main() -> None:
    quick = "--quick" in sys.argv
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    for n in sizes:
        one(n, repeats=2 if n >= 100_000 else 3)


if __name__ == "__main__":
    main()
