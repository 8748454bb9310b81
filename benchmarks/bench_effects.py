"""Speed of the effect-size stage (issue 12). Run: python3 benchmarks/bench_effects.py

* ``effect_size("SMD")`` on 1e6 rows (goal <= 0.3 s), from arrays and from a pandas frame;
* ``phylo_corr`` of a random 5,000-tip tree, Newick file read included (goal <= 2 s),
  non-ultrametric and ultrametric;
* ``sampling_covariance`` for 1e5 rows in 2e4 clusters (goal <= 0.5 s).

Best of 5 (3 for the tree).  The machine is shared: the load average is printed.
R's timings of the same work are in ``benchmarks/metafor/bench_effects.R`` / ``.txt``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

import drmpy as drm


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def random_newick(n_tips: int, seed: int, ultrametric: bool) -> str:
    """A random binary tree built by joining random pairs of subtrees (coalescent-like ages)."""
    rng = np.random.default_rng(seed)
    nodes = [f"t{i + 1}" for i in range(n_tips)]
    heights = [0.0] * n_tips
    age = 0.0
    while len(nodes) > 1:
        k = len(nodes)
        age += rng.exponential(2.0 / (k * (k - 1)))
        i, j = sorted(rng.choice(k, 2, replace=False), reverse=True)
        if ultrametric:
            la, lb = age - heights[i], age - heights[j]
        else:
            la, lb = rng.uniform(0.01, 1.0), rng.uniform(0.01, 1.0)
        joined = f"({nodes[i]}:{la!r},{nodes[j]}:{lb!r})"
        for idx in (i, j):
            nodes.pop(idx)
            heights.pop(idx)
        nodes.append(joined)
        heights.append(age)
    return nodes[0] + ";"


def main() -> None:
    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} cores (shared machine)")
    rng = np.random.default_rng(1)
    n = 1_000_000
    cols = {"m1i": rng.normal(10, 2, n), "sd1i": rng.uniform(1, 3, n), "n1i": rng.integers(5, 60, n).astype(float),
            "m2i": rng.normal(9, 2, n), "sd2i": rng.uniform(1, 3, n), "n2i": rng.integers(5, 60, n).astype(float)}
    frame = pd.DataFrame(cols)
    drm.effect_size("SMD", **cols)  # import and first-call costs out of the timing
    t_arrays = best_of(lambda: drm.effect_size("SMD", **cols), 5)
    t_frame = best_of(lambda: drm.effect_size("SMD", frame, **{k: k for k in cols}), 5)
    print(f"effect_size('SMD'), 1e6 rows: {t_arrays:.3f} s from arrays, {t_frame:.3f} s from a pandas frame "
          "(goal <= 0.3 s)")

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))  # only for building the Newick string
    with tempfile.TemporaryDirectory() as tmp:
        for label, ultrametric in (("non-ultrametric", False), ("ultrametric", True)):
            path = os.path.join(tmp, f"tree_{label}.nwk")
            with open(path, "w") as fh:
                fh.write(random_newick(5000, seed=2, ultrametric=ultrametric))
            drm.phylo_corr("((a:1,b:1):1,c:2);")
            t_tree = best_of(lambda: drm.phylo_corr(path), 3)
            print(f"phylo_corr, 5000-tip {label} tree (read + 5000 x 5000 matrix): {t_tree:.3f} s (goal <= 2 s)")

    n_rows, n_clusters = 100_000, 20_000
    sizes = rng.integers(1, 10, size=n_clusters)
    sizes = np.maximum(1, np.round(sizes * n_rows / sizes.sum()).astype(int))
    cluster = rng.permutation(np.repeat(np.arange(n_clusters), sizes))
    d = pd.DataFrame({"study": cluster, "vi": rng.uniform(0.01, 0.1, cluster.size),
                      "t": rng.integers(0, 5, cluster.size).astype(float)})
    drm.sampling_covariance(d.head(100))
    t_cov = best_of(lambda: drm.sampling_covariance(d, rho=0.5), 5)
    t_time = best_of(lambda: drm.sampling_covariance(d, rho=0.5, time="t", phi=0.8), 5)
    V = drm.sampling_covariance(d, rho=0.5)
    print(f"sampling_covariance, {cluster.size} rows in {n_clusters} clusters (rows in random order, "
          f"{V.nnz} stored entries): {t_cov:.3f} s; with time/phi: {t_time:.3f} s (goal <= 0.5 s)")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
