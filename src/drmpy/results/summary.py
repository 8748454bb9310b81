"""Printed summary of a fit: a tidy coefficient DataFrame plus text and HTML renderings."""

from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np
import pandas as pd
from statistics import NormalDist

__all__ = ["Summary"]

_LOG_SCALE_PREFIXES = ("sigma", "sd(")


def _link(name: str) -> str:
    if name.startswith("mu"):
        return "identity"
    if name.startswith(("cor(", "rho")):
        return "atanh"
    return "log"


def formula_line(formula) -> str:
    """The formulas as written, one-sided keyword ones prefixed by their dpar (``sigma1 ~ x``)."""
    parts = []
    for dpar, text in formula.text.items():
        text = text.strip()
        parts.append(f"{dpar} {text}" if text.startswith("~") else text)
    return "; ".join(parts)


def fit_lines(fit) -> list[str]:
    """Footer lines every summary shares: logLik, AIC, BIC, convergence, conventions."""
    lines = [
        f"logLik = {fit.loglik:.4f}; AIC = {fit.aic:.4f}; BIC = {fit.bic:.4f}",
        f"convergence: {'yes' if fit.converged else 'NO'} ({fit.convergence_message}; "
        f"{fit.iterations} iterations)",
    ]
    if fit.method == "REML":
        lines.append("REML logLik follows drmTMB; metafor reports it + 0.5 log|X'X|.")
    lines.append("exp_estimate: exp() of log-scale coefficients (SD ratios).")
    return lines


@dataclass(frozen=True)
class Summary:
    """What ``fit.summary()`` returns; ``print()`` it, or use ``.coefficients``."""

    coefficients: pd.DataFrame
    header: str
    footer: str

    @staticmethod
    def coefficient_table(fit, level: float = 0.95) -> pd.DataFrame:
        """estimate, std_error, z, p, Wald CI, link and exp(estimate) for log-scale rows."""
        est = fit.params
        se = fit.std_errors
        z = est / se
        # two-sided normal p-value erfc(|z| / sqrt 2), per coefficient with math.erfc
        # (scipy.special would add its import to every fresh process that prints a summary)
        p = np.array([math.erfc(abs(x) / math.sqrt(2.0)) if np.isfinite(x) else (0.0 if np.isinf(x) else np.nan)
                      for x in z.to_numpy(dtype=float)])
        q = NormalDist().inv_cdf(0.5 + level / 2.0)
        table = pd.DataFrame(
            {
                "estimate": est,
                "std_error": se,
                "z": z,
                "p": p,
                "ci_lower": est - q * se,
                "ci_upper": est + q * se,
            }
        )
        table["link"] = [_link(n) for n in est.index]
        log_rows = table["link"] == "log"
        table["exp_estimate"] = np.where(log_rows, np.exp(table["estimate"]), np.nan)
        return table

    @classmethod
    def from_fit(cls, fit, level: float = 0.95) -> "Summary":
        table = cls.coefficient_table(fit, level)
        sig = fit.sigma()
        d = fit.design
        dropped = f"; {d.n_dropped} row(s) dropped" if d.n_dropped else ""
        v = d.known_v
        vtxt = f"meta_V(V = {v.name}), {v.kind}" if v.name else "none"
        header = (
            f"drmpy fit: gaussian location-scale, {fit.method}\n"
            f"formula: {formula_line(fit.formula)}\n"
            f"known sampling covariance: {vtxt}\n"
            f"nobs = {fit.nobs}{dropped}; df = {fit.df}; structure = {fit.structure}"
        )
        lines = [
            f"fitted sigma (response scale): min {sig.min():.6g}, max {sig.max():.6g}",
        ]
        for rd in d.random:
            sds = fit.sd(rd.group)
            for col in sds.columns:
                lines.append(
                    f"fitted sd({rd.group}) [{col}] (response scale): min {sds[col].min():.6g}, "
                    f"max {sds[col].max():.6g} over {len(sds)} levels"
                )
        lines.extend(fit_lines(fit))
        return cls(table, header, "\n".join(lines))

    def as_text(self) -> str:
        shown = self.coefficients.drop(columns=["link"]).copy()
        with pd.option_context("display.width", 200, "display.max_columns", 20,
                               "display.max_rows", 500, "display.float_format", "{:.6g}".format):
            body = shown.to_string(na_rep="")
        return f"{self.header}\n\n{body}\n\n{self.footer}"

    def __str__(self) -> str:
        return self.as_text()

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return (f"<pre>{self.header}</pre>" + self.coefficients.to_html(na_rep="", float_format="{:.6g}".format)
                + f"<pre>{self.footer}</pre>")
