"""Shared fixtures. drmpy turns on JAX float64 at import; tests rely on that."""

import functools
import gc
import os
import sys


def _jaxlib_before(major: int, minor: int) -> bool:
    """Whether the installed jaxlib is older than major.minor (read without importing jax)."""
    from importlib.metadata import version

    installed = tuple(int(part) for part in version("jaxlib").split(".")[:2])
    return installed < (major, minor)


os.environ.setdefault("DRMPY_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "drmpy-jax-shared"))

# The suite compiles with JAX's ``jax_disable_most_optimizations`` (XLA backend optimisation
# level 0, no expensive LLVM passes): the same HLO programs, machine code that is not
# optimised.  Compiling is most of the suite's time; this halves its CPU, and the tests'
# runtimes are milliseconds either way.  Results agree with the default compiler to rounding
# (tests/engine/test_compiler_level.py fits in a subprocess with the default and compares).
# Set ``JAX_DISABLE_MOST_OPTIMIZATIONS=0`` to run the suite with the default compiler.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA's CPU backend also emits its fusions through the older LLVM emitters instead of the
# MLIR fusion emitters (``--xla_cpu_use_fusion_emitters=false``): the same HLO after fusion,
# compiled in well under half the time (a random-intercept fit and a fit_batch: 9.0 -> 3.5 s
# of backend compiling; the cold suite on 2 cores 339 -> 187 s, 624 -> 336 s CPU).
# tests/engine/test_compiler_level.py fits with XLA's defaults, this flag off, and compares.
# XLA from jaxlib 0.11 on has only the MLIR emitters and aborts on the unknown flag (jaxlib
# 0.11.2: "Unknown flag in XLA_FLAGS", every test process killed), so only older jaxlibs get it.
if _jaxlib_before(0, 11) and "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()
# One OpenBLAS thread per process: the tests' numpy matrices are small, and with two pytest
# workers and XLA's compiler threads on two cores, OpenBLAS's spinning threads slowed
# small-matrix tests by up to 10x (a 120-row dense REML check: 27 s -> 2.4 s under load).
# Must be set before numpy is imported; nothing imports it before this file.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# One JAX CPU device per process (drmpy gives users one per core, see drmpy/_jax.py).  A
# program is compiled once per device it runs on (XLA's CPU cache key holds the device), so
# with two devices every batch program that reached both was compiled twice; the two
# pytest workers already keep both cores busy.  Cold suite on 2 cores: 405 s -> 353 s,
# 741 -> 647 s CPU.  tests/batch/test_batch.py::test_two_cpu_devices_equal_one runs
# fit_batch over two devices in a subprocess.
os.environ.setdefault("DRMPY_CPU_DEVICES", "1")
# The pytest-xdist workers (and the subprocesses tests start) share one persistent cache, so
# a program one worker compiled is a cache hit for the other.  JAX writes cache entries in
# place, not atomically; a size limit turns on its LRU cache, which holds a file lock (the
# ``filelock`` package) around every read and write.  The limit is far above the suite's
# ~50 MB, so nothing is evicted.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 * 2**30))

import jax  # noqa: E402
import pytest  # noqa: E402

import drmpy  # noqa: E402,F401


# The files whose compiling takes longest (CPU seconds of a cold run on 2026-12-01: 108, 96,
# 81, 81, 66, 59, 52, 50, 48, 39, 29) run first.  pytest-xdist hands each worker whole files
# in this order (``--no-loadscope-reorder`` in pyproject.toml; by default it orders files by
# their number of tests), so the two workers finish together instead of one compiling the
# batch programs alone at the end.  Other files keep their order; the order of tests within
# a file is unchanged.
HEAVY_FILES = (
    "docs/test_docs.py",  # every example of README.md and docs/*.md (added after the timings above)
    "batch/test_batch_random.py",
    "bias/test_bias_metafor.py",
    "bias/test_bias_checks.py",
    "batch/test_batch.py",
    "engine/test_structures.py",
    "heterogeneity/test_statistics.py",
    "inference/test_profile.py",
    "engine/test_reference_extra.py",
    "engine/test_bivariate.py",
    "simulation/test_bivariate_simulation.py",
    "batch/test_batch_tau2.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].removeprefix("tests/"), len(rank)))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module.

    One process running the whole suite compiles several hundred XLA programs.  With all of
    them kept alive, jaxlib 0.10.2 crashed inside XLA (SIGABRT while serializing an executable
    for the persistent cache, SIGSEGV while compiling one) about 550 tests into a cold run,
    three runs out of three; each of those tests passes alone.  The cause is not pinned down
    (memory maps peaked near 9,000, far below vm.max_map_count); keeping only one module's
    programs resident avoided it.  Programs a later module needs again come back from the
    persistent cache on disk.

    Re-tested 2026-12-04 on jaxlib 0.11.2 (Python 3.12): the not-slow suite in one process
    with this release switched off, cold cache, ran to the end without a crash (627 passed;
    benchmarks/jax011_device/pytest_one_process_no_release.out), and
    benchmarks/repro_serialize.py (400 programs kept alive, each serialized) ran clean.  The
    release stays because Python 3.11 installs, CI's among them, still get jaxlib 0.10.2.
    """
    yield
    jax.clear_caches()
    drmpy.clear_cache()
    for name, module in list(sys.modules.items()):
        if not name.startswith("drmpy.") or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, functools._lru_cache_wrapper):
                value.cache_clear()
    from drmpy.engine import program

    program._callables.clear()
    gc.collect()
