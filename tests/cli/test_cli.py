"""The command line, run as a separate process: ``python -m drmpy ...`` on the shipped data sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

DATASETS = Path(drm.__file__).parent / "datasets"
RESTORATION = DATASETS / "restoration.csv"
CURTIS = DATASETS / "curtis1998.csv"
MEANS = ["--m1i", "m1i", "--sd1i", "sd1i", "--n1i", "n1i", "--m2i", "m2i", "--sd2i", "sd2i", "--n2i", "n2i"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drmpy", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=os.environ.copy(), timeout=900)


def test_help_lists_commands_and_examples():
    top = run("--help")
    assert top.returncode == 0
    for word in ("fit", "effect-size", "demo", "examples:"):
        assert word in top.stdout
    for command, option in (("fit", "--vcalc-cluster"), ("effect-size", "--measure"), ("demo", "drmpy demo")):
        out = run(command, "--help")
        assert out.returncode == 0 and option in out.stdout and "examples:" in out.stdout


def test_effect_size_equals_library(tmp_path):
    out = tmp_path / "es.csv"
    res = run("effect-size", CURTIS, "--measure", "ROM", *MEANS, "--out", out)
    assert res.returncode == 0, res.stderr
    expected = drm.effect_size("ROM", drm.datasets.curtis1998(), m1i="m1i", sd1i="sd1i", n1i="n1i",
                               m2i="m2i", sd2i="sd2i", n2i="n2i")
    got = pd.read_csv(out)
    np.testing.assert_allclose(got[["yi", "vi"]], expected[["yi", "vi"]], rtol=1e-12)
    tsv = run("effect-size", CURTIS, "--measure", "SMD", *MEANS, "--var-names", "g", "vg")
    assert tsv.returncode == 0 and tsv.stdout.splitlines()[0].endswith(",g,vg")


@pytest.mark.parametrize("args, message", [
    (("effect-size", "nope.csv", "--measure", "SMD"), "drmpy effect-size: error: data file `nope.csv` does not exist."),
    (("effect-size", CURTIS, "--measure", "SMD", "--m1i", "mean1", "--sd1i", "sd1i", "--n1i", "n1i", "--m2i", "m2i",
      "--sd2i", "sd2i", "--n2i", "n2i"), "`m1i` = 'mean1' is not a column of `data`"),
    (("effect-size", CURTIS, "--measure", "XYZ"), "unknown measure 'XYZ'"),
    (("fit", RESTORATION, "--mu", "yi ~ habitat + meta_V(V = vii)"), "vii"),
    (("fit", RESTORATION, "--mu", "yi ~ habitat + meta_V(V = vi)", "--sigma", "habitat"), "starts with `~`"),
    (("fit", RESTORATION, "--mu", "yi ~ (habitat + meta_V(V = vi)"), "Unbalanced parentheses"),
    (("fit", DATASETS / "__init__.py", "--mu", "yi ~ 1"), "unknown file type `.py`"),
])
def test_input_errors_one_line_exit_2(args, message):
    res = run(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr


def test_debug_shows_the_traceback():
    debug = run("effect-size", CURTIS, "--measure", "XYZ", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "unknown measure 'XYZ'" in debug.stderr


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        path.write_bytes(b"PAR1")
        res = run("effect-size", path, "--measure", "ROM", *MEANS)
        assert res.returncode == 2 and "needs pyarrow: pip install pyarrow" in res.stderr
        return
    drm.datasets.curtis1998().to_parquet(path)
    res = run("effect-size", path, "--measure", "ROM", *MEANS, "--out", tmp_path / "es.parquet")
    assert res.returncode == 0, res.stderr
    assert len(pd.read_parquet(tmp_path / "es.parquet")) == 102


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fit_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    out, plot = folder / "results.json", folder / "orchard.png"
    res = run("fit", RESTORATION, "--mu", "yi ~ habitat + duration + meta_V(V = vi)", "--sigma", "~ habitat",
              "--out", out, "--plot", plot, "--mod", "habitat")
    assert res.returncode == 0, res.stderr
    return res, json.loads(out.read_text()), plot


def test_fit_writes_the_orchard_plot(fit_json):
    res, _, plot = fit_json
    assert plot.read_bytes()[:8] == PNG_MAGIC and plot.stat().st_size > 10_000
    assert f"wrote {plot} (orchard plot by habitat)" in res.stdout


def test_mod_needs_plot():
    res = run("fit", RESTORATION, "--mu", "yi ~ habitat + meta_V(V = vi)", "--mod", "habitat")
    assert res.returncode == 2 and "give `--plot PATH` with it" in res.stderr


def test_fit_prints_summary_and_writes_tidy_json(fit_json):
    res, doc, _ = fit_json
    frame = pd.read_csv(RESTORATION)
    fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V = vi)", "sigma ~ habitat"), data=frame)
    assert "check():" in res.stdout and "mu:duration" in res.stdout
    assert doc["model"]["method"] == "ML" and doc["model"]["nobs"] == 80
    assert doc["logLik"] == pytest.approx(fit.loglik, abs=1e-8)
    assert doc["converged"] is True
    tidy = pd.DataFrame(doc["coefficients"])
    expected = fit.tidy()
    assert list(tidy.columns) == list(expected.columns)
    np.testing.assert_allclose(tidy["estimate"], expected["estimate"], atol=1e-8)
    assert [row["check"] for row in doc["check"]] == list(fit.check()["check"])


@pytest.mark.slow
def test_fit_three_level_with_vcalc_csv(tmp_path):
    # the README's command-line example (the model of tests/effects' README test: one compiled shape)
    es_path = tmp_path / "es.csv"
    assert run("effect-size", CURTIS, "--measure", "ROM", *MEANS, "--out", es_path).returncode == 0
    out = tmp_path / "tidy.csv"
    res = run("fit", es_path, "--mu", "yi ~ fungrp + (1 | paper) + meta_V(V = vi)", "--vcalc-cluster", "paper",
              "--rho", "0.5", "--method", "REML", "--out", out)
    assert res.returncode == 0, res.stderr
    es = pd.read_csv(es_path).astype({"paper": str})
    V = drm.sampling_covariance(es, vi="vi", cluster="paper", rho=0.5)
    fit = drm.fit("yi ~ fungrp + (1 | paper) + meta_V(V = V)", data=es, method="REML")
    tidy, expected = pd.read_csv(out), fit.tidy()
    assert list(tidy["term"]) == list(expected["term"])
    # sd(paper) sits at its zero boundary here (as in metafor): compare mu and sigma only
    keep = expected["dpar"].isin(["mu", "sigma"]).to_numpy()
    np.testing.assert_allclose(tidy["estimate"][keep], expected["estimate"][keep], atol=1e-6)


@pytest.mark.slow
def test_demo_prints_i2_by_habitat_and_writes_orchard(tmp_path):
    res = run("demo", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "check():" in res.stdout and "Mean variance components by habitat" in res.stdout
    dat = drm.datasets.restoration()
    fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=dat)
    table = fit.i2(by="habitat", data=dat).to_string(float_format="{:.2f}".format)
    assert "I2 by habitat" in res.stdout and table in res.stdout
    assert (tmp_path / "restoration_orchard.png").read_bytes()[:8] == PNG_MAGIC
