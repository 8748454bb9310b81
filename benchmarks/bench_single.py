"""One large diagonal-V location-scale fit (issue 15, target 4). Run: python3 benchmarks/bench_single.py

Model: ``yi ~ x + meta_V(V = vi)``, ``sigma ~ x2`` at n = 1e6, ML and REML.

Measures
1. the first call in a fresh process (data made before the clock starts): with an empty
   compilation cache (compile) and again with the cache the first process filled;
2. warm calls in one process: the same data object (design cache hit; best of 5) and a new
   data frame of the same size each time (formula handling included; best of 3);
3. where the time of a warm call goes, stage by stage (``time.perf_counter`` around the
   steps of ``drm.fit``, ``jax.block_until_ready`` on the compiled program), and inside the
   compiled program: the Newton start from a subsample (n >= 2^17 padded rows, see
   ``engine.program.subsample_stride``), the number of full-data Newton evaluations times the
   cost of one evaluation (compiled alone), and the boundary check; the covariance at the
   optimum re-uses the last evaluation's pieces.

Targets: warm <= 0.3 s, first call <= 1.5 s.  The machine may be shared: the load average
is printed, and CPU times (``time.process_time``, every thread of the process) beside wall
times; compare figures measured in one run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

N = 1_000_000
FORMULA = ("yi ~ x + meta_V(V=vi)", "sigma ~ x2")


def simulate(n: int = N, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x2 = rng.normal(size=n)
    vi = rng.uniform(0.01, 0.1, size=n)
    sigma = np.exp(-1.0 + 0.5 * x2)
    yi = 0.3 + 0.2 * x + rng.normal(size=n) * np.sqrt(vi + sigma**2)
    return pd.DataFrame({"yi": yi, "x": x, "x2": x2, "vi": vi})


FIRST_CALL = """
import sys, time
t0 = time.perf_counter()
import drmpy as drm
t_import = time.perf_counter() - t0
sys.path.insert(0, {here!r})
from bench_single import FORMULA, simulate
d = simulate()
out = []
for method in ("ML", "REML"):
    t, c = time.perf_counter(), time.process_time()
    fit = drm.fit(drm.Formula(*FORMULA), data=d, method=method)
    out.append(f"{{method}} {{time.perf_counter() - t:.3f}} s (CPU {{time.process_time() - c:.3f}} s)")
    assert fit.converged
print(f"import {{t_import:.3f}} s;", "; ".join(out))
"""


def first_calls() -> list[str]:
    """First ML then REML call in a fresh process: empty cache, then the cache it filled."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = FIRST_CALL.format(here=here)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DRMPY_CACHE_DIR=tmp)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        for label in ("empty cache (compile)", "cache filled by the process above"):
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
            lines.append(f"  fresh process, {label}: {out.stdout.strip()}")
    return lines


def stages(drm, d: pd.DataFrame, method: str, new_data: bool) -> dict[str, float]:
    """Wall time of each step of ``drm.fit`` (as api.fit runs them)."""
    import jax

    from drmpy import api
    from drmpy.engine.program import Control, boundary_candidates, prepare, run_fit
    from drmpy.results.fit import DrmFit

    if new_data:  # values no earlier call has seen
        d = d.copy()
        d["yi"] = d["yi"] + np.random.default_rng().uniform(1e-4, 2e-4)
    times = {}
    t = time.perf_counter()
    formula = drm.Formula(*FORMULA)
    ctrl = Control.coerce(None)
    times["formula + control"] = time.perf_counter() - t
    t = time.perf_counter()
    fp = api._fingerprint(formula, d, None, None)
    t_key = time.perf_counter() - t
    entry = api._design_cache.get(fp)
    t = time.perf_counter()
    hit = entry is not None and api._same_data(entry[0], d)
    t_compare = time.perf_counter() - t
    t = time.perf_counter()
    design, cache = api._design_for(formula, d, None, None)
    label = (f"design: cache hit (key {t_key * 1e3:.1f} ms + column compare {t_compare * 1e3:.1f} ms)" if hit
             else "design: built (formulaic, V, rows)")
    times[label] = time.perf_counter() - t
    t = time.perf_counter()
    key = (method, None)
    if key not in cache:
        cache[key] = prepare(design, method, ctrl) + (boundary_candidates(design),)
    prepared, clusters, boundary = cache[key]
    times["prepare (start values, padding, device transfer)"] = time.perf_counter() - t
    t = time.perf_counter()
    raw = run_fit(prepared, ctrl, boundary)
    jax.block_until_ready(raw.theta)
    times["compiled program + copy back"] = time.perf_counter() - t
    t = time.perf_counter()
    DrmFit(design, raw, method, ctrl, clusters, data=d, env=None)
    times["result object"] = time.perf_counter() - t
    return times


