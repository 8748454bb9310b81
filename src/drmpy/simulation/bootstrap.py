"""Parametric bootstrap: refit responses simulated from a fitted model, through the batch path.

Every simulated data set has the fitted design (same rows, V, random-effect structure,
weights); only the response changes.  So one compiled program, ``vmap``-ed over the response, refits
them all, chunk by chunk: the closed-form diagonal program of :mod:`drmpy.batch_engine`
for models without random effects and with a diagonal V, otherwise the engine's own
program for any structure (block, Woodbury, dense; bivariate pair and dense, the two
responses row-paired).  Each refit starts at the original
estimate and stops by the same rule as :func:`drmpy.fit`; a first pass caps the
iterations and only unfinished refits are resumed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DrmError
from ..engine.optimize import CONVERGED, CONVERGED_FLAT, MAX_ITER

__all__ = ["parametric_bootstrap"]

FIRST_PASS_ITER = {"diag": 12}
FIRST_PASS_ITER_OTHER = 30


def _lanes(per_lane_bytes: float, nsim: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return int(chunk_size)
    lanes = 2 ** int(math.floor(math.log2(max(4e6 / max(per_lane_bytes, 1.0), 1.0))))
    lanes = min(max(lanes, 8), 4096)
    full = 16
    while full < nsim:
        full *= 4
    return min(lanes, full)


class _Refitter:
    """The fitted design's arrays and a compiled refit of many responses."""

    def __init__(self, fit):
        import jax

        from ..results.bivariate import BivariateFit

        self.fit = fit
        if isinstance(fit, BivariateFit):
            # row-paired responses (y1_1, y2_1, y1_2, ...); responses not kept are masked rows
            from ..engine.bivariate import prepare_bivariate, stacked_designs

            arrs, struct, beta0, _ = prepare_bivariate(fit.design, fit.method, fit.control)
            self.X = stacked_designs(fit.design)[0]
            self.row_mask = fit.design.kept.reshape(-1)
        else:
            from ..engine.program import prepare

            (arrs, struct, beta0, _), _ = prepare(fit.design, fit.method, fit.control)
            self.X = fit.design.fixed["mu"].matrix
            self.row_mask = None
        # the refits' optimiser sees standardised scale designs, as the fit's did
        # (drmpy.engine.scaling): run() maps phi in and out
        from ..engine.scaling import scale_designs

        self.scaling = scale_designs(arrs, struct)
        if self.scaling is not None:
            arrs = self.scaling.arrays
        self.arrs, self.struct, self.beta0 = arrs, struct, np.asarray(beta0)
        self.phi_hat = np.asarray(fit.params.to_numpy()[struct.p:], dtype=float)
        self.n = self.X.shape[0]
        self.N = int(arrs.y.shape[0])
        self.kind = struct.kind
        self.treedef = jax.tree_util.tree_structure(arrs)
        if self.kind == "diag":
            per_lane = 8.0 * self.N * (struct.p + struct.k_sigma + 3)
        else:
            leaves = jax.tree_util.tree_leaves(arrs)
            design_bytes = sum(np.asarray(leaf).nbytes for leaf in leaves)
            # the vmapped program keeps per-lane copies of the covariance pieces it forms
            per_lane = 8.0 * self.N * 40 + design_bytes
        self.per_lane = per_lane

    def centred(self, Y: np.ndarray) -> np.ndarray:
        """(lanes, N) padded responses in the engine's centred coordinates."""
        Yc = (Y - (self.X @ self.beta0)[:, None]).T
        if self.row_mask is not None:
            Yc = np.where(self.row_mask[None, :], Yc, 0.0)
        out = np.zeros((Yc.shape[0], self.N))
        out[:, : self.n] = Yc
        return out

    def run(self, Yc: np.ndarray, phi0: np.ndarray, max_iter: int, gtol: float) -> dict:
        """Refit responses ``Yc`` (from :meth:`centred`) from ``phi0``; ``beta`` on the data's
        scale, ``phi0`` and the refits' ``phi`` in the fit's coefficients."""
        if self.scaling is None:
            return self._run(Yc, phi0, max_iter, gtol)
        B = self.scaling.B
        out = self._run(Yc, np.linalg.solve(B, phi0.T).T, max_iter, gtol)
        out["phi"] = out["phi"] @ B.T
        return out

    def _run(self, Yc: np.ndarray, phi0: np.ndarray, max_iter: int, gtol: float) -> dict:
        import jax

        from ..engine.batch import DiagArrays, diag_program, generic_program

        if self.kind == "diag" and self.struct.k_sigma > 0:
            # the diag program centres y itself: give it the raw response and the centring
            a = self.arrs
            y = Yc + np.concatenate([self.X @ self.beta0, np.zeros(self.N - self.n)])[None, :]
            y[:, self.n:] = 0.0
            beta0 = np.tile(self.beta0, (Yc.shape[0], 1))
            prog = diag_program(self.struct.method == "REML", True)
            out = prog(DiagArrays(y, a.X, a.Z_sigma, a.v, a.w), phi0, beta0, np.int64(max_iter), np.float64(gtol))
            return {k: np.asarray(v) for k, v in jax.device_get(out).items()}
        prog = generic_program(self.struct, self.treedef)
        out = prog(self.arrs._replace(y=Yc), phi0, np.int64(max_iter), np.float64(gtol))
        out = {k: np.asarray(v) for k, v in jax.device_get(out).items()}
        out["beta"] = out["beta"] + self.beta0[None, :]  # the engine's program works centred
        return out


