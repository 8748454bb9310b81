"""Reproducer: batched LAPACK kernels under ``vmap`` inside a compiled ``while_loop`` on CPU.

drmpy's vmapped programs avoid jaxlib's batched ``potrf``/``syevd``/``getrf`` (see
``src/drmpy/engine/small_linalg.py``): with jaxlib 0.10 they deadlocked on CPU for some batch
sizes when called inside a compiled loop (16 lanes of 64 x 64 Cholesky factors; 2,000 lanes
of small eigen-decompositions; second derivatives of Cholesky solves on large batches).

This script runs, in a child process per case (so a hang is killed, not waited on), a jitted
``vmap`` of a ``while_loop`` whose body factors, solves, eigen-decomposes and (``grad2``)
differentiates twice through ``cholesky``/``solve``, for several batch sizes and matrix sizes,
on one CPU device and on several (one program per device run from threads at once, and a
``shard_map`` over all devices).  Each case prints ``ok`` with its seconds, ``HANG`` (killed
after ``--timeout`` s) or ``CRASH rc``.

    python benchmarks/repro_lapack_vmap.py [--timeout 60] [--devices 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = [  # (batch lanes, matrix size k, loop iterations)
    (16, 64, 30),
    (64, 32, 30),
    (257, 8, 50),
    (512, 3, 100),
    (2000, 3, 100),
    (2000, 5, 100),
    (4096, 2, 100),
]


def child(case: dict) -> None:
    devices = case["devices"]
    if devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={devices}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    B, k, iters, mode = case["batch"], case["k"], case["iters"], case["mode"]

    def logdet_solve(A, b):
        L = jnp.linalg.cholesky(A)
        x = jax.scipy.linalg.cho_solve((L, True), b)
        return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L))), x

    def one(A0, b):
        def body(state):
            i, A, acc = state
            ld, x = logdet_solve(A, b)
            w, V = jnp.linalg.eigh(A)
            y = jnp.linalg.solve(A + jnp.eye(k), b)
            if case["grad2"]:
                f = lambda s: logdet_solve(A + s * jnp.eye(k), b)[0] + jnp.sum(logdet_solve(A + s * jnp.eye(k), b)[1])
                h = jax.grad(jax.grad(f))(0.1)
            else:
                h = 0.0
            A = A + 1e-3 * (V * w) @ V.T / (1.0 + i)
            return i + 1, A, acc + ld + jnp.sum(x) + jnp.sum(y) + h

        return jax.lax.while_loop(lambda s: s[0] < iters, body, (0, A0, 0.0))[2]

    rng = jax.random.PRNGKey(0)
    M = jax.random.normal(rng, (B, k, k), jnp.float64)
    A = jnp.einsum("bij,bkj->bik", M, M) + k * jnp.eye(k)
    b = jax.random.normal(jax.random.PRNGKey(1), (B, k), jnp.float64)
    run = jax.jit(jax.vmap(one))
    t0 = time.perf_counter()
    if mode == "one":
        out = run(A, b).block_until_ready()
        total = float(jnp.sum(out))
    elif mode == "threads":  # the same program on every device at once, from threads
        import concurrent.futures as cf

        devs = jax.devices()
        args = [(jax.device_put(A, d), jax.device_put(b, d)) for d in devs]
        with cf.ThreadPoolExecutor(len(devs)) as pool:
            outs = list(pool.map(lambda ab: run(*ab).block_until_ready(), args))
        total = float(sum(float(jnp.sum(o)) for o in outs))
    else:  # shard_map over all devices (drmpy's rounds of one chunk per device)
        from jax.sharding import Mesh, PartitionSpec as P

        devs = jax.devices()
        n = len(devs)
        mesh = Mesh(devs, ("d",))
        As = jnp.broadcast_to(A, (n,) + A.shape)
        bs = jnp.broadcast_to(b, (n,) + b.shape)
        shard_map = getattr(jax, "shard_map", None)
        if shard_map is None:  # jax < 0.7
            from jax.experimental.shard_map import shard_map
        f = jax.jit(shard_map(lambda a, c: jax.vmap(one)(a[0], c[0])[None], mesh=mesh,
                              in_specs=(P("d"), P("d")), out_specs=P("d"), check_vma=False))
        total = float(jnp.sum(f(As, bs).block_until_ready()))
    print(json.dumps({"seconds": time.perf_counter() - t0, "total": total}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="a subset of the cases")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child))
        return
    import jax
    import jaxlib

    print(f"# python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
          f"{os.cpu_count()} cpus, timeout {a.timeout:.0f} s", flush=True)
    cases = CASES[::2] if a.quick else CASES
    failures = 0
    for mode, devices in (("one", 1), ("threads", a.devices), ("shard_map", a.devices)):
        for B, k, iters in cases:
            for grad2 in (False, True):
                if grad2 and B * k * k > 40_000:
                    continue
                case = dict(batch=B, k=k, iters=iters, mode=mode, devices=devices, grad2=grad2)
                label = f"{mode:9s} devices={devices} batch={B:5d} k={k:3d} iters={iters:3d} grad2={grad2!s:5s}"
                try:
                    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)],
                                       capture_output=True, text=True, timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    print(f"{label} HANG (killed after {a.timeout:.0f} s)", flush=True)
                    failures += 1
                    continue
                if p.returncode != 0:
                    print(f"{label} CRASH rc={p.returncode} {p.stderr.strip().splitlines()[-1:]} ", flush=True)
                    failures += 1
                    continue
                r = json.loads(p.stdout.strip().splitlines()[-1])
                print(f"{label} ok {r['seconds']:.2f} s", flush=True)
    print(f"# {failures} hang(s) or crash(es)")


if __name__ == "__main__":
    main()
