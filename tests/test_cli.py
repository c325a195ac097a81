"""kvmap.cli: ``python -m kvmap demo|stat|check`` as a user runs it, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvmap

ROOT = Path(__file__).resolve().parent.parent


def kvmap_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "kvmap", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, subprocess.CompletedProcess[str]]:
    path = str(tmp_path_factory.mktemp("cli") / "db")
    return path, kvmap_cli("demo", "-n", "2000", path)


def test_demo(demo: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    path, out = demo
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    text = out.stdout
    assert path in text
    assert "wrote 2000 keys" in text
    assert "read them back" in text
    assert "full ordered scan of 2000 items" in text
    assert "still sees it: True, the database does not: False" in text
    assert "1999 entries" in text
    assert "check(): ok" in text
    assert "Traceback" not in text
    with kvmap.open(path, readonly=True) as db:
        assert len(db) == 1999
        db.check()
        keys = list(db.keys(prefix=b"user:"))
        assert len(keys) == 1999
        assert db[keys[0]] == b"profile-of-" + keys[0]


def test_demo_default_path_is_temporary() -> None:
    out = kvmap_cli("demo", "-n", "50")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("kvmap demo: database at ")
    path = first.removeprefix("kvmap demo: database at ")
    assert os.path.isdir(path)
    with kvmap.open(path, readonly=True) as db:
        assert len(db) == 49


def test_stat(demo: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    path, made = demo
    assert made.returncode == 0
    out = kvmap_cli("stat", path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    stats = json.loads(out.stdout)
    assert stats["entries"] == 1999
    assert stats["depth"] >= 1
    assert stats["page_size"] == 4096
    assert stats["file_size"] == os.path.getsize(os.path.join(path, "kvmap.data"))
    assert stats["pages"]["leaf"] >= 1
    assert "free_pages" in stats


def test_check(demo: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    path, made = demo
    assert made.returncode == 0
    out = kvmap_cli("check", path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.startswith("ok: ")
    counts = json.loads(out.stdout.removeprefix("ok: "))
    assert counts["leaf"] >= 1 and counts["meta"] == 2


def test_stat_and_check_leave_a_database_unchanged(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with kvmap.open(path, page_size=512) as db:
        db.put_many((b"%d" % i, b"v") for i in range(300))
    before = (Path(path) / "kvmap.data").read_bytes()
    for cmd in ("stat", "check"):
        out = kvmap_cli(cmd, path)
        assert out.returncode == 0, out.stderr
    assert (Path(path) / "kvmap.data").read_bytes() == before


@pytest.mark.parametrize("cmd", ["stat", "check"])
def test_missing_database_exits_1_with_one_line(tmp_path: Path, cmd: str) -> None:
    path = str(tmp_path / "nothing-here")
    out = kvmap_cli(cmd, path)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("kvmap: error:")
    assert "nothing-here" in lines[0]
    assert "Traceback" not in out.stderr
    assert not os.path.exists(path)  # stat/check never create a database


def test_corrupt_database_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.mkdir()
    (path / "kvmap.data").write_bytes(b"\x00" * 8192)
    out = kvmap_cli("check", str(path))
    assert out.returncode == 1
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["stat"],
        ["check"],
        ["demo", "-n", "many"],
        ["stat", "a", "b"],
        ["--no-such-flag", "check", "x"],
    ],
)
def test_bad_usage_exits_2(args: list[str]) -> None:
    out = kvmap_cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "usage:" in out.stderr
    assert "Traceback" not in out.stderr


def test_help_exits_0() -> None:
    out = kvmap_cli("--help")
    assert out.returncode == 0
    for cmd in ("demo", "stat", "check"):
        assert cmd in out.stdout


def test_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvmap.cli import main

    path = str(tmp_path / "db")
    assert main(["demo", "-n", "100", path]) == 0
    assert main(["check", path]) == 0
    assert capsys.readouterr().out.count("ok") >= 2
    assert main(["stat", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kvmap: error:" in err