def per_evaluation(drm, d: pd.DataFrame, method: str) -> tuple[int, float, float, float]:
    """(full-data Newton evaluations, ms per derivative evaluation, ms per value evaluation,
    ms of the subsample start) at the start values, each compiled alone (best of 5)."""
    import jax

    from drmpy import api
    from drmpy.engine import diag_columns as dc
    from drmpy.engine.program import _subsample_start, subsample_stride

    fit = drm.fit(drm.Formula(*FORMULA), data=d, method=method)
    design, cache = api._design_for(drm.Formula(*FORMULA), d, None, None)
    (arrs, struct, beta0, phi0), _, _ = cache[(method, None)]
    c = jax.jit(lambda a: dc.DiagColumns(a.y, dc.columns(a.X), dc.columns(a.Z_sigma), a.v, a.w))(arrs)
    reml = method == "REML"
    stride = subsample_stride(arrs.y.shape[0]) or 1
    deriv = jax.jit(lambda g, c: dc.columns_derivatives(g, c, reml, location=True))
    value = jax.jit(lambda g, c: dc.columns_value(g, c, reml))
    start = jax.jit(lambda g, c: _subsample_start(c, g, 100, 1e-8, reml, stride))
    gamma = jax.device_put(phi0)
    out = []
    for fn in (deriv, value, start):
        jax.block_until_ready(fn(gamma, c))
        best = np.inf
        for _ in range(5):
            t = time.perf_counter()
            jax.block_until_ready(fn(gamma, c))
            best = min(best, time.perf_counter() - t)
        out.append(best * 1e3)
    return fit.evaluations, out[0], out[1], out[2]


def warm_calls(drm, d: pd.DataFrame, method: str, repeats: int = 5):
    """(fit, wall times, CPU times) of ``repeats`` warm calls on the same data, after one
    call that compiles or loads the program."""
    fit = drm.fit(drm.Formula(*FORMULA), data=d, method=method)
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        drm.fit(drm.Formula(*FORMULA), data=d, method=method)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return fit, walls, cpus


def main() -> None:
    print(f"python {sys.version.split()[0]}; cores {os.cpu_count()}; load average {os.getloadavg()}")
    print(f"n = {N:,}; mu: {FORMULA[0]}; sigma: {FORMULA[1].split('~')[1].strip()}")
    print("first call (ML, then REML in the same process):")
    for line in first_calls():
        print(line)
    import drmpy as drm

    d = simulate()
    for method in ("ML", "REML"):
        fit, same, same_cpu = warm_calls(drm, d, method)
        new = []
        for i in range(3):
            d2 = d.copy()
            d2["yi"] = d2["yi"] + 1e-3 * (i + 1)
            t = time.perf_counter()
            drm.fit(drm.Formula(*FORMULA), data=d2, method=method)
            new.append(time.perf_counter() - t)
        print(f"{method}: warm, same data: best {min(same):.3f} s (runs {', '.join(f'{t:.3f}' for t in same)}; "
              f"CPU best {min(same_cpu):.3f} s, all threads); "
              f"new data frame: best {min(new):.3f} s; logLik {fit.loglik:.4f}, "
              f"{fit.params['sigma:x2']:.4f} (true 0.5)")
        for label, new_data in (("same data", False), ("new data", True)):
            parts = stages(drm, d, method, new_data)
            total = sum(parts.values())
            print(f"  stages, warm call, {label} (total {total * 1e3:.1f} ms):")
            for name, sec in parts.items():
                print(f"    {name:<64} {sec * 1e3:8.1f} ms")
        evaluations, t_deriv, t_value, t_start = per_evaluation(drm, d, method)
        print(f"  compiled program: subsample start ({t_start:.1f} ms) + {evaluations} full-data Newton evaluations "
              f"x {t_deriv:.1f} ms (value, gradient, Hessian; each compiled alone) + boundary check "
              f"(one value evaluation: {t_value:.1f} ms)")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
