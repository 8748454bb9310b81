"""Batch fitting (issue 5). Run: python3 benchmarks/bench_batch.py [--quick]

(a) 10,000 replicates of the restoration model (n = 80, ``yi ~ habitat + duration +
    meta_V(V=vi)``, ``sigma ~ habitat``, ML) simulated from the fit to the shipped data:
    ``fit_batch`` (first call with compilation, then warm), a loop of single ``drm.fit``
    on 200 of them, and (when Rscript with metafor is installed) a loop of metafor's
    ``rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, method = "ML")`` on the
    first 1,000, timed inside R.
(b) 1,000,000 random-effects meta-analyses of 5 to 30 studies (``yi ~ 1 + meta_V(V=vi)``,
    REML): ``fit_batch`` throughput and peak memory, and PyMARE's vectorised REML estimator
    (``VarianceBasedLikelihoodEstimator``) on the same data, grouped by study count, in
    chunks of 10,000 data sets.

``fit_batch`` runs in child processes with 1 and with 2 JAX CPU devices
(``jax_num_cpu_devices``; pools of groups go round-robin to the devices) and an empty
compilation cache, so that the first call includes compiling; every other measurement
runs in this process.  ``--quick``: 1,000 replicates and
100,000 meta-analyses.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SEED_FORMULA = ("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ data


def restoration_replicates(R: int):
    import numpy as np
    import pandas as pd

    import drmpy as drm

    dat = drm.datasets.restoration()
    fit = drm.fit(drm.Formula(*SEED_FORMULA), data=dat)
    Y = fit.simulate(R, seed=2024).to_numpy()  # (80, R)
    big = pd.concat([dat[["habitat", "duration", "vi"]]] * R, ignore_index=True)
    big["yi"] = Y.T.reshape(-1)
    big["replicate"] = np.repeat(np.arange(R), len(dat))
    return dat, big


def snp_data(G: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    k = rng.integers(5, 31, G)
    n = int(k.sum())
    snp = np.repeat(np.arange(G), k)
    tau2 = np.where(rng.uniform(size=G) < 0.5, 0.0, rng.uniform(0.0, 0.05, G))
    mu = rng.normal(0.0, 0.05, G)
    vi = rng.uniform(0.005, 0.1, n)
    yi = mu[snp] + rng.normal(size=n) * np.sqrt(vi + tau2[snp])
    return pd.DataFrame({"snp": snp, "yi": yi, "vi": vi})


# ------------------------------------------------------------------------------------------ child


def child(devices: int, quick: bool) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    import numpy as np

    import drmpy as drm

    out: dict = {"devices": len(jax.devices())}
    R = 1_000 if quick else 10_000
    _, big = restoration_replicates(R)
    f = drm.Formula(*SEED_FORMULA)
    t = time.perf_counter()
    res = drm.fit_batch(f, big, by="replicate", progress=False)
    out["a_first"] = time.perf_counter() - t
    warm = []
    for _ in range(5):
        t = time.perf_counter()
        res = drm.fit_batch(f, big, by="replicate", progress=False)
        warm.append(time.perf_counter() - t)
    out["a_warm"] = warm
    out["a_R"] = R
    out["a_load"] = os.getloadavg()
    cpu = []
    for _ in range(3):
        c = time.process_time()
        drm.fit_batch(f, big, by="replicate", progress=False)
        cpu.append(time.process_time() - c)
    out["a_cpu"] = min(cpu)  # CPU seconds of the process (all threads) per warm call
    out["a_stages"] = stage_profile(lambda: drm.fit_batch(f, big, by="replicate", progress=False))
    out["a_converged"] = int(res.groupby("replicate")["converged"].first().sum())
    out["a_boundary"] = int((res.loc[res["parameter"] == "sigma:(Intercept)", "estimate"] < -6).sum())
    res.groupby("replicate")["loglik"].first().to_csv(os.environ["BENCH_LOGLIK_CSV"], header=True)
    if os.environ.get("BENCH_PART") == "a":
        print("JSON" + json.dumps(out))
        return

    G = 100_000 if quick else 1_000_000
    d = snp_data(G)
    f2 = drm.Formula("yi ~ 1 + meta_V(V=vi)")
    base = rss_mb()
    t = time.perf_counter()
    res2 = drm.fit_batch(f2, d, by="snp", method="REML", progress=False)
    out["b_first"] = time.perf_counter() - t
    out["b_peak_mb_first"] = peak_rss_mb()
    t = time.perf_counter()
    res2 = drm.fit_batch(f2, d, by="snp", method="REML", progress=False)
    out["b_warm"] = time.perf_counter() - t
    out["b_G"] = G
    out["b_rows"] = len(d)
    out["b_data_mb"] = float(d.memory_usage(deep=True).sum() / 2**20)
    out["b_rss_before_mb"] = base
    out["b_peak_mb"] = peak_rss_mb()
    per = res2.groupby("snp", sort=True).agg(converged=("converged", "first"))
    out["b_converged"] = int(per["converged"].sum())
    out["b_se_finite"] = int(np.isfinite(res2["std_error"]).sum())
    est = res2.pivot(index="snp", columns="parameter", values="estimate")
    np.save(os.environ["BENCH_SNP_NPY"], est[["mu:(Intercept)", "sigma:(Intercept)"]].to_numpy())
    print("JSON" + json.dumps(out))


def stage_profile(call) -> dict:
    """Wall seconds of one warm call by stage: formula and grouping (_build_groups), per-group
    checks (_check_groups), chunk arrays (_chunk_arrays, _dense_chunk), the compiled programs
    with their transfers (_Runner.map less the chunk arrays built inside it), and the result
    frame (_result_frame); 'other' is the rest of the call."""
    from drmpy.batch import batch as sb

    spent = dict.fromkeys(["_build_groups", "_check_groups", "_chunk_arrays", "_dense_chunk", "map",
                           "_result_frame"], 0.0)
    saved = {}

    def wrap(owner, name):
        fn = getattr(owner, name)
        saved[(owner, name)] = fn

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        setattr(owner, name, timed)

    for name in spent:
        wrap(sb._Runner if name == "map" else sb, name)
    try:
        import jax

        t = time.perf_counter()
        jax.block_until_ready(call())
        total = time.perf_counter() - t
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)
    arrays = spent["_chunk_arrays"] + spent["_dense_chunk"]
    return {"total": total, "grouping and designs": spent["_build_groups"], "group checks": spent["_check_groups"],
            "chunk arrays": arrays, "compiled programs and transfers": spent["map"] - arrays,
            "result frame": spent["_result_frame"],
            "other": total - spent["_build_groups"] - spent["_check_groups"] - spent["map"] - spent["_result_frame"]}


def format_stages(st: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in st.items() if k != "total") + f" (total {st['total']:.3f} s)"


def run_child(devices: int, quick: bool, tmp: str, cache: str | None = None, part: str | None = None) -> dict:
    # an empty compilation cache: the first call's time includes compiling (a second child
    # given the same cache measures a fresh process whose cache is warm)
    env = dict(os.environ, BENCH_LOGLIK_CSV=os.path.join(tmp, f"loglik{devices}.csv"),
               BENCH_SNP_NPY=os.path.join(tmp, f"snp{devices}.npy"),
               DRMPY_CACHE_DIR=cache or os.path.join(tmp, f"cache-{devices}", "jax"))
    if part is not None:
        env["BENCH_PART"] = part
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(devices)] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


# ------------------------------------------------------------------------------------------ baselines


def single_fit_loop(dat, big, n_rep: int = 200) -> float:
    import warnings

    import drmpy as drm

    f = drm.Formula(*SEED_FORMULA)
    drm.fit(f, data=dat)
    frames = []
    for r in range(n_rep):
        d = dat.copy()
        d["yi"] = big["yi"].to_numpy()[r * len(dat):(r + 1) * len(dat)]
        frames.append(d)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for d in frames:
            drm.fit(f, data=d)
    return n_rep / (time.perf_counter() - t)


METAFOR_LOOP = r"""
suppressPackageStartupMessages(library(metafor))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
d$habitat <- factor(d$habitat, levels = c("grassland", "forest"))
reps <- sort(unique(d$replicate))
parts <- split(d, d$replicate)
ll <- rep(NA_real_, length(reps))
fail <- 0L
t0 <- proc.time()[["elapsed"]]
for (i in seq_along(reps)) {
  res <- tryCatch(rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat,
                      data = parts[[i]], method = "ML"), error = function(e) NULL)
  if (is.null(res)) fail <- fail + 1L else ll[i] <- as.numeric(logLik(res))
}
el <- proc.time()[["elapsed"]] - t0
write.csv(data.frame(replicate = reps, loglik = ll), args[2], row.names = FALSE)
cat(sprintf("RESULT %d %.4f %d %s\n", length(reps), el, fail, as.character(packageVersion("metafor"))))
"""


def metafor_loop(big, n_rep: int, tmp: str):
    if shutil.which("Rscript") is None:
        return None
    import pandas as pd

    sub = big[big["replicate"] < n_rep]
    data_csv = os.path.join(tmp, "replicates.csv")
    out_csv = os.path.join(tmp, "metafor_loglik.csv")
    script = os.path.join(tmp, "loop.R")
    sub.to_csv(data_csv, index=False)
    with open(script, "w") as fh:
        fh.write(METAFOR_LOOP)
    proc = subprocess.run(["Rscript", script, data_csv, out_csv], capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not line:
        return {"error": proc.stderr.strip()[-300:]}
    _, n, el, fail, version = line[-1].split()
    return {"n": int(n), "seconds": float(el), "failures": int(fail), "version": version,
            "loglik": pd.read_csv(out_csv)}


def pymare_run(d, chunk: int = 10_000):
    import warnings

    import numpy as np

    try:
        from pymare.estimators import VarianceBasedLikelihoodEstimator
    except ImportError:
        return None
    import pymare

    t = time.perf_counter()
    sizes = d.groupby("snp", sort=True).size().to_numpy()
    order = np.argsort(sizes, kind="stable")
    y_all = d["yi"].to_numpy()
    v_all = d["vi"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    batches = []
    for k in np.unique(sizes):
        groups = order[sizes[order] == k]
        rows = offsets[groups][:, None] + np.arange(k)[None, :]  # (d, k)
        batches.append((groups, y_all[rows].T.copy(), v_all[rows].T.copy()))
    prep = time.perf_counter() - t
    tau2 = np.full(len(sizes), np.nan)
    mu = np.full(len(sizes), np.nan)
    est = VarianceBasedLikelihoodEstimator(method="REML")
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for groups, y, v in batches:
            X = np.ones((y.shape[0], 1))
            for s in range(0, y.shape[1], chunk):
                est.fit(y=y[:, s:s + chunk], v=v[:, s:s + chunk], X=X)
                tau2[groups[s:s + chunk]] = est.params_["tau2"][0]
                mu[groups[s:s + chunk]] = est.params_["fe_params"][0]
    fit_s = time.perf_counter() - t
    return {"prep": prep, "fit": fit_s, "tau2": tau2, "mu": mu, "version": pymare.__version__}


# ------------------------------------------------------------------------------------------ main


def main(quick: bool) -> None:
    import numpy as np
    import pandas as pd

    print(f"python {sys.version.split()[0]}; cores {os.cpu_count()}" + ("; --quick" if quick else "")
          + f"; load average {os.getloadavg()}")
    tmp = tempfile.mkdtemp(prefix="drmpy-bench-")
    try:
        kids = {dev: run_child(dev, quick, tmp) for dev in (1, 2)}
        again = {dev: run_child(dev, quick, tmp, cache=os.path.join(tmp, f"cache-{dev}", "jax"), part="a")
                 for dev in (1, 2)}
        import drmpy as drm

        print(f"drmpy {drm.__version__}")
        R = kids[1]["a_R"]
        dat, big = restoration_replicates(R)

        print(f"\n(a) restoration model, {R} simulated replicates (n = 80 each), ML")
        for dev, k in kids.items():
            warm = min(k["a_warm"])
            print(f"  fit_batch, {dev} CPU device(s): first call {k['a_first']:.2f} s "
                  f"(compile ~{k['a_first'] - warm:.2f} s); warm best {warm:.3f} s, median "
                  f"{float(np.median(k['a_warm'])):.3f} s -> {R / warm:,.0f} fits/s "
                  f"(median {R / float(np.median(k['a_warm'])):,.0f}); converged {k['a_converged']}/{R}")
            ag = again[dev]
            print(f"    fresh process with the compilation cache warm: first call {ag['a_first']:.2f} s; warm best "
                  f"{min(ag['a_warm']):.3f} s ({R / min(ag['a_warm']):,.0f} fits/s); CPU time of a warm call "
                  f"{ag['a_cpu']:.3f} s; load average then {tuple(round(x, 2) for x in ag['a_load'])}")
            print(f"    where a warm call's time goes (s): {format_stages(ag['a_stages'])}")
        print(f"  replicates with sigma:(Intercept) < -6 (heterogeneity at the zero boundary): {kids[1]['a_boundary']}")
        single = single_fit_loop(dat, big)
        print(f"  loop of single drm.fit (200 replicates, formula handling included): {single:,.0f} fits/s")
        best = {dev: R / min(k["a_warm"]) for dev, k in kids.items()}
        n_mf = min(R, int(os.environ.get("BENCH_METAFOR_REPS", "1000")))
        mf = metafor_loop(big, n_mf, tmp)
        if mf is None:
            print("  metafor: Rscript not found, skipped")
        elif "error" in mf:
            print(f"  metafor: failed to run ({mf['error']})")
        else:
            rate = mf["n"] / mf["seconds"]
            ours = pd.read_csv(os.path.join(tmp, "loglik1.csv")).set_index("replicate")["loglik"]
            theirs = mf["loglik"].set_index("replicate")["loglik"]
            both = theirs.dropna().index
            diff = (ours.loc[both] - theirs.loc[both]).abs()
            better = int((ours.loc[both] - theirs.loc[both] > 1e-6).sum())
            worse = int((theirs.loc[both] - ours.loc[both] > 1e-6).sum())
            print(f"  metafor {mf['version']} rma(..., scale = ~ habitat, method = 'ML') loop over the first "
                  f"{mf['n']}: {rate:,.1f} fits/s (timed in R); errors {mf['failures']}/{mf['n']}")
            print(f"  logLik, drmpy - metafor over the {len(both)} metafor fits: median |diff| "
                  f"{float(diff.median()):.2g}, max |diff| {float(diff.max()):.2g}; higher by > 1e-6: drmpy "
                  f"in {better}, metafor in {worse}")
            print(f"  ratios: fit_batch / metafor loop = {best[1] / rate:,.0f}x (1 device), "
                  f"{best[2] / rate:,.0f}x (2 devices)")
        print(f"  ratios: fit_batch / single-fit loop = {best[1] / single:,.1f}x (1 device), "
              f"{best[2] / single:,.1f}x (2 devices)")

        if "b_G" not in kids[1]:
            print(f"\n(b) skipped (--part a); see benchmarks/bench_snp.py; load average {os.getloadavg()}")
            return
        G = kids[1]["b_G"]
        print(f"\n(b) {G:,} random-effects meta-analyses of 5-30 studies "
              f"({kids[1]['b_rows']:,} rows), yi ~ 1 + meta_V(V=vi), REML")
        for dev, k in kids.items():
            print(f"  fit_batch, {dev} CPU device(s): first call {k['b_first']:.2f} s "
                  f"({G / k['b_first']:,.0f} fits/s), warm {k['b_warm']:.2f} s ({G / k['b_warm']:,.0f} fits/s); "
                  f"converged {k['b_converged']:,}/{G:,}; finite SEs {k['b_se_finite']:,}/{2 * G:,}")
            print(f"    memory: input frame {k['b_data_mb']:.0f} MB, process RSS before the fit "
                  f"{k['b_rss_before_mb']:.0f} MB, peak RSS {k['b_peak_mb']:.0f} MB "
                  f"(after the first call {k['b_peak_mb_first']:.0f} MB)")
        d = snp_data(G)
        pm = pymare_run(d)
        if pm is None:
            print("  PyMARE: not installed, skipped")
        else:
            rate = G / pm["fit"]
            print(f"  PyMARE {pm['version']} VarianceBasedLikelihoodEstimator(method='REML'), grouped by k, "
                  f"chunks of 10,000: {pm['fit']:.2f} s ({rate:,.0f} fits/s; grouping the data by k "
                  f"took another {pm['prep']:.2f} s); no SEs of tau^2, no convergence flags")
            ours = np.load(os.path.join(tmp, "snp1.npy"))
            tau2_ours = np.exp(2 * ours[:, 1])
            dt = np.abs(tau2_ours - pm["tau2"])
            dm = np.abs(ours[:, 0] - pm["mu"])
            print(f"    agreement with drmpy: tau^2 median |diff| {np.nanmedian(dt):.2g}, 99.9% {np.nanquantile(dt, 0.999):.2g}, "
                  f"max {np.nanmax(dt):.2g}; mu max |diff| {np.nanmax(dm):.2g}")
            for dev, k in kids.items():
                print(f"  ratio fit_batch (warm) / PyMARE, {dev} device(s): {G / k['b_warm'] / rate:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", type=int, default=0)
    parser.add_argument("--part", choices=["a", "ab"], default="ab", help="a: the restoration replicates only")
    parser.add_argument("--metafor-reps", type=int, default=1000, help="replicates in the metafor loop")
    args = parser.parse_args()
    if not args.child:  # children inherit the parent's choice through the environment
        os.environ["BENCH_PART"] = args.part
        os.environ["BENCH_METAFOR_REPS"] = str(args.metafor_reps)
    if args.child:
        child(args.child, args.quick)
    else:
        main(args.quick)
