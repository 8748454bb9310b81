"""Which Python tree library reads Newick for ``phylo_corr`` (issue 12). Run:

    pip install --target /tmp/phylolibs biopython dendropy treeswift ete3
    PHYLO_LIBS=/tmp/phylolibs python3 benchmarks/phylo_libraries.py

Times reading a random 10,000-tip Newick tree and listing its tips (best of 3) with
Bio.Phylo, DendroPy, TreeSwift and ete3, and prints each one's version, licence and
installed size.  The machine is shared: the load average is printed.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import io
import os
import sys
import time
from pathlib import Path

sys.path.append(os.environ.get("PHYLO_LIBS", ""))
sys.path.insert(0, str(Path(__file__).parent))
from bench_effects import random_newick  # noqa: E402

LIBRARIES = {
    "Bio.Phylo": ("biopython", "Bio"),
    "DendroPy": ("dendropy", "dendropy"),
    "TreeSwift": ("treeswift", "treeswift"),
    "ete3": ("ete3", "ete3"),
}


def read_biopython(text):
    from Bio import Phylo

    return sum(1 for _ in Phylo.read(io.StringIO(text), "newick").get_terminals())


def read_dendropy(text):
    import dendropy

    return len(dendropy.Tree.get(data=text, schema="newick", preserve_underscores=True).leaf_nodes())


def read_treeswift(text):
    import treeswift

    return sum(1 for _ in treeswift.read_tree_newick(text).traverse_leaves())


def read_ete3(text):
    import ete3

    return len(ete3.Tree(text, format=1).get_leaves())


READERS = {"Bio.Phylo": read_biopython, "DendroPy": read_dendropy, "TreeSwift": read_treeswift, "ete3": read_ete3}


def folder_size_mb(module: str) -> float:
    path = Path(importlib.import_module(module).__file__).parent
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 50_000))
    text = random_newick(10_000, seed=1, ultrametric=False)
    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} cores (shared machine)")
    print(f"{'library':10s} {'version':9s} {'licence':42s} {'size':>8s} {'read 10k tips':>14s}")
    for name, (dist, module) in LIBRARIES.items():
        try:
            meta = md.metadata(dist)
        except md.PackageNotFoundError:
            print(f"{name:10s} not installed")
            continue
        licence = meta.get("License-Expression") or meta.get("License") or ""
        classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        licence = (licence if licence and licence != "UNKNOWN" else "") or "; ".join(classifiers)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            tips = READERS[name](text)
            times.append(time.perf_counter() - start)
        assert tips == 10_000
        print(f"{name:10s} {meta['Version']:9s} {licence[:42]:42s} {folder_size_mb(module):6.1f}MB {min(times):12.3f} s")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
