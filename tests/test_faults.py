"""Fault injection: every write, sync, truncate, rename/unlink and mmap of a workload fails.

SQLite's I/O-error loops, applied to kvmap.  One workload runs on one handle through a
:class:`FaultFS`; a clean run counts how many operations of each kind it performs, then it is
run again once for every N, failing the N-th operation of one kind:

* ``once``: only operation N fails (a transient error);
* ``persistent``: operation N and every later one of that kind fail (a dead disk, a full
  disk that stays full).

The kinds: ``write`` (``pwrite``; fails with ``ENOSPC`` after writing half its data, as a
full disk does), ``sync`` (``fdatasync``, ``fsync``, directory ``fsync``; ``EIO``),
``truncate`` (file growth: ``ftruncate`` of the data file, ``posix_fallocate`` of the WAL;
``ENOSPC``), ``rename`` (``rename`` and ``unlink``; ``EIO``) and ``mmap`` (data file
segments, the WAL's writable mapping and the shared lock file mapping; ``ENOMEM``).  WAL
frames are stored through that mapping into space allocated beforehand: a store cannot
fail, so it is not a kind.

The workload covers every path that touches the disk: **open with recovery** (a crash
image whose WAL holds frames to replay, plus a stale WAL of an older generation, so open
replays, checkpoints, creates a WAL, unlinks and syncs the directory), commits that append
to the WAL and commits that trigger a checkpoint, a value that grows the file by a segment,
a bulk load straight into the tree, an explicit ``checkpoint()``, ``compact()`` and the
final checkpoint of ``close()``.  For every injected fault:

1. the step it hits raises a :class:`kvmap.Error` (:class:`kvmap.FatalError`, carrying the
   ``OSError`` as ``__cause__``, on an open handle), and the handle refuses further use;
2. nothing leaks: once the handle is closed a fresh writer can open the database (the
   writer lock was released), and once it is garbage collected the process has the same
   file descriptors and no mapping of the database's files;
3. reopened with the real file system, the database is exactly the state before or after
   the failed step (a dict model), every acknowledged commit included (``sync="full"``),
   and ``check()`` passes.

Each case runs with ``sync="full"`` and ``sync="normal"`` (a frame written to the OS
survives the failure of the process that wrote it, so the model is the same).

Three bugs this loop found have regression tests at the end of this file: a checkpoint
whose fold failed never closed the previous WAL's descriptor, some faults during
``kvmap.open`` surfaced as a bare ``OSError`` instead of a :class:`kvmap.Error`, and
``close()`` of a failed handle left its mappings to the garbage collector.
"""

from __future__ import annotations

import errno
import gc
import mmap
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from model import applied, commit_ops

import kvmap
from kvmap import fileio
from kvmap.wal import list_wals

PS = 512
KINDS = ("write", "sync", "truncate", "rename", "mmap")
ERRNO = {
    "write": errno.ENOSPC,
    "sync": errno.EIO,
    "truncate": errno.ENOSPC,
    "rename": errno.EIO,
    "mmap": errno.ENOMEM,
}
Ops = list[tuple[bytes, bytes | None]]


