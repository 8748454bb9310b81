"""Command line: ``drmpy fit``, ``drmpy effect-size`` and ``drmpy demo``.

Figures are saved with matplotlib's Agg backend (a file, never a window).

Data files are CSV or TSV (by extension: ``.csv``; ``.tsv``/``.tab``), or Parquet
(``.parquet``/``.pq``) when pyarrow is installed.  A problem with the input (a bad file, an
unknown column, a formula error) prints one line on stderr and exits with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_INPUT_ERROR = 2

_FIT_EXAMPLES = """\
examples:
  # location-scale meta-regression of the shipped restoration data
  drmpy fit restoration.csv --mu "yi ~ habitat + duration + meta_V(V = vi)" --sigma "~ habitat"
  # three-level model; V from the sampling variances vi, correlated 0.5 within each paper
  drmpy fit curtis.csv --mu "yi ~ 1 + (1 | paper) + meta_V(V = vi)" --vcalc-cluster paper --rho 0.5 \\
      --method REML --out results.json
  # study-level SD that depends on habitat; the tidy table as CSV and an orchard plot by habitat
  drmpy fit d.csv --mu "yi ~ habitat + (1 | study) + meta_V(V = vi)" --sd "study=~ habitat" \\
      --out tidy.csv --plot orchard.png --mod habitat
"""

_EFFECT_EXAMPLES = """\
examples:
  drmpy effect-size curtis.csv --measure ROM --m1i m1i --sd1i sd1i --n1i n1i \\
      --m2i m2i --sd2i sd2i --n2i n2i --out curtis_es.csv
  drmpy effect-size bcg.tsv --measure OR --ai tpos --bi tneg --ci cpos --di cneg
  drmpy effect-size trials.csv --measure RR --ai ev1 --n1i n1 --ci ev2 --n2i n2 --add 0.5 --to all
"""

_DEMO_EXAMPLES = """\
examples:
  drmpy demo                          # also writes restoration_orchard.png here
  drmpy demo --plot figures/orchard.pdf
"""

# metafor's argument names, in the order the help lists them
_EFFECT_COLUMNS = (
    ("m1i", "mean of group 1 (means)"), ("sd1i", "SD of group 1"), ("n1i", "size of group 1 (means, 2x2)"),
    ("m2i", "mean of group 2"), ("sd2i", "SD of group 2"), ("n2i", "size of group 2 (means, 2x2)"),
    ("ai", "events in group 1 (2x2)"), ("bi", "non-events in group 1 (2x2; or give n1i)"),
    ("ci", "events in group 2 (2x2)"), ("di", "non-events in group 2 (2x2; or give n2i)"),
    ("ri", "correlation"), ("ni", "sample size (correlations, proportions)"), ("xi", "events (proportions)"),
    ("x1i", "events in group 1 (incidence)"), ("t1i", "person-time of group 1"),
    ("x2i", "events in group 2 (incidence)"), ("t2i", "person-time of group 2"),
)


# output file types by suffix (the first of each pair is the one the help names)
_TABLE_SUFFIXES = (".csv", ".txt", ".tsv", ".tab", ".parquet", ".pq")


class InputError(Exception):
    """A problem with the command line's input: reported in one line, exit status 2."""


# ------------------------------------------------------------------------------------------
# files


def read_table(path: str):
    """A pandas frame from a CSV, TSV or Parquet file (by extension)."""
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise InputError(f"data file `{path}` does not exist.")
    suffix = file.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise InputError(f"reading Parquet (`{path}`) needs pyarrow: pip install pyarrow "
                                 "(or give the data as CSV or TSV).") from None
            return pd.read_parquet(file)
        if suffix in (".tsv", ".tab"):
            return pd.read_csv(file, sep="\t")
        if suffix in (".csv", ".txt"):
            return pd.read_csv(file)
    except InputError:
        raise
    except Exception as exc:  # pandas and pyarrow parser errors, encoding errors
        raise InputError(f"cannot read `{path}`: {_one_line(exc)}") from exc
    raise InputError(f"`{path}`: unknown file type `{suffix or '(none)'}`; give .csv, .tsv or .parquet.")


def check_out_path(path: str, *, json_allowed: bool) -> None:
    """Refuse an ``--out`` whose file type is unknown, before any data are read or fitted."""
    suffix = Path(path).suffix.lower()
    accepted = ((".json",) if json_allowed else ()) + _TABLE_SUFFIXES
    if suffix not in accepted:
        raise InputError(f"`--out {path}`: unknown file type `{suffix or '(none)'}`; give "
                         f"{', '.join(accepted[:-1])} or {accepted[-1]}.")


