"""When is a fitted SD at its zero boundary?  One scale-free rule for every check.

A variance that goes to zero drives its log-SD toward -infinity, where the likelihood is
flat.  Whether an SD is "zero" depends on the other variance in play (a sigma of 1e-4 is
nothing next to a sampling SD of 0.5 and everything next to one of 1e-6), so the rule
compares each SD with the typical SD of the other variance components of the rows it
enters (the known sampling variance, sigma, the other random effects) and reads its
standard error on the log scale:

* an SD below ``TINY_RATIO`` (1e-4) of the reference is at zero whatever its SE
  (its variance is under 1e-8 of the other variance: numerically the model without it);
* an SD below ``SMALL_RATIO`` (1/10) of the reference is at zero when the SE of its
  log-SD exceeds ``SE_FACTOR`` (10) times its distance below the reference in log
  units (the data cannot tell it from 0: e.g. a 2-study REML fit with sigma = 1.5e-4,
  sampling SD 0.51 and SE 8,937 of log sigma).  A non-finite SE counts as huge.

Both parts are invariant to the units of y (y -> c y, V -> c^2 V) and of any predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TINY_RATIO", "SMALL_RATIO", "SE_FACTOR", "sd_at_boundary", "SdComponent",
           "variance_components", "bivariate_sigma_components"]

TINY_RATIO = 1e-4
SMALL_RATIO = 0.1
SE_FACTOR = 10.0


def sd_at_boundary(log_sd: np.ndarray, se_log_sd: np.ndarray, reference_sd: float) -> np.ndarray:
    """Per element: whether an SD with log ``log_sd`` and standard error ``se_log_sd`` (of the
    log-SD) is at its zero boundary next to ``reference_sd`` (the typical SD of the other
    variance in play, same units).  All False when there is no other variance (then the
    SD cannot reach zero without the likelihood diverging)."""
    log_sd = np.asarray(log_sd, dtype=float)
    if not (np.isfinite(reference_sd) and reference_sd > 0):
        return np.zeros(log_sd.shape, dtype=bool)
    below = np.log(reference_sd) - log_sd  # log units below the reference (-inf: sd = 0 -> +inf)
    se = np.where(np.isfinite(se_log_sd), se_log_sd, np.inf)
    tiny = below > -np.log(TINY_RATIO)
    flat = (below > -np.log(SMALL_RATIO)) & (se > SE_FACTOR * below)
    return tiny | flat


@dataclass(frozen=True)
class SdComponent:
    """One SD of a fit: its name, log-SD and SE per row or level, and its reference SD."""

    name: str  # "sigma", "sd(g)" (a random intercept or the term's first coefficient), "sd(g|x)"
    group: str | None  # the random term's group, None for sigma
    log_sd: np.ndarray
    se_log_sd: np.ndarray
    reference_sd: float

    @property
    def at_boundary(self) -> bool:
        return bool(np.any(sd_at_boundary(self.log_sd, self.se_log_sd, self.reference_sd)))


def _linear_predictor(M: np.ndarray, coef: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``M coef`` and its standard error per row, ``sqrt(diag(M cov M'))``."""
    eta = M @ coef
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", M, cov, M), 0.0))
    se = np.where(np.all(np.isfinite(cov)), se, np.nan)
    return eta, se


def _median_sd(other_var: np.ndarray, scale: np.ndarray | None = None) -> float:
    """Median over rows of sqrt(other variance) (divided by |scale| where scale != 0)."""
    sd = np.sqrt(np.maximum(other_var, 0.0))
    if scale is not None:
        use = scale != 0
        sd = sd[use] / np.abs(scale[use])
    sd = sd[np.isfinite(sd)]
    return float(np.median(sd)) if sd.size else 0.0


def variance_components(design, theta: np.ndarray, vcov: np.ndarray) -> list[SdComponent]:
    """Every SD of a univariate fit (sigma unless ``sigma ~ 0``; each coefficient SD of each
    random term), each with the typical SD of the variance the other components add to the
    rows it enters.  A random coefficient's reference is in its own units (divided by the
    row's covariate value, e.g. a slope's SD against the other SD per unit of x)."""
    n = design.nobs
    v = np.asarray(design.known_v.diag, dtype=float) if design.known_v.diag is not None else np.zeros(n)
    X = design.fixed["mu"].matrix
    Zs = design.fixed["sigma"].matrix
    pos = X.shape[1]
    parts = []  # (name, group, eta, se, per-row variance, row covariate or None)
    if Zs.shape[1]:
        k = Zs.shape[1]
        eta, se = _linear_predictor(Zs, theta[pos:pos + k], vcov[pos:pos + k, pos:pos + k])
        parts.append(("sigma", None, eta, se, np.exp(2 * eta), None))
    pos += Zs.shape[1]
    for rd in design.random:
        names = rd.term.coefficient_names
        kdiag = np.diag(rd.relmat) if rd.relmat is not None else np.ones(rd.n_levels)
        for c, sdd in enumerate(rd.sd_designs):
            W = sdd.matrix
            k = W.shape[1]
            eta, se = _linear_predictor(W, theta[pos:pos + k], vcov[pos:pos + k, pos:pos + k])
            pos += k
            z = rd.z[:, c]
            row_var = (z**2) * np.exp(2 * eta)[rd.level_index] * kdiag[rd.level_index]
            name = f"sd({rd.group})" if names[c] == "(Intercept)" else f"sd({rd.group}|{names[c]})"
            parts.append((name, rd.group, eta, se, row_var, z * np.sqrt(kdiag[rd.level_index])))
        pos += rd.n_cor
    out = []
    for i, (name, group, eta, se, _, z) in enumerate(parts):
        others = v + sum(p[4] for j, p in enumerate(parts) if j != i)
        out.append(SdComponent(name, group, eta, se, _median_sd(others, z)))
    return out


def bivariate_sigma_components(design, theta: np.ndarray, vcov: np.ndarray) -> list[SdComponent]:
    """sigma1 and sigma2 of a bivariate fit on their kept rows, each against the typical
    sampling SD of its response (the only other variance of the response)."""
    pos = design.fixed["mu1"].matrix.shape[1] + design.fixed["mu2"].matrix.shape[1]
    out = []
    for k, name in enumerate(("sigma1", "sigma2")):
        rows = design.kept[:, k]
        Z = design.fixed[name].matrix
        m = Z.shape[1]
        eta, se = _linear_predictor(Z[rows], theta[pos:pos + m], vcov[pos:pos + m, pos:pos + m])
        pos += m
        out.append(SdComponent(name, None, eta, se, _median_sd(design.v_diag[rows, k])))
    return out
