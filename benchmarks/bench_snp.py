"""Per-SNP REML meta-analyses (issue 15, target 1). Run: python3 benchmarks/bench_snp.py [--groups G]

``fit_batch("yi ~ 1 + meta_V(V=vi)", by="snp", method="REML")`` on G groups of 5 to 30
studies (bench_batch.py's ``snp_data``: half the groups with tau^2 = 0), against PyMARE's
vectorised REML (``VarianceBasedLikelihoodEstimator``, grouped by study count, chunks of
10,000) on the same data, alternating drmpy, PyMARE, drmpy, PyMARE in one run (the machine is
shared: absolute times are noisy, the ratios within one run are the figure).  drmpy runs in
a child process (its peak RSS is its own); its time is the whole ``fit_batch`` call (data
frame in, result frame out, SEs, convergence flags, the tau^2 = 0 boundary rule), warm
(after one call that compiles).  PyMARE's time excludes grouping the data by k.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def reml_loglik_groups(d, tau2):
    """drmTMB's REML log-likelihood of yi ~ 1 + meta_V(V=vi) per group at the given tau^2."""
    import numpy as np

    g = d["snp"].to_numpy()
    y = d["yi"].to_numpy()
    s = d["vi"].to_numpy() + tau2[g]
    w = 1.0 / s
    G = len(tau2)
    sw = np.bincount(g, w, G)
    mu = np.bincount(g, w * y, G) / sw
    n = np.bincount(g, minlength=G)
    quad = np.bincount(g, w * (y - mu[g]) ** 2, G)
    return -0.5 * ((n - 1) * np.log(2 * np.pi) + np.bincount(g, np.log(s), G) + np.log(sw) + quad)


def child(G: int, reps: int) -> None:
    import numpy as np

    import drmpy as drm
    from bench_batch import snp_data

    d = snp_data(G)
    f = drm.Formula("yi ~ 1 + meta_V(V=vi)")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    res = drm.fit_batch(f, d, by="snp", method="REML", progress=False)
    first = time.perf_counter() - t
    warm = []
    for _ in range(reps):
        t = time.perf_counter()
        res = drm.fit_batch(f, d, by="snp", method="REML", progress=False)
        warm.append(time.perf_counter() - t)
    from bench_batch import stage_profile

    stages = stage_profile(lambda: drm.fit_batch(f, d, by="snp", method="REML", progress=False))
    per = res.groupby("snp", sort=True, observed=True).first()
    est = res.pivot(index="snp", columns="parameter", values="estimate")
    np.save(os.environ["BENCH_SNP_NPY"], est[["mu:(Intercept)", "sigma:(Intercept)"]].to_numpy())
    out = dict(first=first, warm=warm, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               before_mb=base, data_mb=float(d.memory_usage(deep=True).sum() / 2**20),
               converged=int(per["converged"].sum()),
               se_finite=int(np.isfinite(res["std_error"]).sum()),
               boundary=int(per["message"].str.contains("zero boundary").sum()),
               boundary_better=int(per["message"].str.contains("better than the interior").sum()),
               loglik_sum=float(per["loglik"].sum()), stages=stages, load=os.getloadavg())
    print("JSON" + json.dumps(out))


def run_child(G: int, reps: int, npy: str) -> dict:
    env = dict(os.environ, BENCH_SNP_NPY=npy)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--groups", str(G),
                           "--reps", str(reps)], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(lines[-1][4:])


def main(G: int, reps: int) -> None:
    import tempfile

    import numpy as np

    from bench_batch import format_stages, pymare_run, snp_data

    print(f"python {sys.version.split()[0]}; cores {os.cpu_count()}; load average at start {os.getloadavg()}")
    print("(the machine is shared with other jobs: compare the ratios measured in this run)")
    d = snp_data(G)
    print(f"{G:,} random-effects meta-analyses of 5-30 studies ({len(d):,} rows), yi ~ 1 + meta_V(V=vi), REML")
    tmp = tempfile.mkdtemp(prefix="drmpy-snp-")
    npy = os.path.join(tmp, "est.npy")
    rounds = []
    for r in range(2):
        ours = run_child(G, reps, npy)
        pm = pymare_run(d)
        rounds.append((ours, pm))
        best = min(ours["warm"])
        print(f"round {r + 1} (load {tuple(round(x, 2) for x in os.getloadavg())}):")
        print(f"  drmpy fit_batch: first call {ours['first']:.2f} s, warm {', '.join(f'{x:.2f}' for x in ours['warm'])} s "
              f"-> best {G / best:,.0f} fits/s; converged {ours['converged']:,}/{G:,}; finite SEs "
              f"{ours['se_finite']:,}/{2 * G:,} (the tau^2 = 0 groups have no SE of log sigma: {ours['boundary']:,} at zero, "
              f"{ours['boundary_better']} of them better than an interior local optimum)")
        print(f"    where a warm call's time goes (s): {format_stages(ours['stages'])}")
        print(f"    memory: input frame {ours['data_mb']:.0f} MB, child peak RSS {ours['peak_mb']:.0f} MB "
              f"(before the first call {ours['before_mb']:.0f} MB)")
        if pm is None:
            print("  PyMARE: not installed (pip install pymare), skipped")
            continue
        print(f"  PyMARE {pm['version']} REML: {pm['fit']:.2f} s ({G / pm['fit']:,.0f} fits/s; grouping by k another "
              f"{pm['prep']:.2f} s); no SEs of tau^2, no convergence flags")
        print(f"  ratio drmpy (whole warm call, best) / PyMARE (fit only): {pm['fit'] / best:.2f}x")
    ours, pm = rounds[-1]
    if pm is not None:
        est = np.load(npy)
        tau2 = np.exp(2 * est[:, 1])
        dt = np.abs(tau2 - pm["tau2"])
        dm = np.abs(est[:, 0] - pm["mu"])
        print(f"agreement with PyMARE: tau^2 median |diff| {np.nanmedian(dt):.2g}, 99.9% {np.nanquantile(dt, 0.999):.2g}, "
              f"max {np.nanmax(dt):.2g}; mu 99.9% {np.nanquantile(dm, 0.999):.2g}, max {np.nanmax(dm):.2g}")
        # PyMARE's REML drops to its own optimiser's stopping point; compare REML criteria
        ll_pm = reml_loglik_groups(d, pm["tau2"])
        ll_ours = reml_loglik_groups(d, tau2)
        gap = ll_ours - ll_pm
        print(f"REML logLik, drmpy - PyMARE at their tau^2: min {gap.min():.2g}, max {gap.max():.2g}; "
              f"drmpy higher by > 1e-6 in {int((gap > 1e-6).sum())} groups, PyMARE in {int((gap < -1e-6).sum())}")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.groups, args.reps)
    else:
        main(args.groups, args.reps)
