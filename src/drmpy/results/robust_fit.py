"""Result of a robust random-effects fit (``family=drm.student()`` or ``drm.normal_mixture()``).

A :class:`RobustFit` is a :class:`~drmpy.DrmFit` whose family is not Gaussian: estimates,
standard errors (exact observed information), ``vcov``, ``coef``, ``tidy``, logLik/AIC/BIC,
fitted values, response residuals and predictions of the row-level parameters work as for any
fit; ``predict(interval=...)`` gives Wald confidence intervals and prediction intervals from
the family's random-effect distribution (:mod:`drmpy.inference.robust_prediction`), and the
forest, orchard and QQ plots use the robust estimate's own weights and quantile residuals
(:mod:`drmpy.inference.robust_residuals`); methods whose numbers assume a Gaussian model (I2, H2, R2, the Q test, BLUPs, Pearson
residuals, heterogeneity tables, variance components, bootstrap intervals,
influence) raise :class:`~drmpy.DrmError` naming the family instead of returning
wrong numbers.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from ..engine.optimize import STATUS_NAMES
from ..errors import DrmError
from ..robust.program import RobustRaw
from .fit import DrmFit, parameter_names
from .summary import fit_lines, formula_line, table_text, tidy_table

__all__ = ["RobustFit", "RobustSummary"]


class RobustFit(DrmFit):
    """Result of :func:`drmpy.fit` with a non-Gaussian family (ML)."""

    _family: Any
    _robust: RobustRaw

    def __init__(self, design, raw: RobustRaw, method: str, control, family, data: Any = None, env: Any = None) -> None:
        super().__init__(design, raw, method, control, None, data=data, env=env)
        self._store(_family=family, _robust=raw)

    # ------------------------------------------------------------------ the family
    @property
    def family(self):
        """The fitted family (``drm.student()``, ``drm.normal_mixture()``)."""
        return self._family

    @property
    def at_boundary(self) -> bool:
        """student(): whether nu is at its boundary (``1/nu = 0``, the normal model fits as well)."""
        return bool(self._robust.at_boundary)

    @property
    def normal_theta(self) -> np.ndarray | None:
        """Estimates of the normal (Gaussian, ML) model with the same formulas, in its parameter
        order (mu, sigma, sd), read-only; None when the fit keeps none.  The null model of
        :meth:`outlier_test`."""
        if self._robust.normal_theta is None:
            return None
        out = np.array(self._robust.normal_theta, dtype=np.float64)
        out.setflags(write=False)
        return out

    @property
    def normal_loglik(self) -> float:
        """Log-likelihood of the normal (Gaussian, ML) model with the same formulas (student())."""
        return float(self._robust.normal_loglik) if self._robust.normal_loglik is not None else float("nan")

    @cached_property
    def _names(self) -> list[str]:
        return parameter_names(self._design, self._family)

    def dpar_values(self, dpar: str) -> pd.Series:
        """A row-level parameter (mu, sigma, nu, sigma_out, p_out) per retained row, response scale."""
        values = self._robust.row_values
        if dpar not in values:
            raise DrmError(f"Unknown dpar `{dpar}`; this {self._family!r} model has {', '.join(values)}.")
        return self._series(np.asarray(values[dpar]), dpar)

    def _gaussian_only(self, what: str):
        raise DrmError(f"{what} assumes a Gaussian random-effects model; this fit's family is "
                       f"{self._family!r}, for which drmpy does not compute it.")

    # ------------------------------------------------------------------ fitted values
    @cached_property
    def _random_mu(self) -> np.ndarray:
        if self._design.random:
            self._gaussian_only("fitted values with conditional modes of (1|group)")
        return np.zeros(self.nobs)

    def residuals(self, type: str = "response") -> pd.Series:
        if type != "response":
            self._gaussian_only(f"residuals(type={type!r})")
        return super().residuals("response")

    def predict(self, newdata: Any = None, dpar: str = "mu", type: str = "response",
                interval: str | None = None, level: float = 0.95, vi: Any = None,
                test: str = "z", vcov: str = "observed", re_form: Any = None):
        """Predictions of a row-level parameter (fixed effects only), or of ``mu`` with a Wald
        confidence interval or a prediction interval from the family's random-effect
        distribution (``interval=``; see
        :func:`drmpy.inference.robust_prediction.robust_predict_interval`)."""
        if interval is not None:
            if dpar != "mu":
                raise DrmError(f"predict(interval={interval!r}) is for dpar='mu' only, got dpar={dpar!r}.")
            if re_form:
                self._gaussian_only("predict(re_form=True) (conditional modes)")
            from ..inference.robust_prediction import robust_predict_interval

            return robust_predict_interval(self, newdata, interval, level, vi, test, vcov)
        if re_form:
            self._gaussian_only("predict(re_form=True) (conditional modes)")
        if newdata is None:
            return self.dpar_values(dpar) if type == "response" else pd.Series(
                _link(self._family.link(dpar), self.dpar_values(dpar).to_numpy()),
                index=self._design.row_labels, name=dpar)
        from ..families import inverse_link_numpy
        from ..model import frames

        fixed = self._family.fixed_values
        if dpar in fixed:  # student(nu=4): the same value on every new row, as dpar_values gives
            index = frames.as_pandas(newdata, []).index
            value = float(fixed[dpar]) if type == "response" else float(_link(self._family.link(dpar), np.array([fixed[dpar]]))[0])
            return pd.Series(np.full(len(index), value), index=index, name=dpar)
        if dpar not in self._family.dpars:
            raise DrmError(f"predict(dpar=...): {dpar!r} is not an estimated parameter of {self._family!r}.")
        X = self.new_design_matrix(dpar, newdata)
        start = 0
        for d in self._family.dpars:
            if d == dpar:
                break
            start += self._design.fixed[d].matrix.shape[1]
        eta = X @ self._raw.theta[start:start + X.shape[1]]
        from ..model import frames

        index = frames.as_pandas(newdata, []).index
        out = inverse_link_numpy(self._family.link(dpar), eta) if type == "response" else eta
        return pd.Series(out, index=index, name=dpar)

    # ------------------------------------------------------------------ robust-only output
    def outlier_probabilities(self) -> pd.Series:
        """normal_mixture(): posterior probability that each row's random effect comes from the
        outlier component (metaplus's ``outlierProbs``).  See
        :func:`drmpy.inference.outliers.outlier_probabilities`."""
        from ..inference.outliers import outlier_probabilities

        return outlier_probabilities(self)

    def lrt_normal(self) -> pd.Series:
        """Likelihood-ratio test of the t model against the normal model (student(), nu
        estimated): ``statistic`` = 2 (logLik_t - logLik_normal), ``df`` 1, ``p_value`` from the
        boundary mixture 0.5 chi2_0 + 0.5 chi2_1 (``1/nu = 0`` is on the boundary)."""
        from ..inference.outliers import lrt_normal

        return lrt_normal(self)

    def outlier_test(self, nsim: int = 999, *, seed: Any = None, resample_v: bool = False):
        """Parametric-bootstrap test of this robust model against the normal model (metaplus's
        ``testOutliers``): ``nsim`` replicates from the fitted normal model, each refitted under
        both, in compiled batches.  See :func:`drmpy.inference.outlier_test.outlier_test`."""
        from ..inference.outlier_test import outlier_test

        return outlier_test(self, nsim, seed=seed, resample_v=resample_v)

    # ------------------------------------------------------------------ Gaussian-only methods
    def heterogeneity(self):
        self._gaussian_only("heterogeneity()")

    def ranef(self):
        if not self._design.random:
            return super().ranef()
        self._gaussian_only("ranef() (conditional modes, BLUPs)")

    def gaussian_order_theta(self) -> np.ndarray:
        """``theta`` in the Gaussian model's order (mu, sigma, sd coefficients): without the
        family's extra parameters (nu; sigma_out, p_out), which sit between sigma and the SDs.
        What the Gaussian helpers that read random-effect SDs take."""
        widths = [self._design.fixed[d].matrix.shape[1] for d in ("mu", "sigma", *self._family.estimated_extra_dpars)]
        theta = np.asarray(self._raw.theta, dtype=np.float64)
        return np.concatenate([theta[:widths[0] + widths[1]], theta[sum(widths):]])

    def sd(self, group: str):
        """Fitted SD of the Gaussian ``(1|group)`` effect per level (response scale)."""
        from .random_effects import level_sd_table

        return level_sd_table(self._design, self.gaussian_order_theta(), group)

    def variance_components(self, level: float | None = None, method: str = "profile"):
        self._gaussian_only("variance_components()")

    def conf_int(self, level: float = 0.95, method: str = "wald", params: Any = None,
                 scale: str = "link", nsim: int = 1000, seed: Any = None) -> pd.DataFrame:
        """Wald (``method="wald"``) or profile-likelihood (``method="profile"``, with a
        ``status`` column; see :func:`drmpy.inference.robust_profile.robust_profile_intervals`)
        intervals, on the link scale or (``scale="response"``) through the inverse links."""
        if method not in ("wald", "profile"):
            self._gaussian_only(f"conf_int(method={method!r})")
        if scale not in ("link", "response"):
            raise DrmError(f"conf_int(scale=...) must be 'link' or 'response', got {scale!r}.")
        if method == "profile":
            from ..inference.robust_profile import robust_profile_intervals

            out = robust_profile_intervals(self, level, params)
        else:
            table = self.tidy(level)
            out = pd.DataFrame({"estimate": table["estimate"].to_numpy(), "lower": table["conf_low"].to_numpy(),
                                "upper": table["conf_high"].to_numpy()}, index=self.params.index)
            if params is not None:
                out = out.loc[[params] if isinstance(params, str) else list(params)]
        if scale == "response":
            from ..families import inverse_link_numpy
            from .fit import dpar_of

            cols = ["estimate", "lower", "upper"]
            for name in out.index:
                link = self._family.link(dpar_of(name))
                out.loc[name, cols] = inverse_link_numpy(link, out.loc[name, cols].to_numpy(dtype=float))
        return out

    def profile(self, param: str, n: int = 25, level: float = 0.99) -> pd.DataFrame:
        """Profile log-likelihood of one parameter on ``n`` link-scale values spanning its
        ``level`` profile interval: columns ``value``, ``loglik``, ``statistic`` (2 (l_hat - l)).
        See :func:`drmpy.inference.robust_profile.robust_profile_curve`."""
        from ..inference.robust_profile import robust_profile_curve

        return robust_profile_curve(self, param, n=n, level=level)

    def coef_test(self, *args: Any, **kwargs: Any):
        self._gaussian_only("coef_test()")

    def q_test(self):
        self._gaussian_only("q_test()")

    def i2(self, by: Any = None, data: Any = None):
        self._gaussian_only("i2()")

    def h2(self):
        self._gaussian_only("h2()")

    def r2(self):
        self._gaussian_only("r2()")

    def leave_one_out(self, by: str | None = None):
        self._gaussian_only("leave_one_out()")

    def influence(self, cluster: str | None = None):
        self._gaussian_only("influence()")

    def simulate(self, nsim: int = 1, seed: Any = None) -> pd.DataFrame:
        """Responses drawn from the fitted robust model, ``nsim`` data sets (columns
        ``sim_1 ..``, rows the retained rows): the known sampling variance, the family's random
        effect at each row's fitted parameters, and any ``(1|g)`` effect redrawn per level.
        See :mod:`drmpy.simulation.robust`."""
        from ..simulation.robust import simulate_robust

        return simulate_robust(self, nsim, seed)

    # ------------------------------------------------------------------ reports
    def summary(self, test: str = "z"):
        if test != "z":
            self._gaussian_only(f"summary(test={test!r})")
        return RobustSummary.from_fit(self)

    def _sd_components(self):
        """The SDs of the robust model (sigma; sigma_out; a (1|g) SD), each with the typical SD
        of the other variance of its rows (known v and the other components), for the
        scale-free zero-boundary rule of :mod:`drmpy.results.boundary`.  For the t model sigma
        is the scale; its variance ``sigma^2 nu / (nu - 2)`` is not used (infinite for nu <= 2)."""
        from .boundary import SdComponent, _linear_predictor, _median_sd

        design, theta = self._design, np.asarray(self._raw.theta, dtype=np.float64)
        vcov = np.asarray(self._raw.vcov, dtype=np.float64)
        v = np.asarray(design.known_v.diag, dtype=np.float64)
        starts = {}
        pos = 0
        for d in self._family.dpars:
            width = design.fixed[d].matrix.shape[1]
            starts[d] = (pos, width)
            pos += width
        parts = []  # (name, group, eta, se, per-row variance)
        for d in ("sigma", "sigma_out"):
            if d in starts:
                a, k = starts[d]
                eta, se = _linear_predictor(design.fixed[d].matrix, theta[a:a + k], vcov[a:a + k, a:a + k])
                parts.append((d, None, eta, se, np.exp(2 * eta)))
        for rd in design.random:
            W = rd.sd_designs[0].matrix
            k = W.shape[1]
            eta, se = _linear_predictor(W, theta[pos:pos + k], vcov[pos:pos + k, pos:pos + k])
            parts.append((f"sd({rd.group})", rd.group, eta, se, np.exp(2 * eta)[rd.level_index]))
            pos += k
        out = []
        for i, (name, group, eta, se, _) in enumerate(parts):
            # the mixture's two components are alternatives for a row, not added variances
            others = v + sum(p[4] for j, p in enumerate(parts)
                             if j != i and {name, p[0]} != {"sigma", "sigma_out"})
            out.append(SdComponent(name, group, eta, se, _median_sd(others)))
        return out

    def check(self) -> pd.DataFrame:
        """Convergence, Hessian and boundary diagnostics of the robust fit."""
        raw = self._robust
        rows = []

        def row(check, status, value, message):
            rows.append({"check": check, "status": status, "value": value, "message": message})

        if self.converged:
            row("optimizer_convergence", "ok", STATUS_NAMES[raw.status], f"Optimizer {self.convergence_message}.")
        else:
            row("optimizer_convergence", "warning", STATUS_NAMES[raw.status],
                f"Optimizer did not converge: {self.convergence_message}.")
        row("starts", "ok", f"starts={raw.starts}",
            "logLik per start: " + ", ".join(f"{x:.6f}" for x in raw.start_logliks)
            + "; the best is reported.")
        if raw.at_boundary:
            row("nu_boundary", "note", "1/nu=0",
                "nu at its boundary (1/nu = 0): the t model fits no better than the normal model "
                f"(logLik {self.normal_loglik:.6f}); the normal estimates are reported and nu has no "
                "standard error.")
        elif np.isfinite(raw.hessian_min_eigenvalue) and raw.hessian_min_eigenvalue <= 0:
            row("hessian", "warning", raw.hessian_min_eigenvalue,
                "The Hessian is not positive definite at the estimate: standard errors are unreliable.")
        else:
            row("hessian", "ok", raw.hessian_min_eigenvalue, "Hessian positive definite at the estimate.")
        if self._family.name == "normal_mixture":
            s, s_out = self.dpar_values("sigma").to_numpy(), self.dpar_values("sigma_out").to_numpy()
            if np.all(np.abs(np.log(s_out) - np.log(s)) < 1e-3):
                row("mixture_collapsed", "note", "sigma_out=sigma",
                    "The two components have the same SD: the mixture is the normal model, and p_out is "
                    "not identified (its estimate and standard error mean nothing).")
            elif np.any(s_out < s):
                row("mixture_labels", "note", "sigma_out<sigma",
                    "The 'outlier' component has the smaller SD on some rows: the components swapped roles "
                    "(the model does not order them, as in metaplus).")
            else:
                row("mixture_labels", "ok", "sigma_out>=sigma", "The outlier component has the larger SD.")
        from .checks import _boundary_result, _dropped_rows_row

        if not raw.at_boundary:
            flagged = [c.name for c in self._sd_components() if c.at_boundary]
            _boundary_result(rows, flagged, f"min_sigma={self.dpar_values('sigma').min():.3g}", "")
        _dropped_rows_row(self._design, rows)  # the Gaussian fit's rule and words (drmpy.model.rows)
        if self.normal_loglik == self.normal_loglik and not raw.at_boundary:
            row("versus_normal", "ok", round(self.loglik - self.normal_loglik, 6),
                "logLik gain over the normal model with the same formulas.")
        return pd.DataFrame(rows, columns=["check", "status", "value", "message"])

    def __repr__(self) -> str:
        return (f"<RobustFit {self._family!r} {self.method} nobs={self.nobs} df={self.df} "
                f"logLik={self.loglik:.4f} converged={self.converged}>")


def _link(link: str, values: np.ndarray) -> np.ndarray:
    if link == "identity":
        return values
    if link == "log":
        with np.errstate(divide="ignore"):
            return np.log(values)
    return np.log(values) - np.log1p(-values)


class RobustSummary:
    """What :meth:`RobustFit.summary` returns; ``print()`` it, or use ``.coefficients``."""

    def __init__(self, coefficients: pd.DataFrame, text: str) -> None:
        self.coefficients = coefficients
        self._text = text

    @classmethod
    def from_fit(cls, fit: RobustFit) -> "RobustSummary":
        table = tidy_table(fit, 0.95)
        n_dropped = fit.design.n_dropped
        dropped = f"; {n_dropped} row(s) dropped" if n_dropped else ""  # as the Gaussian summary
        lines = [f"drmpy fit: {fit.family!r} random effects with known V, {fit.method}",
                 f"formula: {formula_line(fit.formula)}",
                 f"nobs = {fit.nobs}{dropped}; df = {fit.df}", "", table_text(table.set_index(["dpar", "term"])), ""]
        if fit.at_boundary:
            lines.append("nu at its boundary 1/nu = 0: the t model collapses to the normal model.")
        elif fit.normal_loglik == fit.normal_loglik:
            lines.append(f"normal model logLik = {fit.normal_loglik:.6f}")
        lines.extend(line for line in fit_lines(fit) if not line.startswith("exp_estimate"))
        links = ", ".join(f"{d}: {fit.family.link(d)}" for d in fit.family.dpars)
        lines.append(f"links: {links}")
        return cls(table, "\n".join(lines))

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return self._text
