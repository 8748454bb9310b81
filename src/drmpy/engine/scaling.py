"""Internal standardisation of the scale designs (sigma, sd(g), rho12) seen by the optimiser.

A scale predictor on an awkward scale (``sigma ~ I(year * 10)``, ``sigma ~ I(x * 1e-6)``)
makes the log-SD coefficients differ by orders of magnitude in size and curvature: the
trust-region Newton then crawls (hundreds of iterations) or stops on a gradient that is
tiny only because the column is tiny.  As GLM software does, the optimiser instead sees
each scale design with its non-constant columns centred and scaled to unit SD on the rows
(or levels) that use it (scaled to unit root mean square when the design has no intercept
column, which keeps the span of the columns).  The map is linear: with ``Z_int = Z B``,

    Z gamma = Z_int gamma_int  <=>  gamma = B gamma_int,

so the estimates and their covariance (``B Cov B'``) go back to the user's coefficients
exactly; the likelihood is the same function of the fitted SDs.
The location design is not touched: its coefficients are profiled in closed form (GLS).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from scipy.linalg import block_diag

__all__ = ["column_standardizer", "grouped_standardizers", "DesignScaling", "scale_designs"]


def column_standardizer(M: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(k, k) matrix B such that the columns of ``M @ B`` are standardised on rows ``used``.

    With an intercept column (all ones on the used rows): every other non-constant column
    becomes (z - mean) / sd and the intercept column is kept (it still means "the log-SD
    at the predictors' means" in the internal coordinates).  Without one: every nonzero
    column is divided by its root mean square.  Constant columns are kept as they are.
    """
    k = M.shape[1]
    B = np.eye(k)
    if k == 0 or not np.any(used):
        return B
    R = M[used]
    ones = np.flatnonzero(np.all(R == 1.0, axis=0))
    intercept = int(ones[0]) if ones.size else None
    for j in range(k):
        if j == intercept:
            continue
        col = R[:, j]
        if intercept is not None:
            mean, sd = float(np.mean(col)), float(np.std(col))
            if not sd > 1e-12 * abs(mean):  # constant: collinear with the intercept anyway
                continue
            B[j, j] = 1.0 / sd
            B[intercept, j] = -mean / sd
        else:
            rms = float(np.sqrt(np.mean(col**2)))
            if rms > 0:
                B[j, j] = 1.0 / rms
    return B


