"""The stage boundaries of src/drmpy, enforced on the source with `ast` (issue 24, item 3).

Three rules keep the staircase model -> engine -> results -> later stages readable:

(a) no module imports an underscore-prefixed name from another stage folder (a private helper
    used across stages gets a public name in its home module);
(b) no module outside results/ assigns an attribute to a fit (`fit.x = ...`, `setattr(fit, ...)`);
    later stages memoise derived quantities through `FitResult.stage_cache`;
(c) no module-level import goes upward: an earlier stage never imports a later one at import time
    (imports inside functions are allowed, they run after every module is loaded).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "drmpy"
PACKAGE = "drmpy"
STAGE_FOLDERS = frozenset({"model", "engine", "families", "robust", "results", "inference", "heterogeneity",
                           "effects", "plots",
                           "bias", "simulation", "batch", "phylo", "datasets"})
# Rank of each stage folder: a module may import, at module level, only stages of rank <= its own.
# phylo, families (log-densities in JAX) and robust (their likelihoods) sit with engine; the later
# stages share one rank (they may import each other at module level).
STAGE_RANK = {"model": 0, "engine": 1, "families": 1, "robust": 1, "phylo": 1, "results": 2, "inference": 3,
              "heterogeneity": 3,
              "effects": 3, "plots": 3, "bias": 3, "simulation": 3, "batch": 3}


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _module_name(path: Path) -> str:
    """Dotted name of a source file, e.g. drmpy.engine.program or drmpy.engine (for __init__)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def _stage(module: str) -> str:
    """Stage of a dotted module name: its folder under drmpy, or the module itself when top level."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def _resolve(path: Path, node: ast.ImportFrom) -> str | None:
    """Absolute dotted module an ImportFrom reads from; None for modules outside drmpy."""
    if node.level == 0:
        return node.module if node.module and node.module.split(".")[0] == PACKAGE else None
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC.parent)}:{getattr(node, 'lineno', '?')}"


def _module_level_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    """Imports executed when the module is loaded: not inside a function (if/try blocks included)."""
    found: list[ast.ImportFrom | ast.Import] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def private_cross_stage_imports() -> list[str]:
    """Rule (a): every `from <other stage> import _name`, as 'file:line: message'."""
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        here = _stage(_module_name(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _resolve(path, node)
            if target is None or _stage(target) == here:
                continue
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{_where(path, node)}: imports private {alias.name} from {target}")
    return found


def _is_fit(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "fit"


def fit_attribute_assignments() -> list[str]:
    """Rule (b): every `fit.attr = ...`, `fit.attr += ...` or `setattr(fit, ...)` outside results/."""
    found = []
    for path in _modules():
        if _stage(_module_name(path)) == "results":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) and _is_fit(sub.value):
                        found.append(f"{_where(path, node)}: assigns fit.{sub.attr} outside results/")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                    and node.args and _is_fit(node.args[0])):
                found.append(f"{_where(path, node)}: setattr on a fit outside results/")
    return found


def upward_module_level_imports() -> list[str]:
    """Rule (c): every module-level import of a later stage by an earlier one."""
    found = []
    for path in _modules():
        here = _stage(_module_name(path))
        if here not in STAGE_RANK:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _module_level_imports(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(path, node)
                targets = [target] if target else []
                if target == PACKAGE:  # `from .. import engine`: the names are submodules
                    targets = [f"{PACKAGE}.{alias.name}" for alias in node.names]
            else:
                targets = [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
            for target in targets:
                there = _stage(target)
                if there in STAGE_RANK and STAGE_RANK[there] > STAGE_RANK[here]:
                    found.append(f"{_where(path, node)}: {here} imports later stage {target} at module level")
    return found


def test_the_scan_sees_the_package():
    assert len(_modules()) > 40
    assert "drmpy.engine.program" in {_module_name(p) for p in _modules()}


def test_the_rules_catch_a_violation(tmp_path):
    """Each rule reports a planted violation with file and line (the rules are not vacuous)."""
    root = tmp_path / "drmpy"
    for folder in ("engine", "results", "inference"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "engine" / "core.py").write_text("from ..results.fit import FitResult\n")
    (root / "inference" / "x.py").write_text(
        "from ..engine.core import _helper\nfrom ..engine import core\n\n"
        "def f(fit):\n    fit._cache = 1\n    setattr(fit, 'a', 2)\n    from ..results import fit as late\n")
    (root / "results" / "fit.py").write_text("def g(fit):\n    fit._ok = 1\n")
    globals()["SRC"], saved = root, SRC
    try:
        assert private_cross_stage_imports() == [
            "drmpy/inference/x.py:1: imports private _helper from drmpy.engine.core"]
        assert fit_attribute_assignments() == [
            "drmpy/inference/x.py:5: assigns fit._cache outside results/",
            "drmpy/inference/x.py:6: setattr on a fit outside results/"]
        assert upward_module_level_imports() == [
            "drmpy/engine/core.py:1: engine imports later stage drmpy.results.fit at module level"]
    finally:
        globals()["SRC"] = saved


@pytest.mark.parametrize("rule", [private_cross_stage_imports, fit_attribute_assignments,
                                  upward_module_level_imports], ids=lambda rule: rule.__name__)
def test_stage_boundary(rule):
    violations = rule()
    assert not violations, f"{len(violations)} violation(s):\n" + "\n".join(violations)
