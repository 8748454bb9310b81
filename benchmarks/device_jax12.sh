#!/usr/bin/env bash
# JAX 0.12 checks for a machine with Python 3.12 (issue 24, item 6).  NOT YET RUN: the device
# tool copies the lead's checkout, and the 87 MB jaxlib 0.12 wheel could not be carried from a
# helper's worktree; benchmarks/jax011_device/ holds what did run (JAX 0.11.2).
#
# JAX >= 0.11 needs Python >= 3.12; the project's machine has Python 3.11 (JAX 0.10.2).  On a
# machine with Python 3.12 and JAX 0.11.2 installed (no network): unpack the jax and jaxlib
# 0.12.0.1 wheels into .dev/jax12 and the test extra's wheels into .dev/testdeps (pip install
# --no-deps --target; carry the wheels in pieces under 64 MiB), then run this script.
# Everything on CPU (JAX_PLATFORMS=cpu).  Outputs go to $OUT (default benchmarks/out-jax12).
# Before it, tests/conftest.py needs no change: it passes the fusion-emitter flag only to
# jaxlib < 0.11.
#
# Phase 1, in parallel: the batched-LAPACK reproducer and the serialize reproducer on both JAX
# versions, and the not-slow test suite on JAX 0.12.  Phase 2, alone: the A/B timing.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out-jax12}
mkdir -p "$OUT"
export JAX_PLATFORMS=cpu
J12=$PWD/.dev/jax12
DEPS=$PWD/.dev/testdeps
OLD="$DEPS:$PWD/src"
NEW="$J12:$DEPS:$PWD/src"
for tag in OLD NEW; do
  PYTHONPATH=${!tag} python3 -c "import sys, jax, jaxlib; print('$tag', sys.version.split()[0], jax.__version__, jaxlib.__version__, jax.devices())" \
    >> "$OUT/versions.txt" 2>&1
done
cat "$OUT/versions.txt"

PYTHONPATH=$OLD timeout 300 python3 benchmarks/repro_lapack_vmap.py --timeout 90 --devices 4 > "$OUT/lapack-jax0.11.2.txt" 2>&1 &
PYTHONPATH=$NEW timeout 300 python3 benchmarks/repro_lapack_vmap.py --timeout 90 --devices 4 > "$OUT/lapack-jax0.12.0.1.txt" 2>&1 &
PYTHONPATH=$OLD timeout 300 python3 benchmarks/repro_serialize.py --count 400 --timeout 280 > "$OUT/serialize-jax0.11.2.txt" 2>&1 &
PYTHONPATH=$NEW timeout 300 python3 benchmarks/repro_serialize.py --count 400 --timeout 280 > "$OUT/serialize-jax0.12.0.1.txt" 2>&1 &
PYTHONPATH=$NEW DRMPY_CACHE_DIR=$PWD/.dev/cache12 timeout 300 python3 -m pytest -q -m "not slow" -n 8 --maxprocesses 8 \
  -p no:cacheprovider > "$OUT/pytest-not-slow-jax0.12.0.1.txt" 2>&1 &
wait
tail -n 3 "$OUT"/lapack-*.txt "$OUT"/serialize-*.txt "$OUT"/pytest-*.txt

PYTHONPATH=$DEPS timeout 240 python3 benchmarks/ab_jax.py --jax-b "$J12" --reps 7 > "$OUT/ab_jax.txt" 2>&1
cat "$OUT/ab_jax.txt"
