"""Command line: ``drmpy demo`` fits the drmTMB vignette's restoration example."""

from __future__ import annotations

import argparse
import sys


def demo() -> int:
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
    print("check():")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(fit.check().to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drmpy", description="drmpy command line")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="fit the restoration example and print summary and check")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    parser.print_help()
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
