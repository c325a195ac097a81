"""kvmap.salvage and ``kvmap salvage``: every readable record of a damaged database, copied.

A database is built with a known history (every value each key ever had), closed or left as
a crash image with frames in its WAL, then damaged: a leaf, a branch, the root, an overflow
run, the newest meta page (after the WAL that covered it was deleted, so ``kvmap.open``
refuses it), both meta pages, a WAL frame.  Salvage must recover every record outside the
damaged key range exactly, and never invent a value: a record it returns from the damaged
range must be a value the key really had (orphan leaves may be stale, never made up).  An
undamaged database salvages to an identical copy, and the damaged one is never written.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import kvmap
from kvmap import cli
from kvmap.format import DATA_FILE, WAL_HEADER_SIZE
from kvmap.node import Ovf, decode
from kvmap.salvage import _Ranges, recover, salvage
from kvmap.wal import list_wals, used_end

ROOT = Path(__file__).resolve().parent.parent
PS = 512
Ops = list[tuple[bytes, bytes | None]]


@dataclass
class Built:
    path: str
    final: dict[bytes, bytes]
    history: dict[bytes, set[bytes]]  # every value each key ever had
    leaves: list[tuple[int, bytes | None, bytes | None]] = field(default_factory=list)
    branches: list[tuple[int, bytes | None, bytes | None]] = field(default_factory=list)
    runs: dict[bytes, int] = field(default_factory=dict)  # key -> first page of its run
    root: int = 0
    newest_meta: int = 0


class Writer:
    """Commits through a handle and remembers every value every key had."""

    def __init__(self, db: kvmap.Database) -> None:
        self.db = db
        self.state: dict[bytes, bytes] = {}
        self.history: dict[bytes, set[bytes]] = {}

    def commit(self, ops: Ops) -> None:
        with self.db.begin(write=True) as txn:
            for k, v in ops:
                if v is None:
                    txn.delete(k)
                else:
                    txn.put(k, v)
        for k, v in ops:
            if v is None:
                self.state.pop(k, None)
            else:
                self.state[k] = v
                self.history.setdefault(k, set()).add(v)


def build(root: Path, name: str, seed: int = 3, wal_frames: int = 0) -> Built:
    """A database with freed pages and a freelist, overflow values, and (``wal_frames``)
    commits left in the WAL of a crash image."""
    rng = random.Random(seed)
    path = str(root / name)
    db = kvmap.open(path, page_size=PS, checkpoint_size=0)
    w = Writer(db)
    w.commit([(b"k%05d" % i, b"v%d-" % i * rng.randrange(1, 9)) for i in range(900)])
    w.commit([(b"big%d" % i, bytes([97 + i]) * (1200 + 500 * i)) for i in range(4)])
    w.commit([(b"k%05d" % i, None) for i in range(0, 900, 3)])
    w.commit([(b"k%05d" % i, b"second %d" % i) for i in range(1, 900, 7)])
    w.commit([(b"big1", b"now small"), (b"big2", b"B" * 3000)])
    db.close()
    if wal_frames:
        db = kvmap.open(path, page_size=PS, sync="full", checkpoint_size=1 << 30)
        w.db = db
        for n in range(wal_frames):
            w.commit([(b"w%02d" % n, b"frame %d" % n), (b"k%05d" % (3 * n + 1), None),
                      (b"k%05d" % (3 * n + 2), b"frame %d" % n)])  # fmt: skip
        image = path + ".image"
        shutil.copytree(path, image)  # what a crash leaves
        db.close()
        shutil.rmtree(path)
        os.rename(image, path)
    built = Built(path, dict(w.state), w.history)
    _map(built)
    return built


def _map(b: Built) -> None:
    with kvmap.open(b.path, readonly=True) as db:
        assert dict(db.items()) == b.final
        state = db._state
        assert state is not None
        pager, meta = state.pager, state.meta
        b.root, b.newest_meta = meta.root, meta.txnid % 2
        stack: list[tuple[int, bytes | None, bytes | None]] = [(meta.root, None, None)]
        while stack:
            pgno, lo, hi = stack.pop()
            node = decode(pager.page(pgno), pgno)
            if node.kids is None:
                b.leaves.append((pgno, lo, hi))
                for k, v in zip(node.keys, node.vals):  # type: ignore[arg-type]
                    if isinstance(v, Ovf):
                        b.runs[k] = v.pgno
                continue
            b.branches.append((pgno, lo, hi))
            kids = node.kids
            for i, kid in enumerate(kids):
                stack.append((kid, lo if i == 0 else node.keys[i],
                              node.keys[i + 1] if i + 1 < len(kids) else hi))  # fmt: skip
    b.leaves.sort(key=lambda x: x[1] or b"")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("salvage"), "db")


@pytest.fixture
def damaged(template: Built, tmp_path: Path) -> Built:
    """A private copy of the template, to damage."""
    path = str(tmp_path / "db")
    shutil.copytree(template.path, path)
    return Built(**{**template.__dict__, "path": path})


def flip(path: str, offset: int, mask: int = 0x08) -> None:
    with open(os.path.join(path, DATA_FILE), "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def digest(path: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(path)):
        if name != "kvmap.lock":
            out[name] = hashlib.sha256(Path(path, name).read_bytes()).hexdigest()
    return out


def in_range(key: bytes, lo: bytes | None, hi: bytes | None) -> bool:
    return (lo is None or key >= lo) and (hi is None or key < hi)


def assert_salvaged(
    b: Built, got: dict[bytes, bytes], lo: bytes | None = None, hi: bytes | None = None,
    *, complete: bool = False,
) -> None:  # fmt: skip
    """Outside ``[lo, hi)`` exactly the model; inside it only values the keys really had
    (and with ``complete``, every key of the model, with its value)."""
    for k, v in got.items():
        assert v in b.history.get(k, ()), f"salvage invented {k!r} = {v!r:.50}"
    outside_got = {k: v for k, v in got.items() if not in_range(k, lo, hi)}
    outside_want = {k: v for k, v in b.final.items() if not in_range(k, lo, hi)}
    if outside_got != outside_want:
        diff = sorted(k for k in outside_got.keys() ^ outside_want.keys())
        wrong = sorted(k for k in outside_got.keys() & outside_want.keys()
                       if outside_got[k] != outside_want[k])  # fmt: skip
        pytest.fail(f"outside the damaged range: missing/extra {diff[:6]}, wrong {wrong[:6]}")
    if complete:
        missing = [k for k, v in b.final.items() if got.get(k) != v]
        assert not missing, f"not recovered: {missing[:6]}"


# -- undamaged databases -------------------------------------------------------------------------


def test_an_undamaged_database_salvages_to_an_identical_copy(
    template: Built, tmp_path: Path
) -> None:
    before = digest(template.path)
    new = str(tmp_path / "new")
    report = salvage(template.path, new)
    assert not report.damaged and report.records == len(template.final)
    assert report.from_tree == len(template.final)
    assert report.from_orphans == report.from_older_tree == report.from_newer_leaves == 0
    with kvmap.open(new) as db:
        assert dict(db.items()) == template.final
        assert db.page_size == PS
        db.check()
    assert digest(template.path) == before  # the source is only read


def test_a_crash_image_salvages_to_what_recovery_gives(tmp_path: Path) -> None:
    b = build(tmp_path, "crashed", wal_frames=6)
    assert list_wals(b.path) and os.path.getsize(list_wals(b.path)[-1][1]) > WAL_HEADER_SIZE
    found = recover(b.path)
    assert found.records == b.final
    assert found.report.wal_frames == 6 and not found.report.damaged
    new = str(tmp_path / "new")
    salvage(b.path, new)
    with kvmap.open(new) as db:
        assert dict(db.items()) == b.final


def test_an_empty_database(tmp_path: Path) -> None:
    path = str(tmp_path / "empty")
    kvmap.open(path, page_size=1024).close()
    report = salvage(path, str(tmp_path / "new"))
    assert report.records == 0 and not report.damaged and report.page_size == 1024
    with kvmap.open(str(tmp_path / "new")) as db:
        assert len(db) == 0 and db.page_size == 1024


# -- damage --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_damaged_leaf(damaged: Built, tmp_path: Path, which: str) -> None:
    i = {"first": 0, "middle": len(damaged.leaves) // 2, "last": -1}[which]
    pgno, lo, hi = damaged.leaves[i]
    flip(damaged.path, pgno * PS + PS // 2)
    with kvmap.open(damaged.path, readonly=True) as db, pytest.raises(kvmap.CorruptionError):
        db.check()
    new = str(tmp_path / "new")
    report = salvage(damaged.path, new)
    assert pgno in report.damaged_pages and report.skipped == 1 and report.unknown_ranges == 1
    with kvmap.open(new) as db:
        got = dict(db.items())
        db.check()
    assert_salvaged(damaged, got, lo, hi)
    assert report.records == len(got)


@pytest.mark.parametrize("which", ["root", "inner"])
def test_a_damaged_branch_loses_no_record(damaged: Built, tmp_path: Path, which: str) -> None:
    """The leaves below a damaged branch are intact: they are found (the other meta's
    tree, orphan leaves) and every record comes back."""
    pgno, lo, hi = damaged.branches[0 if which == "root" else -1]
    assert (pgno == damaged.root) == (which == "root")
    flip(damaged.path, pgno * PS + 30)
    found = recover(damaged.path)
    assert found.report.damaged_pages.keys() == {pgno}
    assert_salvaged(damaged, found.records, lo, hi, complete=True)


def test_a_damaged_overflow_run(damaged: Built, tmp_path: Path) -> None:
    key = b"big2"
    first = damaged.runs[key]
    flip(damaged.path, first * PS + PS + 7)  # the run's second page
    found = recover(damaged.path)
    assert first in found.report.damaged_pages
    assert_salvaged(damaged, found.records, key, key + b"\0")
    # the current value is gone; an older one (still in a freed run) may stand in for it
    assert found.records.get(key) != damaged.final[key]


def test_a_damaged_newest_meta_after_its_wal_was_deleted(damaged: Built, tmp_path: Path) -> None:
    """kvmap.open refuses it (commits are missing between the older meta and the log);
    salvage finds them in the newest tree's pages, which are intact."""
    flip(damaged.path, damaged.newest_meta * PS + 60)
    with pytest.raises(kvmap.CorruptionError):
        kvmap.open(damaged.path, readonly=True)
    found = recover(damaged.path)
    assert damaged.newest_meta in found.report.damaged_pages
    assert found.report.from_newer_leaves > 0
    assert_salvaged(damaged, found.records, complete=True)