def check_plot_path(path: str) -> None:
    """Refuse a ``--plot`` whose image type matplotlib cannot write, before any fit."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lower()
    known = sorted(FigureCanvasBase.get_supported_filetypes())
    if suffix.lstrip(".") not in known:
        raise InputError(f"`--plot {path}`: unknown image type `{suffix or '(none)'}`; give "
                         f"{', '.join('.' + k for k in known)}.")


def write_table(frame, path: str) -> None:
    """Write a pandas frame as CSV, TSV or Parquet (by extension)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError(f"writing Parquet (`{path}`) needs pyarrow: pip install pyarrow.") from None
        frame.to_parquet(path, index=False)
    elif suffix in (".tsv", ".tab"):
        frame.to_csv(path, sep="\t", index=False)
    elif suffix in (".csv", ".txt"):
        frame.to_csv(path, index=False)
    else:
        check_out_path(path, json_allowed=False)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ------------------------------------------------------------------------------------------
# drmpy fit


def _formula(args: argparse.Namespace, mu: str | None = None):
    import drmpy as drm

    # the dict holds dpar formulas only, never the keyword _env_depth
    return drm.Formula(mu if mu is not None else args.mu, **_other_formulas(args))  # type: ignore[arg-type]


def _rhs_only(text: str, option: str) -> str:
    text = text.strip()
    if not text.startswith("~"):
        raise InputError(f"`{option} {text}`: give a right-hand side that starts with `~`, e.g. \"~ habitat\".")
    return text


def _vcalc_formula(args: argparse.Namespace, data, formula):
    """With --vcalc-cluster: V = sampling_covariance(...) of the meta_V column.

    V is passed in ``env=`` under the column's own name, with the column left out of the data
    (a data column would take precedence), so that the summary and check() show the user's
    ``meta_V(V = vi)``.  When another term of a formula uses the column too (``yi ~ vi + ...``)
    it stays in the data and V goes by ``<column>_vcalc``.  Returns (formula, data, env).
    """
    import drmpy as drm

    if formula.meta_v is None:
        raise InputError("`--vcalc-cluster` needs `meta_V(V = <column of sampling variances>)` in --mu.")
    name = formula.meta_v.name
    V = drm.sampling_covariance(data, vi=name, cluster=args.vcalc_cluster, rho=_rho(args),
                                obs=args.obs, time=args.time, phi=args.phi)
    meta_v_term = re.compile(r"meta_V\s*\(\s*V\s*=\s*" + re.escape(name) + r"\s*\)")
    other_text = " ".join([meta_v_term.sub(" ", args.mu), *_other_formulas(args).values()])
    if re.search(r"(?<![\w.])" + re.escape(name) + r"(?![\w.])", other_text) is None:
        return formula, data.drop(columns=[name]), {name: V}
    env_name = f"{name}_vcalc"
    return _formula(args, meta_v_term.sub(f"meta_V(V = {env_name})", args.mu)), data, {env_name: V}


_VCALC_DEFAULT_RHO = 0.5


def _rho(args: argparse.Namespace) -> float:
    return _VCALC_DEFAULT_RHO if args.rho is None else args.rho


def _check_fit_arguments(args: argparse.Namespace) -> None:
    """Every check that needs no data, before the data file is read (and long before a fit)."""
    if args.mod is not None and not args.plot:
        raise InputError("`--mod` names the moderator of the orchard plot; give `--plot PATH` with it.")
    if args.vcalc_cluster is None:
        for option, value in (("--rho", args.rho), ("--obs", args.obs), ("--time", args.time), ("--phi", args.phi)):
            if value is not None:
                raise InputError(f"`{option}` goes with `--vcalc-cluster COLUMN` (V built by sampling_covariance); "
                                 "without it V is the meta_V column as given.")
    if args.out:
        check_out_path(args.out, json_allowed=True)
    if args.plot:
        check_plot_path(args.plot)


def _other_formulas(args: argparse.Namespace) -> dict[str, str]:
    named: dict[str, str] = {}
    if args.sigma:
        named["sigma"] = _rhs_only(args.sigma, "--sigma")
    for spec in args.sd or []:
        group, sep, rhs = spec.partition("=")
        if not sep or not group.strip():
            raise InputError(f"`--sd {spec}`: write the group and its formula as `study=~ habitat`.")
        named[f"sd({group.strip()})"] = _rhs_only(rhs, "--sd")
    return named


def fit_command(args: argparse.Namespace) -> int:
    import pandas as pd

    import drmpy as drm

    _check_fit_arguments(args)
    formula = _formula(args)
    data = read_table(args.data)
    env: dict[str, Any] = {}
    if args.vcalc_cluster is not None:
        formula, data, env = _vcalc_formula(args, data, formula)
    fit = drm.fit(formula, data=data, method=args.method, env=env or None)
    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(fit.summary())
        print()
        print("check():")
        print(fit.check().to_string(index=False))
    if args.out:
        _write_fit(fit, args)
        print(f"\nwrote {args.out}")
    if args.plot:
        _save_orchard(fit, args.mod, args.plot)
    return 0


