"""Issue 22, item 14: the command line checks its arguments before reading data or fitting,
accepts --method case-insensitively, shows the user's V column, and prints whole example lines.

In-process (``drmpy.cli.main``): no subprocess start-up, and a fit is never reached for the
argument errors (``drm.fit`` is replaced by a function that fails the test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import drmpy as drm
from drmpy import cli

DATASETS = Path(drm.__file__).parent / "datasets"
RESTORATION = DATASETS / "restoration.csv"
MU = "yi ~ habitat + meta_V(V = vi)"


@pytest.fixture
def no_fit(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("drm.fit was called before the arguments were checked")

    monkeypatch.setattr(drm, "fit", refuse)


def _error(capsys, argv) -> str:
    assert cli.main(list(map(str, argv))) == cli.EXIT_INPUT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


@pytest.mark.parametrize("command", [["fit", "missing.csv", "--mu", MU], ["effect-size", "missing.csv", "--measure", "SMD"]])
def test_out_suffix_checked_first_and_lists_every_suffix(capsys, no_fit, command):
    message = _error(capsys, [*command, "--out", "results.xlsx"])
    assert "`--out results.xlsx`: unknown file type `.xlsx`" in message
    suffixes = ".csv, .txt, .tsv, .tab, .parquet or .pq"
    assert (f"give .json, {suffixes}" if command[0] == "fit" else f"give {suffixes}") in message


def test_plot_suffix_checked_first(capsys, no_fit):
    message = _error(capsys, ["fit", RESTORATION, "--mu", MU, "--plot", "orchard.xyz", "--mod", "habitat"])
    assert "`--plot orchard.xyz`: unknown image type `.xyz`" in message and ".png" in message


@pytest.mark.parametrize("option", [["--rho", "0.3"], ["--obs", "study"], ["--phi", "0.2"]])
def test_vcalc_options_need_vcalc_cluster(capsys, no_fit, option):
    message = _error(capsys, ["fit", "missing.csv", "--mu", MU, *option])
    assert f"`{option[0]}` goes with `--vcalc-cluster COLUMN`" in message


@pytest.mark.parametrize("method", ["reml", "Reml", "REML", "ml"])
def test_method_case_insensitive(method):
    args = cli.build_parser().parse_args(["fit", "d.csv", "--mu", MU, "--method", method])
    assert args.method == method.upper()


def test_method_unknown_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["fit", "d.csv", "--mu", MU, "--method", "EE"])
    assert "invalid choice" in capsys.readouterr().err


def test_vcalc_output_names_the_users_column(capsys, tmp_path):
    out = tmp_path / "fit.json"
    assert cli.main(["fit", str(RESTORATION), "--mu", "yi ~ 1 + meta_V(V = vi)", "--vcalc-cluster", "study",
                     "--rho", "0.6", "--method", "reml", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "_drmpy" not in printed and "_drmpy" not in out.read_text()
    assert "formula: yi ~ 1 + meta_V(V = vi)" in printed
    assert "known sampling covariance: meta_V(V = vi), " in printed
    # the same fit as the library call it stands for
    import pandas as pd

    data = pd.read_csv(RESTORATION)
    V = drm.sampling_covariance(data, vi="vi", cluster="study", rho=0.6)
    fit = drm.fit(drm.Formula("yi ~ 1 + meta_V(V = V)"), data, method="REML")
    assert f"logLik = {fit.loglik:.4f}" in printed


def test_vcalc_column_also_used_as_a_predictor_keeps_its_values(capsys):
    assert cli.main(["fit", str(RESTORATION), "--mu", "yi ~ vi + meta_V(V = vi)", "--vcalc-cluster", "study"]) == 0
    printed = capsys.readouterr().out
    assert "mu:vi" in printed and "_drmpy" not in printed


def _epilog_lines(text: str) -> list[str]:
    return text.split("examples:", 1)[1].splitlines()


@pytest.mark.parametrize("command", [[], ["fit"], ["effect-size"], ["demo"]])
def test_help_examples_are_whole_lines(capsys, command):
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    for line in _epilog_lines(capsys.readouterr().out):
        # a continued command ends with a backslash; none runs two options together with a gap
        assert not re.search(r"\S {3,}--", line), line
        assert len(line) <= 120, line
