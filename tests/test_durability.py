"""Durability: nothing acknowledged is lost, nothing partial is ever seen.

1. Crashes.  A child process commits numbered transactions with ``sync="full"`` (and
   ``"normal"``) and prints each commit number once ``commit()`` returned; the parent
   SIGKILLs it at a random moment.
   After reopening, every acknowledged commit is present, the state is exactly the state of
   one commit (no partial transaction) and ``check()`` passes.
2. Faults.  A :class:`kvmap.fileio.FileSystem` subclass makes the N-th ``pwrite`` or
   ``fdatasync`` (or file growth) fail (ENOSPC, EIO), for every N a small workload reaches,
   with a checkpoint after every commit (``checkpoint_size=0``: the WAL frame, then the fold
   into the tree) and with commits that only append to the WAL: the failing commit raises
   :class:`kvmap.FatalError`, the handle refuses further use with ``FatalError``, and a
   reopen with the real file system passes ``check()`` and holds exactly the state before or
   after that transaction.

Randomness comes from the ``rng`` fixture (seed printed; replay with ``KVMAP_SEED``).
"""

from __future__ import annotations

import errno
import gc
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from model import applied

import kvmap
from kvmap import fileio

ROOT = Path(__file__).resolve().parent.parent

# The workload, shared verbatim by the child (which runs it) and the parent (which models
# it).  Commit n puts a counter, rewrites a few keys with values that sometimes overflow a
# 512-byte page, deletes one, appends to a sliding window of sequence keys, and every tenth
# commit rewrites a block of 150 keys (a long commit to be killed in the middle of).
WORKLOAD = """
def ops(n):
    out = [(b"counter", b"%d" % n)]
    for j in range(1 + n % 5):
        key = b"k%03d" % ((n * 7 + j * 31) % 211)
        out.append((key, b"%d:" % n * (1 + (n * 37 + j) % 300)))
    out.append((b"k%03d" % (n * 13 % 211), None))
    out.append((b"seq%06d" % n, b"x" * (n % 50)))
    if n > 40:
        out.append((b"seq%06d" % (n - 40), None))
    if n % 10 == 0:
        for i in range(150):
            out.append((b"blk%03d" % i, b"%d" % n * (1 + i % 7)))
    return out
"""

CHILD = (
    WORKLOAD
    + """
import sys
import kvmap

db = kvmap.open(sys.argv[1], page_size=512, sync=sys.argv[2])
n = int(db.get(b"counter", b"0"))
print("ready", n, flush=True)
while True:
    n += 1
    with db.begin(write=True) as txn:
        for key, value in ops(n):
            if value is None:
                txn.delete(key)
            else:
                txn.put(key, value)
    print(n, flush=True)
"""
)

_ns: dict[str, object] = {}
exec(WORKLOAD, _ns)
ops: Callable[[int], list[tuple[bytes, bytes | None]]] = _ns["ops"]  # type: ignore[assignment]


class Model:
    """The state after commit n, computed incrementally."""

    def __init__(self) -> None:
        self.states: list[dict[bytes, bytes]] = [{}]

    def state(self, n: int) -> dict[bytes, bytes]:
        while len(self.states) <= n:
            cur = dict(self.states[-1])
            for key, value in ops(len(self.states)):
                if value is None:
                    cur.pop(key, None)
                else:
                    cur[key] = value
            self.states.append(cur)
        return self.states[n]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("KVMAP_FAILPOINT", None)
    return env


