"""Likelihood-ratio tests between nested fits, and information criteria across fits."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError, DrmWarning

__all__ = ["lrt", "compare", "added_variance_components", "LikelihoodRatioTest"]


@dataclass(frozen=True)
class LikelihoodRatioTest(Mapping):
    """The result of :func:`lrt`: typed fields, read by key (``out["p_value"]``, as the Series
    drm.lrt used to return) or attribute; printed as a one-row table with the numbers shown as
    in ``summary()`` (6 significant digits, so a p-value of 3.7e-27 is not rounded to 0)."""

    statistic: float
    df: int
    p_value: float
    boundary: bool

    _FIELDS = ("statistic", "df", "p_value", "boundary")

    @property
    def index(self) -> pd.Index:
        """The field names, in order (as the index of the former Series)."""
        return pd.Index(self._FIELDS)

    def __getitem__(self, key: str):
        if key not in self._FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._FIELDS)

    def __len__(self) -> int:
        return len(self._FIELDS)

    def to_frame(self) -> pd.DataFrame:
        """One row: ``statistic`` and ``p_value`` float64, ``df`` int64, ``boundary`` bool."""
        return pd.DataFrame({"statistic": [self.statistic], "df": np.array([self.df], dtype=np.int64),
                             "p_value": [self.p_value], "boundary": [self.boundary]}, index=pd.Index(["lrt"]))

    def to_series(self) -> pd.Series:
        """The four fields as an object Series (statistic, df, p_value, boundary)."""
        return pd.Series(dict(self), dtype=object, name="lrt")

    def __str__(self) -> str:
        from ..results.summary import table_text

        return table_text(self.to_frame())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from ..results.summary import NUMBER_FORMAT

        return self.to_frame().to_html(float_format=NUMBER_FORMAT)


def _dpar(name: str) -> str:
    from ..results.fit import dpar_of

    return dpar_of(name)


def added_variance_components(names0, names1) -> list[str]:
    """Variance components present in fit1 whose whole block is absent from fit0.

    An ``sd(g)`` (or ``sd(g|x)``) block with no parameter in fit0, and ``sigma`` when fit0
    has no ``sigma:`` parameter (the common-effect model ``sigma ~ 0``).  Their null value
    (a zero SD) lies on the boundary of the parameter space.
    """
    d0 = {_dpar(n) for n in names0}
    d1 = list(dict.fromkeys(_dpar(n) for n in names1))
    return [d for d in d1 if d not in d0 and (d == "sigma" or d.startswith("sd("))]


def _same_rows(fit0, fit1) -> None:
    d0, d1 = fit0.design, fit1.design
    if fit0.nobs != fit1.nobs or not d0.row_labels.equals(d1.row_labels):
        raise DrmError(
            f"lrt: the fits use different rows ({fit0.nobs} and {fit1.nobs} retained rows, or other "
            "row labels); a likelihood-ratio test needs the same data. Refit both on the rows "
            "complete for every variable of the larger model."
        )
    if not np.array_equal(d0.y, d1.y):
        raise DrmError("lrt: the fits have different response values on the same rows.")


def _same_mu_design(fit0, fit1) -> bool:
    """Same location design(s) (``mu``; ``mu1`` and ``mu2`` for bivariate fits): terms and values."""
    keys0 = [k for k in fit0.design.fixed if k.startswith("mu")]
    keys1 = [k for k in fit1.design.fixed if k.startswith("mu")]
    if keys0 != keys1:
        return False
    for k in keys0:
        m0, m1 = fit0.design.fixed[k], fit1.design.fixed[k]
        if list(m0.terms) != list(m1.terms) or not np.array_equal(m0.matrix, m1.matrix):
            return False
    return True


def lrt(fit0, fit1) -> "LikelihoodRatioTest":
    """Likelihood-ratio test of ``fit0`` (null) nested in ``fit1``.

    Returns a :class:`LikelihoodRatioTest`: ``statistic`` = ``2 (logLik1 - logLik0)`` (float),
    ``df`` (number of extra parameters, int), ``p_value`` (float) and ``boundary`` (bool), read
    as ``out["p_value"]`` or ``out.p_value``; ``out.to_frame()`` is a one-row DataFrame with
    those dtypes; printing shows the numbers as ``summary()`` does.  Checks (each a ``DrmError``): both fits are
    univariate results on the same rows with the same responses; ``fit0``'s parameter names
    are a strict subset of ``fit1``'s; same ``method``; under REML, the same mu design (the
    REML criterion of different mu designs are likelihoods of different data).

    ``boundary`` is True when fit1 adds a variance component whose null value is a zero SD:
    an ``sd(g)`` block absent from fit0, or ``sigma`` absent from fit0 (``sigma ~ 0``). The
    p-value is then the equal mixture of chi-square distributions with ``d - 1`` and ``d``
    df (Self and Liang 1987), ``d = df``: half the plain chi-square(1) p-value for one added
    one-parameter SD (metafor's ``anova`` prints the plain one).  When fit1 adds several
    components, or a modelled SD ``sd(g) ~ x`` (whose slopes are not identified when the SD
    is zero), the same mixture is used: it is exact for one component on the boundary and
    conservative for several (the chi-bar-square with binomial weights puts more weight on
    fewer df, so it gives smaller p-values), and approximate for a modelled SD.
    Otherwise ``p_value`` is the chi-square(df) tail probability.
    """
    from ..results.fit import DrmFit

    for f in (fit0, fit1):
        if not isinstance(f, DrmFit):
            raise DrmError(f"lrt compares univariate DrmFit results; got {type(f).__name__}.")
    _same_rows(fit0, fit1)
    if fit0.method != fit1.method:
        raise DrmError(f"lrt: the fits use different methods ({fit0.method} and {fit1.method}); refit "
                       "both with the same method.")
    names0, names1 = list(fit0.params.index), list(fit1.params.index)
    extra0 = [n for n in names0 if n not in set(names1)]
    if extra0:
        raise DrmError(f"lrt: the fits are not nested: fit0 has parameter `{extra0[0]}` that fit1 lacks "
                       "(fit0's parameters must be a subset of fit1's, by name).")
    df = len(names1) - len(names0)
    if df <= 0:
        raise DrmError("lrt: fit1 adds no parameter to fit0 (the same parameter names); nothing to test.")
    if fit0.method == "REML" and not _same_mu_design(fit0, fit1):
        raise DrmError(
            "lrt: REML fits with different mu designs are not comparable (the REML criterion "
            "integrates the location coefficients out, so it is the likelihood of different "
            "contrasts of the data); refit both with method='ML' to test mu terms."
        )
    statistic = 2.0 * (fit1.loglik - fit0.loglik)
    if statistic < -1e-6 * max(1.0, abs(fit1.loglik)):
        warnings.warn(f"lrt: fit1's logLik ({fit1.loglik:.6f}) is below fit0's ({fit0.loglik:.6f}); "
                      "fit1 did not reach its optimum (see fit1.check()).", DrmWarning, stacklevel=2)
    statistic = max(statistic, 0.0)
    boundary = bool(added_variance_components(names0, names1))
    if boundary:
        upper = stats.chi2.sf(statistic, df)
        lower = stats.chi2.sf(statistic, df - 1) if df > 1 else float(statistic <= 0.0)
        p_value = 0.5 * (lower + upper)
    else:
        p_value = stats.chi2.sf(statistic, df)
    return LikelihoodRatioTest(float(statistic), int(df), float(p_value), boundary)


def compare(*fits, names=None) -> pd.DataFrame:
    """Information criteria of several fits, one row each.

    Columns ``loglik``, ``df`` (estimated parameters), ``aic``, ``aicc``
    (``aic + 2 df (df + 1) / (nobs - df - 1)``), ``bic``, ``delta_aic`` (from the smallest)
    and ``aic_weight`` (Akaike weights ``exp(-delta/2)``, normalised).  REML fits with
    different mu designs get a ``DrmWarning`` (their criteria are not comparable), and so do
    fits on different rows.
    """
    if len(fits) == 1 and isinstance(fits[0], (list, tuple)):
        fits = tuple(fits[0])
    if not fits:
        raise DrmError("compare needs at least one fit.")
    from ..results.fit import FitResult

    for i, f in enumerate(fits):
        if not isinstance(f, FitResult):
            raise DrmError(f"compare: argument {i + 1} is not a fit (a DrmFit or BivariateFit from drm.fit); "
                           f"got {type(f).__name__}.")
    if names is None:
        names = [f"fit{i + 1}" for i in range(len(fits))]
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple, pd.Index, np.ndarray, pd.Series)):
        raise DrmError(f"compare: `names` must be a list of {len(fits)} names, one per fit; got {names!r}.")
    names = [str(n) for n in names]
    if len(names) != len(fits):
        raise DrmError(f"compare: {len(names)} names for {len(fits)} fits.")
    if len(set(names)) != len(names):
        raise DrmError(f"compare: `names` must be different; got {names!r}.")
    first = fits[0]
    for f in fits[1:]:
        if not (f.nobs == first.nobs and f.design.row_labels.equals(first.design.row_labels)):
            warnings.warn("compare: the fits use different rows; their information criteria are not "
                          "comparable.", DrmWarning, stacklevel=2)
            break
    reml = [f for f in fits if f.method == "REML"]
    if len({f.method for f in fits}) > 1:
        warnings.warn("compare: the fits mix ML and REML; their logLik are not comparable.", DrmWarning,
                      stacklevel=2)
    if any(not _same_mu_design(reml[0], f) for f in reml[1:]):
        warnings.warn("compare: REML fits with different mu designs; their REML criteria are not "
                      "comparable (refit with method='ML' to compare mu terms).", DrmWarning, stacklevel=2)
    rows = []
    for f in fits:
        k, n = f.df, f.nobs
        aicc = f.aic + 2.0 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else math.inf
        rows.append({"loglik": f.loglik, "df": k, "aic": f.aic, "aicc": aicc, "bic": f.bic})
    out = pd.DataFrame(rows, index=pd.Index(names, name="model"))
    out["delta_aic"] = out["aic"] - out["aic"].min()
    w = np.exp(-0.5 * out["delta_aic"].to_numpy())
    out["aic_weight"] = w / w.sum()
    return out
