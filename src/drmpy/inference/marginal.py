"""The fitted marginal covariance and the GLS quantities of the location coefficients.

For a univariate fit the marginal covariance of the retained responses is
``S = V + diag(sigma_i^2) + Z G Z'`` at the fitted variance parameters; for a bivariate fit
it is the row-paired ``V + B`` (responses that are not kept carry unit variance and no
covariance, so they drop out of every solve).  metafor reports location uncertainty as
``(X' S^-1 X)^-1`` at the fitted variances (``vcov="gls"`` here); drmTMB, and drmpy's
``fit.vcov()``, use the observed information (``vcov="observed"``), which under ML also
carries the covariance between the location and variance estimates.

These functions re-use the engine's likelihood code (one definition of S) and are pure
functions of the fit; results are cached on the fit object.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.likelihood import Structure, dense_covariance, gram

__all__ = ["GLS", "gls", "gls_weights", "marginal_covariance", "location_vcov", "variance_parameters"]


class GLS(NamedTuple):
    """GLS pieces at the fitted variance parameters (location coefficients in ``fit.params`` order).

    ``information``: ``X' S^-1 X`` (p x p); ``vcov``: its inverse, metafor's ``vb``;
    ``estimate``: ``(X' S^-1 X)^-1 X' S^-1 y``, which equals the fitted mu coefficients.
    """

    information: np.ndarray
    vcov: np.ndarray
    estimate: np.ndarray


def variance_parameters(fit) -> np.ndarray:
    """The fitted variance parameters phi (everything after the location coefficients), link scales."""
    return np.asarray(fit.theta[fit.n_location:], dtype=np.float64)


def prepared_arrays(fit, kind: str | None):
    """(arrays, structure, beta0) of the fit's design, with structure ``kind`` (None: the fit's own)."""
    from ..engine.program import Control, prepare
    from ..results.bivariate import BivariateFit

    control = fit.control if kind is None else Control.coerce({**_control_dict(fit.control), "structure": kind})
    if isinstance(fit, BivariateFit):
        from ..engine.bivariate import prepare_bivariate

        arrs, struct, beta0, _ = prepare_bivariate(fit.design, fit.method, control)
    else:
        (arrs, struct, beta0, _), _ = prepare(fit.design, fit.method, control)
    return arrs, struct, beta0


def _control_dict(control) -> dict:
    return {"max_iter": control.max_iter, "gtol": control.gtol, "structure": control.structure}


@functools.lru_cache(maxsize=32)
def _gram_program(struct: Structure):
    return jax.jit(lambda phi, arrs: gram(phi, arrs, struct))


@functools.lru_cache(maxsize=32)
def dense_program(struct: Structure):
    return jax.jit(lambda phi, arrs: dense_covariance(phi, arrs, struct))


def _row_positions(fit) -> np.ndarray:
    """Positions, in the engine's arrays, of the responses the fit uses (padding excluded)."""
    from ..results.bivariate import BivariateFit

    if isinstance(fit, BivariateFit):
        return np.flatnonzero(fit.design.kept.reshape(-1))
    return np.arange(fit.nobs)


def marginal_covariance(fit) -> np.ndarray:
    """Dense fitted marginal covariance ``S`` of the responses the fit uses (response scale).

    Univariate: n x n over the retained rows, ``V + diag(sigma_i^2) + Z G Z'``.  Bivariate:
    over the kept responses in row-paired order (study 1 response 1, study 1 response 2,
    ...; responses that are not kept left out).  O(n^2) memory: meant for diagnostics,
    robust variances and plots, not for the fit itself.
    """
    return fit.stage_cache("inference.marginal_covariance", lambda: _marginal_covariance_uncached(fit))


def _marginal_covariance_uncached(fit) -> np.ndarray:
    arrs, struct, _ = prepared_arrays(fit, "dense")
    S = np.asarray(jax.device_get(dense_program(struct)(jnp.asarray(variance_parameters(fit)), arrs)))
    rows = _row_positions(fit)
    S = S[np.ix_(rows, rows)]
    return S