def test_both_meta_pages_damaged(damaged: Built, tmp_path: Path) -> None:
    flip(damaged.path, 40)
    flip(damaged.path, PS + 40)
    with pytest.raises(kvmap.CorruptionError):
        kvmap.open(damaged.path, readonly=True)
    found = recover(damaged.path)
    assert found.report.page_size == PS
    assert {0, 1} <= found.report.damaged_pages.keys()
    # every key is in the unknown range: orphan leaves, newest first; nothing is missing
    assert_salvaged(damaged, found.records, b"", None, complete=True)


def test_a_damaged_wal_frame(tmp_path: Path) -> None:
    b = build(tmp_path, "walbad", wal_frames=6)
    [(_, wal)] = list_wals(b.path)
    data = bytearray(Path(wal).read_bytes())
    data[used_end(bytes(data)) - 10] ^= 0x40  # inside the last frame (zeros follow it)
    Path(wal).write_bytes(bytes(data))
    found = recover(b.path)
    assert found.report.wal_frames == 5 and found.report.wal_problems
    with kvmap.open(b.path, readonly=True) as db:  # what recovery gives, exactly
        assert found.records == dict(db.items())


def test_random_page_damage_never_invents_a_value(
    template: Built, tmp_path: Path, rng: random.Random
) -> None:
    size = os.path.getsize(os.path.join(template.path, DATA_FILE)) // PS
    for n in range(25):
        path = str(tmp_path / f"r{n}")
        shutil.copytree(template.path, path)
        pages = rng.sample(range(size), rng.randrange(1, 4))
        for pgno in pages:
            flip(path, pgno * PS + rng.randrange(PS), 1 << rng.randrange(8))
        try:
            found = recover(path)
        except kvmap.CorruptionError:
            assert {0, 1} <= set(pages)  # only when nothing at all verifies
            continue
        for k, v in found.records.items():
            assert v in template.history.get(k, ()), (pages, k)
        shutil.rmtree(path)


