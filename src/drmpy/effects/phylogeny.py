"""``phylo_corr``: the Brownian-motion phylogenetic correlation matrix of a tree's tips (ape's ``vcv(corr = TRUE)``).

Under Brownian motion the covariance of two tips is the length of the path they share
from the root (the depth of their most recent common ancestor) and a tip's variance is its
root-to-tip distance; the correlation divides by the square roots of the two variances.

Newick is read with Biopython's ``Bio.Phylo`` (the optional extra ``drmpy[phylo]``).  Of the
four well-known Python tree libraries, measured on a 10,000-tip tree
(``benchmarks/phylo_libraries.out``): TreeSwift (pure Python, 0.3 MB) and ete3 (12 MB) parse
fastest but are GPLv3, which an MIT package should not require; DendroPy (BSD, 5 MB) is
the slowest by far; Bio.Phylo (Biopython licence, BSD-style) is permissive, the most widely
used and maintained by the Biopython project with regular releases, and fast enough
(a 5,000-tip correlation matrix well within 2 s).  Everything after parsing (depths,
tip ranges, the matrix) is drmpy's own iterative code, so deep trees (a 10,000-tip
caterpillar) need no recursion.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..errors import DataError

__all__ = ["phylo_corr", "phylo_vcv", "read_tree", "tip_labels"]


def read_tree(tree: Any):
    """A Bio.Phylo tree from a Newick string, a path to a Newick file, or a Bio.Phylo tree."""
    if hasattr(tree, "root") and hasattr(tree.root, "clades"):
        return tree
    if isinstance(tree, os.PathLike):
        tree = os.fspath(tree)
    if not isinstance(tree, str):
        raise DataError(f"phylo_corr: `tree` must be a Newick string, a file path or a Bio.Phylo tree, "
                        f"got {type(tree).__name__}.")
    text = tree.strip()
    if not (text.startswith("(") or text.endswith(";")):
        path = Path(text)
        if not path.is_file():
            raise DataError(f"phylo_corr: `tree` = {text[:80]!r} is neither Newick text nor an existing file.")
        text = path.read_text().strip()
    try:
        from Bio import Phylo
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("phylo_corr reads Newick with Biopython: pip install \"drmpy[phylo]\" "
                          "(or pip install biopython).") from exc
    try:
        trees = list(Phylo.parse(io.StringIO(text), "newick"))
    except Exception as exc:  # Bio.Phylo raises its own NewickError and ValueErrors
        raise DataError(f"phylo_corr: the Newick text could not be read ({exc}).") from exc
    if len(trees) != 1:
        raise DataError(f"phylo_corr: expected one tree in the Newick text, found {len(trees)}.")
    return trees[0]


def tip_labels(tree: Any) -> list[str | None]:
    """The tip labels of a tree (Newick order), by an iterative walk: Bio.Phylo's own
    ``get_terminals`` recurses through a generator per node, about 40 us a tip."""
    root = read_tree(tree).root
    labels: list[str | None] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if not node.clades:
            labels.append(None if node.name in (None, "") else str(node.name))
        else:
            stack.extend(reversed(node.clades))
    return labels


def _tip_depths_and_shared(tree) -> tuple[list[str], np.ndarray]:
    """Tip labels in Newick order and the shared-path-length (BM covariance) matrix C.

    One iterative pre-order pass gives every node's distance from the root (the root's own
    edge is ignored, as in ape) and its tips' contiguous range in pre-order; then for every
    internal node, each pair of its child subtrees gets the node's depth in their block.
    """
    root = tree.root
    labels: list[str] = []
    depth_of: dict[int, float] = {id(root): 0.0}
    first_tip: dict[int, int] = {}
    nodes_in_preorder = []
    stack = [root]
    while stack:
        node = stack.pop()
        nodes_in_preorder.append(node)
        first_tip[id(node)] = len(labels)
        if not node.clades:
            if node.name is None or node.name == "":
                raise DataError(f"phylo_corr: tip number {len(labels) + 1} (in Newick order) has no label.")
            labels.append(str(node.name))
            continue
        for child in node.clades:
            if child.branch_length is None:
                name = f" `{child.name}`" if child.name else ""
                raise DataError(f"phylo_corr: the tree has a branch without a length (above node{name}); "
                                "Brownian-motion correlations need every branch length.")
            depth_of[id(child)] = depth_of[id(node)] + float(child.branch_length)
        stack.extend(reversed(node.clades))  # left-most child first: Newick (ape) tip order
    n = len(labels)
    # tip count of every subtree, accumulated in reverse pre-order
    size_of: dict[int, int] = {}
    for node in reversed(nodes_in_preorder):
        size_of[id(node)] = 1 if not node.clades else sum(size_of[id(c)] for c in node.clades)
    shared = np.empty((n, n))
    for node in nodes_in_preorder:
        if not node.clades:
            i = first_tip[id(node)]
            shared[i, i] = depth_of[id(node)]
            continue
        d = depth_of[id(node)]
        ranges = [(first_tip[id(c)], first_tip[id(c)] + size_of[id(c)]) for c in node.clades]
        for a, (lo_a, hi_a) in enumerate(ranges):
            for lo_b, hi_b in ranges[a + 1:]:
                shared[lo_a:hi_a, lo_b:hi_b] = d
                shared[lo_b:hi_b, lo_a:hi_a] = d
    return labels, shared


def _covariance(tree: Any, species: Iterable[Any] | None) -> tuple[pd.Index, np.ndarray]:
    """Tip labels and the Brownian-motion covariance (restricted to ``species`` when given)."""
    parsed = read_tree(tree)
    labels, shared = _tip_depths_and_shared(parsed)
    frame_labels = pd.Index(labels)
    if frame_labels.has_duplicates:
        dup = frame_labels[frame_labels.duplicated()][0]
        raise DataError(f"phylo_corr: tip label `{dup}` appears more than once in the tree.")
    if species is None:
        return frame_labels, shared
    if isinstance(species, (str, bytes)) or not isinstance(species, Iterable):
        raise DataError(f"phylo_corr: `species` must be a collection of tip labels (a list or a data column), "
                        f"got {type(species).__name__}.")
    wanted = list(dict.fromkeys(str(s) for s in species))
    position = frame_labels.get_indexer(wanted)
    missing = [w for w, p in zip(wanted, position) if p < 0]
    if missing:
        shown = ", ".join(f"`{m}`" for m in missing[:10])
        raise DataError(f"phylo_corr: {len(missing)} species not among the tree's tips: {shown}"
                        f"{' ...' if len(missing) > 10 else ''}.")
    return pd.Index(wanted), shared[np.ix_(position, position)]


def phylo_vcv(tree: Any, species: Iterable[Any] | None = None) -> pd.DataFrame:
    """Brownian-motion phylogenetic covariance matrix of the tips (ape's ``vcv(tree)``):
    shared root-to-ancestor path lengths, in the tree's branch-length units.

    Arguments and the ``species`` restriction as :func:`phylo_corr`.
    """
    index, cov = _covariance(tree, species)
    return pd.DataFrame(cov, index=index, columns=index, copy=False)


def phylo_corr(tree: Any, species: Iterable[Any] | None = None) -> pd.DataFrame:
    """Phylogenetic correlation matrix of the tips under Brownian motion (ape's ``vcv(tree, corr = TRUE)``).

    ``C[i, j] = s_ij / sqrt(s_ii s_jj)``, where ``s_ij`` is the branch length shared by tips i
    and j on their paths from the root (the depth of their most recent common ancestor) and
    ``s_ii`` the root-to-tip distance.  Ultrametric and non-ultrametric trees, with or without
    polytomies; the root's own edge is ignored (as in ape).

    Parameters
    ----------
    tree
        Newick text, a path to a Newick file, or a ``Bio.Phylo`` tree.  Every branch needs a
        length; tip labels must be unique.
    species
        Optional labels (e.g. a data column; repeats are ignored): the result is restricted
        to these rows and columns, in this order.  These are the rows and columns of the
        whole tree's matrix, not the matrix of a pruned tree re-rooted at the species' common
        ancestor (which would have different correlations).  Labels that are not tips of the
        tree raise a DataError naming them.

    Returns
    -------
    pandas.DataFrame, the correlation matrix with the tip labels (strings) as index and
    columns, in Newick order (ape's ``tip.label`` order) unless ``species`` is given.  Ready
    for ``relmat(1 | species, K = K)``; ``phylo(1 | species, tree = tree)`` in a formula
    computes it for you.

    Examples
    --------
    >>> import drmpy as drm
    >>> drm.phylo_corr("((a:1,b:1):1,c:2);")
          a    b    c
    a  1.0  0.5  0.0
    b  0.5  1.0  0.0
    c  0.0  0.0  1.0
    """
    index, corr = _covariance(tree, species)
    variances = np.diag(corr).copy()
    if np.any(variances <= 0):
        tip = index[int(np.argmax(variances <= 0))]
        raise DataError(f"phylo_corr: tip `{tip}` is at distance 0 from the root; its correlation is undefined.")
    scale = 1.0 / np.sqrt(variances)
    corr *= scale[:, None]  # in place: the n x n matrix is the only large array
    corr *= scale[None, :]
    np.fill_diagonal(corr, 1.0)
    return pd.DataFrame(corr, index=index, columns=index, copy=False)
