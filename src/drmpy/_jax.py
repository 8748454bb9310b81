"""The only module that touches ``jax.config``.

JAX's configuration is process-global.  Importing drmpy

* turns on float64 (``jax_enable_x64``): the likelihoods need it, and a float32
  Cholesky of ``V + diag(sigma^2)`` loses the 1e-6 agreement with drmTMB;
* turns on JAX's persistent compilation cache in ``~/.cache/drmpy/jax`` (or
  ``$DRMPY_CACHE_DIR``) with a minimum compile time of 0 s, so that a second
  process re-uses the compiled solver instead of compiling it again.  A cache
  directory the user already configured (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.jax_compilation_cache_dir``) is left alone, and setting the
  environment variable ``DRMPY_NO_JAX_CACHE=1`` switches drmpy's cache off;
* gives JAX one CPU device per core (at most 8; ``jax_num_cpu_devices``), so that
  ``fit_batch`` and the other batch runners, which run their chunks in rounds of one chunk
  per device (one program for all devices), use every core (one device runs its compiled
  loops on one core).  Single
  fits run on the first device as before.  Skipped when JAX has already started, when the
  user set ``jax_num_cpu_devices`` or ``--xla_force_host_platform_device_count``; the
  environment variable ``DRMPY_CPU_DEVICES`` sets the number (``1``: JAX's default).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

_CACHE_ENABLED_BY_DRMPY = False


def default_cache_dir() -> Path:
    """Folder drmpy uses for JAX's persistent compilation cache."""
    explicit = os.environ.get("DRMPY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "drmpy" / "jax"


def _config_value(name: str) -> object:
    """The current value of JAX option ``name`` (None for an option this JAX lacks).

    Read through ``jax.config.values``: attribute access (``jax.config.NAME``) is typed
    only from jax 0.11 on, so a type checker run against jax 0.10 rejects it."""
    return jax.config.values.get(name)


def configure_jax() -> None:
    """Enable float64 and (unless opted out or already configured) the persistent cache."""
    global _CACHE_ENABLED_BY_DRMPY
    jax.config.update("jax_enable_x64", True)
    if os.environ.get("DRMPY_NO_JAX_CACHE", "").strip() not in ("", "0", "false", "False"):
        return
    user_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or _config_value("jax_compilation_cache_dir")
    if user_dir:
        return
    cache_dir = default_cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _CACHE_ENABLED_BY_DRMPY = True


MAX_CPU_DEVICES = 8


def use_cpu_cores() -> None:
    """One JAX CPU device per available core (see the module docstring), when still possible."""
    wanted = os.environ.get("DRMPY_CPU_DEVICES", "").strip()
    try:
        n = int(wanted) if wanted else min(len(os.sched_getaffinity(0)), MAX_CPU_DEVICES)
    except (ValueError, AttributeError):
        n = min(os.cpu_count() or 1, MAX_CPU_DEVICES)
    if n <= 1 or _config_value("jax_num_cpu_devices") not in (-1, None):
        return
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return
        jax.config.update("jax_num_cpu_devices", n)
    except Exception:  # a JAX without this option or state: keep its default
        return


def cache_enabled_by_drmpy() -> bool:
    """Whether drmpy itself switched the persistent compilation cache on."""
    return _CACHE_ENABLED_BY_DRMPY


configure_jax()
use_cpu_cores()
