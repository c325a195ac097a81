"""Simulated power loss: every crash state of recorded workloads must recover to a commit.

The simulator is ``tests/crashsim.py`` (its docstring describes the crash model: which
states a power loss may leave, given what was fsynced).  Here:

1. Seeded workloads run through a recording file system; each covers one part of kvmap's
   write path: WAL appends and replay, a checkpoint after every commit (copy-on-write
   pages, freelist reuse, file growth), overflow values (5 KB at 512-byte pages),
   compaction (a renamed data file), mixed sync modes with bulk loads and reopens,
   4 KiB pages (pages and meta pages that tear at 512-byte sectors), and commits from a
   writer thread landing in the new WAL while a checkpoint folds.  Every prefix state
   and sampled ``drop``/``reorder``/``torn``/``grow-*``/``dir`` states of every crash point
   are recovered and compared with the model; every 20th recovery is itself crashed.
2. Tiny workloads (at most 3 operations) are checked exhaustively: every crash point and
   every subset of the pending writes (cut into sectors), truncates and directory ops.
3. The simulator is tested itself: its states obey fsync semantics; it catches a broken
   durability promise and contents of no commit; and the same traces with one kind of
   sync forgotten (WAL fdatasync, tree-page fdatasync, directory fsync) fail the sweep.
4. Known bugs, each a minimal reproducer marked ``xfail(strict=True)``.

Seeds: ``KVMAP_SEED`` (default: fresh, printed) picks the workloads' random choices and the
sampled states; a failure names the recording, seed, crash point, kind and every choice, and
keeps the state's files.  ``--soak N`` (or ``KVMAP_CRASH_SOAK=N``) runs N rounds of every
workload with seeds ``KVMAP_SEED``, ``+1``, ..., each with twice the samples per crash point.
The last test prints the figures (run with ``-s``).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from crashsim import (
    KINDS,
    Checker,
    CrashFailure,
    CrashState,
    Driver,
    Model,
    Op,
    Recording,
    StateMaker,
    Stats,
    Sweep,
    assert_no_failures,
    build,
    materialize,
    pieces,
    scratch_dir,
)

import kvmap

PAGE = 512
WAL_ONLY = 1 << 30  # a checkpoint_size no workload reaches: commits only append to the WAL
# sampled kinds and their weights (samples per crash point, times the soak factor): the
# rarer kinds (torn writes, pending directory ops) get more tries
SAMPLED = {"drop": 1, "reorder": 1, "torn": 3, "grow-zero": 1, "grow-garbage": 1, "dir": 3}
# Files whose grown region is kept zero in grow-garbage states: none (a lock file left with
# garbage by a crash is remade, see test_a_lock_file_with_garbage_after_a_crash_opens).
NO_GARBAGE: tuple[str, ...] = ()

SUMMARY = Stats()
RAN: set[str] = set()


@pytest.fixture(scope="module")
def soak(request: pytest.FixtureRequest) -> int:
    """Rounds per workload (``--soak N`` or ``KVMAP_CRASH_SOAK=N``; default 1)."""
    option = request.config.getoption("--soak", default=0) or 0
    return max(1, int(option) or int(os.environ.get("KVMAP_CRASH_SOAK", "0") or 0))


@pytest.fixture(scope="module")
def base_seed() -> int:
    return int(os.environ.get("KVMAP_SEED", random.randrange(2**32)))


@pytest.fixture
def workdir(tmp_path: Any) -> Iterator[str]:
    """Where states are recovered (tmpfs if there is one); failed ones are kept in
    ``tmp_path`` (see :func:`_run`)."""
    with scratch_dir(str(tmp_path / "scratch")) as path:
        os.makedirs(path, exist_ok=True)
        yield path


# -- workloads -------------------------------------------------------------------------------


def _value(rng: random.Random, big: float = 0.0, small: int = 120) -> bytes:
    """A value: usually small, a 5 KB one (an overflow run at 512-byte pages) with
    probability ``big``; its bytes vary so torn pieces differ."""
    if rng.random() < big:
        return rng.randbytes(8) * rng.randint(600, 700)
    return bytes([rng.randrange(256)]) * rng.randrange(small)


def _random_txn(
    rng: random.Random, model: Model, keys: int, size: int, big: float = 0.0, small: int = 120
) -> list[tuple[bytes, bytes | None]]:
    """Up to ``size`` distinct puts and deletes over ``keys`` keys (deletes of present
    keys, mostly)."""
    ops: dict[bytes, bytes | None] = {}
    for _ in range(rng.randint(1, size)):
        present = [k for k in model if k not in ops]
        if present and rng.random() < 0.3:
            ops[rng.choice(present)] = None
        else:
            ops[b"k%04d" % rng.randrange(keys)] = _value(rng, big, small)
    return list(ops.items())


def wl_wal(d: Driver, rng: random.Random) -> None:
    """WAL appends (sync="full") replayed on open; an explicit checkpoint, a reopen."""
    d.open()
    for i in range(24):
        d.txn(_random_txn(rng, d.model, 40, 4))
        if i == 9:
            d.checkpoint()
        if i == 16:
            d.reopen()
    d.put(b"last", b"x" * 300)
    d.abandon()  # power fails with the database open: no final checkpoint


def wl_fold(d: Driver, rng: random.Random) -> None:
    """A checkpoint after every commit: copy-on-write pages, freelist reuse, merges, and
    the data file growing past its first 64 KiB segment."""
    d.open()
    for i in range(10):
        d.txn(_random_txn(rng, d.model, 300, 6, small=90))
        if i == 3:  # a block of new keys: splits and file growth
            d.txn([(b"grow%04d" % j, _value(rng, small=110)) for j in range(700)])
        if i == 6:  # a range deleted: merges, freed pages, reuse
            d.txn([(k, None) for k in sorted(d.model)[40:160]])
    d.close()


def wl_overflow(d: Driver, rng: random.Random) -> None:
    """5 KB values (11-page overflow runs, 5 KB WAL frames that tear) with automatic
    checkpoints every ~16 KiB of WAL."""
    d.open()
    for _ in range(16):
        d.txn(_random_txn(rng, d.model, 12, 3, big=0.5))
    d.delete(min(d.model, default=b"k0000"))  # a missing key commits nothing
    d.close()


def wl_compact(d: Driver, rng: random.Random) -> None:
    """Compaction: the dense copy is written, synced and renamed over the data file, then
    written to through the same descriptor."""
    d.open()
    d.txn([(k, None) for i, k in enumerate(sorted(d.model)) if i % 4])
    d.compact()
    for _ in range(6):
        d.txn(_random_txn(rng, d.model, 400, 5, big=0.1))
    d.compact()
    for _ in range(3):
        d.txn(_random_txn(rng, d.model, 400, 3))
    d.close()


def wl_mixed_sync(d: Driver, rng: random.Random) -> None:
    """sync="normal" commits, per-transaction "off" and "full", db.sync(), a bulk load
    (put_many(append=True) folds straight into the tree), a reopen."""
    d.open()
    for i in range(22):
        d.txn(_random_txn(rng, d.model, 30, 3), sync=rng.choice(("off", "normal", "full")))
        if i % 6 == 5:
            d.sync()
        if i == 8:
            top = max(d.model, default=b"")
            d.put_many([(b"zz%s%04d" % (top, j), _value(rng)) for j in range(60)], append=True)
        if i == 14:
            d.reopen()
    d.txn(_random_txn(rng, d.model, 30, 3), sync="normal")
    d.abandon()


def wl_page4k(d: Driver, rng: random.Random) -> None:
    """4 KiB pages with a checkpoint after every commit: tree pages, meta pages and WAL
    frames tear at 512-byte sectors; 6 KB values overflow."""
    d.open()
    for _ in range(12):
        d.txn(_random_txn(rng, d.model, 60, 4, big=0.15, small=1500))
    d.close()


def wl_concurrent(d: Driver, rng: random.Random) -> None:
    """Commits from a writer thread while the main thread checkpoints: writers are not
    blocked while a checkpoint folds the tree, so frames reach the new WAL before the meta
    that covers the old one is durable.  The seed fixes the data, not the interleaving."""
    d.open()
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(30):
                d.txn(_random_txn(rng, d.model, 60, 3))  # only this thread touches rng
                time.sleep(rng.random() / 1000)  # let the checkpointer in between commits
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
        finally:
            done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # fine-grained interleaving of the two threads
    try:
        thread = threading.Thread(target=writer)
        thread.start()
        while not done.is_set():
            d.checkpoint()
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    if errors:
        raise errors[0]
    d.close()


def _commits_during_a_fold(rec: Recording) -> None:
    """Some frame reached a new WAL between its creation and the unlink of the WAL that
    the checkpoint covers (i.e. while the fold ran)."""
    names = rec.inode_names
    current = None
    for op in rec.ops:
        if op.kind == "create" and op.name.startswith("kvmap.wal."):
            current = op.inode
        elif op.kind == "write" and op.inode == current and op.offset >= 64:
            return  # a frame went to the newest WAL ...
        elif op.kind == "unlink" and op.name.startswith("kvmap.wal."):
            current = None  # ... unless its checkpoint had finished
    raise AssertionError(f"no commit landed during a checkpoint ({len(names)} files)")


@dataclass(frozen=True)
class Workload:
    """A seeded workload: its options, and the database it starts from (None: an empty
    directory, so the trace includes creating the database)."""

    name: str
    run: Callable[[Driver, random.Random], None]
    options: dict[str, Any] = field(default_factory=dict)
    initial: Callable[[random.Random], Model] | None = None
    check: Callable[[Recording], None] = lambda rec: None  # what the trace must cover
    timing: bool = False  # the trace depends on thread timing: record again if unlucky


def _initial(n: int, size: int) -> Callable[[random.Random], Model]:
    return lambda rng: {b"k%04d" % i: _value(rng, small=size) for i in range(n)}


def _grows_data_file(rec: Recording) -> None:
    (data,) = [i for i, n in rec.inode_names.items() if n == "kvmap.data"]
    start = len(rec.initial["kvmap.data"])
    assert any(op.kind == "truncate" and op.inode == data and op.size > start for op in rec.ops), (
        "the data file never grew"
    )


def _has_overflow(rec: Recording) -> None:
    assert any(op.kind == "write" and len(op.data) > 5000 for op in rec.ops), "no 5 KB write"


def _renames_data_file(rec: Recording) -> None:
    renames = [op for op in rec.ops if op.kind == "rename" and op.dst == "kvmap.data"]
    assert len(renames) == 2, "expected two compactions"


WORKLOADS = [
    Workload("wal", wl_wal, {"sync": "full", "checkpoint_size": WAL_ONLY}),
    Workload(
        "fold", wl_fold, {"sync": "full", "checkpoint_size": 0}, _initial(200, 80), _grows_data_file
    ),
    Workload(
        "overflow", wl_overflow, {"sync": "full", "checkpoint_size": 16384}, check=_has_overflow
    ),
    Workload(
        "compact",
        wl_compact,
        {"sync": "full", "checkpoint_size": 4096},
        _initial(400, 60),
        _renames_data_file,
    ),
    Workload("mixed-sync", wl_mixed_sync, {"sync": "normal", "checkpoint_size": WAL_ONLY}),
    Workload(
        "page4k",
        wl_page4k,
        {"sync": "full", "checkpoint_size": 0, "page_size": 4096},
        _initial(40, 900),
    ),
    Workload(
        "concurrent",
        wl_concurrent,
        {"sync": "full", "checkpoint_size": WAL_ONLY},
        _initial(60, 50),
        _commits_during_a_fold,
        timing=True,
    ),
]


def record(wl: Workload, seed: int, directory: str) -> Recording:
    """Run ``wl`` with ``seed`` through a recording file system."""
    for attempt in range(5 if wl.timing else 1):
        rng = random.Random(f"{wl.name}:{seed}")
        options = dict(wl.options)
        page_size = options.pop("page_size", PAGE)
        path = os.path.join(directory, f"{wl.name}-{seed}-{attempt}")
        initial = None
        if wl.initial is not None:
            initial = Driver.prepare(path, sorted(wl.initial(rng).items()), page_size=page_size)
        d = Driver(wl.name, seed, path, initial=initial, page_size=page_size, **options)
        wl.run(d, rng)
        rec = d.recording()
        try:
            wl.check(rec)
        except AssertionError:
            if not wl.timing or attempt == 4:
                raise
            continue
        return rec
    raise AssertionError("unreachable")


def _run(
    rec: Recording,
    workdir: str,
    keep: str,
    samples: int,
    recovery_every: int = 0,
    exhaustive_limit: int = 0,
) -> Stats:
    """Sweep ``rec`` (failed states' files kept under ``keep``) and fail on any failure."""
    stats = Stats()
    try:
        Checker(rec, workdir, stats, no_garbage=NO_GARBAGE, keep_dir=keep).sweep(
            SAMPLED if samples else {}, samples, recovery_every, exhaustive_limit
        )
    finally:
        SUMMARY.merge(stats)
    assert_no_failures(stats)
    return stats


@pytest.mark.parametrize("wl", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_crash_states_recover(
    wl: Workload, workdir: str, tmp_path: Any, base_seed: int, soak: int
) -> None:
    """Every prefix state and sampled states of every crash point recover to a commit
    between the last one promised durable and the last one begun; every 20th recovery is
    crashed too."""
    for r in range(soak):
        seed = base_seed + r
        print(f"{wl.name}: KVMAP_SEED={seed}")
        rec = record(wl, seed, workdir)
        assert len(rec.models) > 10 and rec.count("fdatasync") > 5
        samples = 2 if soak == 1 else 4  # soaking: twice the samples per crash point
        stats = _run(rec, workdir, str(tmp_path), samples=samples, recovery_every=20)
        print(f"{wl.name}: {len(rec.ops)} ops, {len(rec.models) - 1} commits\n{stats.table()}")
        assert stats.states["prefix"] > 20
    RAN.add(wl.name)


# -- tiny workloads, every crash state -------------------------------------------------------


def tiny_create(d: Driver, rng: random.Random) -> None:
    d.open()
    d.put(b"a", b"1")
    d.put(b"b", b"2" * 200)
    d.close()


def tiny_wal(d: Driver, rng: random.Random) -> None:
    d.open()
    d.put(b"new", b"n")
    d.delete(b"k0003")
    d.put(b"big", b"B" * 1300)
    d.abandon()


def tiny_fold(d: Driver, rng: random.Random) -> None:
    d.open()
    d.txn([(b"k0001", b"x" * 90), (b"k0005", None), (b"k0009", b"y")])
    d.delete(b"k0002")
    d.put(b"big", b"B" * 700)
    d.abandon()


def tiny_compact(d: Driver, rng: random.Random) -> None:
    d.open()
    d.txn([(b"k%04d" % i, None) for i in range(0, 40) if i % 3])
    d.compact()
    d.put(b"after", b"a")
    d.abandon()


def tiny_normal(d: Driver, rng: random.Random) -> None:
    d.open()
    d.put(b"a", b"1")
    d.put(b"b", b"2")
    d.sync()
    d.abandon()


TINY = [
    Workload("tiny-create", tiny_create, {"sync": "full", "checkpoint_size": WAL_ONLY}),
    Workload("tiny-wal", tiny_wal, {"sync": "full", "checkpoint_size": WAL_ONLY}, _initial(8, 40)),
    Workload("tiny-fold", tiny_fold, {"sync": "full", "checkpoint_size": 0}, _initial(12, 60)),
    Workload(
        "tiny-compact",
        tiny_compact,
        {"sync": "full", "checkpoint_size": WAL_ONLY},
        _initial(40, 30),
    ),
    Workload(
        "tiny-normal", tiny_normal, {"sync": "normal", "checkpoint_size": WAL_ONLY}, _initial(5, 10)
    ),
]
EXHAUSTIVE_LIMIT = 1 << 12  # subsets per crash point; the tiny workloads stay far below


@pytest.mark.parametrize("wl", TINY, ids=[w.name for w in TINY])
def test_every_crash_state_of_a_tiny_workload(wl: Workload, workdir: str, tmp_path: Any) -> None:
    """At most 3 operations: every crash point, every subset of its pending units."""
    rec = record(wl, 0, workdir)
    sweep = Sweep(rec.initial, rec.ops)
    widest = max(len(StateMaker.units(p)) for p in sweep.points())
    assert 1 << widest <= EXHAUSTIVE_LIMIT, f"{widest} pending units: not exhaustive"
    stats = _run(rec, workdir, str(tmp_path), samples=0, exhaustive_limit=EXHAUSTIVE_LIMIT)
    print(f"{wl.name}: {len(rec.ops)} ops, widest point {widest} units\n{stats.table()}")
    assert stats.states["exhaustive"] > 0
    RAN.add(wl.name)


# -- the simulator itself ----------------------------------------------------------------------


def _trace() -> tuple[dict[str, bytes], list[Op]]:
    """A file "f" (inode 0, 1000 bytes of "a") durable at the start; then: a synced write,
    an unsynced 1300-byte write that grows it, a new file "g" whose create is synced by
    fsync_dir, and an unsynced rename of "g" to "h"."""
    initial = {"f": b"a" * 1000}
    ops = [
        Op("write", 0, offset=0, data=b"b" * 100),
        Op("fdatasync", 0),
        Op("write", 0, offset=900, data=b"c" * 1300),
        Op("create", 1, name="g"),
        Op("write", 1, offset=0, data=b"g" * 10),
        Op("fsync", 1),
        Op("fsync_dir"),
        Op("rename", 1, name="g", dst="h"),
    ]
    return initial, ops


def test_the_sweep_follows_fsync_semantics() -> None:
    """Durable and pending contents, prefix, grown and torn states, reverted dir ops."""
    initial, ops = _trace()
    points = list(Sweep(initial, ops).points())
    assert len(points) == len(ops) + 1
    end = points[-1]
    assert end.prefix() == {"f": b"b" * 100 + b"a" * 800 + b"c" * 1300, "h": b"g" * 10}
    # the synced write is durable, the later one pending; the rename is not yet durable
    assert end.durable[0] == b"b" * 100 + b"a" * 900
    assert [p.index for p in end.pending[0]] == [2]
    assert end.names_durable == {"f": 0, "g": 1}
    assert [p.op.kind for p in end.pending_dir] == ["rename"]
    # nothing pending lost: the durable state
    assert build(end, {}, []) == {"f": b"b" * 100 + b"a" * 900, "g": b"g" * 10}
    # the size persisted without the data: zeros past the durable end
    grown = build(end, {}, [], grow=True)["f"]
    assert grown == b"b" * 100 + b"a" * 900 + bytes(1200)
    # torn at sectors: [900, 1024) and [1024, 1536) and [1536, 2048) and [2048, 2200)
    parts = pieces(end.pending[0][0], 512)
    assert [(q.op.offset, len(q.op.data)) for q in parts] == [
        (900, 124),
        (1024, 512),
        (1536, 512),
        (2048, 152),
    ]
    torn = build(end, {0: [parts[1]]}, [])["f"]
    assert torn == b"b" * 100 + b"a" * 900 + bytes(24) + b"c" * 512
    # a reverted create takes the file's synced data with it; a reverted rename keeps "g"
    mid = points[6]  # after the fsync of "g", before fsync_dir
    assert build(mid, {}, []) == {"f": b"b" * 100 + b"a" * 900}
    assert build(mid, {}, mid.pending_dir)["g"] == b"g" * 10


def test_sampled_states_never_touch_synced_data() -> None:
    """No sampled kind alters bytes an fdatasync covered or a name fsync_dir covered."""
    initial, ops = _trace()
    maker = StateMaker("self-test", 0, {0: "f", 1: "g"})
    n = 0
    for point in Sweep(initial, ops).points():
        for kind in SAMPLED:
            for j in range(20):
                s = maker.make(point, kind, j, b"x" * 4096)
                if s is None:
                    continue
                n += 1
                if point.c >= 2:  # the synced write survives (the pending one starts at 900)
                    assert s.files["f"][:900] == b"b" * 100 + b"a" * 800, (kind, s.note)
                if point.c >= 7:  # "g" or "h" is there: its create was synced
                    assert s.files.get("g", s.files.get("h")) == b"g" * 10, (kind, s.note)
    assert n > 50


@pytest.mark.parametrize("against", ["power", "process"])
def test_the_checker_catches_a_broken_durability_promise(workdir: str, against: str) -> None:
    """A Driver that promises durability (against power loss, or against a crash of the
    process) for a sync="off" commit, which kvmap only buffers, must make the sweep fail:
    the simulator can tell a lost commit."""
    d = Driver(
        "broken-promise", 0, os.path.join(workdir, "db"), sync="off", checkpoint_size=WAL_ONLY
    )
    db = d.open()
    d.put(b"a", b"1")
    d.put(b"b", b"2")
    db.sync()  # durable, but behind the model's back: the model promises nothing yet
    d.put(b"c", b"3")
    false_promise = (d.ops_count, len(d.models) - 1)
    (d.promises if against == "power" else d.process_promises).append(false_promise)
    d.abandon()
    stats = Stats()
    with pytest.raises(CrashFailure, match="not the contents of commit 3..3"):
        Checker(d.recording(), workdir, stats, max_failures=1).sweep({}, 0)
    assert stats.failures


def test_the_checker_catches_contents_of_no_commit(workdir: str) -> None:
    """A state assembled by hand with half a transaction applied (a tree with one of its
    two keys) is reported."""
    d = Driver("partial", 0, os.path.join(workdir, "db"), sync="full", checkpoint_size=0)
    d.open()
    d.txn([(b"a", b"1")])
    d.abandon()
    rec = d.recording()
    with kvmap.open(os.path.join(workdir, "other"), page_size=PAGE) as db:
        db.put(b"b", b"2")  # a database holding only "b": neither commit 0 nor 1
    from crashsim import snapshot_dir

    files = snapshot_dir(os.path.join(workdir, "other"))
    stats = Stats()
    checker = Checker(rec, workdir, stats, max_failures=10)
    assert checker.check(CrashState("prefix", len(rec.ops), files, "hand-made")) is None
    assert len(stats.failures) == 1 and "not the contents of commit 1..1" in stats.failures[0]


def forget(rec: Recording, lost: Callable[[Op, str], bool]) -> Recording:
    """``rec`` as if kvmap had not issued the ops ``lost(op, file name)`` selects (the
    ops are dropped from the trace; op counts in the model are renumbered)."""
    keep = [not lost(op, rec.inode_names.get(op.inode, "")) for op in rec.ops]
    before = [0]
    for k in keep:
        before.append(before[-1] + k)  # before[n]: ops kept among the first n
    return Recording(
        f"{rec.name}-mutant", rec.seed, rec.initial,
        [op for op, k in zip(rec.ops, keep) if k], rec.inode_names, rec.models,
        [before[n] for n in rec.issued], [(before[n], k) for n, k in rec.promises],
        rec.page_size, [(before[n], k) for n, k in rec.process_promises],
    )  # fmt: skip


MUTANTS: dict[str, Callable[[Op, str], bool]] = {
    # sync="full" commits that return before their frame is durable
    "no WAL fdatasync": lambda op, name: op.kind == "fdatasync" and name.startswith("kvmap.wal"),
    # a checkpoint writing its meta page without syncing the tree pages before it
    "no fdatasync of tree pages": lambda op, name: op.kind == "fdatasync" and name == "kvmap.data",
    # creates, renames and unlinks never made durable
    "no directory fsync": lambda op, name: op.kind == "fsync_dir",
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_the_sweep_catches_a_missing_sync(workdir: str, tmp_path: Any, mutant: str) -> None:
    """The same trace with one kind of sync forgotten (as if kvmap had not issued it) must
    give crash states that lose a durable commit or do not recover: the sweep has teeth."""
    wl = Workload("mutant", tiny_fold, {"sync": "full", "checkpoint_size": 0}, _initial(12, 60))
    rec = record(wl, 0, workdir)
    _run(rec, workdir, str(tmp_path), samples=1)  # the real trace survives every state
    stats = Stats()
    with pytest.raises(CrashFailure):
        Checker(forget(rec, MUTANTS[mutant]), workdir, stats, max_failures=3).sweep(
            {"drop": 2, "torn": 1, "dir": 2}, 2
        )
    assert len(stats.failures) == 3


# -- known bugs ----------------------------------------------------------------------------------


def test_a_lock_file_with_garbage_after_a_crash_opens(workdir: str) -> None:
    """The lock file is created (``O_CREAT``), its header written with ``pwrite`` and the
    file extended with ``ftruncate``, and never fsynced: docs/format.md says "a crash or a
    reboot may leave anything in it; nothing is recovered from it".  After a power loss the
    size can persist without the header's data (ext4 ``data=writeback``, or any file system
    without ordered data), so the first 128 bytes read as whatever the disk block held.
    The database itself is intact, yet no open (readonly or writable) succeeds."""
    path = os.path.join(workdir, "db")
    with kvmap.open(path, page_size=PAGE) as db:
        db.put(b"a", b"1")
    lock = os.path.join(path, "kvmap.lock")
    size = os.path.getsize(lock)
    files = {n: open(os.path.join(path, n), "rb").read() for n in os.listdir(path)}
    files["kvmap.lock"] = random.Random(0).randbytes(128) + bytes(size - 128)
    materialize(files, path)
    with kvmap.open(path, readonly=True) as db:
        assert dict(db.items()) == {b"a": b"1"}
    with kvmap.open(path) as db:
        assert dict(db.items()) == {b"a": b"1"}


# -- the figures ---------------------------------------------------------------------------------


def test_summary() -> None:
    """Print the figures (``-s``); with every workload run, at least 2000 states over at
    least 5 workloads."""
    print("\n" + SUMMARY.table())
    if {w.name for w in WORKLOADS + TINY} - RAN:
        pytest.skip("not every workload ran in this session")
    assert len([w for w in WORKLOADS if w.name in RAN]) >= 5
    assert SUMMARY.total() >= 2000, SUMMARY.table()
    # every kind produced states (reorder only differs from drop where a file's pending
    # writes overlap, which kvmap does only in the lock file's header)
    assert all(SUMMARY.states[k] for k in KINDS if k != "reorder"), SUMMARY.table()
