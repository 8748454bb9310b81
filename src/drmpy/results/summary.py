"""Printed summary of a fit: a tidy coefficient DataFrame plus text and HTML renderings."""

from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np
import pandas as pd
from statistics import NormalDist

__all__ = ["Summary", "tidy_table", "table_text", "NUMBER_FORMAT"]

_LOG_SCALE_PREFIXES = ("sigma", "sd(")


def link_of(name: str) -> str:
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


#: How printed drmpy tables show a number: 6 significant digits (a p-value of 3.7e-27 stays 3.7e-27).
NUMBER_FORMAT = "{:.6g}".format


def table_text(frame: pd.DataFrame) -> str:
    """``frame`` as printed text: numbers in :data:`NUMBER_FORMAT`, missing values blank."""
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.max_rows", 500, "display.float_format", NUMBER_FORMAT):
        return frame.to_string(na_rep="")


@dataclass(frozen=True)
class Summary:
    """What ``fit.summary()`` returns; ``print()`` it, or use ``.coefficients``."""

    coefficients: pd.DataFrame
    header: str
    footer: str

    @staticmethod
    def coefficient_table(fit, level: float = 0.95, test: str = "z") -> pd.DataFrame:
        """estimate, std_error, z (or t and df), p, Wald CI, link and exp(estimate) for log-scale rows.

        ``test="t"``: the mu rows get t statistics, p-values and intervals with
        ``nobs - p_mu`` df (metafor's ``test="t"``); the other rows keep z (df = inf).
        """
        if test not in ("z", "t"):
            from ..errors import DrmError

            raise DrmError(f"summary(test=...) must be 'z' or 't', got {test!r}.")
        est = fit.params
        se = fit.std_errors
        z = est / se
        df = np.full(len(est), np.inf)
        if test == "t":
            p_mu = sum(1 for n in est.index if n.startswith("mu"))
            df[[n.startswith("mu") for n in est.index]] = fit.nobs - p_mu
        zs = z.to_numpy(dtype=float)
        # two-sided normal p-value erfc(|z| / sqrt 2) with math.erfc: scipy.special would add
        # its import to every fresh process that prints a summary; t rows need scipy.stats
        p = np.array([math.erfc(abs(x) / math.sqrt(2.0)) if np.isfinite(x) else (0.0 if np.isinf(x) else np.nan)
                      for x in zs])
        q = np.full(len(est), NormalDist().inv_cdf(0.5 + level / 2.0))
        t_rows = np.isfinite(df)
        if t_rows.any():
            from scipy import stats

            p[t_rows] = 2.0 * stats.t.sf(np.abs(zs[t_rows]), df[t_rows])
            q[t_rows] = stats.t.ppf(0.5 + level / 2.0, df[t_rows])
        columns = {"estimate": est, "std_error": se, "z": z}
        if test == "t":
            columns = {"estimate": est, "std_error": se, "t": z, "df": df}
        table = pd.DataFrame({**columns, "p": p, "ci_lower": est - q * se, "ci_upper": est + q * se})
        table["link"] = [link_of(n) for n in est.index]
        log_rows = table["link"] == "log"
        table["exp_estimate"] = np.where(log_rows, np.exp(table["estimate"]), np.nan)
        return table

    @classmethod
    def from_fit(cls, fit, level: float = 0.95, test: str = "z") -> "Summary":
        table = cls.coefficient_table(fit, level, test)
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
        if d.common_effect:
            lines = ["sigma fixed at 0 (sigma ~ 0: common-effect model)"]
        else:
            lines = [f"fitted sigma (response scale): min {sig.min():.6g}, max {sig.max():.6g}"]
        for rd in d.random:
            sds = fit.sd(rd.group)
            for col in sds.columns:
                lines.append(
                    f"fitted sd({rd.group}) [{col}] (response scale): min {sds[col].min():.6g}, "
                    f"max {sds[col].max():.6g} over {len(sds)} levels"
                )
        lines.extend(fit_lines(fit))
        if test == "t":
            lines.append("t tests for mu (df = nobs - p_mu, metafor's test = \"t\"); other rows: z.")
        return cls(table, header, "\n".join(lines))

    def as_text(self) -> str:
        body = table_text(self.coefficients.drop(columns=["link"]))
        return f"{self.header}\n\n{body}\n\n{self.footer}"

    def __str__(self) -> str:
        return self.as_text()

    __repr__ = __str__

    def _shown(self) -> pd.DataFrame:
        """The coefficient table as shown: a ``parameter`` column, the numbers, no ``link`` column."""
        shown = self.coefficients.drop(columns=["link"])
        return shown.rename_axis("parameter").reset_index()

    def _repr_html_(self) -> str:
        """A notebook shows the header, the coefficient table as an HTML table, then the footer."""
        import html

        table = self._shown().to_html(na_rep="", float_format=NUMBER_FORMAT, classes="drmpy-summary",
                                         index=False)
        return (f"<pre>{html.escape(self.header)}</pre>\n{table}\n<pre>{html.escape(self.footer)}</pre>")

    def to_markdown(self, digits: int = 6) -> str:
        """The summary as Markdown: header lines, a pipe table of the coefficients (numbers with
        ``digits`` significant digits, right-aligned; empty where not applicable), footer lines."""
        shown = self._shown()
        numbers = shown.drop(columns=["parameter"])
        cells = numbers.map(lambda v: "" if pd.isna(v) else f"{v:.{digits}g}")
        columns = list(shown.columns)

        def row(values) -> str:
            return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

        lines = [row(columns), "| :--- | " + " | ".join("---:" for _ in numbers.columns) + " |"]
        lines.extend(row([name, *values]) for name, values in zip(shown["parameter"], cells.to_numpy()))
        hard_break = "  \n"
        return f"{hard_break.join(self.header.splitlines())}\n\n" + "\n".join(lines) + \
            f"\n\n{hard_break.join(self.footer.splitlines())}\n"

    def to_latex(self, digits: int = 6, caption: str | None = None, label: str | None = None) -> str:
        """The coefficient table as a LaTeX ``tabular`` (booktabs rules), via pandas'
        ``DataFrame.to_latex`` (which needs jinja2: ``pip install "drmpy[reports]"``); names
        are LaTeX-escaped, numbers have ``digits`` significant digits.  With ``caption`` or
        ``label`` the tabular is wrapped in a ``table`` environment."""
        from ..errors import DrmError

        try:
            import jinja2  # noqa: F401  (pandas' to_latex renders through it)
        except ImportError as exc:
            raise DrmError('to_latex needs jinja2 (pandas renders LaTeX with it): pip install "drmpy[reports]".') \
                from exc
        return self._shown().to_latex(na_rep="", float_format=f"{{:.{digits}g}}".format, escape=True,
                                      caption=caption, label=label, index=False)

def tidy_table(fit, level: float = 0.95) -> pd.DataFrame:
    """One row per parameter in broom's column names: ``dpar``, ``term``, ``estimate``,
    ``std_error``, ``statistic`` (Wald z), ``p_value`` (two-sided normal) and the Wald
    interval ``conf_low``/``conf_high`` at ``level``, all on the link scale of ``fit.params``."""
    from ..errors import DrmError
    from .fit import dpar_of

    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise DrmError(f"level must be a number between 0 and 1 (e.g. 0.95), got {level!r}.")
    table = Summary.coefficient_table(fit, float(level))
    names = list(table.index)
    dpars = [dpar_of(n) for n in names]
    return pd.DataFrame(
        {
            "dpar": dpars,
            "term": [n[len(d) + 1:] for n, d in zip(names, dpars)],
            "estimate": table["estimate"].to_numpy(),
            "std_error": table["std_error"].to_numpy(),
            "statistic": table["z"].to_numpy(),
            "p_value": table["p"].to_numpy(),
            "conf_low": table["ci_lower"].to_numpy(),
            "conf_high": table["ci_upper"].to_numpy(),
        }
    )
