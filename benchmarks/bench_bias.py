"""Speed of the bias/sensitivity stage (issue 13).

1. leave_one_out(by="study") of a three-level model (2,000 effect sizes in 400 studies,
   `yi ~ 1 + (1|study) + meta_V(V = vi)`, REML): cold (first call, compiles) and warm.
2. influence() of the restoration example with sigma ~ 1 and with sigma ~ habitat, warm.

Run: python3 benchmarks/bench_bias.py   (output committed as bench_bias.out)
metafor's timings of the same work: benchmarks/metafor/bias_timing.R.
"""

import os
import time

import numpy as np
import pandas as pd

import drmpy as drm


def three_level(seed: int = 1, studies: int = 400, per_study: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    study = np.repeat(np.arange(studies), per_study)
    vi = rng.uniform(0.01, 0.2, study.size)
    u = rng.normal(0, 0.3, studies)[study]
    yi = 0.2 + u + rng.normal(0, 0.2, study.size) + rng.normal(0, np.sqrt(vi))
    return pd.DataFrame({"yi": yi, "vi": vi, "study": study, "es": np.arange(study.size)})


def timed(fn, repeats: int = 3) -> tuple[float, float, object]:
    """(best wall seconds, CPU seconds of that call, result): CPU time says what the work costs
    on a machine shared with other jobs (wall time there is several times larger)."""
    best, cpu, out = np.inf, np.inf, None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, time.process_time() - c0
    return best, cpu, out


def main() -> None:
    print(f"load average at start: {os.getloadavg()} (machine shared with other jobs)")
    d = three_level()
    d.to_csv(os.path.join(os.path.dirname(__file__), "metafor", "bias_three_level.csv"), index=False)
    fit = drm.fit(drm.Formula("yi ~ 1 + (1|study) + meta_V(V = vi)"), data=d, method="REML")
    print(f"three-level fit: {fit}, structure {fit.structure}")
    t0 = time.perf_counter()
    loo = fit.leave_one_out(by="study")
    cold = time.perf_counter() - t0
    warm, cpu, loo = timed(lambda: fit.leave_one_out(by="study"))
    print(f"leave_one_out(by='study'), 400 refits of 1,995 rows: cold {cold:.2f} s, warm {warm:.3f} s wall, "
          f"{cpu:.3f} s CPU (goal <= 2 s warm); converged {int(loo['converged'].sum())}/400")
    print(loo.describe().loc[["mean", "std"]].to_string())

    r = drm.datasets.restoration()
    for sig in ("sigma ~ 1", "sigma ~ habitat"):
        f = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V = vi)", sig), data=r)
        t0 = time.perf_counter()
        f.influence()
        cold = time.perf_counter() - t0

        def fresh():  # a new fit object each time: nothing cached on the fit
            g = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V = vi)", sig), data=r)
            t1, c1 = time.perf_counter(), time.process_time()
            g.influence()
            return time.perf_counter() - t1, time.process_time() - c1

        warm, cpu = min(fresh() for _ in range(5))
        goal = " (goal <= 50 ms warm)" if sig == "sigma ~ 1" else ""
        print(f"influence(), restoration ({f.nobs} rows) with {sig}: cold {cold:.2f} s, warm {1000 * warm:.1f} ms "
              f"wall, {1000 * cpu:.1f} ms CPU{goal}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
