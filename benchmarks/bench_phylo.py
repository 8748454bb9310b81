"""Phylogenetic meta-analysis at 300 to 100,000 species: drmpy's linear-time tree route
against metafor's dense rma.mv(R = list(phylo = vcv(tree, corr = TRUE))) on the same data.

Each size: a coalescent tree (benchmarks/phylo_data.py), 3 effect sizes per species, the
model ``yi ~ x + phylo(1|phylo, tree) + (1|species) + meta_V(V = vi)`` (metafor:
``random = list(~1|species, ~1|phylo, ~1|obs)``), REML.  drmpy runs in a fresh process per
size: the first call (Newick parsing, design, tree arrays, compiling with an empty cache) and
warm calls on a new data frame of the same shape (design and tree arrays rebuilt, the
compiled program re-used), with the process's peak RSS.  metafor runs where a dense fit
finishes within the time limit.  drmTMB is not installed here.

    python3 benchmarks/bench_phylo.py [--sizes 300,1000,10000,100000] [--metafor 300,1000]

Writes benchmarks/bench_phylo.out (the table) and keeps the simulated data in
benchmarks/phylo_data/ (not committed: regenerated from the seed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
DATA = HERE / "phylo_data"

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np, pandas as pd
import drmpy as drm
from drmpy.effects.phylogeny import read_tree
folder = sys.argv[1]
data = pd.read_csv(folder + "/data.csv")
t_import = time.perf_counter() - t0
text = open(folder + "/tree.nwk").read()
t = time.perf_counter()
tree = read_tree(text)
t_parse = time.perf_counter() - t
f = drm.Formula("yi ~ x + phylo(1|phylo, tree=tree) + (1|species) + meta_V(V=vi)")
t = time.perf_counter()
fit = drm.fit(f, data=data, method="REML")
first = time.perf_counter() - t
warm = []
for rep in range(3):
    d2 = data.copy()
    d2["yi"] = d2["yi"] + 1e-9 * (rep + 1)  # a new frame: design and tree arrays rebuilt
    t = time.perf_counter()
    fit2 = drm.fit(f, data=d2, method="REML")
    warm.append(time.perf_counter() - t)
p = fit.params
print(json.dumps({
    "import_s": t_import, "parse_s": t_parse, "first_s": first, "warm_s": warm,
    "structure": fit.structure, "converged": bool(fit.converged), "iterations": fit.iterations,
    "loglik_metafor_scale": float(fit.loglik + 0.5 * np.linalg.slogdet(
        np.column_stack([np.ones(len(data)), data["x"]]).T @ np.column_stack([np.ones(len(data)), data["x"]]))[1]),
    "beta": [float(p["mu:(Intercept)"]), float(p["mu:x"])],
    "sigma2": [float(np.exp(2 * p["sd(species):(Intercept)"])), float(np.exp(2 * p["sd(phylo):(Intercept)"])),
               float(np.exp(2 * p["sigma:(Intercept)"]))],
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
}))
"""

R_SCRIPT = r"""
suppressPackageStartupMessages({library(metafor); library(ape); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
dat <- read.csv(file.path(args[1], "data.csv"))
dat$obs <- seq_len(nrow(dat))
t0 <- Sys.time()
tree <- read.tree(file.path(args[1], "tree.nwk"))
C <- vcv(tree, corr = TRUE)
res <- rma.mv(yi, vi, mods = ~ x, random = list(~ 1 | species, ~ 1 | phylo, ~ 1 | obs),
              R = list(phylo = C), data = dat, method = "REML")
secs <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
cat(toJSON(list(seconds = secs, loglik = as.numeric(logLik(res)), beta = unname(coef(res)),
                sigma2 = unname(res$sigma2), peak_rss_gb = NA), auto_unbox = TRUE, digits = NA), "\n")
"""


def simulate_to(n_species: int) -> Path:
    sys.path.insert(0, str(HERE))
    from phylo_data import simulate

    folder = DATA / f"coal{n_species}"
    if not (folder / "data.csv").exists():
        folder.mkdir(parents=True, exist_ok=True)
        newick, data = simulate(n_species, 3, seed=n_species)
        (folder / "tree.nwk").write_text(newick)
        data.to_csv(folder / "data.csv", index=False)
    return folder


def run_drmpy(folder: Path, cache: str) -> dict:
    env = dict(os.environ, DRMPY_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_metafor(folder: Path, limit_s: float) -> dict | None:
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as fh:
        fh.write(R_SCRIPT)
    try:
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "Rscript", fh.name, str(folder)],
                             capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"seconds": f"> {limit_s:.0f} (stopped)"}
    finally:
        os.unlink(fh.name)
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["peak_rss_gb"] = int(out.stderr.strip().splitlines()[-1]) / 1e6
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="300,1000,10000,100000")
    ap.add_argument("--metafor", default="300,1000")
    ap.add_argument("--metafor-limit", type=float, default=1200.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    metafor_sizes = {int(s) for s in args.metafor.split(",") if s}
    lines = [f"# bench_phylo.py, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
             f"load average at start {os.getloadavg()[0]:.1f}",
             "# model: yi ~ x + phylo(1|phylo, tree) + (1|species) + meta_V(V = vi), REML, 3 effect sizes per species",
             "# drmpy: fresh process per size, empty compilation cache; first = parse excluded, design + tree"
             " arrays + compile + fit; warm = new data frame, same shapes (best of 3)", ""]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as cache:
        for n in sizes:
            folder = simulate_to(n)
            res = run_drmpy(folder, cache)
            line = (f"species {n:>7,}  rows {3 * n:>7,}  drmpy [{res['structure']}]: parse {res['parse_s']:.2f} s, "
                    f"first {res['first_s']:.2f} s, warm {min(res['warm_s']):.2f} s (median "
                    f"{sorted(res['warm_s'])[1]:.2f}), {res['iterations']} iterations, converged {res['converged']}, "
                    f"peak RSS {res['peak_rss_gb']:.2f} GB; logLik (metafor scale) {res['loglik_metafor_scale']:.6f}, "
                    f"beta {res['beta'][0]:.6f} {res['beta'][1]:.6f}, sigma2 "
                    + " ".join(f"{v:.6f}" for v in res["sigma2"]))
            print(line, flush=True)
            lines.append(line)
            if n in metafor_sizes:
                mf = run_metafor(folder, args.metafor_limit)
                if "loglik" in mf:
                    line = (f"species {n:>7,}  metafor rma.mv dense: {mf['seconds']:.1f} s, peak RSS "
                            f"{mf['peak_rss_gb']:.2f} GB; logLik {mf['loglik']:.6f} (diff {res['loglik_metafor_scale'] - mf['loglik']:.2e}), "
                            f"beta {mf['beta'][0]:.6f} {mf['beta'][1]:.6f}, sigma2 "
                            + " ".join(f"{v:.6f}" for v in mf["sigma2"])
                            + f"; drmpy warm is {mf['seconds'] / min(res['warm_s']):.0f}x faster")
                else:
                    line = f"species {n:>7,}  metafor rma.mv dense: {mf}"
                print(line, flush=True)
                lines.append(line)
    (HERE / "bench_phylo.out").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