@pytest.mark.parametrize(("sync", "max_rounds"), [("full", 20), ("normal", 8)])
def test_sigkill_loses_no_acknowledged_commit(
    db_path: str, rng: random.Random, sync: str, max_rounds: int
) -> None:
    """``sync="full"`` and ``"normal"`` both promise to survive a crash of the process."""
    model = Model()
    env = _child_env()
    deadline = time.monotonic() + 25
    rounds = 0
    last_seen = 0
    while rounds < max_rounds and time.monotonic() < deadline:
        rounds += 1
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, db_path, sync],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
        )  # fmt: skip
        try:
            assert child.stdout is not None
            ready = child.stdout.readline().split()
            assert ready[:1] == [b"ready"], child.stderr.read() if child.stderr else b""
            assert int(ready[1]) == last_seen  # the child starts from what we verified
            time.sleep(rng.uniform(0.0, 0.35))
            child.send_signal(signal.SIGKILL)
            # read through the same buffered pipe readline() used (communicate() would skip
            # lines readline() buffered already); a dead child's pipes end at once
            out = child.stdout.read()
            err = child.stderr.read() if child.stderr else b""
            child.wait(30)
        finally:
            if child.poll() is None:  # pragma: no cover - only if an assertion fired
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL, err.decode(errors="replace")
        acked = [int(line) for line in out.split(b"\n")[:-1]]  # whole lines only
        assert acked == list(range(last_seen + 1, last_seen + 1 + len(acked)))
        last_acked = acked[-1] if acked else last_seen
        with kvmap.open(db_path, page_size=512) as db:
            db.check()
            found = int(db.get(b"counter", b"0"))
            # every acknowledged commit is there; at most the one in flight beyond it
            assert last_acked <= found <= last_acked + 1, (last_acked, found)
            # and the state is exactly that commit's: no partial transaction
            got = dict(db.items())
            want = model.state(found)
            if got != want:  # pragma: no cover - a diagnosis for the failure message
                diff = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
                pytest.fail(f"round {rounds}: state is not commit {found}'s: {diff[:10]}")
            assert len(db) == len(want)
        last_seen = found
    assert rounds >= max_rounds // 2, f"only {rounds} rounds in time"
    assert last_seen >= rounds  # the children made progress


# -- fault injection -------------------------------------------------------------------------


