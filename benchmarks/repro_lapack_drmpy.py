"""Reproducer at drmpy level: ``fit_batch`` with jaxlib's LAPACK instead of small_linalg.

``fit_batch``'s vmapped optimiser decomposes each lane's Hessian with
:func:`drmpy.engine.small_linalg.jacobi_eigh` and inverts it with ``sym_inverse``, because the
batched LAPACK kernels deadlocked on CPU with jaxlib 0.10 (seen with 2,000 restoration-sized
fits).  This script fits bench_batch.py's restoration replicates (``--R`` of them) in a child
process, once as shipped and once with ``jnp.linalg.eigh``/``jnp.linalg.inv`` patched in
(``--lapack``), each with a time limit, on ``--devices`` CPU devices, and reports ``ok`` with
seconds and the largest logLik difference, or ``HANG``.  drmpy's on-disk program cache is off
in the child (``DRMPY_NO_JAX_CACHE=1``), so the patched functions are traced, not loaded.

    python benchmarks/repro_lapack_drmpy.py [--R 2000] [--timeout 600] [--devices 1 2]
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


def child(R: int, lapack: bool) -> None:
    sys.path.insert(0, HERE)
    import jax.numpy as jnp
    from bench_batch import SEED_FORMULA, restoration_replicates

    import drmpy as drm
    from drmpy.engine import batch

    if lapack:
        batch.jacobi_eigh = jnp.linalg.eigh
        batch.sym_inverse = jnp.linalg.inv
    _, big = restoration_replicates(R)
    t = time.perf_counter()
    res = drm.fit_batch(drm.Formula(*SEED_FORMULA), big, by="replicate", progress=False)
    ll = res.groupby("replicate")["loglik"].first()
    print(json.dumps({"seconds": time.perf_counter() - t, "loglik": ll.tolist()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--R", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    import jax
    import jaxlib
    import numpy as np

    print(f"# python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
          f"{os.cpu_count()} cpus, R = {a.R}, timeout {a.timeout:.0f} s", flush=True)
    for devices in a.devices:
        ref = None
        for lapack in (False, True):
            env = dict(os.environ, DRMPY_NO_JAX_CACHE="1", DRMPY_CPU_DEVICES=str(devices),
                       PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
            label = f"devices={devices} {'LAPACK eigh/inv' if lapack else 'small_linalg   '}"
            cmd = [sys.executable, __file__, "--child", "--R", str(a.R)] + (["--lapack"] if lapack else [])
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
            except subprocess.TimeoutExpired:
                print(f"{label} HANG (killed after {a.timeout:.0f} s)", flush=True)
                continue
            if p.returncode != 0:
                print(f"{label} CRASH rc={p.returncode}: {p.stderr.strip()[-300:]!r}", flush=True)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            ll = np.asarray(r["loglik"])
            diff = "" if ref is None else f"; logLik max |diff| to small_linalg {np.max(np.abs(ll - ref)):.3g}"
            ref = ll if ref is None else ref
            print(f"{label} ok {r['seconds']:.1f} s (first call, compiling){diff}", flush=True)


if __name__ == "__main__":
    if "--child" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--child", action="store_true")
        ap.add_argument("--R", type=int)
        ap.add_argument("--lapack", action="store_true")
        c = ap.parse_args()
        child(c.R, c.lapack)
    else:
        main()
