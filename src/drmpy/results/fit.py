"""The fit result: estimates with names, fitted values, predictions, summaries and checks.

All coefficients are on their link scales (identity for ``mu``, log-SD for ``sigma`` and
``sd(g)``, guarded atanh for ``cor(...)``), indexed ``"dpar:term"`` as in drmTMB.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Callable, TypeVar

import numpy as np
import pandas as pd

from ..model.design import ModelDesign
from ..engine.program import Control, RawFit
from ..errors import DrmError
from ..engine.optimize import CONVERGED, CONVERGED_FLAT, STATUS_MESSAGES

T = TypeVar("T")

__all__ = ["FitResult", "DrmFit", "parameter_names"]


def parameter_names(design: ModelDesign, family: Any = None) -> list[str]:
    """``dpar:term`` names in theta order: the family's parameters (``family.dpars``: mu, sigma,
    then e.g. nu; default: every row-level parameter of the design, in formula order), then per
    random term its SDs and correlations."""
    dpars = tuple(design.fixed) if family is None else family.dpars
    missing = [d for d in dpars if d not in design.fixed]
    if missing:
        raise DrmError(f"The design has no formula for {missing[0]}, a parameter of family {family!r}.")
    names = [n for d in dpars for n in design.fixed[d].names]
    for rd in design.random:
        for d in rd.sd_designs:
            names.extend(d.names)
        names.extend(f"{c}:(Intercept)" for c in rd.term.cor_dpars())
    return names


def dpar_of(name: str) -> str:
    # "sd(g):x" -> "sd(g)"; the dpar never contains ":" outside parentheses.
    depth = 0
    for i, ch in enumerate(name):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == ":" and depth == 0:
            return name[:i]
    return name


class FitResult:
    """What every fit result shares: estimates with names, information criteria, convergence.

    Subclasses set ``_names`` (``dpar:term`` in parameter order).
    """

    @property
    def _names(self) -> list[str]:
        """``dpar:term`` names in parameter order (each subclass gives its own)."""
        raise NotImplementedError

    def __init__(self, design, raw: RawFit, method: str, control: Control) -> None:
        self._design = design
        self._raw = raw
        self._method = method
        self._control = control
        self._stage_cache: dict[str, Any] = {}

    def stage_cache(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``, evaluated once per fit and key, then returned from memory.

        Later stages (inference, heterogeneity, bias, ...) memoise quantities derived from the
        fit here (prepared engine arrays, GLS pieces, the marginal covariance) instead of
        attaching attributes to the fit; each stage uses keys named after itself.  A fit never
        changes and a refit is a new object, so nothing stored here can go stale.
        """
        if key not in self._stage_cache:
            self._stage_cache[key] = compute()
        return self._stage_cache[key]

    # ---------------------------------------------------------------- basic quantities
    @property
    def design(self):
        return self._design

    @property
    def formula(self):
        return self._design.formula

    @property
    def method(self) -> str:
        return self._method

    @property
    def loglik(self) -> float:
        """Log-likelihood at the estimate (REML: drmTMB's convention, metafor's minus 0.5 log|X'X|)."""
        return self._raw.loglik

    @property
    def nobs(self) -> int:
        return self._design.nobs

    @property
    def df(self) -> int:
        """Number of estimated parameters (location coefficients included, under REML too)."""
        return len(self._raw.theta)

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.df

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + math.log(self.nobs) * self.df

    @property
    def converged(self) -> bool:
        return self._raw.status in (CONVERGED, CONVERGED_FLAT)

    @property
    def convergence_message(self) -> str:
        return STATUS_MESSAGES[self._raw.status]

    @property
    def iterations(self) -> int:
        return self._raw.iterations

    @property
    def evaluations(self) -> int:
        return self._raw.evaluations

    @property
    def structure(self) -> str:
        """Likelihood structure used: diag, block, woodbury or dense."""
        return self._raw.structure.kind

    @cached_property
    def params(self) -> pd.Series:
        return pd.Series(self._raw.theta, index=self._names, name="estimate")

    @cached_property
    def std_errors(self) -> pd.Series:
        d = np.diag(self._raw.vcov)
        se = np.where(d >= 0, np.sqrt(np.abs(d)), np.nan)
        return pd.Series(se, index=self._names, name="std_error")

    def vcov(self) -> pd.DataFrame:
        """Covariance of the estimates (link scales), from the exact observed information."""
        return pd.DataFrame(self._raw.vcov, index=self._names, columns=self._names)

    @cached_property
    def dpars(self) -> list[str]:
        return list(dict.fromkeys(dpar_of(n) for n in self._names))

    def coef(self, dpar: str | None = None):
        """Coefficients of one distributional parameter (Series, index = term), or a dict of all."""
        groups: dict[str, pd.Series] = {}
        for d in self.dpars:
            sel = [n for n in self._names if dpar_of(n) == d]
            groups[d] = pd.Series(self.params[sel].to_numpy(), index=[n[len(d) + 1 :] for n in sel], name=d)
        if dpar is None:
            return groups
        if dpar not in groups:
            raise DrmError(f"Unknown dpar `{dpar}`; this model has {', '.join(groups)}.")
        return groups[dpar]

    def tidy(self, level: float = 0.95) -> pd.DataFrame:
        """Long table, one row per parameter, in broom's column names: ``dpar``, ``term``,
        ``estimate``, ``std_error``, ``statistic`` (Wald z), ``p_value``, ``conf_low``,
        ``conf_high`` (Wald interval at ``level``); link scales as ``fit.params``."""
        from .summary import tidy_table

        return tidy_table(self, level)

    # ---------------------------------------------------------------- inference (stage inference/)
    def conf_int(self, level: float = 0.95, method: str = "wald", params: Any = None,
                 scale: str = "link", nsim: int = 1000, seed: Any = None) -> pd.DataFrame:
        """Confidence intervals per parameter: ``method`` ``"wald"``, ``"profile"`` (profile
        likelihood; REML: variance parameters only) or ``"bootstrap"`` (parametric, ``nsim``,
        ``seed``); ``scale="response"`` applies the inverse links.  See
        :func:`drmpy.inference.intervals.conf_int`."""
        from ..inference.intervals import conf_int

        return conf_int(self, level=level, method=method, params=params, scale=scale, nsim=nsim, seed=seed)

    def profile(self, param: str, n: int = 25, level: float = 0.99) -> pd.DataFrame:
        """Profile log-likelihood of one parameter on ``n`` link-scale values spanning its
        ``level`` profile interval: columns ``value``, ``loglik``, ``statistic`` (2 (l_hat - l))."""
        from ..inference.profile import profile_curve

        return profile_curve(self, param, n=n, level=level)

    def variance_components(self, level: float | None = None, method: str = "profile") -> pd.DataFrame:
        """Variance components on the variance scale (metafor's ``tau2``/``sigma2``): one row
        per component (per distinct design row of a modelled SD) with ``estimate`` =
        ``exp(2 eta)``; with ``level`` also ``lower``, ``upper`` (profile for one-parameter
        components, Wald for modelled ones, bounds ``exp(2 bound)``) and ``method``.  See
        :func:`drmpy.results.variance_components.variance_components`."""
        from .variance_components import variance_components

        return variance_components(self, level=level, method=method)

    # ---------------------------------------------------------------- designs for new data
    def _dpar_design(self, dpar: str):
        """The fixed-effect design of ``dpar`` (subclasses add their other dpars)."""
        return self._design.fixed[dpar]

    def _new_matrix(self, dpar: str, newdata: Any, purpose: str = "prediction") -> np.ndarray:
        """Design matrix of ``dpar`` for the rows of newdata, built through the fitted model
        spec (same levels and stateful transforms).  A missing value gives a NaN row; a factor
        level the fit did not see is an error (formulaic would encode it as the reference)."""
        from ..model import frames

        design = self._dpar_design(dpar)
        spec = design.model_spec
        if spec is None:
            raise DrmError(f"The {dpar} formula had no rows in the fit; nothing to predict.")
        available = set(frames.column_names(newdata))
        missing = sorted(set(spec.required_variables) - available - set(self.formula.env))
        if missing:
            raise DrmError(f"newdata lacks column `{missing[0]}` needed by the {dpar} formula for {purpose}.")
        cols = sorted(set(spec.required_variables) & available)
        frame = frames.as_pandas(newdata, cols)
        n = len(frame)
        if not spec.required_variables and tuple(design.terms) in ((), ("(Intercept)",)):
            # intercept-only (or empty) design: a constant column, no formula evaluation per row
            return np.ones((n, design.matrix.shape[1]))
        import warnings

        from formulaic.errors import DataMismatchWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataMismatchWarning)
            try:
                mm = spec.get_model_matrix(frame, context=dict(self.formula.env))
            except Exception as exc:
                raise DrmError(f"Cannot build the {dpar} design for newdata: {exc}") from exc
        for w in caught:
            if issubclass(w.category, DataMismatchWarning) and "{nan}" not in str(w.message):
                # formulaic would encode an unseen level as the reference level: a wrong number
                raise DrmError(f"newdata has a factor level the fit did not see, in a variable of the "
                               f"{dpar} formula ({w.message})")
            if not issubclass(w.category, DataMismatchWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        X = np.array(mm, dtype=np.float64)
        # a missing factor value would be encoded as the reference level: make its row NaN
        missing_rows = frame.isna().any(axis=1).to_numpy() if cols else np.zeros(n, dtype=bool)
        X[missing_rows] = np.nan
        return X


class DrmFit(FitResult):
    """Result of :func:`drmpy.fit`.  Immutable; expensive tables are computed on first use."""

    _data: Any = None  # the data given to drm.fit (a reference), for columns named later

    def __init__(self, design: ModelDesign, raw: RawFit, method: str, control: Control,
                 clusters: np.ndarray | None, data: Any = None, env: Any = None) -> None:
        super().__init__(design, raw, method, control)
        self._clusters = clusters
        # the caller's data and env, by reference (never copied or modified): later stages
        # (bias tests, leave-one-out by a column) read columns the formulas did not use
        self._data = data
        self._env = env

    @cached_property
    def _names(self) -> list[str]:
        return parameter_names(self._design)

    # ---------------------------------------------------------------- fitted values
    def _series(self, values: np.ndarray, name: str) -> pd.Series:
        return pd.Series(values, index=self._design.row_labels, name=name)

    @cached_property
    def _sigma_values(self) -> np.ndarray:
        return self._raw.sigma

    def sigma(self) -> pd.Series:
        """Fitted sigma_i (extra row-level heterogeneity SD) per retained row; not sqrt(v_i + sigma_i^2).
        All zeros for the common-effect model (``sigma ~ 0``)."""
        return self._series(self._sigma_values, "sigma")

    @cached_property
    def _fixed_mu(self) -> np.ndarray:
        X = self._design.fixed["mu"].matrix
        return X @ self._raw.theta[: X.shape[1]]

    @cached_property
    def _random_mu(self) -> np.ndarray:
        """Z b_hat per retained row (0 without random effects)."""
        out = np.zeros(self.nobs)
        for rd, table in zip(self._design.random, self._ranef_tables):
            for c, name in enumerate(rd.term.coefficient_names):
                est = table.loc[table["term"] == name, "estimate"].to_numpy()
                out += est[rd.level_index] * rd.z[:, c]
        return out

    def fitted(self) -> pd.Series:
        """Fitted mean per retained row (with random effects' conditional modes when present)."""
        return self._series(self._fixed_mu + self._random_mu, "fitted")

    def residuals(self, type: str = "response") -> pd.Series:
        """``response``: y - fitted; ``pearson``: whitened by the Cholesky factor of V + diag(sigma^2)."""
        r = self._design.y - (self._fixed_mu + self._random_mu)
        if type == "response":
            return self._series(r, "residual")
        if type != "pearson":
            raise DrmError(f"residuals(type=...) must be 'response' or 'pearson', got {type!r}.")
        kv = self._design.known_v
        s2 = self._sigma_values**2
        if kv.matrix is None:
            return self._series(r / np.sqrt(kv.diag + s2), "pearson")
        from scipy.linalg import solve_triangular

        out = np.empty_like(r)
        for rows in kv.blocks:
            S = kv.matrix[np.ix_(rows, rows)] + np.diag(s2[rows])
            L = np.linalg.cholesky(S)
            out[rows] = solve_triangular(L, r[rows], lower=True)
        return self._series(out, "pearson")

    def heterogeneity(self) -> pd.DataFrame:
        """Per retained row: known sampling variance, fitted extra heterogeneity SD/variance, total."""
        v = self._design.known_v.diag
        s = self._sigma_values
        return pd.DataFrame(
            {
                "known_sampling_variance": v,
                "fitted_extra_heterogeneity_sd": s,
                "fitted_extra_heterogeneity_variance": s**2,
                "total_observation_variance": v + s**2,
            },
            index=self._design.row_labels,
        )

    # ---------------------------------------------------------------- random effects
    @cached_property
    def _ranef_tables(self) -> list[pd.DataFrame]:
        if not self._design.random:
            return []
        from .random_effects import conditional_modes

        return conditional_modes(self._design, self._raw.theta, self._sigma_values, self._clusters)

    def ranef(self) -> pd.DataFrame:
        """Conditional modes (BLUPs) of the random effects with their conditional SDs.

        Columns: group, level, term, estimate, cond_sd, n_rows.
        """
        if not self._design.random:
            return pd.DataFrame(columns=["group", "level", "term", "estimate", "cond_sd", "n_rows"])
        return pd.concat(self._ranef_tables, ignore_index=True)

    def sd(self, group: str) -> pd.DataFrame:
        """Fitted random-effect SD per level of ``group`` (response scale)."""
        from .random_effects import level_sd_table

        return level_sd_table(self._design, self._raw.theta, group)

    # ---------------------------------------------------------------- prediction
    def predict(self, newdata: Any = None, dpar: str = "mu", type: str = "response",
                interval: str | None = None, level: float = 0.95, vi: Any = None,
                test: str = "z", vcov: str = "observed", re_form: Any = None):
        """Predictions of ``mu`` or ``sigma`` (``type='link'`` for log sigma).

        On the fitted rows (``newdata=None``) ``mu`` includes the random effects' conditional
        modes; on new data only the fixed effects, unless ``re_form=True`` (levels seen in
        the fit get their conditional modes, new levels 0).  ``re_form=False`` excludes them.
        Returns a Series.

        With ``interval="confidence"`` or ``"prediction"`` (``dpar="mu"`` only) returns a
        DataFrame indexed like ``newdata`` (the retained rows when None) with ``estimate``
        (``x' beta``, no conditional modes), ``se`` and ``lower``/``upper`` at ``level``;
        the prediction interval adds ``sigma_new^2``, every random-effect variance from the
        row's own predictors, and ``vi`` (new sampling variances: column name or array)
        when given.  ``test="t"``: t quantiles with ``nobs - p_mu`` df.  ``vcov``:
        ``"observed"`` (``fit.vcov()``) or ``"gls"`` (metafor's).  See
        :mod:`drmpy.inference.predict`.
        """
        if type not in ("response", "link"):
            raise DrmError(f"predict(type=...) must be 'response' or 'link', got {type!r}.")
        if dpar not in ("mu", "sigma"):
            raise DrmError(f"predict(dpar=...) must be 'mu' or 'sigma', got {dpar!r}.")
        if interval is not None:
            if dpar != "mu":
                raise DrmError(f"predict(interval={interval!r}) is for dpar='mu' only, got dpar={dpar!r}.")
            if re_form:
                raise DrmError("predict(interval=...) is for the fixed-effect mean; re_form=True "
                               "(conditional modes) has no interval here.")
            from ..inference.predict import predict_interval

            return predict_interval(self, newdata, interval, level, vi, test, vcov)
        include_re = (newdata is None) if re_form is None else bool(re_form)
        if newdata is None:
            if dpar == "sigma":
                with np.errstate(divide="ignore"):  # sigma ~ 0: log sigma = -inf
                    eta = np.log(self._sigma_values)
            else:
                eta = self._fixed_mu + (self._random_mu if include_re else 0.0)
            index = self._design.row_labels
        else:
            from ..model import frames

            X = self._new_matrix(dpar, newdata)
            start = 0 if dpar == "mu" else self._design.fixed["mu"].matrix.shape[1]
            coef = self._raw.theta[start : start + X.shape[1]]
            eta = X @ coef
            if dpar == "sigma" and self._design.common_effect:
                eta = np.full(X.shape[0], -np.inf)  # sigma ~ 0: sigma is 0 (log sigma -inf)
            if dpar == "mu" and include_re and self._design.random:
                eta = eta + self._newdata_random(newdata, len(eta))
            index = frames.as_pandas(newdata, []).index
        if dpar == "sigma" and type == "response":
            eta = np.exp(eta)
        return pd.Series(eta, index=index, name=dpar)

    def _dpar_design(self, dpar: str):
        """The fixed-effect design of ``dpar``: ``mu``, ``sigma`` or a random-effect SD ``sd(...)``."""
        if dpar in self._design.fixed:
            return self._design.fixed[dpar]
        return next(d for rd in self._design.random for d in rd.sd_designs if d.dpar == dpar)

    def _newdata_random(self, newdata: Any, n: int) -> np.ndarray:
        from ..model import frames
        from ..model.design import group_keys

        out = np.zeros(n)
        for rd, table in zip(self._design.random, self._ranef_tables):
            cols = list(rd.term.group_columns) + list(rd.term.slopes)
            frame = frames.as_pandas(newdata, cols)
            keys, _ = group_keys(frame, rd.term)
            for c, name in enumerate(rd.term.coefficient_names):
                sub = table[table["term"] == name]
                lookup = dict(zip(sub["level"], sub["estimate"]))
                b = np.array([lookup.get(k, 0.0) for k in keys])
                z = np.ones(n) if name == "(Intercept)" else frame[name].to_numpy(dtype=np.float64)
                out += b * z
        return out

    # ---------------------------------------------------------------- reports
    def summary(self, test: str = "z"):
        """Coefficient table (estimate, std_error, z, p, Wald CI, exp(estimate) for log-scale
        coefficients), fitted sigma range, logLik and convergence.  Printing shows the table;
        ``.coefficients`` is the DataFrame.  ``test="t"``: t statistics, df (``nobs - p_mu``),
        p-values and intervals from t for the mu rows (metafor's ``test="t"``)."""
        from .summary import Summary

        return Summary.from_fit(self, test=test)

    def check(self) -> pd.DataFrame:
        """Diagnostics in the manner of drmTMB's ``check_drm``: columns check, status, value, message."""
        from .checks import check_fit

        return check_fit(self)

    def simulate(self, nsim: int = 1, seed: Any = None) -> pd.DataFrame:
        """Responses drawn from the fitted model, ``nsim`` independent data sets.

        Each column is one draw of the response for the retained rows from the fitted
        marginal distribution ``MVN(X beta_hat, V + diag(sigma_hat^2) + Z G_hat Z')``: the
        known sampling (co)variance V, the fitted row-level heterogeneity, and every random
        effect redrawn from its fitted distribution (not the conditional modes).  Response
        scale.  Columns ``sim_1 .. sim_nsim``; index: the data's labels of the retained rows
        (``fit.design.row_labels``, the rows the fit used).  ``seed``: anything
        ``numpy.random.default_rng`` accepts; the same seed gives the same draws.
        """
        from ..simulation.simulate import simulate_responses

        return simulate_responses(self, nsim, seed)

    # ---------------------------------------------------------------- inference (drmpy.inference)
    def coef_test(self, test: str = "z", vcov: str = "observed", cluster: Any = None,
                  level: float = 0.95) -> pd.DataFrame:
        """Tests of the mu coefficients: ``estimate``, ``std_error``, ``statistic``, ``df``,
        ``p_value``, ``lower``, ``upper``.  ``test``: ``"z"``, ``"t"`` (``nobs - p_mu`` df),
        ``"knha"`` (Knapp-Hartung, no random effects) or ``"satterthwaite"`` (cluster-robust
        vcov); ``vcov``: ``"observed"``, ``"gls"``, ``"CR0"``, ``"CR1"``, ``"CR2"`` (with
        ``cluster``: a column of the fitted data, a Series or an array per retained row).
        See :mod:`drmpy.inference.coef_test`."""
        from ..inference.coef_test import coef_test

        return coef_test(self, test=test, vcov=vcov, cluster=cluster, level=level)

    # ---------------------------------------------------------------- heterogeneity (issue 11)
    def q_test(self) -> pd.Series:
        """Test for residual heterogeneity (metafor's ``QE``): ``Q = r' V^-1 r`` from the GLS fit
        of the mu design with V alone, ``df`` = n - p, ``p_value`` (chi-square)."""
        from ..heterogeneity import q_test

        return q_test(self)

    def i2(self, by: Any = None, data: Any = None) -> pd.DataFrame:
        """I2 per variance component and in total (percent); per level of ``by`` for a
        location-scale model.  See :func:`drmpy.heterogeneity.i2`."""
        from ..heterogeneity import i2

        return i2(self, by=by, data=data)

    def h2(self) -> float:
        """metafor's H2, ``(sum of the fitted variances + s2) / s2``."""
        from ..heterogeneity import h2

        return h2(self)

    def r2(self) -> pd.Series:
        """``marginal``, ``conditional`` (orchaRd's ``r2_ml``) and ``pseudo`` (metafor's R2 / 100)."""
        from ..heterogeneity import r2

        return r2(self)

    # ---------------------------------------------------------------- bias and sensitivity (bias/)
    def leave_one_out(self, by: str | None = None) -> pd.DataFrame:
        """Refits without each effect size (or each level of the data column ``by``): one row
        per deletion with ``omitted``, every parameter of ``params`` (link scales), ``loglik``
        and ``converged``.  See :func:`drmpy.bias.deletion.leave_one_out`."""
        from ..bias.deletion import leave_one_out

        return leave_one_out(self, by=by)

    def influence(self, cluster: str | None = None) -> pd.DataFrame:
        """Case-deletion diagnostics as metafor's ``influence`` (rstudent, dffits, Cook's
        distance, covariance ratio, hat, weight, DFBETAS, is_influential), each row with its
        own fitted sigma_i; ``cluster=`` deletes whole levels.  See
        :func:`drmpy.bias.deletion.influence`."""
        from ..bias.deletion import influence

        return influence(self, cluster=cluster)

    def __repr__(self) -> str:
        return (f"<DrmFit {self.method} nobs={self.nobs} df={self.df} logLik={self.loglik:.4f} "
                f"converged={self.converged}>")
