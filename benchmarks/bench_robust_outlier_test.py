"""Benchmark: the parametric-bootstrap outlier test (issue 26, done-means 3).

``fit.outlier_test(nsim=999)`` on the 30-study data set of the metaplus reference
(tests/reference_extra/robust/sim30.csv, simulated there with a seed), for the t and the
normal-mixture model: first call in a fresh process (compiling included; the persistent
compilation cache is pointed at an empty folder unless --warm-cache) and warm calls (the same
call again; median of --repeats).  Also metaplus's convention (resample_v=True) and cdp
(10 studies) against metaplus's p-values, and metaplus's own R time of testOutliers(R = 999)
where the metaplus reference JSON records it.

    PYTHONPATH=src python3 benchmarks/bench_robust_outlier_test.py > benchmarks/bench_robust_outlier_test.out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference_extra" / "robust"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsim", type=int, default=999)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm-cache", action="store_true", help="keep DRMPY_CACHE_DIR as set")
    ap.add_argument("--families", default="student,normal_mixture")
    args = ap.parse_args()
    if not args.warm_cache:
        os.environ["DRMPY_CACHE_DIR"] = tempfile.mkdtemp(prefix="drmpy_bench_cache_")
    import jax
    import numpy as np
    import pandas as pd

    import drmpy as drm

    print(f"python {platform.python_version()}; cores {os.cpu_count()}; load average {os.getloadavg()}")
    print(f"drmpy {drm.__version__}; jax {jax.__version__}; devices {[str(d) for d in jax.devices()]}")
    print(f"compilation cache: {'as set' if args.warm_cache else 'empty folder (first calls compile)'}")
    ref = json.loads((REFERENCE / "robust_metaplus.json").read_text()) if (REFERENCE / "robust_metaplus.json").exists() else {}
    sim30 = pd.read_csv(REFERENCE / "sim30.csv")
    sim30["vi"] = sim30["sei"] ** 2
    formula = "yi ~ 1 + meta_V(V=vi)"
    families = {"student": drm.student, "normal_mixture": drm.normal_mixture}
    print(f"\n(a) sim30 ({len(sim30)} studies), fit.outlier_test(nsim={args.nsim}, seed=1)")
    for name in args.families.split(","):
        fit = drm.fit(formula, sim30, family=families[name]())
        t0 = time.perf_counter()
        first = fit.outlier_test(nsim=args.nsim, seed=1)
        t_first = time.perf_counter() - t0
        warm = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = fit.outlier_test(nsim=args.nsim, seed=1)
            warm.append(time.perf_counter() - t0)
        assert np.array_equal(res.simulated, first.simulated, equal_nan=True)
        t0 = time.perf_counter()
        meta = fit.outlier_test(nsim=args.nsim, seed=1, resample_v=True)
        t_meta = time.perf_counter() - t0
        zeros = float(np.mean(res.simulated[np.isfinite(res.simulated)] == 0))
        print(f"  {name}: logLik {fit.loglik:.6f} (normal {fit.normal_loglik:.6f}); observed LRT {res.statistic:.4f}, "
              f"p {res.p_value:.4g}, failed refits {res.n_failed}/{res.nsim}, share of zero statistics {zeros:.3f}")
        print(f"    first call {t_first:.2f} s; warm median {statistics.median(warm):.2f} s (best {min(warm):.2f}, "
              f"runs {', '.join(f'{w:.2f}' for w in warm)}); load average {os.getloadavg()}")
        print(f"    resample_v=True (metaplus's draws): {t_meta:.2f} s, p {meta.p_value:.4g}, "
              f"failed {meta.n_failed}")
        key = {"student": "t_R999", "normal_mixture": "mixture_R999"}[name]
        timing = ref.get("timing_sim30", {}).get(key)
        t_json = REFERENCE / "metaplus_sim30_t_R999.json"
        if timing is None and key == "t_R999" and t_json.exists():
            timing = json.loads(t_json.read_text())  # time_sim30_t.R, run on its own
            m = timing.get("machine", {})
            timing["note"] = (f"time_sim30_t.R; nproc {m.get('nproc')}, load average "
                              f"{m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end")
        if timing is not None:
            print(f"    metaplus 1.0-8 testOutliers(R = {timing['R']}) in R, one core: {timing['test_wall_s']:.1f} s "
                  f"(p {timing['pvalue']}, observed {timing['observed']:.4f}; {timing.get('note', ref.get('machine', ''))})")
        else:
            quick = ref.get("timing_sim30", {}).get("t_R19")
            extra = (f"; R = 19 took {quick['test_wall_s']:.1f} s" if quick else "")
            print(f"    metaplus testOutliers(R = 999) on sim30: not measured (not in the reference JSON){extra}")
    print("\n(b) cdp (10 studies) against metaplus's testOutliers (R = 999, seed 12345, resampled standard errors)")
    cdp = drm.datasets.cdp()
    for name, key in (("student", "t"), ("normal_mixture", "mixture")):
        fit = drm.fit(formula, cdp, family=families[name]())
        fit.outlier_test(nsim=args.nsim, seed=12345, resample_v=True)
        t0 = time.perf_counter()
        res = fit.outlier_test(nsim=args.nsim, seed=12345, resample_v=True)
        dt = time.perf_counter() - t0
        mp = ref.get("testOutliers", {}).get("cdp", {}).get(key)
        their = (f"metaplus: observed {mp['observed']:.4f}, p {mp['pvalue']}, {mp['test_wall_s']:.1f} s in R"
                 if mp else "metaplus: not in the reference JSON")
        print(f"  {name}: observed {res.statistic:.4f}, p {res.p_value:.4g}, failed {res.n_failed}; warm {dt:.2f} s; {their}")
    print(f"\nload average at the end {os.getloadavg()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
