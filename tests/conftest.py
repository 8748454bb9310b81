"""Shared fixtures. drmpy turns on JAX float64 at import; tests rely on that."""

import functools
import gc
import os
import sys

os.environ.setdefault("DRMPY_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "drmpy-jax"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one persistent-cache folder per pytest-xdist worker: JAX writes cache entries in place
    # (not atomically), so two processes must not read and write one folder at once
    os.environ["DRMPY_CACHE_DIR"] = os.path.join(os.environ["DRMPY_CACHE_DIR"], os.environ["PYTEST_XDIST_WORKER"])

import jax  # noqa: E402
import pytest  # noqa: E402

import drmpy  # noqa: E402,F401


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