# -- safety and the command line -----------------------------------------------------------------


def test_refused_while_a_writer_has_it_open(template: Built, tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    shutil.copytree(template.path, path)
    with kvmap.open(path):
        with pytest.raises(kvmap.DatabaseLockedError):
            recover(path)
    recover(path)  # fine once it closed


def test_refuses_an_existing_database_or_the_same_path(template: Built, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        salvage(template.path, template.path)
    other = str(tmp_path / "other")
    kvmap.open(other, page_size=PS).close()
    with pytest.raises(FileExistsError):
        salvage(template.path, other)
    with pytest.raises(FileNotFoundError):
        salvage(str(tmp_path / "nothing"), str(tmp_path / "new"))
    assert not os.path.exists(tmp_path / "new")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(args))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_salvage(damaged: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pgno, lo, hi = damaged.leaves[3]
    flip(damaged.path, pgno * PS + 100)
    status, _, err = run(capsys, "check", damaged.path)
    assert status == 1 and f"page {pgno}" in err
    new = str(tmp_path / "new")
    status, out, err = run(capsys, "salvage", damaged.path, new)
    assert status == 0 and err == "", err
    assert "records recovered:" in out and "pages damaged: 1" in out and f"page {pgno}" in out
    status, out, _ = run(capsys, "check", new)
    assert status == 0 and out.startswith("ok")
    with kvmap.open(new, readonly=True) as db:
        assert_salvaged(damaged, dict(db.items()), lo, hi)
    # an existing NEWPATH: exit 1, nothing touched
    status, out, err = run(capsys, "salvage", damaged.path, new)
    assert status == 1 and err.startswith("kvmap: error: ") and "already exists" in err
    # --dry-run writes nothing; no NEWPATH without it is bad usage
    dry = str(tmp_path / "dry")
    status, out, _ = run(capsys, "salvage", damaged.path, "--dry-run")
    assert status == 0 and "dry run" in out and not os.path.exists(dry)
    status, _, err = run(capsys, "salvage", damaged.path)
    assert status == 2 and "usage: kvmap salvage" in err
    status, _, err = run(capsys, "salvage", str(tmp_path / "missing"), dry)
    assert status == 1 and "no kvmap database here" in err and not os.path.exists(dry)


def test_cli_salvage_help_and_subprocess(template: Built, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-m", "kvmap", "salvage", "--help"],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode == 0 and "examples:\n  kvmap salvage" in out.stdout
    new = str(tmp_path / "new")
    out = subprocess.run([sys.executable, "-m", "kvmap", "salvage", template.path, new],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"records recovered: {len(template.final):,}" in out.stdout


# -- the range set salvage relies on -------------------------------------------------------------


def test_ranges_against_a_model(rng: random.Random) -> None:
    keys = [bytes([a]) for a in range(0, 40)]
    for _ in range(200):
        ranges = _Ranges()
        model: set[bytes] = set()
        for _ in range(rng.randrange(1, 8)):
            a, b = sorted(rng.sample(range(41), 2))
            lo = bytes([a])
            hi = None if b == 40 and rng.random() < 0.5 else bytes([b])
            ranges.add(lo, hi)
            model.update(k for k in keys if k >= lo and (hi is None or k < hi))
            assert {k for k in keys if k in ranges} == model
            lo2, hi2 = sorted(rng.sample(range(41), 2))
            want = any(bytes([lo2]) <= k < bytes([hi2]) for k in model)
            assert ranges.overlaps(bytes([lo2]), bytes([hi2])) == want
        spans = ranges.spans()  # disjoint, ascending, not touching
        assert all(a[1] is not None and a[1] < b[0] for a, b in zip(spans, spans[1:]))