class FaultyFS(fileio.FileSystem):
    """Counts ``pwrite``/``fdatasync`` (and ``truncate``/``allocate``/``mmap``: file growth)
    calls once armed; the ``fail_at``-th call of ``op`` raises ``OSError(err)``.  With
    ``torn``, a failing ``pwrite`` first writes half its data (a short write, as a full disk
    does).  WAL frames are stored through a mapping of allocated space: a store cannot
    fail, the allocation and the mapping before it can."""

    def __init__(self, op: str, fail_at: int, err: int, torn: bool = False) -> None:
        self.op = op
        self.fail_at = fail_at
        self.err = err
        self.torn = torn
        self.armed = False
        self.calls = {"pwrite": 0, "fdatasync": 0, "truncate": 0, "allocate": 0, "mmap": 0}
        self.fired = False

    def _hit(self, op: str) -> bool:
        if not self.armed:
            return False
        self.calls[op] += 1
        if op == self.op and self.calls[op] == self.fail_at:
            self.fired = True
            return True
        return False

    def _raise(self) -> None:
        raise OSError(self.err, os.strerror(self.err))

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        if self._hit("pwrite"):
            if self.torn and len(data) > 1:
                super().pwrite(fd, memoryview(data)[: len(data) // 2], offset)
            self._raise()
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        if self._hit("fdatasync"):
            self._raise()
        super().fdatasync(fd)

    def truncate(self, fd: int, size: int) -> None:
        if self._hit("truncate"):
            self._raise()
        super().truncate(fd, size)

    def allocate(self, fd: int, size: int) -> None:
        if self._hit("allocate"):
            self._raise()
        super().allocate(fd, size)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        if self._hit("mmap"):
            self._raise()
        return super().mmap(fd, length, offset)

    def mmap_log(self, fd: int, length: int) -> mmap.mmap:
        if self._hit("mmap"):
            self._raise()
        return super().mmap_log(fd, length)


def _workload() -> list[list[tuple[bytes, bytes | None]]]:
    """Five transactions: small puts, a bulk insert (splits), a large overflow value,
    deletes (merges, freed pages), and a rewrite that reuses freed pages."""
    return [
        [(b"a", b"1"), (b"b", b"2")],
        [(b"bulk%04d" % i, b"v" * (i % 60)) for i in range(300)],
        [(b"big", bytes(range(251)) * 240), (b"a", b"changed")],
        [(b"bulk%04d" % i, None) for i in range(0, 300, 2)] + [(b"b", None)],
        [(b"bulk%04d" % i, b"w" * 30) for i in range(1, 300, 2)] + [(b"big", b"small")],
    ]


@pytest.fixture(scope="module")
def base_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    """A populated database to copy for each fault case, and its contents."""
    path = str(tmp_path_factory.mktemp("fault") / "base")
    state = {b"base%03d" % i: b"b" * (i % 90) for i in range(120)}
    with kvmap.open(path, page_size=512) as db:
        db.put_many(state.items())
        db.put(b"a", b"0")
    state[b"a"] = b"0"
    yield path, state


def _run_workload(
    path: str, fs: FaultyFS, sync: str, checkpoint_size: int
) -> tuple[int | None, BaseException | None]:
    """Run the workload through ``fs``; returns (index of the failing txn, its exception)."""
    with fileio.installed(fs):
        db = kvmap.open(path, page_size=512, sync=sync, checkpoint_size=checkpoint_size)
    fs.armed = True
    failed_at: int | None = None
    exc: BaseException | None = None
    try:
        for i, txn_ops in enumerate(_workload()):
            try:
                with db.begin(write=True) as txn:
                    for k, v in txn_ops:
                        if v is None:
                            txn.delete(k)
                        else:
                            txn.put(k, v)
            except Exception as e:  # noqa: BLE001 - asserted by the caller
                failed_at, exc = i, e
                break
        if failed_at is not None:
            # the handle refuses every further use
            for use in (
                lambda: db.get(b"a"),
                lambda: db[b"a"],
                lambda: len(db),
                lambda: db.put(b"x", b"y"),
                lambda: db.delete(b"a"),
                lambda: db.begin(),
                lambda: db.begin(write=True),
                lambda: list(db.items()),
                lambda: db.check(),
            ):
                with pytest.raises(kvmap.FatalError):
                    use()
        fs.armed = False
    finally:
        db.close()
    return failed_at, exc


def _count_calls(base: str, tmp: Path, sync: str, checkpoint_size: int) -> dict[str, int]:
    path = str(tmp / "count")
    shutil.copytree(base, path)
    fs = FaultyFS("none", 0, 0)
    failed_at, exc = _run_workload(path, fs, sync, checkpoint_size)
    assert failed_at is None, exc
    return dict(fs.calls)


WAL_ONLY = 1 << 30  # a checkpoint_size the workload never reaches: commits only append
FAULTS = [
    ("full", "pwrite", errno.ENOSPC, False, 0),
    ("full", "pwrite", errno.ENOSPC, True, 0),
    ("full", "pwrite", errno.EIO, False, 0),
    ("full", "fdatasync", errno.EIO, False, 0),
    ("full", "fdatasync", errno.ENOSPC, False, 0),
    ("full", "truncate", errno.ENOSPC, False, 0),
    ("full", "mmap", errno.ENOMEM, False, 0),
    ("full", "allocate", errno.ENOSPC, False, 0),
    ("normal", "pwrite", errno.ENOSPC, True, 0),
    ("normal", "pwrite", errno.EIO, False, 0),
    ("normal", "fdatasync", errno.EIO, False, 0),
    ("off", "pwrite", errno.ENOSPC, True, 0),
    # commits that only append a WAL frame (earlier commits must be replayed from the WAL)
    ("full", "allocate", errno.ENOSPC, False, WAL_ONLY),
    ("full", "mmap", errno.ENOMEM, False, WAL_ONLY),
    ("full", "fdatasync", errno.EIO, False, WAL_ONLY),
    ("normal", "allocate", errno.ENOSPC, False, WAL_ONLY),
]


@pytest.mark.parametrize(("sync", "op", "err", "torn", "checkpoint_size"), FAULTS)
def test_fault_injection(
    base_db: tuple[str, dict[bytes, bytes]],
    tmp_path: Path,
    sync: str,
    op: str,
    err: int,
    torn: bool,
    checkpoint_size: int,
) -> None:
    base, base_state = base_db
    total = _count_calls(base, tmp_path, sync, checkpoint_size)[op]
    assert total >= (5 if op in ("pwrite", "fdatasync") else 1), f"only {total} {op} calls"
    states = [base_state]
    for txn_ops in _workload():
        states.append(applied(states[-1], txn_ops))
    for n in range(1, total + 1):
        path = str(tmp_path / f"case{n}")
        shutil.copytree(base, path)
        fs = FaultyFS(op, n, err, torn)
        failed_at, exc = _run_workload(path, fs, sync, checkpoint_size)
        where = (
            f"{op} #{n} of {total} ({errno.errorcode[err]}, torn={torn}, sync={sync}, "
            f"checkpoint_size={checkpoint_size})"
        )
        assert fs.fired, where
        assert failed_at is not None, f"{where}: no transaction failed"
        assert isinstance(exc, kvmap.FatalError), f"{where}: raised {exc!r}"
        assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == err, where
        with kvmap.open(path, page_size=512) as db:
            db.check()
            got = dict(db.items())
            before, after = states[failed_at], states[failed_at + 1]
            assert got in (before, after), f"{where}: txn {failed_at} left a partial state"
            assert len(db) == len(got)
            # the recovered database takes writes again
            db.put(b"recovered", b"1")
            db.check()
        shutil.rmtree(path)


def test_fault_in_sync_raises_fatal(
    base_db: tuple[str, dict[bytes, bytes]], tmp_path: Path
) -> None:
    base, state = base_db
    path = str(tmp_path / "db")
    shutil.copytree(base, path)
    fs = FaultyFS("fdatasync", 1, errno.EIO)
    with fileio.installed(fs):
        db = kvmap.open(path, page_size=512, sync="off")
    db.put(b"unsynced", b"1")  # sync="off": no fdatasync yet
    fs.armed = True
    with pytest.raises(kvmap.FatalError) as info:
        db.sync()
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(kvmap.FatalError):
        db.get(b"a")
    db.close()
    with kvmap.open(path) as db:
        db.check()
        got = dict(db.items())
        assert got in (state, {**state, b"unsynced": b"1"})


def test_fault_while_creating_leaves_no_database(db_path: str) -> None:
    for op in ("pwrite", "fdatasync"):
        fs = FaultyFS(op, 1, errno.ENOSPC)
        fs.armed = True
        with fileio.installed(fs), pytest.raises((OSError, kvmap.Error)):
            kvmap.open(db_path, page_size=512)
        assert fs.fired
        with pytest.raises(FileNotFoundError):
            kvmap.open(db_path, readonly=True)
    with kvmap.open(db_path, page_size=512) as db:  # a later open creates it cleanly
        db.put(b"a", b"1")
        db.check()


class FailingOp(fileio.FileSystem):
    """Fails the first call of one named operation, once armed."""

    def __init__(self, op: str) -> None:
        self.op = op
        self.armed = False
        self.fired = False

    def _maybe_fail(self, op: str) -> None:
        if self.armed and op == self.op and not self.fired:
            self.fired = True
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self._maybe_fail("pwrite")
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        self._maybe_fail("fdatasync")
        super().fdatasync(fd)

    def rename(self, src: str, dst: str) -> None:
        self._maybe_fail("rename")
        super().rename(src, dst)

    def fsync_dir(self, path: str) -> None:
        self._maybe_fail("fsync_dir")
        super().fsync_dir(path)


def _compact_setup(db_path: str, op: str) -> tuple[FailingOp, kvmap.Database, dict[bytes, bytes]]:
    fs = FailingOp(op)
    with fileio.installed(fs):
        db = kvmap.open(db_path, page_size=512)
    state = {b"%04d" % i: b"v" * (i % 50) for i in range(0, 1000, 7)}
    db.put_many((b"%04d" % i, b"v" * (i % 50)) for i in range(1000))
    with db.begin(write=True) as txn:
        for i in range(1000):
            if i % 7:
                txn.delete(b"%04d" % i)
    fs.armed = True
    return fs, db, state


COMPACT_OPS = ["pwrite", "fdatasync", "rename", "fsync_dir"]


def _open_files_under(path: str) -> list[str]:
    """Files under ``path`` this process still has open (Linux /proc)."""
    if not os.path.isdir("/proc/self/fd"):  # pragma: no cover
        pytest.skip("needs /proc/self/fd")
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(os.path.realpath(path)):
            found.append(target)
    return found


@pytest.mark.parametrize("op", COMPACT_OPS)
def test_fault_during_compact_loses_nothing(db_path: str, op: str) -> None:
    """A compaction that fails at any step: whatever the handle acknowledges afterwards is
    still there after a reopen, and the database checks."""
    fs, db, state = _compact_setup(db_path, op)
    with pytest.raises((OSError, kvmap.Error)):
        db.compact()
    assert fs.fired
    try:
        db.put(b"after", b"compact")  # sync="full": durable once put() returns
    except kvmap.Error:
        pass  # refusing further use is fine
    else:
        state[b"after"] = b"compact"
        assert db[b"after"] == b"compact"
    db.close()
    del db
    gc.collect()
    assert _open_files_under(db_path) == []  # close() released every descriptor
    with kvmap.open(db_path) as db:
        db.check()
        assert dict(db.items()) == state


@pytest.mark.parametrize("op", COMPACT_OPS)
def test_fault_during_compact_raises_kvmap_error(db_path: str, op: str) -> None:
    """Issue 2: "A failed write or sync leaves the handle unusable (kvmap.Error)"; a failed
    commit raises FatalError with the OSError as its cause, and so must a failed compact()."""
    fs, db, state = _compact_setup(db_path, op)
    try:
        with pytest.raises(kvmap.Error) as info:
            db.compact()
        assert isinstance(info.value.__cause__, OSError)
    finally:
        db.close()
    with kvmap.open(db_path) as db:
        db.check()
        assert dict(db.items()) == state


def test_damage_in_an_old_wal_the_tree_covers_loses_nothing(db_path: str) -> None:
    """A crash between a checkpoint's meta write and its deletion of the old WAL leaves that
    WAL behind, while the commits made during the checkpoint are in the new one.  Damage in
    the old file (whose frames the tree holds already) must not hide the new file's
    acknowledged commits, and open must not raise: nothing is missing."""
    with kvmap.open(db_path, page_size=512, sync="full") as db:
        for i in range(3):
            db.put(b"a%d" % i, b"x" * 50)  # commits 1..3: the first WAL
        assert db._wal is not None
        old = db._wal.path
        with open(old, "rb") as f:
            saved = f.read()
        db.checkpoint()  # meta wal_seq=3; a new WAL; the old one deleted
        db.put(b"b1", b"acked")  # commits 4, 5 go to the new WAL, fsynced
        db.put(b"b2", b"acked")
        want = dict(db.items())
        db._wal.close()  # a crash: no final checkpoint, the WALs stay as they are
        db._state = None
        db._closed = True
        db._release_files()
    assert len(list(Path(db_path).glob("kvmap.wal.*"))) == 1
    frame2 = 64 + int.from_bytes(saved[64:72], "little")  # where the second frame starts
    for offset in (70, 64 + 30, frame2 + 20, len(saved) - 1):  # length, ops, frame 2, tail
        damaged = bytearray(saved)
        damaged[offset] ^= 0x10
        with open(old, "wb") as f:
            f.write(bytes(damaged))
        with kvmap.open(db_path, readonly=True) as ro:
            assert dict(ro.items()) == want, offset
    with kvmap.open(db_path) as db:  # the writable open folds the new WAL's commits
        assert dict(db.items()) == want
        db.check()
    assert not os.path.exists(old)
    with kvmap.open(db_path) as db:
        assert dict(db.items()) == want
