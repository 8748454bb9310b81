"""Result of a bivariate fit: two location, two scale and one correlation formula.

Coefficients are on drmTMB's link scales (identity for ``mu1``/``mu2``, log-SD for
``sigma1``/``sigma2``, guarded atanh ``rho12 = 0.999999 tanh(eta)`` for ``rho12``),
named ``dpar:term``.  Per-study values are aligned with ``fit.row_labels`` (the retained
studies); they are NaN where they do not apply (a response that is not kept, a pair that
is not correlated).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from ..model.bivariate import BivariateDesign
from ..engine.program import Control, RawFit
from ..errors import DrmError
from ..engine.likelihood import RHO_GUARD
from .fit import FitResult

__all__ = ["BivariateFit"]

DPARS = ("mu1", "mu2", "sigma1", "sigma2", "rho12")


class BivariateFit(FitResult):
    """Result of :func:`drmpy.fit` with mu1/mu2 formulas (``family=drm.biv_gaussian()``)."""

    def __init__(self, design: BivariateDesign, raw: RawFit, method: str, control: Control) -> None:
        super().__init__(design, raw, method, control)

    @cached_property
    def _names(self) -> list[str]:
        return [n for d in DPARS for n in self._design.fixed[d].names]

    @property
    def row_labels(self) -> pd.Index:
        """Data index of the retained studies (the order of every per-study array)."""
        return self._design.row_labels

    @property
    def n_responses(self) -> int:
        """Responses entering the likelihood (nobs counts studies)."""
        return self._design.n_responses

    # ---------------------------------------------------------------- linear predictors
    @cached_property
    def _offsets(self) -> dict[str, slice]:
        out, pos = {}, 0
        for d in DPARS:
            k = self._design.fixed[d].matrix.shape[1]
            out[d] = slice(pos, pos + k)
            pos += k
        return out

    def _applies(self, dpar: str) -> np.ndarray:
        d = self._design
        if dpar == "rho12":
            return d.pair
        return d.kept[:, int(dpar[-1]) - 1]

    def _eta(self, dpar: str) -> np.ndarray:
        """Linear predictor per retained study (NaN where the dpar does not apply)."""
        eta = self._design.fixed[dpar].matrix @ self._raw.theta[self._offsets[dpar]]
        return np.where(self._applies(dpar), eta, np.nan)

    @staticmethod
    def _inverse_link(dpar: str, eta: np.ndarray) -> np.ndarray:
        if dpar.startswith("sigma"):
            return np.exp(eta)
        if dpar == "rho12":
            return RHO_GUARD * np.tanh(eta)
        return eta

    def sigma(self) -> dict[str, np.ndarray]:
        """``{"sigma1": ..., "sigma2": ...}``: fitted residual SDs per retained study (response scale)."""
        return {d: np.exp(self._eta(d)) for d in ("sigma1", "sigma2")}

    def rho12(self, type: str = "response") -> np.ndarray:
        """Residual correlation per retained study (``type="link"``: the atanh-scale predictor);
        NaN where the two responses are not a correlated pair."""
        if type not in ("response", "link"):
            raise DrmError(f"rho12(type=...) must be 'response' or 'link', got {type!r}.")
        eta = self._eta("rho12")
        return eta if type == "link" else RHO_GUARD * np.tanh(eta)

    def fitted(self) -> pd.DataFrame:
        """Fitted means: columns mu1, mu2 per retained study (NaN where a response is not kept)."""
        return pd.DataFrame({"mu1": self._eta("mu1"), "mu2": self._eta("mu2")}, index=self.row_labels)

    def study_covariances(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per retained study ``(var1, var2, cov)``: the entries of ``V_i + B_i``, the known
        sampling covariance plus the fitted residual covariance (response scale; NaN where a
        response is not kept or the pair is not correlated)."""
        d = self._design
        s = self.sigma()
        v = d.v_diag
        var1 = v[:, 0] + s["sigma1"] ** 2
        var2 = v[:, 1] + s["sigma2"] ** 2
        rho = np.where(d.pair, self.rho12(), 0.0)
        v12 = d.v.blocks[:, 0, 1] if d.v.blocks is not None else np.zeros(d.nobs)
        cov = np.where(d.kept.all(axis=1), v12 + rho * np.nan_to_num(s["sigma1"] * s["sigma2"]), np.nan)
        return var1, var2, cov

    def residuals(self, type: str = "response") -> pd.DataFrame:
        """``response``: y - fitted; ``pearson``: whitened by the Cholesky factor of each
        study's V_i + B_i (the first response scaled, the second conditioned on it; a
        study with one response is scaled by its marginal SD).  Columns are the responses."""
        d = self._design
        r = np.where(d.kept, d.y - self.fitted().to_numpy(), np.nan)
        if type == "pearson":
            r = self._whiten(r)
        elif type != "response":
            raise DrmError(f"residuals(type=...) must be 'response' or 'pearson', got {type!r}.")
        return pd.DataFrame(r, index=self.row_labels, columns=list(d.responses))

    def _whiten(self, r: np.ndarray) -> np.ndarray:
        d = self._design
        var1, var2, cov = self.study_covariances()
        if d.v.block_diagonal:
            out = np.full_like(r, np.nan)
            out[:, 0] = r[:, 0] / np.sqrt(var1)
            only2 = ~d.kept[:, 0] & d.kept[:, 1]
            both = d.kept.all(axis=1)
            out[only2, 1] = r[only2, 1] / np.sqrt(var2[only2])
            cond_var = var2 - cov**2 / var1
            out[both, 1] = (r[both, 1] - cov[both] / var1[both] * r[both, 0]) / np.sqrt(cond_var[both])
            return out
        kept = d.kept.reshape(-1)
        S = d.v.known.matrix.copy()
        s2 = np.stack([var1 - d.v_diag[:, 0], var2 - d.v_diag[:, 1]], axis=1).reshape(-1)[kept]
        S[np.diag_indices_from(S)] += s2
        pos = np.cumsum(kept) - 1
        both = np.flatnonzero(d.pair)
        i, j = pos[2 * both], pos[2 * both + 1]
        extra = self.rho12()[both] * self.sigma()["sigma1"][both] * self.sigma()["sigma2"][both]
        S[i, j] += extra
        S[j, i] += extra
        from scipy.linalg import solve_triangular

        e = solve_triangular(np.linalg.cholesky(S), r.reshape(-1)[kept], lower=True)
        out = np.full(r.size, np.nan)
        out[kept] = e
        return out.reshape(r.shape)

    def predict(self, newdata: Any = None, dpar: str = "mu1", type: str = "response",
                interval: str | None = None, **kwargs: Any) -> pd.Series:
        """Predictions of one dpar (mu1, mu2, sigma1, sigma2, rho12) on the retained studies
        or on ``newdata``; ``type="link"`` gives the linear predictor.  Confidence and
        prediction intervals (``interval=``) are for univariate fits only."""
        if interval is not None or kwargs:
            raise DrmError("predict(interval=...) (and its level/vi/test/vcov arguments) is not "
                           "available for bivariate fits; it is for univariate DrmFit results.")
        if dpar not in DPARS:
            raise DrmError(f"predict(dpar=...) must be one of {', '.join(DPARS)}; got {dpar!r}.")
        if type not in ("response", "link"):
            raise DrmError(f"predict(type=...) must be 'response' or 'link', got {type!r}.")
        if newdata is None:
            eta, index = self._eta(dpar), self.row_labels
        else:
            from ..model import frames

            X = self.new_design_matrix(dpar, newdata)
            eta, index = X @ self._raw.theta[self._offsets[dpar]], frames.as_pandas(newdata, []).index
        values = eta if type == "link" else self._inverse_link(dpar, eta)
        return pd.Series(values, index=index, name=dpar)

    def coef_test(self, *args: Any, **kwargs: Any):
        """Not available for bivariate fits (a ``DrmError``); see :meth:`DrmFit.coef_test`."""
        raise DrmError("coef_test (t, Knapp-Hartung and cluster-robust tests) is for univariate DrmFit "
                       "results; it is not available for bivariate fits.")

    # ---------------------------------------------------------------- reports
    def summary(self):
        """Coefficient table (estimate, std_error, z, p, Wald CI, exp(estimate) for log-SD
        rows) with the fitted sigma1, sigma2 and rho12 ranges, logLik and convergence."""
        from .summary import Summary, fit_lines, formula_line

        d = self._design
        table = Summary.coefficient_table(self)
        vtxt = f"meta_V(V = {d.v.name}), {d.v.kind}" if d.v.name else "none"
        dropped = f"; {d.n_dropped} response(s) dropped" if d.n_dropped else ""
        header = (
            f"drmpy fit: bivariate gaussian ({', '.join(d.responses)}), {self.method}\n"
            f"formula: {formula_line(self.formula)}\n"
            f"known sampling covariance: {vtxt}\n"
            f"nobs = {self.nobs} studies ({self.n_responses} responses; {int(d.pair.sum())} correlated "
            f"pairs){dropped}; df = {self.df}; structure = {self.structure}"
        )
        lines = []
        for name, values in list(self.sigma().items()) + [("rho12", self.rho12())]:
            finite = values[np.isfinite(values)]
            if finite.size:
                lines.append(f"fitted {name} (response scale): min {finite.min():.6g}, max {finite.max():.6g}")
        lines.extend(fit_lines(self))
        return Summary(table, header, "\n".join(lines))

    def check(self) -> pd.DataFrame:
        """Diagnostics as for univariate fits, plus incomplete pairs and rho12_boundary."""
        from .checks import check_bivariate_fit

        return check_bivariate_fit(self)

    # ---------------------------------------------------------------- simulation
    def simulate(self, nsim: int = 1, seed: Any = None) -> pd.DataFrame:
        """Both responses drawn from the fitted model, ``nsim`` independent data sets.

        Per retained study ``(y1*, y2*) ~ MVN((mu1_i, mu2_i), V_i + B_i)`` with
        ``B_i = [[s1^2, r s1 s2], [r s1 s2, s2^2]]`` at the fitted sigma1, sigma2 and rho12
        (a study with one kept response: its 1 x 1 marginal; a V that correlates studies:
        drawn through the factor of the whole V).  Response scale.  Columns
        ``sim_1_<y1>, sim_1_<y2>, sim_2_<y1>, ...`` (``<y1>``, ``<y2>`` the response names),
        so draw j is ``sims[[f"sim_{j}_{y1}", f"sim_{j}_{y2}"]]``; index: the labels of the
        retained studies (``fit.row_labels``); NaN where a response is not kept.  ``seed``:
        anything ``numpy.random.default_rng`` accepts.
        """
        from ..simulation.simulate import simulate_bivariate_responses

        return simulate_bivariate_responses(self, nsim, seed)

    def __repr__(self) -> str:
        return (f"<BivariateFit {self.method} studies={self.nobs} responses={self.n_responses} "
                f"df={self.df} logLik={self.loglik:.4f} converged={self.converged}>")
