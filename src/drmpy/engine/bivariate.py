"""From a BivariateDesign to the arrays of the compiled program (start values, padding, structure).

The program itself is engine's: the bivariate model only changes the covariance (see
the structures ``pair`` and ``dense`` of :mod:`drmpy.engine.structures` with ``Structure.pairs``).  Location
coefficients are stacked ``(beta_mu1, beta_mu2)`` with the block design
``[[X1, 0], [0, X2]]`` on the row-paired responses; ``phi = (gamma1, gamma2, eta_rho12)``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..model.bivariate import BivariateDesign
from .program import Control, padded_count
from ..errors import DrmError
from .likelihood import RHO_GUARD, Arrays, PairArrays, Structure
from .structures import get_structure, registered
from .start import bivariate_start_values

__all__ = ["prepare_bivariate", "stacked_designs", "dense_pair_v"]


def stacked_designs(design: BivariateDesign) -> tuple[np.ndarray, np.ndarray]:
    """Row-paired (2n, p1+p2) location design and (2n, k1+k2) sigma design; zero rows where
    a response is not kept."""
    n = design.nobs
    X1, X2 = design.fixed["mu1"].matrix, design.fixed["mu2"].matrix
    Z1, Z2 = design.fixed["sigma1"].matrix, design.fixed["sigma2"].matrix
    X = np.zeros((2 * n, X1.shape[1] + X2.shape[1]))
    X[0::2, : X1.shape[1]] = X1
    X[1::2, X1.shape[1]:] = X2
    Z = np.zeros((2 * n, Z1.shape[1] + Z2.shape[1]))
    Z[0::2, : Z1.shape[1]] = Z1
    Z[1::2, Z1.shape[1]:] = Z2
    mask = design.kept.reshape(-1)
    return X * mask[:, None], Z * mask[:, None]


def choose_pair_structure(design: BivariateDesign, forced: str | None) -> str:
    """The forced structure, or the first bivariate one of the registry's automatic order
    that applies."""
    candidates = [s for s in registered() if s.bivariate]
    if forced is not None:
        if forced not in [s.name for s in candidates]:
            names = " or ".join(f"'{s.name}'" for s in candidates)
            raise DrmError(f"control: a bivariate model takes structure {names}, not {forced!r}.")
        why = get_structure(forced).pair_refusal(design)
        if why is not None:
            raise DrmError(f"control: structure='{forced}' {why}")
        return forced
    for structure in candidates:
        if structure.automatic and structure.pair_refusal(design) is None:
            return structure.name
    raise DrmError("no covariance structure applies to this bivariate model.")  # dense always does


def dense_pair_v(design: BivariateDesign, n_pad: int) -> np.ndarray:
    """(2N, 2N) V over the row-paired entries: kept entries as given, unit diagonal elsewhere."""
    N2 = 2 * n_pad
    Vd = np.eye(N2)
    kept = np.flatnonzero(design.kept.reshape(-1))
    v = design.v
    if v.known is not None:
        Vd[np.ix_(kept, kept)] = v.known.matrix if v.known.matrix is not None else np.diag(v.known.diag)
    else:
        b = v.blocks
        assert b is not None  # without a full V matrix the pair V comes as 2 x 2 blocks
        first = 2 * np.arange(design.nobs)
        Vd[first, first] = np.where(design.kept[:, 0], b[:, 0, 0], 1.0)
        Vd[first + 1, first + 1] = np.where(design.kept[:, 1], b[:, 1, 1], 1.0)
        Vd[first, first + 1] = Vd[first + 1, first] = b[:, 0, 1]
    return Vd


def prepare_bivariate(design: BivariateDesign, method: str, control: Control):
    """(arrays, structure, beta0, phi0) of a bivariate design; y is stored centred at beta0."""
    kind = choose_pair_structure(design, control.structure)
    weighted = design.weights is not None and np.any(design.weights != 1.0)
    if weighted and kind != "pair":
        raise DrmError("control: structure='dense' does not take study weights; non-unit weights need "
                       "structure='pair' (a V that is block-diagonal by study).")
    beta0, phi0 = bivariate_start_values(design)
    n = design.nobs
    n_pad = padded_count(n)
    X, Zs = stacked_designs(design)
    mask = design.kept.reshape(-1).astype(float)
    # row weights: the study's weight on each kept response (0 where not kept)
    w = mask * np.repeat(design.weights, 2) if design.weights is not None else mask
    y = (design.y.reshape(-1) - X @ beta0) * mask
    v = np.where(mask > 0, design.v_diag.reshape(-1), 1.0)
    v12 = design.v.blocks[:, 0, 1] if design.v.blocks is not None else np.zeros(n)
    Zr = design.fixed["rho12"].matrix
    pad_s = n_pad - n

    def pad(a, fill=0.0, count=2 * pad_s):
        if count == 0:
            return a
        return np.concatenate([a, np.full((count,) + a.shape[1:], fill, dtype=a.dtype)], axis=0)

    arrs = Arrays(
        y=jnp.asarray(pad(y)),
        X=jnp.asarray(pad(X)),
        Z_sigma=jnp.asarray(pad(Zs)),
        w=jnp.asarray(pad(w)),
        mask=jnp.asarray(pad(mask)),
        n_obs=jnp.asarray(float(w.sum())),
        v=jnp.asarray(pad(v, 1.0)),
        pairs=PairArrays(
            v12=jnp.asarray(pad(v12, count=pad_s)),
            Z_rho=jnp.asarray(pad(Zr, count=pad_s)),
            pair=jnp.asarray(pad(design.pair.astype(float), count=pad_s)),
        ),
        extra=get_structure(kind).build_pairs(design, n_pad),
    )
    struct = Structure(kind, X.shape[1], Zs.shape[1], (), method, pairs=True, k_rho=Zr.shape[1])
    return arrs, struct, beta0, phi0
