"""Smoke test of the benchmark suite (``python -m bench``) so that it cannot rot: a tiny run
(n=300, one repetition, a few workloads, every engine that imports) checked for the shape of
its markdown table and JSON.  pytest never collects ``bench/`` itself (testpaths are tests
and kvmap); this runs it as a user does, in a subprocess from the repository root."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ["load", "put_each_normal", "get", "scan", "readers_1"]
ROWS = {  # workload -> its row title's start in the table
    "load": "bulk load in key order",
    "put_each_normal": "random puts, 1 commit each (normal)",
    "get": "random gets, present keys",
    "scan": "full ordered scan",
    "readers_1": "random gets, 1 reader process, idle",
    "disk_load": "bytes on disk per key after load (lower is better)",
    "rss": "peak RSS of the engine's process (lower is better)",
    "reader_rss": "RSS growth of 1 reader process (lower is better)",
}


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def bench(*args: str, tmp: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMPDIR=tmp)  # the databases go under pytest's tmp_path
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_tiny_run_prints_the_table_and_writes_json(tmp_path: os.PathLike[str]) -> None:
    out = os.path.join(os.fspath(tmp_path), "bench.json")
    png = os.path.join(os.fspath(tmp_path), "bench.png")
    args = ["--quick", "--n", "300", "--reps", "1", "--workloads", ",".join(WORKLOADS)]
    args += ["--json", out]
    plotting = has("matplotlib") and has("lmdb")
    if plotting:
        args += ["--plot", png]
    proc = bench(*args, tmp=os.fspath(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    engines = ["kvmap"] + (["lmdb"] if has("lmdb") else []) + ["sqlite", "dbm.dumb"]
    engines += ["semidbm"] if has("semidbm") else []
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    header = next(ln for ln in table if ln.startswith("| workload"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:2] == ["workload", "unit"]
    assert cols[2 : 2 + len(engines)] == engines
    assert (cols[-1] == "kvmap/lmdb") == has("lmdb")
    for name, title in ROWS.items():
        row = next((ln for ln in table if ln.startswith(f"| {title}")), None)
        assert row is not None, f"no row for {name}:\n{proc.stdout}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == len(cols)
        assert all(c and c not in ("ERROR", "no data") for c in cells), row
    assert 'sync="full"' in proc.stdout and "synchronous=FULL" in proc.stdout

    with open(out) as f:
        data = json.load(f)
    assert set(data) >= {"machine", "config", "engines", "samples", "summary", "errors"}
    assert data["errors"] == []
    machine = data["machine"]
    assert machine["cpu_count"] >= 1 and machine["python"] and machine["platform"]
    assert machine["versions"]["kvmap"] and machine["versions"]["sqlite"]
    assert data["config"]["n"] == 300 and data["config"]["workloads"] == WORKLOADS
    assert list(data["samples"]) == engines
    for engine in engines:
        for name in [*WORKLOADS, "disk_load", "rss", "reader_rss"]:
            samples = data["samples"][engine][name]
            assert len(samples) == 1 and samples[0]["value"] > 0, (engine, name)
        load = data["samples"][engine]["load"][0]
        assert load["ops"] == 300 and load["seconds"] > 0
    rows = {r["workload"]: r for r in data["summary"]}
    assert set(rows) == set(ROWS)
    assert (rows["get"]["ratio"] is not None) == has("lmdb")
    assert rows["disk_load"]["higher_is_better"] is False
    if plotting:
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused(tmp_path: os.PathLike[str]) -> None:
    proc = bench("--workloads", "nope", tmp=os.fspath(tmp_path))
    assert proc.returncode == 2 and "unknown workload" in proc.stderr
    proc = bench("--engines", "kvmap,berkeley", tmp=os.fspath(tmp_path))
    assert proc.returncode == 2 and "unknown engine" in proc.stderr


@pytest.mark.parametrize("n", [0, -5])
def test_n_must_be_positive(tmp_path: os.PathLike[str], n: int) -> None:
    proc = bench("--n", str(n), tmp=os.fspath(tmp_path))
    assert proc.returncode == 2
