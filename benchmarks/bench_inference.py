"""Speed of prediction intervals (issue 10). Run: python3 benchmarks/bench_inference.py

Restoration example (``yi ~ habitat + duration + meta_V(V=vi)``, ``sigma ~ habitat``, ML):
``fit.predict(newdata, interval="prediction")`` for 1e5 new rows (design through the fitted
formulas, SEs, sigma_new from each row's habitat), warm: median of 20 calls after one
untimed call; also interval="confidence" and the same with vcov="gls".  Target: <= 0.1 s.
metafor's time for ``predict(fit, newmods=, newscale=)`` of the same model on the same 1e5
rows is in benchmarks/metafor/metafor_predict.txt (benchmarks/metafor/metafor_predict.R).
The machine is shared with other jobs; the load average is printed with the timings.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pandas as pd

import drmpy as drm

N_NEW = 100_000


def new_rows(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"habitat": rng.choice(["grassland", "forest"], n),
                         "duration": rng.normal(0.0, 1.0, n)})


def timed(fn, repeats: int = 20) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    dat = drm.datasets.restoration()
    fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=dat)
    newdata = new_rows(N_NEW)
    print(f"load average before: {os.getloadavg()}")
    cases = {
        "predict(interval='prediction')": lambda: fit.predict(newdata, interval="prediction"),
        "predict(interval='prediction', vcov='gls')": lambda: fit.predict(newdata, interval="prediction", vcov="gls"),
        "predict(interval='confidence')": lambda: fit.predict(newdata, interval="confidence"),
        "predict() (no interval)": lambda: fit.predict(newdata),
    }
    for name, fn in cases.items():
        print(f"{name:45s} 1e5 rows, warm median of 20: {timed(fn) * 1e3:8.1f} ms")
    head = fit.predict(newdata.head(3), interval="prediction")
    print(head.to_string())
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
