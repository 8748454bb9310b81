"""Shared fixtures. drmpy turns on JAX float64 at import; tests rely on that."""

import os

os.environ.setdefault("DRMPY_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "drmpy-jax"))

import jax  # noqa: E402

import drmpy  # noqa: E402,F401

# The pytest process compiles several hundred programs.  With jaxlib 0.10.2, writing one of
# them to XLA's persistent cache (executable.serialize()) aborted the whole process (SIGABRT)
# about 550 tests into a cold-cache run, twice, at the same test, which passes on its own.
# One process re-uses its compiled programs in memory anyway, so this process writes no XLA
# cache entries; subprocesses (the command-line tests) keep drmpy's cache settings.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
