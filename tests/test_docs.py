"""The documentation: every code example runs, and the site builds with ``mkdocs --strict``.

Each page (``docs/**/*.md`` and ``README.md``) runs as one test, in a fresh temporary
directory as the working directory. Its fenced blocks run in order:

- ```` ```python ```` blocks are executed in one namespace per page, so a page can build up
  an example over several blocks;
- ```` ```console ```` blocks are shell sessions: each ``$ command`` line runs in bash
  (``kvmap`` and ``python`` are this interpreter's), must exit 0, and must print the lines
  that follow it, up to the next ``$`` line (``...`` matches anything; runs of whitespace
  compare equal, as in doctest's ELLIPSIS and NORMALIZE_WHITESPACE);
- a block of a single ``--8<-- "path"`` line is a file included into the page
  (``pymdownx.snippets``): the file must exist; examples/ files run in test_examples.py;
- ```` ``` {.python .no-run} ```` marks a fragment that cannot run on its own (the marker
  is visible in the Markdown source); other languages (``sh``, ``text`` ...) are not run.

A page's databases are closed (and checked) at the end of its test.
"""

from __future__ import annotations

import doctest
import gc
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kvmap

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S,
)


def pages() -> list[Path]:
    found = sorted(p for p in DOCS.rglob("*.md") if "_ext" not in p.parts)
    return [ROOT / "README.md", *found]


def blocks(page: Path) -> list[tuple[str, int, str]]:
    """(kind, line number, code) of each fenced block: kind is python, console, snippet,
    no-run or other."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        info = m["info"].strip()
        body = textwrap.dedent(m["body"])
        line = text.count("\n", 0, m.start()) + 2
        if SNIPPET.match(body.strip()):
            kind = "snippet"
        elif info in ("python", "py"):
            kind = "python"
        elif info == "console":
            kind = "console"
        elif "no-run" in info:
            kind = "no-run"
        else:
            kind = "other"
        out.append((kind, line, body))
    return out


def runnable_pages() -> list[Path]:
    return [p for p in pages() if any(k != "other" for k, _, _ in blocks(p))]


SHELL_PRELUDE = """\
set -o pipefail
kvmap() {{ {py} -m kvmap "$@"; }}
python() {{ {py} "$@"; }}
"""


def run_console(code: str, where: str, cwd: Path) -> None:
    """Run each ``$ command`` of a console block and compare its output."""
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    commands: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"{where}: output before the first '$ ' line: {line!r}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    prelude = SHELL_PRELUDE.format(py=sys.executable)
    for command, expected_lines in commands:
        proc = subprocess.run(
            ["bash", "-c", prelude + command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        got = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{where}: $ {command}\nexit {proc.returncode}\n{got}"
        want = "\n".join(expected_lines).strip("\n")
        want = want + "\n" if want else ""
        assert checker.check_output(want, got, flags), (
            f"{where}: $ {command}\nexpected:\n{want}\ngot:\n{got}"
        )


@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_in_page_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # examples/ as the page's commands see it from the repository root
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for kind, line, code in blocks(page):
            where = f"{page.relative_to(ROOT)}:{line}"
            if kind == "python":
                exec(compile(code, where, "exec"), namespace)  # noqa: S102
            elif kind == "console":
                run_console(code, where, tmp_path)
            elif kind == "snippet":
                included = SNIPPET.match(code.strip())[1]  # type: ignore[index]
                assert (ROOT / included).is_file(), f"{where}: includes missing {included}"
    finally:
        handles = [v for v in namespace.values() if isinstance(v, kvmap.Database)]
        namespace.clear()
        for handle in handles:
            handle.close()
        gc.collect()


def test_every_python_block_is_run_or_marked() -> None:
    """A fenced block that looks like Python but is labelled otherwise would silently go
    untested: Python blocks must say ```python (run) or carry the no-run marker."""
    for page in pages():
        for kind, line, code in blocks(page):
            if kind == "other" and re.match(r"(import |from \S+ import |with kvmap)", code):
                raise AssertionError(f"{page.relative_to(ROOT)}:{line}: Python labelled other")


def test_no_run_is_rare() -> None:
    marked = [(p, line) for p in pages() for k, line, _ in blocks(p) if k == "no-run"]
    assert len(marked) <= 3, f"too many blocks opt out of running: {marked}"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict`` of mkdocs.yml, into a temporary directory.

    docs/reliability.md is written in parallel with this page set: while it is missing,
    the build uses a copy of docs/ with a placeholder for it (nav and links name it)."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] missing")
    docs = DOCS
    if not (DOCS / "reliability.md").exists():
        docs = tmp_path / "docs"
        shutil.copytree(DOCS, docs)
        (docs / "reliability.md").write_text("# Reliability\n\n(placeholder for the build)\n")
    script = textwrap.dedent(
        """
        import logging, sys
        from mkdocs.commands.build import build
        from mkdocs.config import load_config
        from mkdocs.exceptions import Abort
        # what `mkdocs build --strict -d SITE` does, with docs_dir overridden
        logging.basicConfig(level=logging.INFO, format="%(levelname)s - %(message)s")
        config = load_config("mkdocs.yml", docs_dir=sys.argv[1], site_dir=sys.argv[2],
                             strict=True)
        config.plugins.on_startup(command="build", dirty=False)
        try:
            build(config)
        except Abort as exc:
            sys.exit(f"ABORTED: {exc}")
        finally:
            config.plugins.on_shutdown()
        """
    )
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(docs), str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "WARNING" not in log, log
    api = (site / "api" / "index.html").read_text()
    names = ["kvmap.open", "kvmap.Database.begin", "kvmap.Snapshot.items",
             "kvmap.WriteTxn.commit", "kvmap.errors.CorruptionError", "kvmap.dbm.open"]  # fmt: skip
    for name in names:
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"
    assert ":class:" not in api and ":meth:" not in api, "a reST role was not converted"
    assert "&gt;&gt;&gt;" in api  # the docstrings' doctests render as code
