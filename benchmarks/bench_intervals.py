"""Speed of profile and bootstrap intervals (issue 10). Run: python3 benchmarks/bench_intervals.py

On the restoration example (80 rows, ``yi ~ habitat + duration + meta_V(V=vi)``,
``sigma ~ habitat``, ML), warm (after one call that compiles):

* all five profile intervals, ``fit.conf_int(method="profile")`` (target <= 50 ms);
* ``fit.conf_int(method="bootstrap", nsim=1000)`` (target <= 1 s).

Each is the median of repeated calls on a fresh fit object (no cached arrays).  metafor's
``confint()`` of the same model is timed by ``benchmarks/metafor/confint_timing.R`` (output in
``benchmarks/metafor/confint_timing.txt``): it profiles only the two scale coefficients.  The
machine is shared with other jobs: the load average is printed.
"""

from __future__ import annotations

import os
import statistics
import time

import drmpy as drm

FORMULA = drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat")


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        fit = drm.fit(FORMULA, data=drm.datasets.restoration())
        t = time.perf_counter()
        fn(fit)
        out.append(time.perf_counter() - t)
    return out


def main():
    print(f"load average at start: {os.getloadavg()}")
    cold = timed(lambda f: f.conf_int(method="profile"), 1)[0]
    warm = timed(lambda f: f.conf_int(method="profile"), 20)
    print(f"profile, 5 intervals: first call (compiles) {cold:.2f} s; warm median {1e3 * statistics.median(warm):.1f} ms "
          f"(min {1e3 * min(warm):.1f}, max {1e3 * max(warm):.1f}; target <= 50 ms)")
    cold = timed(lambda f: f.conf_int(method="bootstrap", nsim=1000, seed=1), 1)[0]
    warm = timed(lambda f: f.conf_int(method="bootstrap", nsim=1000, seed=1), 5)
    print(f"bootstrap, nsim=1000: first call (compiles) {cold:.2f} s; warm median {statistics.median(warm):.3f} s "
          f"(min {min(warm):.3f}, max {max(warm):.3f}; target <= 1 s)")
    fit = drm.fit(FORMULA, data=drm.datasets.restoration())
    print(fit.conf_int(method="profile", scale="response").to_string())
    print(f"load average at end: {os.getloadavg()}")
    metafor = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metafor", "confint_timing.txt")
    if os.path.exists(metafor):
        print("metafor (benchmarks/metafor/confint_timing.txt):")
        print(open(metafor).read().splitlines()[1])


if __name__ == "__main__":
    main()
