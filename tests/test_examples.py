"""examples/: each script runs as a user would run it, exits 0 and prints what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(script: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert not proc.stderr, proc.stderr
    return proc.stdout


def test_every_example_is_tested() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == ["shelve_example.py", "web_workers.py"], "add a test for the new example"


def test_web_workers(tmp_path: Path) -> None:
    out = run("web_workers.py", "--workers", "3", "--seconds", "1", cwd=tmp_path)
    assert "reader slots in use: 3 (one per worker process)" in out
    commits = int(re.search(r"writer: (\d+) commits", out)[1])  # type: ignore[index]
    assert commits > 0
    workers = re.findall(r"worker \d+: (\d+) requests, saw catalog versions (\d+) \.\. (\d+)", out)
    assert len(workers) == 3, out
    assert "lookups that found nothing: 0; requests that mixed two commits: 0" in out
    # the readers followed the writer: some request saw a version the writer made later
    assert max(int(hi) for _, _, hi in workers) > 0, out
    assert os.listdir(tmp_path) == []  # the temporary database was removed


def test_web_workers_keeps_a_named_database(tmp_path: Path) -> None:
    run("web_workers.py", str(tmp_path / "catalog"), "--workers", "1", "--seconds", "0.2",
        cwd=tmp_path)  # fmt: skip
    import kvmap

    with kvmap.open(tmp_path / "catalog", readonly=True) as db:
        assert len(db) == 20_001
        assert int(db[b"catalog:version"]) > 0
        db.check()


def test_shelve_example(tmp_path: Path) -> None:
    out = run("shelve_example.py", cwd=tmp_path)
    assert out.splitlines() == [
        "home: 1 task(s), 0 done",
        "  [ ] water the plants",
        "work: 2 task(s), 1 done",
        "  [ ] review the backup runbook",
        "  [x] ship 0.1.0",
        "keys, in kvmap's key order: True",
        "read-only shelf: The database is opened for reading only",
        "kvmap sees 3 keys: ['home', 'lists', 'work']",
    ]
    assert os.listdir(tmp_path) == []


def test_shelve_example_keeps_a_named_database(tmp_path: Path) -> None:
    import shelve

    import kvmap.dbm

    run("shelve_example.py", str(tmp_path / "todo"), cwd=tmp_path)
    with shelve.Shelf(kvmap.dbm.open(str(tmp_path / "todo"), "r")) as shelf:
        assert shelf["lists"] == ["home", "work"]
        assert [t["task"] for t in shelf["work"]][-1] == "ship 0.1.0"