def gls(fit) -> GLS:
    """``X' S^-1 X``, its inverse and the GLS estimate at the fitted variance parameters.

    Evaluated with the fit's own likelihood structure (diag, block, woodbury, pair or
    dense), so it costs one likelihood evaluation and no n x n matrix.
    """
    return fit.stage_cache("inference.gls", lambda: _gls_uncached(fit))


def _gls_uncached(fit) -> GLS:
    A = _gls_information(fit)
    if A is not None:
        p = A.shape[0]
        vcov = np.linalg.inv(A)
        estimate = np.asarray(fit.theta[:p], dtype=np.float64)  # the fit's beta is this GLS estimate
    else:
        arrs, struct, beta0 = prepared_arrays(fit, None)
        _, M = jax.device_get(_gram_program(struct)(jnp.asarray(variance_parameters(fit)), arrs))
        M = np.asarray(M)
        p = struct.p
        A = 0.5 * (M[:p, :p] + M[:p, :p].T)
        vcov = np.linalg.inv(A)
        estimate = vcov @ M[:p, p] + beta0  # the arrays hold y centred at beta0
    vcov = 0.5 * (vcov + vcov.T)
    out = GLS(A, vcov, estimate)
    return out


def _gls_information(fit) -> np.ndarray | None:
    """``X'S^-1X`` without compiling anything: every single fit's program returns it from its
    last step.  None for bivariate fits."""
    from ..results.bivariate import BivariateFit

    if isinstance(fit, BivariateFit):
        return None
    A = np.asarray(fit.information, dtype=np.float64)
    return 0.5 * (A + A.T)


def location_vcov(fit, vcov: str = "observed") -> np.ndarray:
    """Covariance of the location coefficients: ``"observed"`` (``fit.vcov()``, drmTMB's) or
    ``"gls"`` (``(X' S^-1 X)^-1`` at the fitted variances, metafor's)."""
    from ..errors import DrmError

    p = fit.n_location
    if vcov == "observed":
        return fit.vcov().to_numpy()[:p, :p]
    if vcov == "gls":
        return gls(fit).vcov
    raise DrmError(f"vcov must be 'observed' or 'gls' here, got {vcov!r}.")


def gls_weights(fit) -> np.ndarray:
    """Percentage weight of each retained row in the fit's GLS estimate of ``mu`` (sums to 100).

    ``w_i`` is the i-th diagonal entry of ``W = S^-1``, ``S`` the fitted marginal covariance,
    shown as ``100 w_i / sum(w)``: metafor's ``weights()`` of an ``rma.mv`` fit
    (``type = "diagonal"``), which for a diagonal ``S`` is ``rma.uni``'s
    ``1 / (v_i + tau_i^2)`` (here ``v_i + sigma_i^2``; a location-scale model gives each row
    its own ``sigma_i``).  A diagonal model with likelihood weights ``a_i`` (``drm.fit(weights=)``)
    gets ``a_i / (v_i + sigma_i^2)``, the weight the row has in its own estimate.  Univariate
    fits only.  A non-diagonal ``S`` (random effects or a matrix V) is factorised densely:
    O(n^2) memory, meant for plots and reports.
    """
    from ..errors import DrmError
    from ..heterogeneity.statistics import row_variances
    from ..results.bivariate import BivariateFit

    if isinstance(fit, BivariateFit):
        raise DrmError("gls_weights() takes a univariate fit; this is a bivariate fit (two responses).")
    from ..results.robust_fit import RobustFit

    if isinstance(fit, RobustFit):  # the robust estimate's own weights (posterior mean precisions)
        from .robust_residuals import robust_weights

        return robust_weights(fit).to_numpy()
    design = fit.design
    if design.known_v.is_diagonal and not design.random:
        total = np.asarray(design.known_v.diag, dtype=np.float64).copy()
        sigma2 = row_variances(fit).get("sigma")  # absent under sigma ~ 0 (common effect)
        if sigma2 is not None:
            total += np.asarray(sigma2, dtype=np.float64)
        w = 1.0 / total
        if design.weights is not None:
            w = w * np.asarray(design.weights, dtype=np.float64)
    else:
        from scipy import linalg

        factor = linalg.cho_factor(marginal_covariance(fit), lower=True)
        inverse = linalg.cho_solve(factor, np.eye(fit.nobs))
        w = np.diag(inverse).copy()
    return 100.0 * w / np.sum(w)
