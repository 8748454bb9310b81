"""fit_batch with one random intercept per group (issue 15, target 3).

Run: python3 benchmarks/bench_batch_random.py [--groups 10000]

10,000 genes, each a three-level meta-analysis of 10 studies x 3 effect sizes
(``yi ~ 1 + (1|study) + meta_V(V = vi)``, sigma = the effect-size level, REML), simulated
with tau = sd(study) = 0.25, sigma = 0.15, vi ~ U(0.01, 0.1).  Study labels s0..s9 repeat in
every gene (unrelated levels).  Measured: ``fit_batch`` first call with an empty compilation cache (DRMPY_CACHE_DIR set to a new temporary folder unless given)
and warm best of 3; converged count; agreement with single ``drm.fit`` on 50 genes (max
|logLik difference|) and the single-fit loop's rate; when Rscript with metafor is
installed, ``rma.mv(yi, vi, random = ~ 1 | study/es)`` looped over the first 200 genes
(timed inside R, benchmarks/metafor/batch_random_timing.R) with its logLik compared
(metafor's REML logLik = drmpy's + 0.5 log|X'X| = drmpy's + 0.5 log 30 here).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))


def simulate(G: int, seed: int = 15):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_study, n_es = 10, 3
    n = G * n_study * n_es
    study = np.tile(np.repeat(np.arange(n_study), n_es), G)
    u = np.repeat(rng.normal(size=G * n_study) * 0.25, n_es)
    vi = rng.uniform(0.01, 0.1, n)
    yi = 0.3 + u + rng.normal(size=n) * 0.15 + rng.normal(size=n) * np.sqrt(vi)
    return pd.DataFrame({"gene": np.repeat(np.arange(G), n_study * n_es), "study": [f"s{s}" for s in study],
                         "es": np.tile(np.arange(n_es), G * n_study), "yi": yi, "vi": vi})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=10_000)
    args = parser.parse_args()
    # an empty compilation cache: the first call includes compiling
    cache = os.environ.setdefault("DRMPY_CACHE_DIR", tempfile.mkdtemp(prefix="drmpy-bench-cache-"))
    import numpy as np

    import drmpy as drm

    print(f"load average at start: {os.getloadavg()} (2 CPU cores shared with other jobs); compilation cache {cache}")
    data = simulate(args.groups)
    f = drm.Formula("yi ~ 1 + (1|study) + meta_V(V = vi)")
    G = args.groups
    t0 = time.perf_counter()
    res = drm.fit_batch(f, data, by="gene", method="REML", progress=False)
    first = time.perf_counter() - t0
    print(f"fit_batch REML, {G} genes x 30 rows: first call {first:.2f} s ({G / first:.0f} fits/s, compiling included)")
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = drm.fit_batch(f, data, by="gene", method="REML", progress=False)
        warm.append(time.perf_counter() - t0)
    best = min(warm)
    print(f"warm best of 3: {best:.2f} s = {G / best:.0f} fits/s  (runs: {', '.join(f'{w:.2f}' for w in warm)})")
    per = res.groupby("gene", observed=True).first()
    print(f"converged: {int(per['converged'].sum())} / {G}; messages: {per['message'].value_counts().to_dict()}")
    est = res.pivot(index="gene", columns="parameter", values="estimate")
    print("mean SD estimates (true sd(study) 0.25, sigma 0.15): "
          f"sd(study) {np.exp(est['sd(study):(Intercept)']).mean():.4f}, sigma {np.exp(est['sigma:(Intercept)']).mean():.4f}")

    sample = np.random.default_rng(1).choice(G, size=min(50, G), replace=False)
    diffs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        drm.fit(f, data[data.gene == sample[0]], method="REML")  # compile outside the timing
        t0 = time.perf_counter()
        for g in sample:
            fit = drm.fit(f, data[data.gene == g], method="REML")
            diffs.append(abs(fit.loglik - per.loc[g, "loglik"]))
        single = time.perf_counter() - t0
    print(f"single drm.fit loop on {len(sample)} genes: {len(sample) / single:.1f} fits/s; "
          f"max |logLik(batch) - logLik(single)| = {max(diffs):.2e}")
    print(f"speed-up of warm fit_batch over the single-fit loop: {(G / best) / (len(sample) / single):.0f}x")

    if shutil.which("Rscript"):
        with tempfile.TemporaryDirectory() as tmp:
            sub = data[data.gene < 200]
            sub.to_csv(os.path.join(tmp, "d.csv"), index=False)
            out = subprocess.run(["Rscript", os.path.join(HERE, "metafor", "batch_random_timing.R"),
                                  os.path.join(tmp, "d.csv"), os.path.join(tmp, "o.csv")],
                                 capture_output=True, text=True)
            print(out.stdout.strip() or out.stderr.strip())
            if out.returncode == 0:
                import pandas as pd

                mf = pd.read_csv(os.path.join(tmp, "o.csv")).set_index("gene")
                ll = per.loc[mf.index, "loglik"] + 0.5 * math.log(30)
                print(f"max |logLik(fit_batch) + 0.5 log 30 - logLik(metafor)| over 200 genes: "
                      f"{np.max(np.abs(ll - mf['logLik'])):.2e}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