class FaultFS(fileio.FileSystem):
    """Counts operations by kind and fails the ``fail_at``-th one of kind ``kind`` (and, if
    ``persistent``, every later one of that kind) with ``OSError(ERRNO[kind])``.  A failing
    ``pwrite`` first writes half of its data (a short write, as a full disk does)."""

    def __init__(self, kind: str = "", fail_at: int = 0, persistent: bool = False) -> None:
        self.kind = kind
        self.fail_at = fail_at
        self.persistent = persistent
        self.calls = dict.fromkeys(KINDS, 0)
        self.fired = 0  # how many operations failed
        self.step = ""  # the workload step that was running when the first one failed
        self.current = "open"

    def _fails(self, kind: str) -> bool:
        self.calls[kind] += 1
        n = self.calls[kind]
        if kind != self.kind or not self.fail_at:
            return False
        if n == self.fail_at or (self.persistent and n > self.fail_at):
            if not self.fired:
                self.step = self.current
            self.fired += 1
            return True
        return False

    def _raise(self, kind: str) -> None:
        err = ERRNO[kind]
        raise OSError(err, f"injected: {os.strerror(err)}")

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        if self._fails("write"):
            if len(data) > 1:
                super().pwrite(fd, memoryview(data)[: len(data) // 2], offset)
            self._raise("write")
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        if self._fails("sync"):
            self._raise("sync")
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if self._fails("sync"):
            self._raise("sync")
        super().fsync(fd)

    def fsync_dir(self, path: str) -> None:
        if self._fails("sync"):
            self._raise("sync")
        super().fsync_dir(path)

    def truncate(self, fd: int, size: int) -> None:
        if self._fails("truncate"):
            self._raise("truncate")
        super().truncate(fd, size)

    def rename(self, src: str, dst: str) -> None:
        if self._fails("rename"):
            self._raise("rename")
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        if self._fails("rename"):
            self._raise("rename")
        super().unlink(path)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        if self._fails("mmap"):
            self._raise("mmap")
        return super().mmap(fd, length, offset)

    def mmap_shared(self, fd: int, length: int) -> mmap.mmap:
        if self._fails("mmap"):
            self._raise("mmap")
        return super().mmap_shared(fd, length)

    def mmap_log(self, fd: int, length: int) -> mmap.mmap:
        if self._fails("mmap"):
            self._raise("mmap")
        return super().mmap_log(fd, length)

    def allocate(self, fd: int, size: int) -> None:
        if self._fails("truncate"):
            self._raise("truncate")
        super().allocate(fd, size)


# -- the workload and its model --------------------------------------------------------------


# Commits replayed by recovery (they sit in the crash image's WAL).
IMAGE_WAL: list[Ops] = [
    [(b"w%03d" % i, b"wal-%d" % i * (1 + i % 9)) for i in range(n * 7, n * 7 + 7)]
    + [(b"base%03d" % (n * 11), None), (b"ovf-wal", bytes([n]) * (700 + 90 * n))]
    for n in range(4)
]
TXN_A: Ops = [(b"a%03d" % i, b"A" * (10 + i % 60)) for i in range(90)]  # checkpoints itself
TXN_B: Ops = [
    (b"huge", bytes(range(256)) * 1200),  # a 300 KiB overflow run: the file grows 2 segments
    (b"base%03d" % 5, None),
    (b"base%03d" % 6, None),
    (b"a%03d" % 3, b"rewritten"),
]
BULK: Ops = [(b"z%04d" % i, b"bulk%d" % i) for i in range(60)]  # put_many(append=True)
TXN_C: Ops = [(b"c", b"before checkpoint"), (b"a%03d" % 4, None)]
TXN_D: Ops = [(b"d", b"before compact"), (b"huge", None)]
TXN_E: Ops = [(b"e%02d" % i, b"after compact" * 3) for i in range(20)]


@dataclass
class Step:
    name: str
    run: Callable[[kvmap.Database], None]
    ops: Ops = field(default_factory=list)  # the data it changes (empty: none)


def _bulk(db: kvmap.Database) -> None:
    db.put_many(BULK, append=True)


def _put(key: bytes, value: bytes) -> Callable[[kvmap.Database], None]:
    return lambda db: db.put(key, value)


STEPS = [
    Step("txn A (commit + checkpoint)", lambda db: commit_ops(db, TXN_A), TXN_A),
    Step("txn B (overflow, growth)", lambda db: commit_ops(db, TXN_B), TXN_B),
    Step("bulk load", _bulk, BULK),
    Step("txn C", lambda db: commit_ops(db, TXN_C), TXN_C),
    Step("checkpoint", lambda db: db.checkpoint()),
    Step("txn D", lambda db: commit_ops(db, TXN_D), TXN_D),
    Step("compact", lambda db: db.compact()),
    # autocommits, each one fsynced; one of them checkpoints (4 KiB of WAL)
    *(Step(f"put {k.decode()}", _put(k, v), [(k, v)]) for k, v in TXN_E),
    Step("close", lambda db: db.close()),
]


@dataclass
class Image:
    """A crash image to copy for every case, the state it recovers to, and the state after
    each step of the workload."""

    path: str
    states: list[dict[bytes, bytes]]  # states[0]: the image; states[i+1]: after STEPS[i]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    root = tmp_path_factory.mktemp("faults")
    live = str(root / "live")
    state = {b"base%03d" % i: b"b" * (i % 90) for i in range(150)}
    with kvmap.open(live, page_size=PS, checkpoint_size=0) as db:
        db.put_many(state.items())
        commit_ops(db, [(b"base%03d" % i, None) for i in range(0, 150, 4)])
    state = {k: v for k, v in state.items() if int(k[4:]) % 4}
    # the crash image: a tree, a stale WAL it covers, and the WAL with frames to replay
    db = kvmap.open(live, page_size=PS, sync="full", checkpoint_size=1 << 30)
    try:
        commit_ops(db, [(b"stale", b"covered by the tree")])
        state[b"stale"] = b"covered by the tree"
        [(_, stale_path)] = list_wals(live)
        stale = Path(stale_path).read_bytes()
        db.checkpoint()
        for ops in IMAGE_WAL:
            commit_ops(db, ops)
            state = applied(state, ops)
        path = str(root / "image")
        shutil.copytree(live, path)
    finally:
        db.close()
    Path(path, os.path.basename(stale_path)).write_bytes(stale)
    assert len(list_wals(path)) == 2
    with kvmap.open(path, readonly=True) as ro:  # the image recovers every commit
        assert dict(ro.items()) == state
    os.unlink(os.path.join(path, "kvmap.lock"))  # shared memory, not data: open makes it again
    states = [state]
    for step in STEPS:
        states.append(applied(states[-1], step.ops))
    yield Image(path, states)


# -- leak accounting -------------------------------------------------------------------------


def _fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass  # the descriptor listdir itself used
    return out


def _maps(path: str) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return [line.strip() for line in f if real in line]


def _open_under(path: str) -> list[str]:
    real = os.path.realpath(path)
    return sorted(f for f in _fds() if real in f)


# -- one case --------------------------------------------------------------------------------


@dataclass
class Outcome:
    step: str  # the step the first failure hit ("" if none fired)
    index: int  # its index: -1 for open, else into STEPS; len(STEPS) when none raised
    exc: BaseException | None


def _run(path: str, fs: FaultFS, sync: str) -> Outcome:
    """The workload through ``fs`` until the first step that raises.  Closes the handle."""
    try:
        with fileio.installed(fs):
            db = kvmap.open(path, page_size=PS, sync=sync, checkpoint_size=4096)
    except Exception as exc:  # noqa: BLE001 - asserted by the caller
        return Outcome(fs.step, -1, exc)
    try:
        for i, step in enumerate(STEPS):
            fs.current = step.name
            try:
                step.run(db)
            except Exception as exc:  # noqa: BLE001 - asserted by the caller
                if step.name != "close":  # the handle refuses further use
                    for use in (lambda: db.get(b"a000"), lambda: db.put(b"x", b"y"), db.begin):
                        with pytest.raises(kvmap.FatalError):
                            use()
                return Outcome(fs.step, i, exc)
        return Outcome(fs.step, len(STEPS), None)
    finally:
        fs.current = "after"
        db.close()  # idempotent; on a failed handle it only releases


@pytest.fixture(scope="module")
def totals(image: Image, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    """Operations of each kind in a clean run of the workload, per sync mode."""
    out = {}
    for sync in ("full", "normal"):
        path = str(tmp_path_factory.mktemp("clean") / sync)
        shutil.copytree(image.path, path)
        fs = FaultFS()
        result = _run(path, fs, sync)
        assert result.exc is None, result
        with kvmap.open(path) as db:
            assert dict(db.items()) == image.states[-1]
            db.check()
        out[sync] = dict(fs.calls)
        print(f"operations in the workload, sync={sync}: {fs.calls}")
    return out


@pytest.mark.parametrize("sync", ["full", "normal"])
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_operation_fails(
    image: Image, totals: dict[str, dict[str, int]], tmp_path: Path, kind: str,
    persistent: bool, sync: str,
) -> None:  # fmt: skip
    total = totals[sync][kind]
    # (WAL frames are stores through a mapping, not writes: see FaultFS)
    minimum = {"write": 30, "sync": 8, "truncate": 2, "rename": 6, "mmap": 4}[kind]
    assert total >= minimum, f"the workload performs only {total} {kind} operations"
    started = time.monotonic()
    gc.collect()
    base_fds = _fds()
    by_step: dict[str, int] = {}
    mode = "persistent" if persistent else "once"
    for n in range(1, total + 1):
        path = str(tmp_path / f"case{n}")
        shutil.copytree(image.path, path)
        fs = FaultFS(kind, n, persistent)
        out = _run(path, fs, sync)
        where = f"{kind} #{n}/{total} ({mode}, sync={sync}, hit {out.step!r}, raised {out.exc!r})"
        assert fs.fired, f"{where}: the fault never fired (is the workload deterministic?)"
        by_step[out.step] = by_step.get(out.step, 0) + 1
        # 1. the step the fault hit raised a kvmap error
        assert out.exc is not None, f"{where}: the failure was swallowed"
        if out.index >= 0:
            assert STEPS[out.index].name == out.step, where
            assert isinstance(out.exc, kvmap.FatalError), where
            cause = out.exc.__cause__
            assert isinstance(cause, OSError) and cause.errno == ERRNO[kind], where
            del cause
        else:
            assert out.step == "open", where
            assert isinstance(out.exc, kvmap.Error), where
        out.exc = None  # drop the traceback (it holds the failed handle's frames)
        # 2. close() (or the failed open) released the writer lock: no GC needed for that
        with kvmap.open(path, lock_timeout=0) as db:
            # 3. exactly the state before or after the failed step, and a sound file
            got = dict(db.items())
            assert len(db) == len(got), where
            before = image.states[max(out.index, 0)]
            after = image.states[out.index + 1] if out.index >= 0 else before
            if got != before and got != after:
                diff = sorted(k for k in got.keys() | before.keys() if got.get(k) != before.get(k))
                pytest.fail(f"{where}: neither the state before nor after the step: {diff[:8]}")
            db.check()
            db.put(b"recovered", b"1")  # and it takes writes again
        gc.collect()
        assert _maps(path) == [], f"{where}: mappings left behind"
        assert _open_under(path) == [], f"{where}: descriptors left open"
        shutil.rmtree(path)
    gc.collect()
    assert _fds() == base_fds, "descriptors leaked"
    print(
        f"{kind} ({mode}, sync={sync}): {total} faults injected in "
        f"{time.monotonic() - started:.1f} s, by step {by_step}"
    )


# -- reproducers of the bugs found -----------------------------------------------------------


class DataFileFault(fileio.FileSystem):
    """Fails every ``pwrite`` to the data file (``ENOSPC``) once armed."""

    def __init__(self) -> None:
        self.armed = False
        self.names: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        fd = super().open(path, flags, mode)
        self.names[fd] = os.path.basename(path)
        return fd

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        if self.armed and self.names.get(fd) == "kvmap.data":
            raise OSError(errno.ENOSPC, "injected: disk full")
        super().pwrite(fd, data, offset)


def _failed_checkpoint(path: str) -> tuple[kvmap.Database, str, BaseException]:
    """A handle whose checkpoint failed writing the tree (the data file is full)."""
    fs = DataFileFault()
    with fileio.installed(fs):
        db = kvmap.open(path, page_size=PS, checkpoint_size=1 << 30)
    db.put(b"k", b"v")
    assert db._wal is not None
    wal = db._wal.path
    fs.armed = True
    with pytest.raises(kvmap.FatalError) as info:
        db.checkpoint()
    return db, wal, info.value


def test_failed_checkpoint_closes_the_previous_wal(db_path: str) -> None:
    db, wal, _ = _failed_checkpoint(db_path)
    db.close()
    del db
    gc.collect()
    assert [f for f in _open_under(db_path) if os.path.basename(wal) in f] == []


def test_failed_checkpoint_loses_nothing_and_releases_the_lock(db_path: str) -> None:
    """After a failed checkpoint the data is safe, the lock is free, nothing stays open."""
    db, wal, exc = _failed_checkpoint(db_path)
    assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOSPC
    db.close()
    with kvmap.open(db_path, lock_timeout=0) as again:
        assert dict(again.items()) == {b"k": b"v"}
        again.check()
    assert _open_under(db_path) == []


def test_close_of_a_failed_handle_unmaps_the_data_file(db_path: str) -> None:
    gc.collect()
    gc.disable()  # what close() releases must not depend on when the collector runs
    try:
        db, _, exc = _failed_checkpoint(db_path)
        db.close()
        assert _maps(db_path) == []
    finally:
        gc.enable()
        gc.collect()


class NthOp(FaultFS):
    """Fails the N-th operation of one kind, counting only from ``arm()``."""

    def arm(self) -> None:
        self.calls = dict.fromkeys(KINDS, 0)


@pytest.mark.parametrize(
    ("kind", "n", "what"),
    [
        ("write", 1, "writing the new lock file's header"),
        ("truncate", 1, "sizing the new lock file"),
        ("mmap", 1, "mapping the lock file"),
        ("mmap", 2, "mapping the data file"),
        ("rename", 3, "unlinking a replayed WAL in _start_wal"),
        ("sync", 6, "syncing the directory in _start_wal"),
    ],
)
def test_io_failure_during_open_raises_a_kvmap_error(
    image: Image, tmp_path: Path, kind: str, n: int, what: str
) -> None:
    path = str(tmp_path / "db")
    shutil.copytree(image.path, path)
    fs = FaultFS(kind, n)
    with fileio.installed(fs), pytest.raises(kvmap.Error):
        kvmap.open(path, page_size=PS, sync="full", checkpoint_size=4096)
    assert fs.fired
