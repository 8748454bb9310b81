"""Every ```python block of README.md and docs/*.md runs as written (a doctest-style check).

Each file's blocks run in order in one namespace, in a temporary working directory, with
matplotlib's Agg backend: an example that uses a name no earlier block of its file defined
(``bcg``, ``d``, ``fit0``) fails here.  A block whose info string is ```python no-run is
skipped; keep these for code that genuinely cannot run (a user's own file).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, runs) of each ```python block; ``runs`` is False for ``no-run``."""
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 2  # first line of the code
        out.append((line, m.group("code"), "no-run" not in m.group("info")))
    return out


def run_blocks(path: Path, text: str) -> int:
    """Execute the runnable blocks of ``text`` in order in one namespace; returns how many ran."""
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for line, code, runs in python_blocks(text):
        if not runs:
            continue
        # pad so that tracebacks give the line number in the markdown file
        exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)
        ran += 1
    return ran


@pytest.fixture
def docs_env(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    yield tmp_path
    plt.close("all")


def test_extractor_finds_blocks_and_catches_undefined_names(docs_env):
    text = "intro\n```python\nx = 1\n```\n\n```python no-run\nopen('my.csv')\n```\n```bash\nls\n```\n" \
           "```python\ny = x + 1\n```\n```python\nprint(undefined_name)\n```\n"
    blocks = python_blocks(text)
    assert [(b[0], b[2]) for b in blocks] == [(3, True), (7, False), (13, True), (16, True)]
    with pytest.raises(NameError, match="undefined_name"):
        run_blocks(Path("example.md"), text)


def test_docs_have_runnable_examples_and_few_skips():
    blocks = {p.name: python_blocks(p.read_text()) for p in DOC_FILES}
    for name in ("README.md", "guide.md", "reference.md"):
        assert sum(runs for _, _, runs in blocks[name]) >= 1, name
    skipped = [(name, line) for name, bl in blocks.items() for line, _, runs in bl if not runs]
    assert len(skipped) <= 2, skipped


@pytest.mark.slow
@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_doc_examples_run(path, docs_env):
    run_blocks(path, path.read_text())


def test_readme_keeps_the_two_set_up_commands_verbatim():
    """.ci/run runs the README's test command; newcomers copy the first."""
    readme = (ROOT / "README.md").read_text()
    for command in ('python3 -m pip install . && drmpy demo',
                    'python3 -m pip install ".[test,distributed]" && python3 -m pytest -q'):
        assert f"```bash\n{command}\n```" in readme, command
    assert 'python3 -m pip install ".[test,distributed]" && python3 -m pytest -q' in (ROOT / ".ci" / "run").read_text()
