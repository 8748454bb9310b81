"""A/B timing of drmpy on two JAX installations, alternating in one run (issue 24, item 6).

Run: python benchmarks/ab_jax.py [--jax-a DIR] [--jax-b DIR] [--reps 7] [--R 10000]

``--jax-a``/``--jax-b`` name a folder put first on ``PYTHONPATH`` of that child (a
``pip install --target`` of jax and jaxlib); without one the child uses the interpreter's own
JAX.  Both children import drmpy from this tree's ``src/``.  Each child, warmed up once,
answers one warm call at a time, the parent asking A and B in turn so both see the same
machine load:

* ``single``: ``drm.fit`` of bench_single.py's model (``--n`` rows, default 1e6, with known V,
  ``sigma ~ x2``, ML);
* ``batch``: ``drm.fit_batch`` of bench_batch.py's 10,000 restoration replicates.

Prints each child's JAX version and first-call times, best and median warm wall times, and
the largest logLik difference between A and B.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def child(R: int, n: int) -> None:
    sys.path.insert(0, HERE)
    import numpy as np
    from bench_batch import SEED_FORMULA, restoration_replicates
    from bench_single import FORMULA, simulate

    import drmpy as drm
    import jax
    import jaxlib

    d = simulate(n)
    _, big = restoration_replicates(R)
    fs, fb = drm.Formula(*FORMULA), drm.Formula(*SEED_FORMULA)
    calls = {
        "single": lambda: drm.fit(fs, data=d, method="ML"),
        "batch": lambda: drm.fit_batch(fb, big, by="replicate", progress=False),
    }
    first, results = {}, {}
    for name, call in calls.items():
        t = time.perf_counter()
        results[name] = call()
        first[name] = time.perf_counter() - t
    logliks = {"single": [float(results["single"].loglik)],
               "batch": results["batch"].groupby("replicate")["loglik"].first().to_numpy().tolist()}
    print(json.dumps({"jax": jax.__version__, "jaxlib": jaxlib.__version__, "drmpy": drm.__file__,
                      "devices": len(jax.devices()), "first": first, "loglik": logliks}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name not in calls:
            return
        t = time.perf_counter()
        calls[name]()
        print(json.dumps({"wall": time.perf_counter() - t}), flush=True)
    del np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jax-a", default=None)
    ap.add_argument("--jax-b", default=None)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--R", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=1_000_000, help="rows of the single fit")
    args = ap.parse_args()
    import numpy as np

    print(f"python {sys.version.split()[0]}; {os.cpu_count()} cpus; load average {os.getloadavg()}", flush=True)
    kids, info = {}, {}
    for tag, extra in (("A", args.jax_a), ("B", args.jax_b)):
        path = [p for p in (extra and os.path.abspath(extra), SRC, os.environ.get("PYTHONPATH")) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), JAX_PLATFORMS="cpu")
        kids[tag] = subprocess.Popen([sys.executable, __file__, "--child", "--R", str(args.R), "--n", str(args.n)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    for tag, p in kids.items():
        info[tag] = json.loads(p.stdout.readline())
        i = info[tag]
        print(f"{tag}: jax {i['jax']} / jaxlib {i['jaxlib']}, {i['devices']} CPU devices, drmpy {i['drmpy']}; "
              f"first calls: single {i['first']['single']:.2f} s, batch {i['first']['batch']:.2f} s", flush=True)
    times: dict = {(t, n): [] for t in kids for n in ("single", "batch")}
    for _ in range(args.reps):
        for name in ("single", "batch"):
            for tag, p in kids.items():
                p.stdin.write(name + "\n")
                p.stdin.flush()
                times[tag, name].append(json.loads(p.stdout.readline())["wall"])
    for name in ("single", "batch"):
        for tag in kids:
            w = times[tag, name]
            print(f"{name:6s} {tag} (jax {info[tag]['jax']}): warm best {min(w):.3f} s, median {np.median(w):.3f} s "
                  f"over {len(w)} calls", flush=True)
        a, b = (np.asarray(info[t]["loglik"][name]) for t in "AB")
        print(f"{name:6s} logLik B - A: max |diff| {np.max(np.abs(b - a)):.3g} over {a.size} fits", flush=True)
    for p in kids.values():
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait()
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    if "--child" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--child", action="store_true")
        ap.add_argument("--R", type=int)
        ap.add_argument("--n", type=int)
        a = ap.parse_args()
        child(a.R, a.n)
    else:
        main()
