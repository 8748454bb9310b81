"""Coverage of 95% intervals for mu under t-distributed true effects: the t model against the
normal model (issue 26, done-means 2).  Run: python3 benchmarks/bench_robust_coverage.py
[--reps R] [--budget SECONDS] [--seed S]

Design (one fixed design, a typical small meta-analysis of standardised mean differences):
k = 20 studies with n_i per group drawn once from 20..200 (seed 26), v_i = 2 / n_i + d^2 / (4 n_i)
at d = 0.3 (the run prints the v_i range); true effects theta_i = mu + sigma * T_i with
T_i ~ t with nu = 3 df, mu = 0.3, sigma = 0.2 (the t scale; the effects' variance is
sigma^2 nu / (nu - 2) = 0.12; the run prints I^2 at the median v_i); y_i ~ N(theta_i, v_i).

Intervals for mu, per replicate:

* normal model, ML and REML, Wald (observed-information SE, z quantile): ``drm.fit_batch``;
* normal model, REML, estimate +- t_{0.975, k-1} SE (the t-quantile rule of metafor's
  ``test = "t"`` without the Knapp-Hartung rescaling);
* t model (``family=drm.student()``, nu estimated, ML): Wald, z quantile, from ``fit.tidy()``;
  and with the t_{0.975, k-1} quantile on the same SE.

Monte Carlo SE of a coverage p: sqrt(p (1 - p) / R).  Replicates whose fit did not converge are
left out of that method's coverage (counted).  ``--budget`` stops the t-model loop after that
many seconds (the replicates done so far are reported and the rate printed, so a run on more
cores can finish).  The machine is shared: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
from scipy.stats import norm, t as student_t

import drmpy as drm

K = 20
MU, SIGMA, NU = 0.3, 0.2, 3.0
FORMULA = "yi ~ 1 + meta_V(V=vi)"


def design(seed: int = 26) -> np.ndarray:
    """Sampling variances of K standardised mean differences at d = 0.3, n per group 20..200."""
    n = np.random.default_rng(seed).integers(20, 201, K)
    return 2.0 / n + 0.3**2 / (4.0 * n)


def simulate(vi: np.ndarray, reps: int, seed: int) -> np.ndarray:
    """reps x K effect sizes: mu + sigma * t_nu + N(0, vi)."""
    rng = np.random.default_rng(seed)
    theta = MU + SIGMA * rng.standard_t(NU, size=(reps, K))
    return theta + rng.normal(size=(reps, K)) * np.sqrt(vi)


def coverage_line(label: str, covered: np.ndarray, width: np.ndarray) -> dict:
    ok = ~np.isnan(covered)
    p = covered[ok].mean()
    return {"method": label, "replicates": int(ok.sum()), "coverage %": 100 * p,
            "MC SE": 100 * np.sqrt(p * (1 - p) / ok.sum()), "mean width": np.nanmean(width[ok])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--budget", type=float, default=float("inf"), help="seconds for the t-model loop")
    ap.add_argument("--seed", type=int, default=20261204)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}; cpus: {os.cpu_count()}")
    vi = design()
    print(f"k = {K}; mu = {MU}, t scale sigma = {SIGMA}, nu = {NU}; vi range {vi.min():.4f}..{vi.max():.4f} "
          f"(median {np.median(vi):.4f}); effect variance {SIGMA**2 * NU / (NU - 2):.3f}, "
          f"I^2 at the median vi {SIGMA**2 * NU / (NU - 2) / (SIGMA**2 * NU / (NU - 2) + np.median(vi)):.2f}")
    y = simulate(vi, args.reps, args.seed)
    z, tq = norm.ppf(0.975), student_t.ppf(0.975, K - 1)
    rows = []

    long = pd.DataFrame({"replicate": np.repeat(np.arange(args.reps), K), "yi": y.ravel(),
                         "vi": np.tile(vi, args.reps)})
    for method in ("ML", "REML"):
        t0 = time.perf_counter()
        res = drm.fit_batch(FORMULA, long, by="replicate", method=method, progress=False)
        mu_rows = res[res["parameter"] == "mu:(Intercept)"].set_index("replicate").reindex(range(args.reps))
        ok = res.groupby("replicate")["converged"].all().reindex(range(args.reps)).to_numpy()
        est, se = mu_rows["estimate"].to_numpy(), mu_rows["std_error"].to_numpy()
        err = np.abs(est - MU)
        print(f"normal {method} (fit_batch): {args.reps} replicates in {time.perf_counter() - t0:.1f} s; "
              f"not converged: {int((~ok).sum())}")
        rows.append(coverage_line(f"normal {method} Wald (z)", np.where(ok, err <= z * se, np.nan), 2 * z * se))
        if method == "REML":
            rows.append(coverage_line(f"normal REML, t_{K - 1} quantile", np.where(ok, err <= tq * se, np.nan),
                                      2 * tq * se))

    est = np.full(args.reps, np.nan)
    se = np.full(args.reps, np.nan)
    boundary = np.zeros(args.reps, dtype=bool)
    failed = 0
    t0 = time.perf_counter()
    done = 0
    for r in range(args.reps):
        if time.perf_counter() - t0 > args.budget:
            break
        fit = drm.fit(FORMULA, pd.DataFrame({"yi": y[r], "vi": vi}), family=drm.student())
        done += 1
        if not fit.converged:
            failed += 1
            continue
        row = fit.tidy().iloc[0]
        est[r], se[r] = row["estimate"], row["std_error"]
        boundary[r] = fit.at_boundary
    elapsed = time.perf_counter() - t0
    print(f"t model (drm.fit loop, family=drm.student()): {done} of {args.reps} replicates in {elapsed:.1f} s "
          f"({done / elapsed:.2f} fits/s, first fit includes compiling); not converged: {failed}; "
          f"at 1/nu = 0: {int(boundary[:done].sum())}")
    if done < args.reps:
        print(f"BUDGET: stopped after {args.budget:.0f} s; coverage below uses the first {done} replicates "
              f"for the t model")
    err = np.abs(est - MU)
    rows.append(coverage_line("t model ML Wald (z)", np.where(np.isnan(est), np.nan, err <= z * se), 2 * z * se))
    rows.append(coverage_line(f"t model ML, t_{K - 1} quantile", np.where(np.isnan(est), np.nan, err <= tq * se),
                              2 * tq * se))
    interior = ~np.isnan(est) & ~boundary
    if interior.any():
        rows.append(coverage_line("t model ML Wald (z), nu interior only",
                                  np.where(interior, err <= z * se, np.nan), 2 * z * se))

    table = pd.DataFrame(rows).set_index("method")
    print("\ncoverage of 95% intervals for mu, % (Monte Carlo SE), and mean interval width:")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
