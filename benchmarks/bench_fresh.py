"""A fresh process for the seed example against Rscript (issue 15, target 5).
Run: python3 benchmarks/bench_fresh.py [pairs]

drmpy: start python, ``import drmpy``, fit the README's first example (restoration data,
``yi ~ habitat + duration + meta_V(V=vi)``, ``sigma ~ habitat``, ML), print the summary.
R: ``Rscript`` that loads metafor, reads the same data and prints
``rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, method = "ML")``, the
location-scale model metafor fits (drmTMB, the reference package, is not installed here).

Pairs alternate which runs first.  Wall time and CPU time (user + system, from
``os.wait4``) of each process; CPU time is the steadier figure on a shared machine.  One
unmeasured run of each fills drmpy's compilation cache and Python's bytecode caches
(``PYTHONDONTWRITEBYTECODE`` is unset for the child: an installed package has its .pyc).
Then one more drmpy process reports where its time goes and which heavy packages it loaded,
and one with an empty compilation cache shows what the cache saves.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

SEED = """import drmpy as drm
dat = drm.datasets.restoration()
fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=dat)
print(fit.summary())
"""

# the same, timed by stage, with the heavy packages it loaded
SEED_STAGES = """import time, sys
t0 = time.perf_counter()
import drmpy as drm
t1 = time.perf_counter()
dat = drm.datasets.restoration()
fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=dat)
t2 = time.perf_counter()
text = str(fit.summary())
t3 = time.perf_counter()
heavy = [m for m in ("scipy", "matplotlib", "dask", "tqdm", "formulaic", "narwhals", "drmpy.plots",
                     "drmpy.inference", "drmpy.effects", "drmpy.heterogeneity", "drmpy.bias",
                     "drmpy.simulation", "drmpy.batch") if m in sys.modules]
print(f"import drmpy {t1 - t0:.3f} s; data + fit {t2 - t1:.3f} s; summary {t3 - t2:.3f} s; "
      f"{len(sys.modules)} modules; loaded: {', '.join(heavy)}")
"""

R_SCRIPT = """suppressPackageStartupMessages(library(metafor))
d <- read.csv("{csv}")
d$habitat <- factor(d$habitat, levels = c("grassland", "forest"))
print(rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, data = d, method = "ML"))
"""


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall s, CPU s) of one process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if status != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    print(f"python {sys.version.split()[0]}; cores {os.cpu_count()}; load average {os.getloadavg()}")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        import drmpy as drm

        csv = os.path.join(tmp, "restoration.csv")
        drm.datasets.restoration().to_csv(csv, index=False)
        r_path = os.path.join(tmp, "seed.R")
        with open(r_path, "w") as fh:
            fh.write(R_SCRIPT.replace("{csv}", csv))
        py_cmd = [sys.executable, "-c", SEED]
        r_cmd = ["Rscript", r_path]
        timed(py_cmd, env)  # fills the compilation and bytecode caches
        timed(r_cmd, env)
        py, r = [], []
        for i in range(pairs):
            order = [("py", py_cmd), ("R", r_cmd)] if i % 2 == 0 else [("R", r_cmd), ("py", py_cmd)]
            for name, cmd in order:
                (py if name == "py" else r).append(timed(cmd, env))
        print(f"{pairs} alternating pairs, fresh process: import + fit + print summary")
        print(f"{'pair':>4} {'drmpy wall':>11} {'R wall':>8} {'ratio':>6} {'drmpy CPU':>10} {'R CPU':>7} {'ratio':>6}")
        for i, ((pw, pc), (rw, rc)) in enumerate(zip(py, r)):
            print(f"{i + 1:>4} {pw:11.3f} {rw:8.3f} {pw / rw:6.2f} {pc:10.3f} {rc:7.3f} {pc / rc:6.2f}")
        med = statistics.median
        print(f"median wall: drmpy {med(p[0] for p in py):.3f} s, R metafor {med(x[0] for x in r):.3f} s; "
              f"median of pair ratios {med(p[0] / x[0] for p, x in zip(py, r)):.2f}")
        print(f"median CPU:  drmpy {med(p[1] for p in py):.3f} s, R metafor {med(x[1] for x in r):.3f} s; "
              f"median of pair ratios {med(p[1] / x[1] for p, x in zip(py, r)):.2f}")
        out = subprocess.run([sys.executable, "-c", SEED_STAGES], env=env, capture_output=True, text=True, check=True)
        print("drmpy stages (warm cache):", out.stdout.strip())
        cold = dict(env, DRMPY_CACHE_DIR=os.path.join(tmp, "empty-cache"))
        cold.pop("JAX_COMPILATION_CACHE_DIR", None)
        out = subprocess.run([sys.executable, "-c", SEED_STAGES], env=cold, capture_output=True, text=True, check=True)
        print("drmpy stages (empty compilation cache):", out.stdout.strip())
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
