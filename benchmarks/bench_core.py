"""Speed of the core location-scale model (issue 2). Run: python3 benchmarks/bench_core.py

Measures
1. warm single fit of the seed (restoration) example, same data (design cache hit) and with
   fresh response values each time (formula handling and array set-up included);
2. a whole fresh process that imports drmpy, fits the seed example and prints its summary,
   alternating with a fresh ``Rscript`` that loads metafor, fits the same model
   (``rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, method = "ML")``) and
   prints it (drmTMB, the reference package, is not installed here: metafor is the R anchor);
3. diagonal-V location-scale fits at n = 1e3 .. 1e6: first call (compile, or persistent-cache
   load), warm on new data of the same size (hashing and design building included) and warm
   refit of the same data object (design cache hit).

The machine may be shared: the load average is printed; compare figures measured in one run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pandas as pd

import drmpy as drm

SEED_FORMULA = ("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat")


def warm_seed(repeats: int = 200) -> tuple[float, float]:
    dat = drm.datasets.restoration()
    drm.fit(drm.Formula(*SEED_FORMULA), data=dat)
    same = []
    for _ in range(repeats):
        t = time.perf_counter()
        drm.fit(drm.Formula(*SEED_FORMULA), data=dat)
        same.append(time.perf_counter() - t)
    rng = np.random.default_rng(0)
    fresh = []
    for _ in range(repeats // 4):
        d = dat.copy()
        d["yi"] = d["yi"] + rng.normal(0, 0.01, len(d))
        t = time.perf_counter()
        drm.fit(drm.Formula(*SEED_FORMULA), data=d)
        fresh.append(time.perf_counter() - t)
    return statistics.median(same), statistics.median(fresh)


FRESH_SCRIPT = (
    "import drmpy as drm\n"
    "fit = drm.fit(drm.Formula('yi ~ habitat + duration + meta_V(V=vi)', 'sigma ~ habitat'), "
    "data=drm.datasets.restoration())\n"
    "print(fit.summary())\n"
)


R_SCRIPT = r"""
suppressPackageStartupMessages(library(metafor))
d <- read.csv("{csv}")
d$habitat <- factor(d$habitat, levels = c("grassland", "forest"))
print(rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, data = d, method = "ML"))
"""


def fresh_process(repeats: int = 5) -> tuple[list[float], list[float] | None]:
    """Fresh drmpy processes and, alternating with them, fresh Rscript + metafor processes."""
    import shutil
    import tempfile

    subprocess.run([sys.executable, "-c", FRESH_SCRIPT], check=True, capture_output=True)  # fill cache
    tmp = tempfile.mkdtemp(prefix="drmpy-core-")
    r_cmd = None
    if shutil.which("Rscript") is not None:
        csv = os.path.join(tmp, "restoration.csv")
        drm.datasets.restoration().to_csv(csv, index=False)
        script = os.path.join(tmp, "seed.R")
        with open(script, "w") as fh:
            fh.write(R_SCRIPT.replace("{csv}", csv))
        r_cmd = ["Rscript", script]
        subprocess.run(r_cmd, check=True, capture_output=True)
    times, r_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", FRESH_SCRIPT], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
        if r_cmd is not None:
            t = time.perf_counter()
            subprocess.run(r_cmd, check=True, capture_output=True)
            r_times.append(time.perf_counter() - t)
    shutil.rmtree(tmp, ignore_errors=True)
    return times, (r_times if r_cmd is not None else None)


def simulate(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    g = rng.choice(["a", "b"], size=n)
    vi = rng.uniform(0.01, 0.1, size=n)
    sigma = np.exp(-1.5 + 0.5 * (g == "b"))
    yi = 0.2 + 0.3 * x + rng.normal(size=n) * np.sqrt(vi + sigma**2)
    return pd.DataFrame({"yi": yi, "vi": vi, "x": x, "g": g})


def scale(ns=(1_000, 10_000, 100_000, 1_000_000)) -> list[tuple[int, float, float, float]]:
    out = []
    for n in ns:
        d = simulate(n)
        f = drm.Formula("yi ~ x + meta_V(V=vi)", "sigma ~ g")
        t = time.perf_counter()
        fit = drm.fit(f, data=d)
        first = time.perf_counter() - t
        d2 = simulate(n, seed=2)
        warm = []
        for _ in range(3):
            t = time.perf_counter()
            fit2 = drm.fit(f, data=d2)
            warm.append(time.perf_counter() - t)
            drm.clear_cache()
        drm.fit(f, data=d2)
        same = []
        for _ in range(3):
            t = time.perf_counter()
            drm.fit(f, data=d2)
            same.append(time.perf_counter() - t)
        assert fit.converged and fit2.converged
        out.append((n, first, statistics.median(warm), statistics.median(same), fit2.params["sigma:g[T.b]"]))
    return out


def cold_compile() -> str:
    """First fit at n = 1e3 and 1e6 in a process with an empty compilation cache."""
    import tempfile

    code = (
        "import time, sys; sys.path.insert(0, 'benchmarks')\n"
        "from bench_core import simulate\n"
        "import drmpy as drm\n"
        "f = drm.Formula('yi ~ x + meta_V(V=vi)', 'sigma ~ g')\n"
        "for n in (1_000, 1_000_000):\n"
        "    d = simulate(n); t = time.perf_counter(); drm.fit(f, data=d)\n"
        "    print(f'n={n}: first call with empty cache {time.perf_counter() - t:.2f} s')\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DRMPY_CACHE_DIR=tmp)
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return out.stdout.strip()


def main() -> None:
    print(f"python {sys.version.split()[0]}; cores {os.cpu_count()}; drmpy {drm.__version__}; "
          f"load average {os.getloadavg()}")
    same, fresh = warm_seed()
    print(f"seed example warm fit, same data (design cached):      {same * 1e3:7.2f} ms (median)")
    print(f"seed example warm fit, new values (formula handling):  {fresh * 1e3:7.2f} ms (median)")
    times, r_times = fresh_process()
    print(f"fresh process import+fit+print: median {statistics.median(times):.3f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in times)})")
    if r_times is None:
        print("Rscript not found: no R anchor")
    else:
        print(f"fresh Rscript, library(metafor) + rma(..., scale = ~ habitat) + print, alternating: median "
              f"{statistics.median(r_times):.3f} s (runs: {', '.join(f'{t:.2f}' for t in r_times)}); "
              f"drmpy / R = {statistics.median(times) / statistics.median(r_times):.2f}")
    print("diagonal-V location-scale, yi ~ x + meta_V(V=vi), sigma ~ g:")
    print(f"{'n':>9} {'first call s':>13} {'warm s':>9} {'same data s':>12}  sigma:g[T.b] (true 0.5)")
    for n, first, warm, same, est in scale():
        print(f"{n:>9} {first:13.3f} {warm:9.3f} {same:12.3f}  {est:.4f}")
    print("(first call: compile, or load from the persistent cache when an earlier run filled it)")
    print(cold_compile())
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