def _save_orchard(fit, mod: str | None, path: str) -> None:
    """Draw ``drmpy.plots.orchard(fit, mod=mod)`` and save it (format by extension)."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    import drmpy as drm

    ax = drm.plots.orchard(fit, mod=mod)
    try:
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    except ValueError as exc:  # an unknown image format
        raise InputError(f"`--plot {path}`: {_one_line(exc)}") from exc
    finally:
        plt.close(ax.figure)
    print(f"wrote {path}" + (f" (orchard plot by {mod})" if mod else " (orchard plot)"))


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _json_value(value.item())
    return value


def _records(frame) -> list[dict[str, Any]]:
    return [{str(k): _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _write_fit(fit, args: argparse.Namespace) -> None:
    tidy = fit.tidy()
    suffix = Path(args.out).suffix.lower()
    if suffix == ".json":
        formulas = {dpar: str(text) for dpar, text in fit.formula.text.items()} \
            if isinstance(fit.formula.text, dict) else {"mu": str(fit.formula.text)}
        document = {
            "model": {"data": str(args.data), "formulas": formulas, "method": fit.method, "nobs": int(fit.nobs),
                      "vcalc": None if args.vcalc_cluster is None else
                      {"cluster": args.vcalc_cluster, "rho": _rho(args), "obs": args.obs, "time": args.time,
                       "phi": args.phi}},
            "logLik": _json_value(float(fit.loglik)),
            "converged": bool(fit.converged),
            "convergence_message": str(fit.convergence_message),
            "coefficients": _records(tidy),
            "check": _records(fit.check()),
        }
        Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    else:
        write_table(tidy, args.out)


# ------------------------------------------------------------------------------------------
# drmpy effect-size


def effect_size_command(args: argparse.Namespace) -> int:
    import drmpy as drm

    if args.out:
        check_out_path(args.out, json_allowed=False)
    data = read_table(args.data)
    columns = {arg: getattr(args, arg) for arg, _ in _EFFECT_COLUMNS if getattr(args, arg) is not None}
    out = drm.effect_size(args.measure, data, var_names=tuple(args.var_names), add=args.add, to=args.to,
                          vtype=args.vtype, **columns)
    if args.out:
        write_table(out, args.out)
        n_missing = int(out[args.var_names[0]].isna().sum())
        print(f"wrote {args.out}: {len(out)} rows, {args.measure} in `{args.var_names[0]}`, "
              f"`{args.var_names[1]}`" + (f" ({n_missing} missing)" if n_missing else ""))
    else:
        out.to_csv(sys.stdout, index=False)
    return 0


# ------------------------------------------------------------------------------------------
# drmpy demo


def demo(args: argparse.Namespace | None = None) -> int:
    import pandas as pd

    import drmpy as drm

    dat = drm.datasets.restoration()
    fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=dat)
    print(fit.summary())
    print()
    print("forest / grassland ratio of extra-heterogeneity SDs: "
          f"exp(sigma:habitat[T.forest]) = {fit.summary().coefficients.loc['sigma:habitat[T.forest]', 'exp_estimate']:.3f}")
    print()
    het = fit.heterogeneity().groupby(dat.loc[fit.heterogeneity().index, "habitat"], observed=True).mean()
    print("Mean variance components by habitat:")
    print(het.to_string(float_format="{:.5f}".format))
    print()
    print("I2 by habitat (percent; fit.i2(by='habitat', data=dat)):")
    print(fit.i2(by="habitat", data=dat).to_string(float_format="{:.2f}".format))
    print()
    print("check():")
    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(fit.check().to_string(index=False))
    print()
    _save_orchard(fit, "habitat", getattr(args, "plot", None) or "restoration_orchard.png")
    return 0


# ------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drmpy",
        description="Distributional (location-scale) meta-regression from the command line.",
        epilog="examples:\n  drmpy demo\n  drmpy fit restoration.csv --mu \"yi ~ habitat + meta_V(V = vi)\" "
               "--sigma \"~ habitat\"\n  drmpy effect-size curtis.csv --measure ROM --m1i m1i --sd1i sd1i "
               "--n1i n1i --m2i m2i --sd2i sd2i --n2i n2i\n\nRun `drmpy COMMAND --help` for each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = _add_command(
        sub, "fit", fit_command, help="fit a model to a data file and print its summary and check",
        description="Fit one formula per distributional parameter to DATA (CSV, TSV or Parquet), print the "
                    "summary and check(), and optionally write the tidy table.", epilog=_FIT_EXAMPLES)
    fit.add_argument("--mu", required=True, metavar="FORMULA",
                     help='location formula with the response, e.g. "yi ~ habitat + (1 | study) + meta_V(V = vi)"')
    fit.add_argument("--sigma", metavar="RHS", help='row-level heterogeneity SD formula, e.g. "~ habitat" (default ~ 1)')
    fit.add_argument("--sd", action="append", metavar="GROUP=RHS",
                     help='SD formula of a random-effect group, e.g. "study=~ habitat"; repeat for several groups')
    fit.add_argument("--method", type=str.upper, choices=("ML", "REML"), default="ML",
                     help="estimation method, ML or REML in any case (default ML, drmTMB's default)")
    fit.add_argument("--out", metavar="PATH",
                     help="write the tidy table: .json (with the model, logLik, convergence and check rows), "
                          ".csv (or .txt), .tsv (or .tab) or .parquet (or .pq)")
    fit.add_argument("--plot", metavar="PATH",
                     help="save an orchard plot (drmpy.plots.orchard) to PATH (.png, .pdf, .svg)")
    fit.add_argument("--mod", metavar="COLUMN", help="moderator whose levels the orchard plot shows (with --plot)")
    fit.add_argument("--vcalc-cluster", metavar="COLUMN",
                     help="build V with sampling_covariance(): the meta_V column holds variances, correlated "
                          "--rho within each value of COLUMN (metafor's vcalc)")
    fit.add_argument("--rho", type=float, help="within-cluster correlation for --vcalc-cluster (default 0.5)")
    fit.add_argument("--obs", metavar="COLUMN", help="outcome labels for --vcalc-cluster (rows with one label correlate at 1)")
    fit.add_argument("--time", metavar="COLUMN", help="time points for --vcalc-cluster (with --phi)")
    fit.add_argument("--phi", type=float, help="autocorrelation per unit of --time")

    es = _add_command(
        sub, "effect-size", effect_size_command,
        help="compute effect sizes yi and sampling variances vi (metafor's escalc)",
        description="Append yi and vi to DATA (CSV, TSV or Parquet) for one measure, exactly as metafor's escalc; "
                    "columns are given with metafor's argument names.", epilog=_EFFECT_EXAMPLES)
    es.add_argument("--measure", required=True,
                    help="MD, SMD, SMDH, ROM, VR, CVR (means); OR, RR, RD, PETO (2x2); ZCOR, COR; "
                         "PR, PLO, PAS, PFT (proportions); IRR, IRD (incidence)")
    for arg, text in _EFFECT_COLUMNS:
        es.add_argument(f"--{arg}", metavar="COLUMN", help=f"column: {text}")
    es.add_argument("--add", type=float, help="added to the cells of zero-cell rows (default 1/2; 0 for PAS, PFT)")
    es.add_argument("--to", choices=("only0", "all", "if0all", "none"), default="only0",
                    help="which rows get --add (default only0: rows with a zero cell)")
    es.add_argument("--vtype", default="LS", help="metafor's variance type (default LS)")
    es.add_argument("--var-names", nargs=2, default=("yi", "vi"), metavar=("YI", "VI"),
                    help="names of the two new columns (default yi vi)")
    es.add_argument("--out", metavar="PATH",
                    help="write .csv (or .txt), .tsv (or .tab) or .parquet (or .pq) (default: CSV on stdout)")

    dm = _add_command(
        sub, "demo", demo, data=False, help="fit the restoration example and print summary and check",
        description="Fit the drmTMB vignette's restoration example (shipped with drmpy) and print its summary, "
                    "variance components and I2 by habitat and check(), and save its orchard plot by habitat.",
        epilog=_DEMO_EXAMPLES)
    dm.add_argument("--plot", metavar="PATH", default="restoration_orchard.png",
                    help="where to save the orchard plot (default restoration_orchard.png)")
    return parser


def _add_command(sub, name: str, run, *, help: str, description: str, epilog: str,
                 data: bool = True) -> argparse.ArgumentParser:
    """A subcommand with its examples, the DATA argument (when it reads data) and --debug."""
    command = sub.add_parser(name, help=help, description=description, epilog=epilog,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    if data:
        command.add_argument("data", metavar="DATA", help="data file: .csv, .tsv, or .parquet (needs pyarrow)")
    command.add_argument("--debug", action="store_true", help="show the traceback of an error")
    command.set_defaults(run=run)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 1
    try:
        return args.run(args)
    except Exception as exc:
        from .errors import DrmError

        if args.debug or not isinstance(exc, (InputError, DrmError, OSError, ImportError)):
            raise
        print(f"drmpy {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
