"""The suite compiles with ``jax_disable_most_optimizations`` (tests/conftest.py); users get
XLA's default optimisation.  This fits the same models in a subprocess with the default
compiler and compares, so a difference between the two compilations would fail here."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest


MODELS = textwrap.dedent(
    """
    import numpy as np, pandas as pd
    import drmpy as drm

    def summaries():
        rng = np.random.default_rng(11)
        study = np.repeat(np.arange(20), 3)
        x = rng.normal(size=60)
        vi = rng.uniform(0.01, 0.1, size=60)
        yi = 0.3 + 0.2 * x + rng.normal(scale=0.3, size=20)[study] + rng.normal(scale=np.sqrt(vi + 0.04))
        three_level = pd.DataFrame({"yi": yi, "vi": vi, "x": x, "study": study})
        fits = {
            "diag_ml": drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"),
                               data=drm.datasets.restoration()),
            "random_reml": drm.fit(drm.Formula("yi ~ x + (1|study) + meta_V(V=vi)"), data=three_level,
                                   method="REML"),
        }
        out = {k: {"loglik": f.loglik, "params": f.params.tolist()} for k, f in fits.items()}
        restoration = drm.datasets.restoration().assign(set=np.arange(80) // 20)
        batch = drm.fit_batch(drm.Formula("yi ~ duration + meta_V(V=vi)", "sigma ~ habitat"), restoration,
                              by="set", progress=False)
        out["batch_ml"] = {"loglik": float(batch.groupby("set")["loglik"].first().sum()),
                           "params": batch["estimate"].tolist()}
        return out
    """
)
CHILD = MODELS + textwrap.dedent(
    """
    import json, os, sys
    import jax
    assert not jax.config.read("jax_disable_most_optimizations")
    assert "fusion_emitters" not in os.environ.get("XLA_FLAGS", "")
    json.dump(summaries(), sys.stdout)
    """
)


@pytest.mark.slow
def test_default_compiler_gives_the_suites_results():
    import jax

    assert jax.config.read("jax_disable_most_optimizations")  # the suite's setting (conftest)
    # the suite's XLA_FLAGS (conftest) without its choice of fusion emitters
    flags = re.sub(r"--xla_cpu_use_fusion_emitters=\S*", "", os.environ.get("XLA_FLAGS", "")).strip()
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="0", XLA_FLAGS=flags)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    default = json.loads(out.stdout)

    namespace: dict = {}
    exec(MODELS, namespace)
    here = namespace["summaries"]()
    assert set(here) == set(default) == {"diag_ml", "random_reml", "batch_ml"}
    for name in default:
        assert here[name]["loglik"] == pytest.approx(default[name]["loglik"], abs=1e-9), name
        np.testing.assert_allclose(here[name]["params"], default[name]["params"], rtol=1e-7, atol=1e-9, err_msg=name)
