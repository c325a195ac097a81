"""README.md: the Quick start is exactly two commands, and CI runs the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"^```(?:sh|bash|shell)\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, "the Quick start has no sh code block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_the_first_section() -> None:
    readme = (ROOT / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings and headings[0] == "Quick start"


def test_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert not any(c.startswith("#") for c in commands)
    assert not any(c.endswith("\\") for c in commands)  # no continuation lines
    install_and_run, install_and_test = commands
    assert install_and_run.startswith("pip install")
    # the main job: the benchmark against LMDB in its quick mode
    assert "python -m bench" in install_and_run and "--quick" in install_and_run
    assert install_and_test.startswith("pip install")
    assert "pytest" in install_and_test


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = quick_start_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in ci.splitlines()]
    assert test_command in lines, f"{test_command!r} is not a line of .ci/run"


def test_ci_script_is_executable_bash_with_strict_mode() -> None:
    run = ROOT / ".ci" / "run"
    assert run.stat().st_mode & 0o111, ".ci/run is not executable"
    text = run.read_text()
    assert text.startswith("#!")
    assert "set -e" in text


def test_extras_named_in_the_quick_start_exist() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    for command in quick_start_commands():
        for group in re.findall(r"\.\[([\w,]+)\]", command):
            for extra in group.split(","):
                assert extra in extras, f"{command!r} installs missing extra {extra!r}"
    assert any(dep.startswith("pytest") for dep in extras["test"])
    assert any(dep.startswith("hypothesis") for dep in extras["test"])
