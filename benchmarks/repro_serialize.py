"""Reproducer: many compiled programs kept alive in one process, each serialized.

With jaxlib 0.10.2 the test suite, run as one process, aborted (SIGABRT inside
``executable.serialize()`` while writing an entry of JAX's persistent compilation cache;
once a SIGSEGV while compiling) about 550 tests into a cold run; tests/conftest.py therefore
drops every compiled program after each test module (``_release_compiled_programs``).

This script compiles ``--count`` distinct programs in one child process, keeps every one
alive, and serializes each twice over: JAX's persistent compilation cache is on (a fresh
temporary folder, minimum compile time 0 s, so every compile calls
``executable.serialize()``), and each program is also exported and serialized with
``jax.export`` (what drmpy's program cache does).  The programs look like drmpy's: a
``while_loop`` of Newton-like steps over a Cholesky factor of an n x n matrix, vmapped over a
few lanes, with ``n`` and a constant changing from program to program.  The parent reports the
child's exit: ``ok`` (every program compiled, ran and serialized), or the signal it died of
and how many programs it had finished.

    python benchmarks/repro_serialize.py [--count 400] [--timeout 900] [--release-every 0]

``--release-every m`` clears JAX's caches (``jax.clear_caches()``) and drops the kept
programs every m programs: the workaround in tests/conftest.py.

Result: these small programs do not trigger the abort, not even on jaxlib 0.10.2
(``repro_serialize_jax0.10.2.out``: 400 programs, ok, on 2 loaded cores) nor on 0.11.2
(``jax011_device/serialize.out``).  The setting that did abort on 0.10.2 is the test suite in
one process without the per-module release; ``jax011_device/run_3.sh`` runs exactly that
(0.11.2: no crash).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time


def child(count: int, release_every: int, cache_dir: str) -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    def make(n: int, c: float):
        def one(A, b):
            def body(s):
                i, x, f = s
                L = jnp.linalg.cholesky(A + (c + i) * jnp.eye(n))
                x = jax.scipy.linalg.cho_solve((L, True), b - 0.1 * x)
                return i + 1, x, f + jnp.sum(jnp.log(jnp.diagonal(L))) + x @ b

            return jax.lax.while_loop(lambda s: s[0] < 20, body, (0, jnp.zeros(n), 0.0))[2]

        return jax.jit(jax.vmap(one))

    kept = []
    exported_bytes = 0
    t0 = time.perf_counter()
    for j in range(count):
        n = 2 + j % 40
        c = 1.0 + j / 7.0  # a different constant: a different program even for a repeated n
        A = jnp.broadcast_to(jnp.eye(n) * 2.0 + 0.1, (4, n, n))
        b = jnp.ones((4, n))
        fn = make(n, c)
        out = fn(A, b).block_until_ready()
        exported_bytes += len(jax.export.export(fn)(A, b).serialize())
        kept.append((fn, out))
        if release_every and (j + 1) % release_every == 0:
            kept.clear()
            jax.clear_caches()
        if (j + 1) % 50 == 0:
            print(f"{j + 1} programs, {time.perf_counter() - t0:.1f} s", flush=True)
    entries = sum(len(files) for _, _, files in os.walk(cache_dir))
    print(f"done {count} programs in {time.perf_counter() - t0:.1f} s; {entries} cache files; "
          f"{exported_bytes / 1e6:.1f} MB exported", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--release-every", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.count, a.release_every, a.cache_dir)
        return
    import jax
    import jaxlib

    print(f"# python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib.__version__}; "
          f"{a.count} programs, release every {a.release_every or 'never'}", flush=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        cmd = [sys.executable, __file__, "--child", "--count", str(a.count),
               "--release-every", str(a.release_every), "--cache-dir", cache_dir]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
        except subprocess.TimeoutExpired as e:
            print(f"TIMEOUT after {a.timeout:.0f} s; last output: {(e.stdout or '')[-200:]!r}")
            return
    lines = p.stdout.strip().splitlines()
    for line in lines:
        print("  " + line)
    if p.returncode == 0:
        print("ok")
    else:
        sig = -p.returncode if p.returncode < 0 else None
        name = signal.Signals(sig).name if sig else f"exit {p.returncode}"
        print(f"CRASH: {name}; stderr tail: {p.stderr.strip()[-400:]!r}")


if __name__ == "__main__":
    main()