def grouped_standardizers(M: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(G, k, k): :func:`column_standardizer` of each group's rows of ``M``, the rows sorted
    by group with ``sizes[g]`` rows in group g (fit_batch: every group is standardised as
    its own single fit would be).  The intercept column is the one that is all ones on
    every row; empty groups get the identity."""
    G, k = len(sizes), M.shape[1]
    B = np.broadcast_to(np.eye(k), (G, k, k)).copy()
    if k == 0 or M.shape[0] == 0:
        return B
    offsets = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    nonempty = sizes > 0
    n = np.maximum(sizes, 1)[:, None].astype(float)

    def sums(a):
        out = np.zeros((G, k))
        out[nonempty] = np.add.reduceat(a, offsets[nonempty], axis=0)
        return out

    ones = np.flatnonzero(np.all(M == 1.0, axis=0))
    intercept = int(ones[0]) if ones.size else None
    mean = sums(M) / n
    second = sums(M * M) / n
    # centred second moments (no cancellation for a column far from 0, e.g. a year)
    centred = sums((M - np.repeat(mean, sizes, axis=0)) ** 2) / n
    for j in range(k):
        if j == intercept:
            continue
        if intercept is not None:
            sd = np.sqrt(centred[:, j])
            ok = nonempty & (sd > 1e-12 * np.abs(mean[:, j]))
            B[ok, j, j] = 1.0 / sd[ok]
            B[ok, intercept, j] = -mean[ok, j] / sd[ok]
        else:
            rms = np.sqrt(second[:, j])
            ok = nonempty & (rms > 0)
            B[ok, j, j] = 1.0 / rms[ok]
    return B


@dataclass(frozen=True)
class DesignScaling:
    """The internal arrays and the map ``phi = B phi_int`` (B block-diagonal by component)."""

    arrays: object  # likelihood.Arrays with the standardised scale designs
    B: np.ndarray  # (k_phi, k_phi)

    def to_internal(self, phi: np.ndarray) -> np.ndarray:
        """User coefficients -> the optimiser's coefficients."""
        return np.linalg.solve(self.B, np.asarray(phi, dtype=float))

    def boundary_to_internal(self, boundary):
        """(masks, values) of ``program.boundary_candidates`` in internal coordinates: B is
        block-diagonal by variance component, so each component's values map on their own
        (the masks are unchanged)."""
        if boundary is None:
            return None
        masks, values = boundary
        return masks, np.linalg.solve(self.B, np.asarray(values, dtype=float).T).T

    def to_user(self, out: dict, p: int) -> dict:
        """The program's outputs in the user's coefficients: phi and the covariance (``p``
        location coefficients lead it).  The gradient and the Hessian's smallest eigenvalue
        stay in the optimiser's coordinates, where their size does not depend on the units
        of a predictor (check() compares them with fixed thresholds)."""
        out = dict(out)
        B = self.B
        out["phi"] = B @ np.asarray(out["phi"])
        T = block_diag(np.eye(p), B)
        out["vcov"] = T @ np.asarray(out["vcov"]) @ T.T
        return out


def _used_levels(ra, mask: np.ndarray, n_levels: int) -> np.ndarray:
    """Levels referenced by a data row (padded levels are referenced by none)."""
    lev = np.asarray(ra.level_index)[mask > 0]
    used = np.zeros(n_levels, dtype=bool)
    used[lev[lev < n_levels]] = True
    return used


def _pair_blocks(Z: np.ndarray, mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bivariate sigma design (row-paired, response 1 on even rows): (columns, used rows)
    of sigma1 and of sigma2 (a column of sigma1 is zero on the odd rows)."""
    odd_used = np.any(Z[1::2] != 0.0, axis=0)
    rows = np.arange(Z.shape[0])
    first = (rows % 2 == 0) & (mask > 0)
    second = (rows % 2 == 1) & (mask > 0)
    return [(np.flatnonzero(~odd_used), first), (np.flatnonzero(odd_used), second)]


def scale_designs(arrs, struct) -> DesignScaling | None:
    """The standardised arrays and the map back, or None when every scale design is
    already standard (intercept-only designs: the common case)."""
    mask = np.asarray(arrs.mask)
    Z = np.asarray(arrs.Z_sigma)
    blocks: list[np.ndarray] = []
    if struct.pairs:
        Bs = np.eye(Z.shape[1])
        for cols, used in _pair_blocks(Z, mask):
            Bs[np.ix_(cols, cols)] = column_standardizer(Z[:, cols], used)
        blocks.append(Bs)
        Zr = np.asarray(arrs.pairs.Z_rho)
        Br = column_standardizer(Zr, np.asarray(arrs.pairs.pair) > 0)
        blocks.append(Br)
        if _is_identity(Bs) and _is_identity(Br):
            return None
        new = arrs._replace(Z_sigma=_device(Z @ Bs), pairs=arrs.pairs._replace(Z_rho=_device(Zr @ Br)))
        return DesignScaling(new, block_diag(*blocks))
    Bs = column_standardizer(Z, mask > 0)
    blocks.append(Bs)
    changed = not _is_identity(Bs)
    random = []
    for ra, rs in zip(arrs.random, struct.random):
        used = _used_levels(ra, mask, rs.n_levels)
        designs: list[jax.Array] = []
        for W in ra.sd_designs:
            W = np.asarray(W)
            Bw = column_standardizer(W, used)
            blocks.append(Bw)
            if _is_identity(Bw):
                designs.append(ra.sd_designs[len(designs)])
            else:
                changed = True
                designs.append(_device(W @ Bw))
        blocks.append(np.eye(rs.n_cor))
        random.append(ra._replace(sd_designs=tuple(designs)))
    if not changed:
        return None
    new = arrs._replace(Z_sigma=_device(Z @ Bs) if not _is_identity(Bs) else arrs.Z_sigma, random=tuple(random))
    return DesignScaling(new, block_diag(*blocks))


def _is_identity(B: np.ndarray) -> bool:
    return bool(np.array_equal(B, np.eye(B.shape[0])))


def _device(value) -> jax.Array:
    return jax.device_put(np.asarray(value))
