"""The fuzz targets of fuzz/targets.py, run without atheris.

* every target as a hypothesis test: random bytes, and seeds of fuzz/corpus/<target>/ with
  a few bytes changed, a truncation and a random mode byte (``derandomize=True``: the same
  examples every run, so a failure replays as it is);
* every seed of the corpus must pass;
* every file of fuzz/crashes/<target>/ is replayed: an input named ``bug-<name>-*``
  reproduces the known kvmap bug ``<name>`` (``xfail(strict=True)``: when kvmap is fixed
  the test fails until the file is renamed ``fixed-<name>-*``); a ``fixed-*`` file must
  pass;
* the oracles can fail: each target catches a bug planted in kvmap.

Run one target's hypothesis test harder with ``KVMAP_FUZZ_EXAMPLES=5000``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import kvmap

ROOT = Path(__file__).resolve().parent.parent


def _load_targets() -> ModuleType:
    name = "kvmap_fuzz_targets"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "fuzz" / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


targets = _load_targets()

# examples per target: about 1-4 s of CPU each
EXAMPLES = {"page": 1000, "meta": 800, "wal": 400, "lockfile": 300, "ops": 200}
MAX_SIZE = {"page": 5000, "meta": 9000, "wal": 1200, "lockfile": 600, "ops": 400}


def _files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(
        os.path.join(directory, n)
        for n in os.listdir(directory)
        if not n.startswith(".") and n != "README.md"
    )


def _seeds(target: str) -> list[bytes]:
    out = []
    for path in _files(targets.corpus_dir(target)):
        with open(path, "rb") as f:
            out.append(f.read())
    return out


@st.composite
def _mutated(draw: st.DrawFn, target: str) -> bytes:
    """A corpus seed with up to 8 bytes replaced, maybe truncated, maybe another mode."""
    seed = bytearray(draw(st.sampled_from(_seeds(target))))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(seed) - 1))
        seed[pos] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:
        seed = seed[: draw(st.integers(0, len(seed)))]
    if seed and target != "ops" and draw(st.booleans()):
        seed[0] = draw(st.integers(0, 255))
    return bytes(seed)


def _inputs(target: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=MAX_SIZE[target]), _mutated(target))


def _examples(target: str) -> int:
    return int(os.environ.get("KVMAP_FUZZ_EXAMPLES", EXAMPLES[target]))


def _settings(target: str) -> settings:
    return settings(
        max_examples=_examples(target),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _one(target: str, data: bytes) -> None:
    bug = targets.run(target, data)
    if bug is not None:
        note(f"hit known bug {bug}")  # tolerated: replayed by fuzz/crashes/*/bug-*


@_settings("page")
@given(_inputs("page"))
def test_fuzz_page(data: bytes) -> None:
    _one("page", data)


@_settings("meta")
@given(_inputs("meta"))
def test_fuzz_meta(data: bytes) -> None:
    _one("meta", data)


@_settings("wal")
@given(_inputs("wal"))
def test_fuzz_wal(data: bytes) -> None:
    _one("wal", data)


@_settings("lockfile")
@given(_inputs("lockfile"))
def test_fuzz_lockfile(data: bytes) -> None:
    _one("lockfile", data)


@_settings("ops")
@given(_inputs("ops"))
def test_fuzz_ops(data: bytes) -> None:
    _one("ops", data)


# -- the corpus and the regressions ----------------------------------------------------------


def _params(kind: str) -> list[object]:
    out: list[object] = []
    for target in targets.TARGETS:
        directory = targets.corpus_dir(target) if kind == "corpus" else targets.crashes_dir(target)
        for path in _files(directory):
            name = os.path.basename(path)
            marks = []
            if kind == "crashes" and name.startswith("bug-"):
                bug = next((b for b in targets.KNOWN_BUGS if name.startswith(f"bug-{b}-")), "?")
                marks.append(
                    pytest.mark.xfail(
                        strict=True,
                        raises=targets.KnownBug,
                        reason=f"bug: {bug}: {targets.KNOWN_BUGS.get(bug, 'unknown bug')}",
                    )
                )
            out.append(pytest.param(target, path, marks=marks, id=f"{target}/{name}"))
    return out


def test_every_target_has_a_corpus() -> None:
    for target in targets.TARGETS:
        assert len(_seeds(target)) >= 2, target


@pytest.mark.parametrize(("target", "path"), _params("corpus"))
def test_corpus_seed_passes(target: str, path: str) -> None:
    with open(path, "rb") as f:
        assert targets.run(target, f.read()) is None


@pytest.mark.parametrize(("target", "path"), _params("crashes"))
def test_crash_regression(target: str, path: str) -> None:
    name = os.path.basename(path)
    with open(path, "rb") as f:
        data = f.read()
    if name.startswith("bug-"):
        assert any(name.startswith(f"bug-{b}-") for b in targets.KNOWN_BUGS), (
            f"{name}: bug-<name>-... must name a bug of targets.KNOWN_BUGS"
        )
    targets.ONE_INPUT[target](data)  # a known bug raises KnownBug: xfail


def test_crash_files_are_named_bug_or_fixed() -> None:
    for target in targets.TARGETS:
        for path in _files(targets.crashes_dir(target)):
            name = os.path.basename(path)
            assert name.startswith(("bug-", "fixed-")), f"{target}/{name}: bug-* or fixed-*"


# -- the oracles catch planted bugs ---------------------------------------------------------


def _seed(target: str, name: str) -> bytes:
    with open(os.path.join(targets.corpus_dir(target), name), "rb") as f:
        return f.read()


def test_page_oracle_catches_a_decoder_raising_the_wrong_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(buf: bytes, pgno: int) -> object:
        raise IndexError("planted")

    monkeypatch.setattr(kvmap.node, "decode", broken)
    with pytest.raises(IndexError, match="planted"):
        targets.run("page", _seed("page", "seed-leaf-512"))


def test_page_oracle_catches_a_decoder_dropping_a_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    real = kvmap.node.decode

    def broken(buf: bytes, pgno: int) -> kvmap.node.Node:
        n = real(buf, pgno)
        if n.vals is not None and len(n.keys) > 1:
            n.vals = n.vals[:-1]
        return n

    monkeypatch.setattr(kvmap.node, "decode", broken)
    with pytest.raises(targets.Finding):
        targets.run("page", _seed("page", "seed-leaf-512"))


def test_meta_oracle_catches_an_inconsistent_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    real = kvmap.meta.decode

    def broken(buf: bytes, pgno: int) -> kvmap.meta.Meta:
        return real(buf, pgno)._replace(root=0)  # an empty tree that has entries

    monkeypatch.setattr(kvmap.meta, "decode", broken)
    with pytest.raises(targets.Finding):
        targets.run("meta", _seed("meta", "seed-meta-512"))


def test_wal_oracle_catches_a_lost_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    real = kvmap.wal.scan_frames

    def broken(*args: object) -> object:
        frames = list(real(*args))  # type: ignore[arg-type]
        return iter(frames[:-1])

    monkeypatch.setattr(kvmap.wal, "scan_frames", broken)
    with pytest.raises(targets.Finding, match="scan_frames"):
        targets.run("wal", _seed("wal", "seed-wal"))


def test_wal_oracle_catches_recovery_losing_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    real = kvmap.db.scan_frames

    def broken(buf: bytes, *args: object) -> object:
        frames = list(real(buf, *args))  # type: ignore[arg-type]
        return iter(frames[:-1])

    monkeypatch.setattr(kvmap.db, "scan_frames", broken)
    with pytest.raises(targets.Finding, match="differ"):
        targets.run("wal", _seed("wal", "seed-wal"))


def test_lockfile_oracle_catches_a_slot_that_is_never_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kvmap.readers, "_lock_range", lambda *args: False)
    with pytest.raises(kvmap.ReadersFullError):
        targets.run("lockfile", _seed("lockfile", "seed-lock-live"))


def test_ops_oracle_catches_a_lost_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    real = kvmap.WriteTxn.delete

    def broken(self: kvmap.WriteTxn, key: bytes) -> bool:
        real(self, key)
        self._writes.pop(kvmap.txn.as_key(key), None)  # forgets the delete
        return kvmap.txn.as_key(key) in self  # but reports it done

    monkeypatch.setattr(kvmap.WriteTxn, "delete", broken)
    # config 0; put(b"a", b"AAAAA"); delete(b"a")
    program = bytes([0, 0, 1, 0, 5, 0x41, 1, 1, 0])
    with pytest.raises(targets.Finding):
        targets.run("ops", program)


# -- bugs found, beyond what the targets check (regressions) ------------------------------


def test_writable_open_with_an_oversized_key_in_the_wal_terminates(tmp_path: Path) -> None:
    crash = Path(targets.crashes_dir("wal")) / "fixed-wal-oversized-key-600-writable"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT / "fuzz")!r})
        import targets, kvmap
        from kvmap import wal
        raw = open({str(crash)!r}, "rb").read()[1:]
        path = {str(tmp_path / "db")!r}
        os.makedirs(path)
        targets.Template.get().install(path)
        start = wal.decode_header(raw)[1]
        with open(os.path.join(path, wal.wal_name(start)), "wb") as f:
            f.write(raw)
        try:
            kvmap.open(path, page_size=512).close()
        except kvmap.CorruptionError:
            print("refused")
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=5,
            env=dict(os.environ, KVMAP_FUZZ_TMP=str(tmp_path)),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the writable open did not return within 5 s")
    assert proc.returncode == 0, proc.stderr