def simulated_responses(fit, nsim: int, seed: Any) -> np.ndarray:
    """(rows, nsim) responses of ``fit.simulate(nsim, seed)`` in the engine's row order:
    a bivariate fit's draws row-paired ``(y1_1, y2_1, y1_2, ...)``."""
    from ..results.bivariate import BivariateFit

    sims = fit.simulate(nsim, seed=seed).to_numpy()
    if not isinstance(fit, BivariateFit):
        return sims
    n = sims.shape[0]  # columns sim_j_<y1>, sim_j_<y2>, draw by draw
    return sims.reshape(n, nsim, 2).transpose(0, 2, 1).reshape(2 * n, nsim)


def parametric_bootstrap(fit, nsim: int = 1000, *, seed: Any = None, level: float = 0.95,
                         progress: bool = True, chunk_size: int | None = None) -> pd.DataFrame:
    """Parametric-bootstrap percentile intervals for every parameter of a fit.

    Draws ``nsim`` responses from the fitted model (:meth:`DrmFit.simulate` or
    :meth:`BivariateFit.simulate` with ``seed``), refits the same model (same rows, V and
    weights) to each with the batch path, and summarises the refits that converged.  All values are on the link scales of ``fit.params`` (identity for ``mu``,
    log-SD for ``sigma`` and ``sd(g)`` (bivariate: ``sigma1``, ``sigma2``), guarded atanh
    for correlations (bivariate: ``rho12``)).

    Returns a DataFrame with one row per parameter: ``parameter``, ``estimate`` (the
    original fit), ``boot_mean`` and ``boot_se`` (mean and SD of the converged refits),
    ``lower`` and ``upper`` (the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the
    converged refits) and ``n_converged`` (refits that converged to finite estimates); ``attrs`` hold ``nsim``, ``level`` and ``seed``.
    A log-SD whose true value is near its zero boundary has refits at the boundary (very
    negative estimates): its lower limit is then not informative.
    """
    from ..results.bivariate import BivariateFit
    from ..results.fit import DrmFit

    if not isinstance(fit, (DrmFit, BivariateFit)):
        raise DrmError(f"parametric_bootstrap needs a fit from drm.fit, got {type(fit).__name__}.")
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or int(nsim) < 2:
        raise DrmError(f"nsim must be an integer >= 2, got {nsim!r}.")
    if not (isinstance(level, (float, int)) and 0 < float(level) < 1):
        raise DrmError(f"level must be between 0 and 1, got {level!r}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or int(chunk_size) < 1):
        raise DrmError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    nsim = int(nsim)
    Y = simulated_responses(fit, nsim, seed)
    refit = _Refitter(fit)
    ctrl = fit.control
    lanes = _lanes(refit.per_lane, nsim, chunk_size)
    k = len(refit.phi_hat)
    p = refit.struct.p
    beta = np.full((nsim, p), np.nan)
    phi = np.array(np.broadcast_to(refit.phi_hat, (nsim, k)), dtype=np.float64)  # writable, also when k = 0
    status = np.full(nsim, -1, dtype=np.int64)
    iterations = np.zeros(nsim, dtype=np.int64)
    cap = min(FIRST_PASS_ITER.get(refit.kind, FIRST_PASS_ITER_OTHER), int(ctrl.max_iter))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=nsim, unit="refit", desc="drmpy bootstrap", leave=False)
    try:
        todo = np.arange(nsim)
        budget = cap
        for pass_no in (1, 2):
            for start in range(0, len(todo), lanes):
                ids = todo[start : start + lanes]
                Yc = np.zeros((lanes, refit.N))
                Yc[: len(ids)] = refit.centred(Y[:, ids])
                phi0 = np.array(np.broadcast_to(refit.phi_hat, (lanes, k)), dtype=np.float64)
                phi0[: len(ids)] = phi[ids]
                out = refit.run(Yc, phi0.reshape(lanes, k), budget, float(ctrl.gtol))
                m = len(ids)
                beta[ids] = out["beta"][:m]
                phi[ids] = out["phi"][:m]
                status[ids] = out["status"][:m]
                iterations[ids] += out["iterations"][:m]
                if bar is not None:  # refits done (first pass: those that stopped before the cap)
                    done = (status[ids] != MAX_ITER) | (iterations[ids] < cap)
                    final = pass_no == 2 or int(ctrl.max_iter) <= cap
                    bar.update(m if final else int(done.sum()))
            if pass_no == 1:
                todo = np.flatnonzero((status == MAX_ITER) & (iterations >= cap))
                budget = int(ctrl.max_iter) - cap
                if budget <= 0 or todo.size == 0:
                    break
    finally:
        if bar is not None:
            bar.close()
    theta = np.concatenate([beta, phi], axis=1)
    # a refit with a non-finite estimate never counts as converged, whatever its status
    ok = ((status == CONVERGED) | (status == CONVERGED_FLAT)) & np.all(np.isfinite(theta), axis=1)
    good = theta[ok]
    alpha = 1.0 - float(level)
    if good.shape[0] >= 2:
        lower, upper = np.quantile(good, [alpha / 2, 1 - alpha / 2], axis=0)
        mean, se = good.mean(axis=0), good.std(axis=0, ddof=1)
    else:
        lower = upper = mean = se = np.full(theta.shape[1], np.nan)
    out = pd.DataFrame({
        "parameter": list(fit.params.index),
        "estimate": fit.params.to_numpy(),
        "boot_mean": mean,
        "boot_se": se,
        "lower": lower,
        "upper": upper,
        "n_converged": int(ok.sum()),
    })
    out.attrs.update(nsim=nsim, level=float(level), seed=seed)
    return out
