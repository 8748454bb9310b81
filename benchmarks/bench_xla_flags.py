"""XLA's CPU fusion emitters on or off: compile and run times of drmpy's main workloads.

Run: python3 benchmarks/bench_xla_flags.py [--rounds 2] [--reps 7]

jaxlib 0.10's CPU backend emits fused kernels through MLIR fusion emitters by default;
``--xla_cpu_use_fusion_emitters=false`` selects its LLVM emitters.  Each setting runs in
its own child process (fresh ``DRMPY_CACHE_DIR``, so first calls compile), alternately
A, B, A, B, ... so both see the same machine load.  Per workload: the first call (compile
included), warm wall time (best and median of ``--reps``) and warm CPU time, and the
log-likelihood sum, which must agree between the settings.

Workloads (the benchmarks of issue 15 and a random-effects single fit):
* ``restoration``: fit_batch on 10,000 restoration replicates (ML, sigma ~ habitat; bench_batch (a));
* ``snp``: fit_batch, per-SNP REML, 200,000 groups of 5-30 studies (bench_snp, smaller);
* ``single_1e6``: one diagonal-V location-scale fit at n = 1e6, ML (bench_single);
* ``three_level``: one REML fit, 60 effect sizes in 20 studies, (1|study), sigma ~ group;
* ``batch_random``: fit_batch of (1|study) three-level models, 1,000 genes x 30 rows, REML.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = {"A": "", "B": "--xla_cpu_use_fusion_emitters=false"}


def _three_level():
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    study = np.repeat(np.arange(20), 3)
    x = rng.normal(size=60)
    vi = rng.uniform(0.01, 0.1, 60)
    yi = 0.3 + 0.2 * x + rng.normal(scale=0.3, size=20)[study] + rng.normal(size=60) * np.sqrt(vi + 0.04)
    return pd.DataFrame({"yi": yi, "x": x, "vi": vi, "study": study, "g": np.where(x > 0, "a", "b")})


def child(reps: int) -> None:
    sys.path.insert(0, HERE)
    import numpy as np

    import drmpy as drm
    from bench_batch import SEED_FORMULA, restoration_replicates, snp_data
    from bench_batch_random import simulate as genes
    from bench_single import FORMULA as SINGLE_FORMULA, simulate as single_data

    _, replicates = restoration_replicates(10_000)
    snps = snp_data(200_000)
    big = single_data()
    three = _three_level()
    gene_data = genes(1_000)
    work = {
        "restoration": lambda: drm.fit_batch(drm.Formula(*SEED_FORMULA), replicates, by="replicate",
                                             progress=False).groupby("replicate")["loglik"].first().sum(),
        "snp": lambda: drm.fit_batch(drm.Formula("yi ~ 1 + meta_V(V=vi)"), snps, by="snp", method="REML",
                                     progress=False).groupby("snp")["loglik"].first().sum(),
        "single_1e6": lambda: drm.fit(drm.Formula(*SINGLE_FORMULA), big.copy(), method="ML").loglik,
        "three_level": lambda: drm.fit(drm.Formula("yi ~ x + (1|study) + meta_V(V=vi)", "sigma ~ g"),
                                       three.copy(), method="REML").loglik,
        "batch_random": lambda: drm.fit_batch(drm.Formula("yi ~ 1 + (1|study) + meta_V(V = vi)"), gene_data,
                                              by="gene", method="REML", progress=False)
                                    .groupby("gene")["loglik"].first().sum(),
    }
    out = {}
    for name, call in work.items():
        t = time.perf_counter()
        loglik = float(call())
        first = time.perf_counter() - t
        wall, cpu = [], []
        for _ in range(reps):
            c = time.process_time()
            t = time.perf_counter()
            call()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out[name] = dict(first=first, wall_best=min(wall), wall_median=float(np.median(wall)),
                         cpu_median=float(np.median(cpu)), loglik=loglik)
    print("JSON" + json.dumps(out), flush=True)


def run_child(tag: str, reps: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=FLAGS[tag], DRMPY_CACHE_DIR=tempfile.mkdtemp(prefix="drmpy-xla-flags-"))
    p = subprocess.run([sys.executable, __file__, "--child", "--reps", str(reps)], env=env, capture_output=True,
                       text=True, check=True)
    return json.loads(next(line[4:] for line in p.stdout.splitlines() if line.startswith("JSON")))


def main(rounds: int, reps: int) -> None:
    import jax
    import numpy as np

    print(f"python {sys.version.split()[0]}; jax {jax.__version__}; cores {os.cpu_count()}; "
          f"load average {tuple(round(x, 2) for x in os.getloadavg())}")
    print("A: XLA's defaults (MLIR fusion emitters); B: XLA_FLAGS=--xla_cpu_use_fusion_emitters=false")
    print(f"{rounds} rounds of (A, B) child processes, each with an empty compilation cache; warm: {reps} calls\n")
    runs = {"A": [], "B": []}
    for _ in range(rounds):
        for tag in "AB":
            runs[tag].append(run_child(tag, reps))
    names = list(runs["A"][0])
    print(f"{'workload':14s} {'':2s} {'first call s':>13s} {'warm best s':>12s} {'warm median s':>14s} "
          f"{'warm CPU s':>11s}   logLik sum")
    for name in names:
        for tag in "AB":
            r = [x[name] for x in runs[tag]]
            first = "/".join(f"{x['first']:.2f}" for x in r)
            print(f"{name:14s} {tag:2s} {first:>13s} {min(x['wall_best'] for x in r):12.4f} "
                  f"{np.median([x['wall_median'] for x in r]):14.4f} {np.median([x['cpu_median'] for x in r]):11.4f}"
                  f"   {r[0]['loglik']:.10f}")
        a = np.array([x[name]["loglik"] for x in runs["A"]])
        b = np.array([x[name]["loglik"] for x in runs["B"]])
        print(f"{'':14s} max |logLik sum B - A| {np.max(np.abs(b - a)):.2e}; "
              f"ratio A/B first call {np.median([x[name]['first'] for x in runs['A']]) / np.median([x[name]['first'] for x in runs['B']]):.2f}, "
              f"warm median {np.median([x[name]['wall_median'] for x in runs['A']]) / np.median([x[name]['wall_median'] for x in runs['B']]):.2f}")
    print(f"\nload average at the end {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    if args.child:
        child(args.reps)
    else:
        main(args.rounds, args.reps)
