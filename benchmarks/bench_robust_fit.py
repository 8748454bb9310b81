"""Benchmark: warm times of robust fits and of the batched t log-likelihood derivatives (issue 26).

Warm = the same call again after a first (compiling) call in this process; median of --repeats.
(a) cdp (10 rows): student() and normal_mixture() fits;
(b) a 36-row / 12-study simulated set (seed 7, t residual effects, nu 3) with ``(1|study)``:
    student() and normal_mixture() fits;
(c) one vmapped batch of 999 single-level t log-likelihood + gradient + Hessian evaluations on the
    30-row sim30 data (student_objective of drmpy.robust.batch, the outlier test's kernel).

    PYTHONPATH=src python3 benchmarks/bench_robust_fit.py > benchmarks/bench_robust_fit.out
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def warm_time(call, repeats):
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def multilevel_data():
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    study = np.repeat(np.arange(12), 3)
    vi = rng.uniform(0.01, 0.08, 36)
    u = 0.15 * rng.standard_t(3.0, 36)
    b = 0.2 * rng.standard_normal(12)[study]
    x = rng.standard_normal(36)
    yi = 0.3 + 0.1 * x + b + u + rng.standard_normal(36) * np.sqrt(vi)
    return pd.DataFrame({"study": [f"s{k}" for k in study], "yi": yi, "vi": vi, "x": x})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pandas as pd

    import drmpy as drm
    from drmpy.model.design import build_design
    from drmpy.robust.batch import student_objective
    from drmpy.robust.program import prepare_robust, robust_formula

    print(f"python {platform.python_version()}; cores {os.cpu_count()}; load average {os.getloadavg()}")
    print(f"drmpy {drm.__version__}; jax {jax.__version__}")
    cdp = drm.datasets.cdp()
    for name, fam in (("student", drm.student), ("normal_mixture", drm.normal_mixture)):
        t, fit = warm_time(lambda: drm.fit("yi ~ 1 + meta_V(V=vi)", cdp, family=fam()), args.repeats)
        print(f"(a) cdp {name:15s} warm {t:8.3f} s  logLik {fit.loglik:.10f}")
    data = multilevel_data()
    formula = drm.Formula("yi ~ x + (1|study) + meta_V(V=vi)", "sd(study) ~ 1")
    for name, fam in (("student", drm.student), ("normal_mixture", drm.normal_mixture)):
        t, fit = warm_time(lambda: drm.fit(formula, data, family=fam()), args.repeats)
        print(f"(b) multilevel 36 rows / 12 studies {name:15s} warm {t:8.3f} s  logLik {fit.loglik:.10f}  "
              f"Newton evaluations {fit._raw.evaluations}")
    sim30 = pd.read_csv(ROOT / "tests" / "reference_extra" / "robust" / "sim30.csv")
    sim30["vi"] = sim30["sei"] ** 2
    family = drm.student()
    design = build_design(robust_formula(drm.Formula("yi ~ 1 + meta_V(V=vi)"), family), sim30)
    arrays, layout = prepare_robust(design, family)
    objective = student_objective(arrays, layout)
    rng = np.random.default_rng(3)
    thetas = jnp.asarray(np.column_stack([0.2 + 0.05 * rng.standard_normal(999),
                                          np.log(0.2) + 0.3 * rng.standard_normal(999),
                                          np.log(4.0) + rng.standard_normal(999)]))
    batch = jax.jit(jax.vmap(objective))

    def run():
        f, g, H = batch(thetas)
        return float(jnp.sum(f)), float(jnp.sum(H))

    t, (fsum, hsum) = warm_time(run, args.repeats)
    print(f"(c) 999 t value+gradient+Hessian on sim30 (30 rows), one vmapped batch: warm {t:8.3f} s  "
          f"sum f {fsum:.10f}  sum H {hsum:.8f}")


if __name__ == "__main__":
    main()
