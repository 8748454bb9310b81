"""Coverage of 95% intervals on the restoration model (issue 10). Run: python3 benchmarks/bench_coverage.py [--reps R]

Data-generating process: the restoration example's model (n = 80 rows, ``yi ~ habitat +
duration + meta_V(V=vi)``, ``sigma ~ habitat``) with the shipped design (habitat, duration,
vi of ``drm.datasets.restoration()``).  True values: the ML estimates of that model on the
shipped data (the vignette's simulation code is not shipped; its data are, so its fit stands
in for the truth).  ``fit.simulate`` draws R = 2,000 responses from the fitted model.

Per replicate and parameter, does the 95% interval cover the truth:

* ML Wald and REML Wald (observed-information SEs, z quantiles), from ``drm.fit_batch``;
* mu with ``test="t"``: estimate +- t_{0.975, nobs - p_mu} SE (computed here: t quantiles with
  80 - 3 = 77 df on the same ML and REML SEs);
* profile likelihood: ML for every parameter, REML for the sigma coefficients
  (``fit.conf_int(method="profile")`` on single fits).

Monte Carlo SE of a coverage p: sqrt(p (1 - p) / R).  Replicates whose fit did not converge
are left out (counted).  The machine is shared: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
from scipy.stats import norm, t as student_t

import drmpy as drm

FORMULA = drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args()
    R = args.reps
    print(f"load average at start: {os.getloadavg()}")
    dat = drm.datasets.restoration()
    truth_fit = drm.fit(FORMULA, data=dat)
    truth = truth_fit.params
    names = list(truth.index)
    p_mu = sum(n.startswith("mu") for n in names)
    df_t = truth_fit.nobs - p_mu
    print("true values (ML fit to the shipped restoration data):")
    print(truth.to_string())
    sims = truth_fit.simulate(R, seed=20251201)
    long = pd.concat([dat.assign(yi=sims[c].to_numpy(), replicate=i) for i, c in enumerate(sims)],
                     ignore_index=True)

    cover: dict[str, dict[str, np.ndarray]] = {}
    t0 = time.perf_counter()
    for method in ("ML", "REML"):
        res = drm.fit_batch(FORMULA, long, by="replicate", method=method, progress=False)
        est = res.pivot(index="replicate", columns="parameter", values="estimate")[names]
        se = res.pivot(index="replicate", columns="parameter", values="std_error")[names]
        ok = res.groupby("replicate")["converged"].all().reindex(est.index).to_numpy()
        err = (est - truth).abs()
        z = norm.ppf(0.975)
        cover[f"{method} Wald"] = np.where(ok[:, None], (err <= z * se).to_numpy(), np.nan)
        tq = student_t.ppf(0.975, df_t)
        tcov = np.where(ok[:, None], (err <= tq * se).to_numpy(), np.nan).astype(float)
        tcov[:, p_mu:] = np.nan
        cover[f"{method} t (mu, {df_t} df)"] = tcov
        print(f"fit_batch {method}: {R} replicates in {time.perf_counter() - t0:.1f} s; "
              f"not converged: {int((~ok).sum())}")
        t0 = time.perf_counter()

    prof = {"ML profile": np.full((R, len(names)), np.nan), "REML profile": np.full((R, len(names)), np.nan)}
    failed = {"ML profile": 0, "REML profile": 0}
    t0 = time.perf_counter()
    for i, c in enumerate(sims):
        d = dat.assign(yi=sims[c].to_numpy())
        for method, label in (("ML", "ML profile"), ("REML", "REML profile")):
            fit = drm.fit(FORMULA, data=d, method=method)
            if not fit.converged:
                failed[label] += 1
                continue
            which = names if method == "ML" else [n for n in names if n.startswith("sigma")]
            ci = fit.conf_int(method="profile", params=which)
            good = ci["status"].str.startswith(("ok", "open")).to_numpy()
            covered = (ci["lower"] <= truth[which]) & (truth[which] <= ci["upper"])
            cols = [names.index(n) for n in which]
            prof[label][i, cols] = np.where(good, covered.to_numpy(), np.nan)
            failed[label] += int((~good).sum())
    print(f"profile intervals (single fits, ML + REML): {time.perf_counter() - t0:.1f} s; "
          f"fits not converged or searches failed: {failed}")
    cover.update(prof)

    rows = []
    for label, m in cover.items():
        m = np.asarray(m, dtype=float)
        for j, name in enumerate(names):
            col = m[:, j]
            col = col[np.isfinite(col)]
            if col.size == 0:
                continue
            pcov = col.mean()
            rows.append({"method": label, "parameter": name, "coverage": pcov,
                         "mc_se": np.sqrt(pcov * (1 - pcov) / col.size), "replicates": col.size})
    table = pd.DataFrame(rows)
    wide = table.assign(cell=[f"{100 * c:.1f} ({100 * s:.1f})" for c, s in zip(table["coverage"], table["mc_se"])])
    wide = wide.pivot(index="parameter", columns="method", values="cell").reindex(names)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print("\ncoverage of 95% intervals, % (Monte Carlo SE):")
        print(wide.fillna("").to_string())
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
