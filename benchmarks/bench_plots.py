"""Orchard plot of 10,000 effect sizes in 20 levels, table + drawing + PNG rendering (issue 11: <= 2 s).

The model is location-scale (``yi ~ level``, ``sigma ~ level``, diagonal V), so every level
has its own prediction interval.  The fit itself is timed separately and is not part of the
goal.  The machine is shared with other work: the load average is printed with the timings.
Run: ``python3 benchmarks/bench_plots.py`` (writes nothing but a temporary PNG).
"""

from __future__ import annotations

import os
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import drmpy as drm  # noqa: E402
from drmpy import plots  # noqa: E402


def data(n: int = 10_000, levels: int = 20, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = [f"level {i + 1:02d}" for i in range(levels)]
    level = rng.integers(0, levels, n)
    vi = rng.uniform(0.005, 0.2, n)
    mu = np.linspace(-0.5, 0.8, levels)[level]
    sigma = np.linspace(0.05, 0.4, levels)[level]
    yi = rng.normal(mu, np.sqrt(vi + sigma**2))
    return pd.DataFrame({"level": pd.Categorical(np.array(names)[level], categories=names), "vi": vi, "yi": yi})


def main() -> None:
    frame = data()
    t0 = time.perf_counter()
    fit = drm.fit(drm.Formula("yi ~ level + meta_V(V=vi)", "sigma ~ level"), data=frame)
    t_fit = time.perf_counter() - t0
    print(f"drmpy {drm.__version__}, matplotlib {matplotlib.__version__}; load average {os.getloadavg()}")
    print(f"fit (10,000 rows, 20 + 20 coefficients, not part of the goal): {t_fit:.2f} s")
    times, cpu = [], []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(5):
            t0, c0 = time.perf_counter(), time.process_time()
            ax = plots.orchard(fit, mod="level")
            ax.figure.savefig(os.path.join(folder, "orchard.png"), dpi=150)
            plt.close(ax.figure)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            print(f"orchard table + draw + PNG (150 dpi), call {i + 1}: wall {times[-1]:.3f} s, "
                  f"CPU of this process {cpu[-1]:.3f} s"
                  + (" (first: predict programs and fonts warm up)" if i == 0 else ""))
    t0 = time.perf_counter()
    table = plots.orchard_table(fit, "level")
    t_table = time.perf_counter() - t0
    print(f"orchard_table alone: {t_table:.3f} s ({len(table)} rows, k sums to {table['k'].sum()})")
    print(f"goal <= 2 s: first call {times[0]:.3f} s wall, median of later calls {np.median(times[1:]):.3f} s "
          f"wall ({np.median(cpu[1:]):.3f} s CPU); load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
