"""Reports: fit.tidy (broom's columns) and the summary's HTML, markdown and LaTeX renderings.

Expected numbers are computed here from ``fit.params`` and ``fit.vcov()`` with scipy's normal
distribution, independently of the summary code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import drmpy as drm

REF = Path(__file__).parents[1] / "reference"
TIDY_COLUMNS = ["dpar", "term", "estimate", "std_error", "statistic", "p_value", "conf_low", "conf_high"]


@pytest.fixture(scope="module")
def ls_fit():
    dat = drm.datasets.restoration()
    return drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=dat)


@pytest.fixture(scope="module")
def biv_fit():
    spec = json.loads((REF / "berkey_bivariate_ml" / "case.json").read_text())
    data = pd.read_csv(REF / "berkey_bivariate_ml" / "data.csv")
    V = np.loadtxt(REF / "berkey_bivariate_ml" / "V.csv", delimiter=",")
    return drm.fit(drm.Formula(**spec["formulas"]), data=data, env={"V": V}, family=drm.biv_gaussian())


def _expected_tidy(fit, level):
    est = fit.params.to_numpy()
    se = np.sqrt(np.diag(fit.vcov().to_numpy()))
    q = stats.norm.ppf(0.5 + level / 2)
    return est, se, est / se, 2 * stats.norm.sf(np.abs(est / se)), est - q * se, est + q * se


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_tidy_equals_wald_formulas(ls_fit, level):
    t = ls_fit.tidy(level=level)
    assert list(t.columns) == TIDY_COLUMNS
    assert list(t["dpar"]) == ["mu", "mu", "mu", "sigma", "sigma"]
    assert list(t["term"]) == ["(Intercept)", "habitat[T.forest]", "duration", "(Intercept)",
                               "habitat[T.forest]"]
    assert [f"{d}:{term}" for d, term in zip(t["dpar"], t["term"])] == list(ls_fit.params.index)
    for got, want in zip([t[c].to_numpy() for c in TIDY_COLUMNS[2:]], _expected_tidy(ls_fit, level)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_tidy_random_and_bivariate_names(biv_fit):
    t = biv_fit.tidy()
    assert list(t["dpar"]) == ["mu1", "mu2", "sigma1", "sigma2", "rho12"]
    assert set(t["term"]) == {"(Intercept)"}
    for got, want in zip([t[c].to_numpy() for c in TIDY_COLUMNS[2:]], _expected_tidy(biv_fit, 0.95)):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    d = pd.read_csv(REF / "konstantopoulos_3level_ml" / "data.csv")
    spec = json.loads((REF / "konstantopoulos_3level_ml" / "case.json").read_text())
    t3 = drm.fit(drm.Formula(*spec["formulas"]), data=d).tidy()
    assert "sd(district)" in set(t3["dpar"])
    assert t3.loc[t3["dpar"] == "sd(district)", "term"].tolist() == ["(Intercept)"]


@pytest.mark.parametrize("level", [0, 1, 1.5, "0.95"])
def test_tidy_rejects_bad_level(ls_fit, level):
    with pytest.raises(drm.DrmError, match="level must be"):
        ls_fit.tidy(level=level)


# ------------------------------------------------------------------------------------------
# summary renderings: parse each back and compare with the coefficient table


SHOWN = ["parameter", "estimate", "std_error", "z", "p", "ci_lower", "ci_upper", "exp_estimate"]


def _check_rows(rows, summary, rtol):
    """rows: list of cell lists (parameter name first); numbers equal the coefficient table."""
    table = summary.coefficients
    assert [r[0] for r in rows] == list(table.index)
    for r in rows:
        expected = table.loc[r[0], SHOWN[1:]].to_numpy(dtype=float)
        for cell, want in zip(r[1:], expected):
            if np.isnan(want):
                assert cell == ""
            else:
                np.testing.assert_allclose(float(cell), want, rtol=rtol)
    # exp_estimate is filled for the log-SD rows only
    assert [r[-1] != "" for r in rows] == [n.startswith("sigma") for n in table.index]


def test_summary_markdown(ls_fit):
    s = ls_fit.summary()
    md = s.to_markdown(digits=8)
    lines = md.splitlines()
    assert lines[0].startswith("drmpy fit: gaussian location-scale, ML")
    assert "formula: yi ~ habitat + duration + meta_V(V=vi); sigma ~ habitat" in md
    start = lines.index("| " + " | ".join(SHOWN) + " |")
    assert lines[start + 1] == "| :--- | " + " | ".join(["---:"] * 7) + " |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2: start + 7]]
    _check_rows(rows, s, rtol=1e-7)
    assert f"logLik = {ls_fit.loglik:.4f}" in md


def test_summary_latex(ls_fit):
    s = ls_fit.summary()
    tex = s.to_latex(digits=8, caption="Restoration", label="tab:restoration")
    assert "\\begin{table}" in tex and "\\caption{Restoration}" in tex and "\\label{tab:restoration}" in tex
    assert "\\begin{tabular}{lrrrrrrr}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    body = tex[tex.index("\\toprule") + len("\\toprule"): tex.index("\\bottomrule")]
    head, rows = body.split("\\midrule")
    assert [c.strip() for c in head.strip().rstrip("\\").split("&")] == [c.replace("_", "\\_") for c in SHOWN]
    parsed = [[c.strip() for c in line.strip().rstrip("\\").split("&")] for line in rows.strip().splitlines()]
    _check_rows(parsed, s, rtol=1e-7)
    assert "\\begin{table}" not in s.to_latex()


def test_summary_html(ls_fit):
    from html.parser import HTMLParser

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell, self.pre = [], None, []

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.rows[-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data
            else:
                self.pre.append(data)

    s = ls_fit.summary()
    parser = Cells()
    parser.feed(s._repr_html_())
    assert parser.rows[0] == SHOWN
    _check_rows(parser.rows[1:], s, rtol=1e-5)
    text = "".join(parser.pre)
    assert "drmpy fit: gaussian location-scale, ML" in text and f"logLik = {ls_fit.loglik:.4f}" in text
