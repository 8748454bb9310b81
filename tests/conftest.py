"""Shared fixtures. drmpy turns on JAX float64 at import; tests rely on that."""

import os

os.environ.setdefault("DRMPY_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "drmpy-jax"))

import drmpy  # noqa: E402,F401
