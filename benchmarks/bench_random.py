"""Speed of random-effect fits (issue 3). Run: python3 benchmarks/bench_random.py

1e5 effect sizes in 2e4 studies (1 to 9 effect sizes per study), diagonal V,
``yi ~ x + (1|study) + meta_V(V=vi)`` with ``sd(study) ~ habitat`` (habitat constant
within study).  Reports the first call (compile or persistent-cache load) and warm fits,
and the estimates against the truth.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import pandas as pd

import drmpy as drm


def simulate(n_studies: int = 20_000, n_target: int = 100_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 10, size=n_studies)
    sizes = np.maximum(1, np.round(sizes * n_target / sizes.sum()).astype(int))
    study = np.repeat(np.arange(n_studies), sizes)
    habitat_s = rng.choice(["grassland", "forest"], size=n_studies)
    sd_s = np.exp(-1.0 + 0.7 * (habitat_s == "forest"))
    u = rng.normal(size=n_studies) * sd_s
    n = len(study)
    x = rng.normal(size=n)
    vi = rng.uniform(0.01, 0.05, size=n)
    yi = 0.2 + 0.3 * x + u[study] + rng.normal(size=n) * np.sqrt(vi + 0.2**2)
    return pd.DataFrame({
        "study": study, "habitat": pd.Categorical(habitat_s[study], ["grassland", "forest"]),
        "x": x, "vi": vi, "yi": yi,
    })


def main() -> None:
    d = simulate()
    formula = drm.Formula("yi ~ x + (1|study) + meta_V(V=vi)", "sd(study) ~ habitat")
    print(f"n = {len(d)} effect sizes in {d['study'].nunique()} studies")
    t = time.perf_counter()
    fit = drm.fit(formula, data=d)
    first = time.perf_counter() - t
    warm = []
    for seed in (4, 5):
        d2 = simulate(seed=seed)
        t = time.perf_counter()
        fit2 = drm.fit(formula, data=d2)
        warm.append(time.perf_counter() - t)
    print(f"structure: {fit.structure}; converged: {fit.converged}; iterations: {fit.iterations}")
    print(f"first call: {first:.2f} s; warm fits (new data, same shapes): "
          f"{', '.join(f'{w:.2f}' for w in warm)} s (median {statistics.median(warm):.2f} s)")
    print("estimates (truth: mu 0.2, 0.3; sigma log(0.2) = -1.609; sd(study) -1.0, 0.7):")
    print(pd.DataFrame({"estimate": fit.params, "std_error": fit.std_errors}).to_string(float_format="{:.4f}".format))
    t = time.perf_counter()
    re = fit.ranef()
    print(f"ranef() for {len(re)} levels: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
