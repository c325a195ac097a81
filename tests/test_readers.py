"""Many processes (issue 4): one writer at a time, readers in other processes that follow it.

Everything here runs real processes with real fsyncs.  The pieces:

- :class:`Agent` is a child process ("spawn" unless told otherwise) that runs one command
  at a time sent over a pipe (``agent("open", path, readonly=True)``, ``agent("begin")``,
  ...) and answers with the result, or with the exception it raised (re-raised in the
  test with the child's traceback attached).  It lets a test put a reader in a precise
  state (holding a snapshot, blocked inside a get) and then kill it.
- :class:`Worker` runs one module-level function in a spawned process (the stress loops)
  and hands back its return value, or fails the test with the child's traceback or with
  its signal (a SIGBUS is reported as such).

Randomised tests print their seed (``KVMAP_SEED`` replays one).  The bank-transfer soak
(``-m slow``) runs ``KVMAP_SOAK_SECONDS`` seconds (default 120).
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing as mp
import os
import pickle
import pwd
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

import kvmap
from kvmap import fileio
from kvmap.format import DATA_FILE, LOCK_FILE, LOCK_HEADER_SIZE, LOCK_SLOT, LOCK_SLOT_SIZE
from kvmap.wal import list_wals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kvmap.__file__)))


# -- child processes ---------------------------------------------------------------------
def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


_OPS: dict[str, Callable[..., Any]] = {}


def _op(fn: Callable[..., Any]) -> Callable[..., Any]:
    _OPS[fn.__name__.removeprefix("_op_")] = fn
    return fn


def _agent_main(conn: Connection) -> None:
    """The command loop of an :class:`Agent` (runs in the child)."""
    st: dict[str, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            conn.send(("ok", None))
            return
        name, args, kw = msg
        try:
            reply = ("ok", _OPS[name](st, *args, **kw))
        except BaseException as exc:
            reply = ("err", _portable(exc), traceback.format_exc())
        conn.send(reply)


class Agent:
    """A child process driven command by command (see the module docstring)."""

    def __init__(self, method: str = "spawn") -> None:
        ctx = mp.get_context(method)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_agent_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.pid = self.proc.pid

    def __call__(self, op: str, *args: Any, timeout: float = 60.0, **kw: Any) -> Any:
        self.conn.send((op, args, kw))
        if not self.conn.poll(timeout):
            raise TimeoutError(f"agent {self.pid}: {op!r} gave no answer within {timeout} s")
        reply = self.conn.recv()
        if reply[0] == "err":
            exc = reply[1]
            exc.add_note(f"--- raised in agent process {self.pid}:\n{reply[2]}")
            raise exc
        return reply[1]

    def kill(self) -> None:
        """SIGKILL the agent and reap it (polling: a child it forked may hold the pipe
        that ``join()`` waits on)."""
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: self.proc.exitcode is not None, 10, f"agent {self.pid} to die")
        assert self.proc.exitcode == -signal.SIGKILL, self.proc.exitcode

    def stop(self) -> None:
        """Let the agent exit normally (handles it still has are closed by GC)."""
        if self.proc.is_alive():
            try:
                self.conn.send(None)
                self.conn.poll(30)
            except OSError:
                pass
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)


def _worker_main(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:
        conn.send(("err", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class Worker:
    """``fn(*args)`` in a spawned process; :meth:`result` returns what it returned."""

    def __init__(self, fn: Callable[..., Any], *args: Any, method: str = "spawn") -> None:
        ctx = mp.get_context(method)
        self.name = fn.__name__
        self.conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, args), daemon=True)
        self.proc.start()
        child.close()
        self.pid = self.proc.pid

    def result(self, timeout: float = 120.0) -> Any:
        reply = None
        if self.conn.poll(timeout):
            try:
                reply = self.conn.recv()
            except EOFError:  # died without answering (a signal)
                pass
        self.proc.join(10)
        code = self.proc.exitcode
        if reply is None:
            if code is not None and code < 0:
                raise AssertionError(
                    f"{self.name} (pid {self.pid}) was killed by {signal.Signals(-code).name}"
                )
            raise AssertionError(f"{self.name} (pid {self.pid}) gave no result (exit {code})")
        if reply[0] == "err":
            raise AssertionError(f"{self.name} (pid {self.pid}) failed: {reply[1]}\n{reply[2]}")
        assert code == 0, f"{self.name} (pid {self.pid}) exited with {code}"
        return reply[1]

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(10)


@pytest.fixture
def procs() -> Iterator[list[Agent | Worker]]:
    """A list to register child processes in; any still alive at teardown are killed."""
    started: list[Agent | Worker] = []
    yield started
    for p in started:
        if p.proc.is_alive():
            p.proc.kill()
        p.proc.join(10)


def agent(procs: list[Agent | Worker], method: str = "spawn") -> Agent:
    a = Agent(method)
    procs.append(a)
    return a


def worker(procs: list[Agent | Worker], fn: Callable[..., Any], *args: Any) -> Worker:
    w = Worker(fn, *args)
    procs.append(w)
    return w


# -- what agents can do --------------------------------------------------------------------
def digest(items: Iterable[tuple[bytes, bytes | None]]) -> tuple[int, str]:
    """(count, hash) of a sequence of (key, value): compares big views cheaply."""
    h = hashlib.sha256()
    n = 0
    for k, v in items:
        h.update(struct.pack("<I", len(k)) + k)
        h.update(b"\xff" if v is None else struct.pack("<I", len(v)) + v)
        n += 1
    return n, h.hexdigest()


@_op
def _op_open(st: dict[str, Any], path: str, name: str = "db", **kw: Any) -> int:
    st[name] = kvmap.open(path, **kw)
    return os.getpid()


@_op
def _op_close(st: dict[str, Any], name: str = "db") -> None:
    st.pop(name).close()


@_op
def _op_commit(
    st: dict[str, Any], puts: dict[bytes, bytes], deletes: Iterable[bytes] = (), name: str = "db"
) -> None:
    with st[name].begin(write=True) as txn:
        for k, v in puts.items():
            txn.put(k, v)
        for k in deletes:
            txn.delete(k)


@_op
def _op_hold_write(st: dict[str, Any], puts: dict[bytes, bytes], name: str = "db") -> None:
    """Begin a write transaction, put, and leave it open (never committed)."""
    txn = st[name].begin(write=True)
    for k, v in puts.items():
        txn.put(k, v)
    st["txn"] = txn


@_op
def _op_call(st: dict[str, Any], method: str, *args: Any, name: str = "db") -> Any:
    """``db.<method>(*args)``: checkpoint, compact, sync, check, readers, ..."""
    out = getattr(st[name], method)(*args)
    return list(out) if method == "readers" else out


@_op
def _op_items(st: dict[str, Any], name: str = "db") -> list[tuple[bytes, bytes]]:
    return list(st[name].items())


@_op
def _op_view(st: dict[str, Any], name: str = "db") -> tuple[tuple[int, str], int]:
    """The latest view: digest of a scan (which is one snapshot) and len()."""
    db = st[name]
    return digest(db.items()), len(db)


@_op
def _op_gets(st: dict[str, Any], keys: list[bytes], name: str = "db") -> list[bytes | None]:
    db = st[name]
    return [db.get(k) for k in keys]


@_op
def _op_begin(st: dict[str, Any], snap: str = "snap", name: str = "db") -> tuple[int, str]:
    """Open a read snapshot and keep it; returns the digest of what it sees."""
    s = st[name].begin()
    st[snap] = s
    return digest(s.items())


@_op
def _op_snap_view(st: dict[str, Any], snap: str = "snap") -> dict[str, Any]:
    """What a held snapshot sees, read four ways (every page of its tree is read)."""
    s = st[snap]
    items = list(s.items())
    back = list(s.items(reverse=True))
    back.reverse()
    keys = [k for k, _ in items]
    return {
        "scan": digest(items),
        "reverse": digest(back),
        "gets": digest(zip(keys, [s.get(k) for k in keys])),
        "keys": digest((k, b"") for k in s.keys()),
    }


@_op
def _op_end(st: dict[str, Any], snap: str = "snap") -> None:
    st.pop(snap).close()


@_op
def _op_block_get(st: dict[str, Any], key: bytes, name: str = "db") -> bool:
    """Start a ``db.get(key)`` in a second thread and stop it inside the tree descent:
    the root page has been read and the thread waits (``release_get``) before decoding
    it.  The page cache is emptied first so the descent must read pages.  Returns whether
    the thread reached that point."""
    db = st[name]
    db.get(key)  # catch up first: the blocked get then reads the state it sees now
    pager = db._state.pager
    pager.cache.clear()
    gate, entered = threading.Event(), threading.Event()
    out: dict[str, Any] = {}
    orig = pager.decode
    ident: list[int] = []

    def decode(data: bytes, pgno: int) -> Any:
        if ident and threading.get_ident() == ident[0] and not entered.is_set():
            entered.set()
            gate.wait(60)
        return orig(data, pgno)

    def run() -> None:
        ident.append(threading.get_ident())
        try:
            out["value"] = db.get(key)
        except BaseException as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"

    pager.decode = decode
    thread = threading.Thread(target=run)
    thread.start()
    st["blocked"] = (thread, gate, out, pager, orig)
    return entered.wait(10)


@_op
def _op_release_get(st: dict[str, Any]) -> dict[str, Any]:
    thread, gate, out, pager, orig = st.pop("blocked")
    gate.set()
    thread.join(30)
    pager.decode = orig
    return out


@_op
def _op_readers_full(st: dict[str, Any], path: str) -> str:
    """Open one more readonly handle, expecting ReadersFullError; returns its message."""
    with pytest.raises(kvmap.ReadersFullError) as info:
        kvmap.open(path, readonly=True)
    return str(info.value)


@_op
def _op_fork_sleeper(st: dict[str, Any], seconds: float) -> int:
    """fork() a child that inherits this process's handles and just sleeps (what a
    long-lived multiprocessing worker does); returns its pid."""
    pid = os.fork()
    if pid == 0:
        time.sleep(seconds)
        os._exit(0)
    return pid


@_op
def _op_wal_vanishes_once(st: dict[str, Any]) -> None:
    """The next WAL read in this process fails with FileNotFoundError, as when a
    checkpoint deletes the file between listing and reading it (a race made
    deterministic; kvmap treats it as "the tree moved, start over")."""
    import kvmap.db as kdb

    real = kdb.read_wal

    def vanished(fs: Any, path: str) -> bytes:
        kdb.read_wal = real
        raise FileNotFoundError(2, "No such file or directory", path)

    kdb.read_wal = vanished


# -- helpers ---------------------------------------------------------------------------
def data_size(path: str) -> int:
    return os.path.getsize(os.path.join(path, DATA_FILE))


def lock_slot(path: str, slot: int) -> tuple[int, int, int, int, int]:
    """The raw reader slot ``slot`` of the lock file: (pid, flags, token, txnid, seq)."""
    with open(os.path.join(path, LOCK_FILE), "rb") as f:
        raw = f.read()
    return LOCK_SLOT.unpack_from(raw, LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * slot)  # type: ignore[no-any-return]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# == a follower in another process sees every commit, and only whole ones ==================
@pytest.mark.parametrize("sync", ["normal", "full"])
def test_follower_sees_each_commit(
    db_path: str, sync: str, rng: random.Random, procs: list[Agent | Worker]
) -> None:
    """A writer process commits multi-key transactions (puts, deletes, overflow values),
    with checkpoints and compacts between them; after each step returns, a readonly
    handle in a third process sees exactly the writer's state: scan, gets and len()."""
    w, r = agent(procs), agent(procs)
    w("open", db_path, sync=sync, page_size=512, checkpoint_size=1 << 20)
    model = {b"k%03d" % i: b"v0" for i in range(40)}
    w("commit", model)
    r("open", db_path, readonly=True)
    probe = [b"k%03d" % i for i in range(0, 60, 3)]
    kinds = {"commit": 0, "checkpoint": 0, "compact": 0}
    for step in range(1, 151):
        if step % 25 == 0:
            w("call", "checkpoint")
            kinds["checkpoint"] += 1
        elif step % 60 == 0:
            w("call", "compact")
            kinds["compact"] += 1
        else:
            puts = {}
            for _ in range(rng.randint(1, 8)):
                size = rng.choice([3, 40, 700, 3000])  # 700 and 3000: overflow pages
                puts[b"k%03d" % rng.randrange(60)] = b"%d:" % step + b"x" * size
            dels = [k for k in rng.sample(sorted(model), 2) if k not in puts]
            w("commit", puts, dels)
            model.update(puts)
            for k in dels:
                del model[k]
            kinds["commit"] += 1
        assert r("view") == (digest(sorted(model.items())), len(model)), f"step {step}"
        assert r("gets", probe) == [model.get(k) for k in probe], f"step {step}"
    assert r("call", "check")["leaf"] > 0
    w("call", "check")
    print(kinds)


def _whole_txn_writer(path: str, sync: str, seconds: float, ready: Any) -> int:
    """Commit transactions that each set every key of a group to the same value (and
    b"n" to the transaction number), until ``seconds`` passed; under sync="off" flush
    every few commits.  Returns the number of commits."""
    with kvmap.open(path, sync=sync, page_size=512, checkpoint_size=64 * 1024) as db:
        ready.set()
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            value = b"%08d" % i + b"." * (i % 7 * 300)  # 0..1800 bytes: frames of any size
            with db.begin(write=True) as txn:
                for j in range(30):
                    txn.put(b"g%02d" % j, value)
                txn.put(b"n", b"%d" % i)
            if sync == "off" and i % 5 == 0:
                db.flush()
        return i


@pytest.mark.parametrize("sync", ["normal", "full", "off"])
def test_follower_never_sees_a_partial_transaction(
    db_path: str, sync: str, procs: list[Agent | Worker]
) -> None:
    """While a writer process commits 31-key transactions (frames from 300 bytes to
    55 KB, checkpoints every 64 KB), snapshots and scans in this process always show all
    31 keys from one and the same transaction, and the transaction number never goes
    back."""
    with kvmap.open(db_path, page_size=512) as db:
        db.put(b"n", b"0")
    ready = mp.get_context("spawn").Event()
    wr = worker(procs, _whole_txn_writer, db_path, sync, 2.5, ready)
    assert ready.wait(30)
    seen: set[int] = set()
    last = 0
    with kvmap.open(db_path, readonly=True) as r:
        while wr.proc.is_alive():
            with r.begin() as s:
                n = int(s.get(b"n"))
                group = list(s.items(b"g", b"h"))
                vals = {s.get(b"g%02d" % j) for j in range(30)}
            assert n >= last
            last = n
            if n:
                assert len(group) == 30
                assert {v for _, v in group} == vals
                assert len(vals) == 1 and vals.pop()[:8] == b"%08d" % n, n
            items = dict(r.items())  # a scan is one snapshot too
            m = int(items[b"n"])
            assert m >= last
            last = m
            if m:
                assert {items[b"g%02d" % j][:8] for j in range(30)} == {b"%08d" % m}
            seen.add(n)
        commits = wr.result()
        assert r.get(b"n") == b"%d" % commits  # the writer closed: every commit visible
    print(f"writer commits: {commits}, distinct states seen by the reader: {len(seen)}")
    assert len(seen) > 10


@pytest.mark.parametrize("how", ["close", "kill"])
def test_follower_sees_commits_of_the_next_writer_process(
    db_path: str, how: str, procs: list[Agent | Worker]
) -> None:
    """A long-lived reader keeps following when the writer process is replaced: writer A
    commits and then closes (or, right after a checkpoint, is SIGKILLed); writer B opens
    the database and commits; the reader sees each of B's commits at once."""
    a, r = agent(procs), agent(procs)
    a("open", db_path, sync="normal")
    for i in range(10):
        a("commit", {b"k": b"A%d" % i})
    r("open", db_path, readonly=True)
    assert r("gets", [b"k"]) == [b"A9"]
    if how == "close":
        a("close")
        assert r("gets", [b"k"]) == [b"A9"]  # the reader caught up with A's last word
    else:
        a("call", "checkpoint")
        assert r("gets", [b"k"]) == [b"A9"]
        a.kill()
    b = agent(procs)
    b("open", db_path, sync="normal", lock_timeout=5)
    for i in range(5):
        b("commit", {b"k": b"B%d" % i, b"b%d" % i: b"x"})
        assert r("gets", [b"k", b"b%d" % i]) == [b"B%d" % i, b"x"], f"B's commit {i}"
    assert r("view")[1] == 6


# == bank transfers: consistency under load ==================================================
ACCT = b"acct:%04d"
N_ACCOUNTS = 64
START_BALANCE = 1000


#: the bank's data file may not pass this (64 accounts: a few pages of live data); it
#: keeps a file that grows out of bounds while a snapshot is held from filling the disk
BANK_FILE_LIMIT = 256 << 20


def _bank_writer(path: str, seed: int, stop: Any, commits: Any, compact_every: int) -> dict:
    """Move random amounts between accounts (1-4 transfers per transaction, the sum
    constant) and bump b"ctr" in every transaction, until ``stop``; checkpoints every
    ~16 KB of WAL, a compact every ``compact_every`` commits."""
    rng = random.Random(seed)
    db = kvmap.open(path, sync="normal", checkpoint_size=16 * 1024, page_size=1024)
    n = 0
    compacts = 0
    while not stop.is_set():
        if n % 256 == 0:
            size = data_size(path)
            assert size <= BANK_FILE_LIMIT, (
                f"the data file grew to {size} bytes after {n} commits "
                f"({db.stats()['txnid']} trees)"
            )
        with db.begin(write=True) as txn:
            for _ in range(rng.randint(1, 4)):
                a, b = rng.sample(range(N_ACCOUNTS), 2)
                amount = rng.randint(1, 100)
                txn.put(ACCT % a, b"%d" % (int(txn.get(ACCT % a)) - amount))
                txn.put(ACCT % b, b"%d" % (int(txn.get(ACCT % b)) + amount))
            txn.put(b"ctr", b"%d" % (int(txn.get(b"ctr")) + 1))
        n += 1
        commits.value = n
        if compact_every and n % compact_every == 0:
            db.compact()
            compacts += 1
    stats = db.stats()
    db.check()
    db.close()
    return {"commits": n, "compacts": compacts, "txnid": stats["txnid"],
            "file": stats["file_size"]}  # fmt: skip


def _held_unchanged(db: kvmap.Database, held: Any, frozen: list[tuple[bytes, bytes]]) -> int:
    """Check a held snapshot against what it showed when taken; returns how many commits
    it outlived, and closes it."""
    assert list(held.items()) == frozen
    assert [held.get(k) for k, _ in frozen] == [v for _, v in frozen]
    assert list(held.items(reverse=True)) == frozen[::-1]
    across = int(db.get(b"ctr")) - int(held.get(b"ctr"))
    held.close()
    return across


def _bank_reader(path: str, stop: Any, hold: int, ready: Any) -> dict:
    """Take snapshots until ``stop``: each must hold the full sum (by gets and by a scan,
    which agree) and a commit counter that never goes back.  With ``hold``, a snapshot
    taken first stays open (for ``hold`` seconds, then a new one) and must be unchanged
    when it is released; the result has the fewest commits one outlived."""
    total = N_ACCOUNTS * START_BALANCE
    db = kvmap.open(path, readonly=True)
    held = frozen = None
    acrosses = []
    if hold:
        held = db.begin()
        frozen = list(held.items())
        since = time.monotonic()
    ready.set()
    last = -1
    snaps = 0
    counters = set()
    rng = random.Random(os.getpid())
    while not stop.is_set():
        with db.begin() as s:
            by_get = [s.get(ACCT % i) for i in range(N_ACCOUNTS)]
            by_scan = list(s.items(prefix=b"acct:"))
            ctr = int(s.get(b"ctr"))
            ctr_scan = dict(s.items(b"ctr", b"ctr\0"))[b"ctr"]
        assert sum(map(int, by_get)) == total, (ctr, by_get)
        assert [v for _, v in by_scan] == by_get, ctr
        assert [k for k, _ in by_scan] == [ACCT % i for i in range(N_ACCOUNTS)]
        assert ctr_scan == b"%d" % ctr
        assert ctr >= last, (ctr, last)
        last = ctr
        latest = int(db.get(b"ctr"))  # not in a snapshot: the latest commit, never older
        assert latest >= last, (latest, last)
        last = latest
        counters.add(ctr)
        snaps += 1
        if held is not None and snaps % 20 == 0:
            i = rng.randrange(len(frozen))
            assert held.get(frozen[i][0]) == frozen[i][1]
            if time.monotonic() - since > hold:
                acrosses.append(_held_unchanged(db, held, frozen))
                held = db.begin()
                frozen = list(held.items())
                since = time.monotonic()
    out = {"snapshots": snaps, "distinct": len(counters), "last": last}
    if held is not None:
        acrosses.append(_held_unchanged(db, held, frozen))
        out["across"] = min(acrosses)
        out["held"] = len(acrosses)
    db.check()
    db.close()
    return out


def bank_setup(path: str) -> None:
    with kvmap.open(path, page_size=1024, sync="normal") as db:
        db.put_many([(ACCT % i, b"%d" % START_BALANCE) for i in range(N_ACCOUNTS)])
        db.put(b"ctr", b"0")


def run_bank(
    path: str, seed: int, seconds: float, hold: float, procs: list[Agent | Worker]
) -> None:
    bank_setup(path)
    ctx = mp.get_context("spawn")
    stop, ready, ready2 = ctx.Event(), ctx.Event(), ctx.Event()
    commits = ctx.Value("q", 0)
    holder = worker(procs, _bank_reader, path, stop, hold, ready)
    assert ready.wait(30)  # the held snapshot exists before the first transfer
    wr = worker(procs, _bank_writer, path, seed, stop, commits, 1000)
    other = worker(procs, _bank_reader, path, stop, 0, ready2)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds or commits.value < 1000:
        if not all(p.proc.is_alive() for p in (holder, wr, other)):
            break  # a failure: collect it below
        if time.monotonic() - t0 > seconds + 60:
            break
        time.sleep(0.05)
    stop.set()
    w_out = wr.result()
    h_out, o_out = holder.result(), other.result()
    print(f"{time.monotonic() - t0:.1f} s: writer {w_out}, holder {h_out}, reader {o_out}")
    assert w_out["commits"] >= 1000
    assert h_out["across"] >= 1000  # the held snapshot outlived >= 1000 commits
    for out in (h_out, o_out):
        assert out["snapshots"] >= 50 and out["distinct"] >= 10
    with kvmap.open(path) as db:
        db.check()
        assert sum(int(db[ACCT % i]) for i in range(N_ACCOUNTS)) == N_ACCOUNTS * START_BALANCE
        assert int(db[b"ctr"]) == w_out["commits"]


def test_bank_transfer_stress(db_path: str, rng: random.Random, procs: list[Agent | Worker]):
    """One writer process (a compact every 1000 commits), two reader processes, 10 s;
    one snapshot held for the whole run (see ``_bank_reader``)."""
    run_bank(db_path, rng.randrange(2**32), 10.0, 1e9, procs)


@pytest.mark.slow
def test_bank_transfer_soak(db_path: str, rng: random.Random, procs: list[Agent | Worker]):
    """The same for ``KVMAP_SOAK_SECONDS`` (default 120); the held snapshot is renewed
    every 8 s (each still outlives >= 1000 commits)."""
    seconds = float(os.environ.get("KVMAP_SOAK_SECONDS", 120))
    run_bank(db_path, rng.randrange(2**32), seconds, 8.0, procs)


def test_followers_through_compactions(
    db_path: str, rng: random.Random, procs: list[Agent | Worker]
) -> None:
    """The bank with a compact every 20 commits (the data file is replaced hundreds of
    times) and checkpoints every ~16 KB, for 4 s: two follower processes keep seeing the
    full sum and a counter that never goes back, and never fail."""
    bank_setup(db_path)
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    commits = ctx.Value("q", 0)
    wr = worker(procs, _bank_writer, db_path, rng.randrange(2**32), stop, commits, 20)
    readers = [worker(procs, _bank_reader, db_path, stop, 0, ready) for _ in range(2)]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4.0 and all(r.proc.is_alive() for r in readers):
        time.sleep(0.05)
    stop.set()
    out = wr.result()
    results = [r.result() for r in readers]
    print(f"writer {out}, readers {results}")
    assert out["compacts"] >= 20


def test_follower_catch_up_interrupted_right_after_a_compact(
    db_path: str, procs: list[Agent | Worker]
) -> None:
    """A follower that switches to a compacted file and then has to start its catch-up
    over (the WAL it reads vanished: a checkpoint deleted it) must read the new file:
    the same view as the writer, and check() passes.  The race is forced in the reader
    process (``wal_vanishes_once``); the same thing happens by itself in
    ``test_followers_through_compactions`` and the bank stress."""
    with kvmap.open(db_path, page_size=512, sync="normal") as w:
        for tag in (b"old", b"new"):  # pages of an older tree stay in the first file
            w.put_many([(b"k%04d" % i, tag + b"%d" % i) for i in range(300)])
            w.checkpoint()
        r = agent(procs)
        r("open", db_path, readonly=True)
        assert r("gets", [b"k0000"]) == [b"new0"]
        w.delete(b"k0001")
        w.compact()
        w.put(b"x", b"1")
        r("wal_vanishes_once")
        assert r("view") == (digest(w.items()), len(w))
        r("call", "check")


def test_readonly_open_of_a_live_database(
    db_path: str, rng: random.Random, procs: list[Agent | Worker]
) -> None:
    """Opening readonly while a writer process commits and checkpoints (every ~16 KB of
    WAL) always works and shows a consistent state (full sum, every account)."""
    bank_setup(db_path)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    commits = ctx.Value("q", 0)
    wr = worker(procs, _bank_writer, db_path, rng.randrange(2**32), stop, commits, 0)
    wait_for(lambda: commits.value > 50, 30, "the writer to start")
    opens = 0
    errors: list[str] = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 3.0:
            try:
                with kvmap.open(db_path, readonly=True) as r:
                    assert len(r) == N_ACCOUNTS + 1
                    vals = [int(v) for _, v in r.items(prefix=b"acct:")]
                    assert len(vals) == N_ACCOUNTS
                    assert sum(vals) == N_ACCOUNTS * START_BALANCE
                opens += 1
            except kvmap.Error as exc:  # OSError too: see below
                errors.append(f"{type(exc).__name__}: {exc}")
            except OSError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        stop.set()
        out = wr.result()
    print(f"{opens} readonly opens during {out['commits']} commits; failures: {len(errors)}")
    assert not errors, f"{len(errors)} of {opens + len(errors)} opens failed: {errors[:3]}"


# == dead readers, page reuse ===============================================================
def _rewrite_all(db: kvmap.Database, keys: list[bytes], tag: int) -> None:
    with db.begin(write=True) as txn:
        for k in keys:
            txn.put(k, b"%d-" % tag + k * 6)


def test_sigkilled_reader_slot_is_reclaimed_and_space_reused(
    db_path: str, procs: list[Agent | Worker]
) -> None:
    """A reader process holds a snapshot: the writer lists it, keeps its pages, and the
    file grows with each rewrite+checkpoint.  SIGKILL it: readers() stops listing it at
    once, the next checkpoint zeroes its slot, and the file stops growing."""
    keys = [b"key%05d" % i for i in range(600)]
    with kvmap.open(db_path, page_size=512, sync="normal") as db:
        _rewrite_all(db, keys, 0)
        db.checkpoint()
        r = agent(procs)
        r("open", db_path, readonly=True)
        r("begin")
        mine = [x for x in db.readers() if x.pid == r.pid]
        assert len(mine) == 1 and mine[0].txnid == db.stats()["txnid"], db.readers()
        slot = mine[0].slot
        sizes_held = [data_size(db_path)]
        for tag in range(1, 13):
            _rewrite_all(db, keys, tag)
            db.checkpoint()
            sizes_held.append(data_size(db_path))
        r.kill()
        assert all(x.pid != r.pid for x in db.readers())  # the kernel dropped its lock
        assert lock_slot(db_path, slot)[2] != 0  # not cleared yet ...
        sizes_after = [data_size(db_path)]
        for tag in range(13, 37):
            _rewrite_all(db, keys, tag)
            db.checkpoint()
            if tag == 13:
                assert lock_slot(db_path, slot) == (0, 0, 0, 0, 0)  # ... the checkpoint did
            sizes_after.append(data_size(db_path))
        db.check()
    grew_held = sizes_held[-1] - sizes_held[0]
    print(f"file size while the snapshot was held: {sizes_held}")
    print(f"after the SIGKILL: {sizes_after}")
    assert grew_held > 0
    # bounded: at most 2 checkpoints after the kill may still grow the file; after that
    # 22 more rewrites of every key reuse freed pages only.
    assert sizes_after[2:] == [sizes_after[2]] * (len(sizes_after) - 2)


def test_page_reuse_honours_a_reader_in_another_process(
    db_path: str, rng: random.Random, procs: list[Agent | Worker]
) -> None:
    """While a reader process holds an old snapshot, 40 overwrite/delete/insert +
    checkpoint cycles in the writer (with plenty of pages freed before the snapshot, so
    reuse is happening) never change what the snapshot reads, its tree passes check(),
    and the same handle's latest view follows the writer."""
    keys = [b"key%05d" % i for i in range(500)]
    with kvmap.open(db_path, page_size=512, sync="normal") as db:
        for tag in range(4):  # free pages from before the snapshot: reusable all along
            _rewrite_all(db, keys, tag)
            db.checkpoint()
        r = agent(procs)
        r("open", db_path, readonly=True)
        frozen = digest(db.items())
        assert r("begin") == frozen
        size0 = data_size(db_path)
        model = dict(db.items())
        for cycle in range(40):
            with db.begin(write=True) as txn:
                for k in rng.sample(keys, 300):
                    v = b"c%d-" % cycle + k * rng.choice([1, 5, 30, 200])  # some overflow
                    txn.put(k, v)
                    model[k] = v
                for k in rng.sample(sorted(model), 20):
                    txn.delete(k)
                    del model[k]
            db.checkpoint()
            if cycle % 8 == 7:
                view = r("snap_view")
                for way in ("scan", "reverse", "gets"):
                    assert view[way] == frozen, (cycle, way)
                assert view["keys"][0] == frozen[0]
                assert r("view") == (digest(sorted(model.items())), len(model))
                r("call", "check")
        db.check()
    print(f"data file {size0} -> {data_size(db_path)} bytes over 40 cycles")


def test_inflight_get_in_another_thread_is_protected(
    db_path: str, procs: list[Agent | Worker]
) -> None:
    """A reader process has two threads: one is inside ``db.get`` (it has read the root
    page of tree T1) when the other catches up to newer trees.  The slot must still
    protect T1's pages until that get is done: after the writer rewrote every key and
    checkpointed six times (the second thread catching up each time), the first get
    returns the value of T1."""
    keys = [b"key%05d" % i for i in range(400)]
    with kvmap.open(db_path, page_size=512, sync="normal") as db:
        _rewrite_all(db, keys, 0)
        db.checkpoint()
        r = agent(procs)
        r("open", db_path, readonly=True)
        target = keys[123]
        assert r("block_get", target)
        for tag in range(1, 7):
            _rewrite_all(db, keys, tag)
            db.checkpoint()
            assert r("gets", [keys[0]]) == [b"%d-" % tag + keys[0] * 6]  # the other thread
        out = r("release_get")
        db.check()
    assert out == {"value": b"0-" + target * 6}


# == writers: exclusion and crashes ==========================================================
def test_second_writer_waits_then_raises_and_succeeds_after_close(
    db_path: str, procs: list[Agent | Worker]
) -> None:
    a = agent(procs)
    a("open", db_path, sync="off")  # frames stay in A's buffer until it closes
    a("commit", {b"k%03d" % i: b"a" for i in range(100)})
    t0 = time.monotonic()
    with pytest.raises(kvmap.DatabaseLockedError):
        kvmap.open(db_path, lock_timeout=0)
    assert time.monotonic() - t0 < 0.5
    t0 = time.monotonic()
    with pytest.raises(kvmap.DatabaseLockedError):
        kvmap.open(db_path, lock_timeout=0.6)
    waited = time.monotonic() - t0
    assert 0.6 <= waited < 5, waited
    b = agent(procs)  # the same from another process, and readonly opens still work
    with pytest.raises(kvmap.DatabaseLockedError):
        b("open", db_path, lock_timeout=0.2)
    with kvmap.open(db_path, readonly=True) as r:
        assert r.get(b"k000") is None  # sync="off": not written yet
    got: dict[str, Any] = {}

    def second() -> None:
        t = time.monotonic()
        try:
            got["db"] = kvmap.open(db_path, lock_timeout=20)
        except BaseException as exc:
            got["error"] = exc
        got["waited"] = time.monotonic() - t

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.8)
    assert thread.is_alive()  # still waiting for A
    a("close")
    thread.join(30)
    assert "error" not in got, got
    print(f"the second writer waited {got['waited']:.2f} s")
    assert got["waited"] >= 0.8
    db = got["db"]
    try:
        assert dict(db.items()) == {b"k%03d" % i: b"a" for i in range(100)}
        db.put(b"new", b"b")
        db.check()
    finally:
        db.close()
    b("open", db_path, lock_timeout=5)
    assert b("gets", [b"new", b"k099"]) == [b"b", b"a"]


def test_writer_sigkilled_mid_transaction(db_path: str, procs: list[Agent | Worker]) -> None:
    """A writer process dies inside a write transaction: the next writer (another
    process) gets the lock at once, the database checks, and holds exactly the commits;
    a follower never saw the uncommitted keys and follows the new writer."""
    a, r = agent(procs), agent(procs)
    a("open", db_path, sync="normal", page_size=512)
    base = {b"k%03d" % i: b"base%d" % i for i in range(200)}
    a("commit", base)
    r("open", db_path, readonly=True)
    a("hold_write", {b"k%03d" % i: b"UNCOMMITTED" for i in range(0, 300, 2)})
    assert r("view") == (digest(sorted(base.items())), 200)
    a.kill()
    b = agent(procs)
    t0 = time.monotonic()
    b("open", db_path, sync="normal", lock_timeout=5)
    assert time.monotonic() - t0 < 2
    b("call", "check")
    assert b("items") == sorted(base.items())
    assert r("view") == (digest(sorted(base.items())), 200)
    b("commit", {b"after": b"1"})
    assert r("gets", [b"after", b"k000"]) == [b"1", b"base0"]


def _churn_writer(path: str, sync: str, acked: Any, ready: Any) -> None:
    """Commit 41-key transactions forever (each sets every b"g.." key to the
    transaction number and b"n" to it), recording in ``acked`` each commit that returned.
    Checkpoints every ~32 KB of WAL, so a SIGKILL lands mid-checkpoint too."""
    db = kvmap.open(path, sync=sync, page_size=512, checkpoint_size=32 * 1024)
    i = int(db.get(b"n", b"0"))
    acked.value = i
    ready.set()
    while True:
        i += 1
        v = b"%08d" % i + b"~" * (i % 5 * 40)
        with db.begin(write=True) as txn:
            for j in range(40):
                txn.put(b"g%03d" % j, v)
            txn.put(b"n", b"%d" % i)
        acked.value = i


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_writer_sigkilled_mid_commit(
    db_path: str, sync: str, rng: random.Random, procs: list[Agent | Worker]
) -> None:
    """SIGKILL a writer process at a random moment of a stream of commits and
    checkpoints, three times: each time the next writer gets the lock, check() passes,
    and the state is exactly one commit: the last acknowledged one or the next."""
    ctx = mp.get_context("spawn")
    for round_ in range(3):
        acked, ready = ctx.Value("q", 0), ctx.Event()
        w = worker(procs, _churn_writer, db_path, sync, acked, ready)
        assert ready.wait(30)
        start = acked.value
        time.sleep(rng.uniform(0.2, 0.7))
        w.kill()
        last = acked.value
        assert last > start
        with kvmap.open(db_path, lock_timeout=5) as db:
            db.check()
            n = int(db[b"n"])
            assert last <= n <= last + 1, (last, n)
            values = {db[b"g%03d" % j] for j in range(40)}
            assert values == {b"%08d" % n + b"~" * (n % 5 * 40)}
            assert len(db) == 41
        print(f"round {round_}: killed after commit {last} (from {start}); recovered {n}")


# == segment growth =========================================================================
def _value(i: int) -> bytes:
    size = 6000 if i % 8 == 0 else 1500  # every 8th is an overflow run
    seed = hashlib.blake2b(b"%d" % i).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _grow_writer(path: str, limit: int, seconds: float) -> dict:
    """Add keys (1.5 KB values, every 8th 6 KB) in 8-key transactions with b"count",
    checkpointing every 128 KB of WAL, until the file passes ``limit`` bytes."""
    db = kvmap.open(path, sync="normal", checkpoint_size=128 * 1024)
    i = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and data_size(path) < limit:
        with db.begin(write=True) as txn:
            for _ in range(8):
                txn.put(b"g%08d" % i, _value(i))
                i += 1
            txn.put(b"count", b"%d" % i)
    stats = db.stats()
    db.close()
    return {"keys": i, "segments": stats["segments"], "file": stats["file_size"]}


def _grow_reader(path: str, stop: Any) -> dict:
    """Scan snapshots until ``stop``: the count matches, every 17th value is checked."""
    db = kvmap.open(path, readonly=True)
    scans = 0
    most = 0
    while not stop.is_set():
        with db.begin() as s:
            count = int(s.get(b"count", b"0"))
            n = 0
            for k, v in s.items(prefix=b"g"):
                i = int(k[1:])
                assert i == n, (i, n)
                if i % 17 == 0:
                    assert v == _value(i), i
                n += 1
            assert n == count, (n, count)
            if count:
                assert s.get(b"g%08d" % (count - 1)) == _value(count - 1)
        scans += 1
        most = max(most, count)
    db.close()
    return {"scans": scans, "most": most}


def test_segment_growth_while_readers_scan(db_path: str, procs: list[Agent | Worker]) -> None:
    """The writer grows the file from 64 KB through ~8 segments while two reader
    processes scan: no error, no SIGBUS (the readers exit 0)."""
    with kvmap.open(db_path) as db:
        db.put(b"count", b"0")
    stop = mp.get_context("spawn").Event()
    readers = [worker(procs, _grow_reader, db_path, stop) for _ in range(2)]
    time.sleep(0.3)
    out = worker(procs, _grow_writer, db_path, 16 << 20, 15.0).result(60)
    time.sleep(0.3)  # let the readers scan the final state
    stop.set()
    results = [r.result() for r in readers]
    print(f"writer {out}, readers {results}")
    assert out["segments"] >= 7
    assert all(r["scans"] >= 5 and r["most"] > 0 for r in results)


# == fork and multiprocessing =================================================================
def _refused_calls(db: kvmap.Database) -> list[Callable[[], Any]]:
    calls: list[Callable[[], Any]] = [
        lambda: db.get(b"k"), lambda: db[b"k"], db.begin, lambda: len(db),
        lambda: list(db.items()), db.readers, db.check,
    ]  # fmt: skip
    if not db.readonly:
        calls += [lambda: db.put(b"child", b"x"), db.checkpoint, db.sync]
    return calls


def _inherited_child(handles: list[kvmap.Database], snap: Any) -> None:
    """Runs in a forked child: every inherited handle refuses use, and closing and
    collecting them releases nothing of the parent's."""
    for handle in handles:
        for call in _refused_calls(handle):
            with pytest.raises(kvmap.DatabaseClosedError, match="fork"):
                call()
    with pytest.raises((kvmap.TxnClosedError, kvmap.DatabaseClosedError)):
        snap.get(b"k")
    for handle in handles:
        handle.close()
    handles.clear()
    del handle, snap
    gc.collect()


@pytest.mark.parametrize("sync", ["normal", "off"])
def test_fork_child_cannot_use_inherited_handles(
    db_path: str, sync: str, procs: list[Agent | Worker]
) -> None:
    w = kvmap.open(db_path, sync=sync)
    try:
        w.put_many([(b"k%d" % i, b"v") for i in range(50)])
        r = kvmap.open(db_path, readonly=True)
        snap = r.begin()
        ctx = mp.get_context("fork")
        child = ctx.Process(target=_inherited_child, args=([w, r], snap))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        gc.collect()
        # the parent's handles keep working: writes, the writer lock, the reader slot
        w.put(b"k", b"after")
        w.checkpoint()
        w.put(b"k2", b"after")
        w.sync()
        assert r.get(b"k") == b"after" and r.get(b"k2") == b"after"
        assert snap.get(b"k") is None
        assert [x.pid for x in w.readers()] == [os.getpid()]
        b = agent(procs)
        with pytest.raises(kvmap.DatabaseLockedError):
            b("open", db_path, lock_timeout=0.1)
        snap.close()
        w.check()
        r.check()
        r.close()
    finally:
        w.close()


def test_fork_child_does_not_keep_the_parents_writer_lock(
    db_path: str, procs: list[Agent | Worker]
) -> None:
    """A forked child (a multiprocessing worker, say) that outlives its parent's
    writable handle must not keep the database locked: after the parent closes the
    handle, another process can open it for writing while the child still runs."""
    db = kvmap.open(db_path)
    db.put(b"k", b"v")
    ctx = mp.get_context("fork")
    release = ctx.Event()
    child = ctx.Process(target=release.wait, args=(30,), daemon=True)
    child.start()
    try:
        db.close()
        b = agent(procs)
        b("open", db_path, lock_timeout=2)
        b("commit", {b"k": b"b"})
    finally:
        release.set()
        child.join(30)


def test_fork_child_does_not_keep_a_dead_parents_reader_slot(
    db_path: str, procs: list[Agent | Worker]
) -> None:
    """A reader process holding a snapshot forks a long-lived child and is SIGKILLed:
    its slot must be reclaimed (not listed, its pages reusable) although the child that
    inherited the descriptors still runs."""
    with kvmap.open(db_path, page_size=512) as db:
        db.put(b"k", b"v")
        r = agent(procs)
        r("open", db_path, readonly=True)
        r("begin")
        sleeper = r("fork_sleeper", 30.0)
        try:
            assert [x.pid for x in db.readers()] == [r.pid]
            r.kill()
            assert db.readers() == []
        finally:
            os.kill(sleeper, signal.SIGKILL)


_POOL_DB: kvmap.Database | None = None


def _pool_init(path: str) -> None:
    global _POOL_DB
    _POOL_DB = kvmap.open(path, readonly=True)


def _pool_get(keys: list[bytes]) -> tuple[int, list[bytes | None]]:
    assert _POOL_DB is not None
    return os.getpid(), [_POOL_DB.get(k) for k in keys]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool(db_path: str, method: str) -> None:
    """Pool workers (fork: they inherit the parent's open writable handle) each open
    their own readonly handle and read correct values, also after the parent commits
    more while the pool runs; the parent's handle keeps working throughout."""
    keys = [b"key%05d" % i for i in range(2000)]
    db = kvmap.open(db_path, sync="normal", checkpoint_size=1 << 30)
    try:
        db.put_many([(k, b"one:" + k) for k in keys[:1000]])  # in the tree
        db.put_many([(k, b"one:" + k) for k in keys[1000:]])  # only in the WAL/memtable
        chunks = [keys[i : i + 100] for i in range(0, len(keys), 100)]
        ctx = mp.get_context(method)
        with ctx.Pool(2, initializer=_pool_init, initargs=(db_path,)) as pool:
            res = pool.map(_pool_get, chunks)
            assert [v for _, vs in res for v in vs] == [b"one:" + k for k in keys]
            pids = {p for p, _ in res}
            assert os.getpid() not in pids
            assert pids <= {x.pid for x in db.readers()}  # each worker that read has a slot
            with db.begin(write=True) as txn:
                for k in keys[::3]:
                    txn.put(k, b"two:" + k)
            res = pool.map(_pool_get, chunks)
            want = [b"two:" + k if i % 3 == 0 else b"one:" + k for i, k in enumerate(keys)]
            assert [v for _, vs in res for v in vs] == want
        db.put(b"after", b"pool")
        db.checkpoint()
        assert db[b"after"] == b"pool"
        db.check()
    finally:
        db.close()


# == handles in one process, the reader table ================================================
def test_two_handles_in_one_process(db_path: str) -> None:
    """A writable and two readonly handles in one process: the readonly ones follow
    commits and checkpoints, keep their snapshots, and each owns a slot."""
    with kvmap.open(db_path, sync="normal", page_size=512) as w:
        w.put_many([(b"k%03d" % i, b"0") for i in range(100)])
        r1 = kvmap.open(db_path, readonly=True)
        r2 = kvmap.open(db_path, readonly=True)
        try:
            assert r1[b"k050"] == b"0" and len(r2) == 100
            tree0 = w.stats()["txnid"]
            s1 = r1.begin()
            for round_ in range(1, 6):
                with w.begin(write=True) as txn:
                    for i in range(100):
                        txn.put(b"k%03d" % i, b"%d" % round_)
                if round_ % 2:
                    w.checkpoint()
                assert r1[b"k099"] == b"%d" % round_
                assert dict(r2.items()) == {b"k%03d" % i: b"%d" % round_ for i in range(100)}
            assert dict(s1.items()) == {b"k%03d" % i: b"0" for i in range(100)}
            listed = w.readers()
            assert len(listed) == 2 and {x.pid for x in listed} == {os.getpid()}
            assert len({x.slot for x in listed}) == 2
            # r1 keeps s1's tree in its slot; r2 moved on to the newest
            assert sorted(x.txnid for x in listed) == [tree0, w.stats()["txnid"]]
            s1.close()
            r1.close()
            assert [x.slot for x in w.readers()] == [x.slot for x in r2.readers()]
            r2.check()
        finally:
            r1.close()
            r2.close()
        with pytest.raises(kvmap.DatabaseLockedError):
            kvmap.open(db_path)  # a second writable handle, same process
        w.check()


def test_readers_full(db_path: str, procs: list[Agent | Worker]) -> None:
    """max_readers=2 fixed at creation: a third readonly handle (in any process) gets
    ReadersFullError; a slot freed by close() or by a SIGKILL is reused."""
    with kvmap.open(db_path, max_readers=2) as w:
        w.put(b"k", b"v")
        r1 = kvmap.open(db_path, readonly=True)
        r2 = kvmap.open(db_path, readonly=True, max_readers=100)  # fixed: no effect now
        with pytest.raises(kvmap.ReadersFullError):
            kvmap.open(db_path, readonly=True)
        r1.close()
        a = agent(procs)
        a("open", db_path, readonly=True)
        assert a("gets", [b"k"]) == [b"v"]
        assert "2" in a("readers_full", db_path)
        with pytest.raises(kvmap.ReadersFullError):
            kvmap.open(db_path, readonly=True)
        a.kill()  # its slot is stale now, and claimable
        r3 = kvmap.open(db_path, readonly=True)
        assert r3[b"k"] == b"v" and r2[b"k"] == b"v"
        assert sorted(x.pid for x in w.readers()) == [os.getpid()] * 2
        r2.close()
        r3.close()


def _unprivileged() -> None:
    """Become ``nobody`` (called in a forked child of a root test process)."""
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


def _readonly_copy_child(path: str, conn: Connection) -> None:
    if os.geteuid() == 0:
        _unprivileged()
    try:
        with pytest.raises(PermissionError):
            open(os.path.join(path, "probe"), "w")  # the location really is read-only
        with kvmap.open(path, readonly=True) as db:
            out = (digest(db.items()), len(db), db.readers(), db.check()["leaf"] > 0)
            with pytest.raises(kvmap.ReadOnlyError):
                db.put(b"x", b"y")
        conn.send(("ok", out))
    except BaseException as exc:
        conn.send(("err", traceback.format_exc(), repr(exc)))


@pytest.mark.parametrize("with_lock_file", [True, False])
def test_readonly_open_of_a_read_only_copy(with_lock_file: bool) -> None:
    """A copy in a directory without write permission (0o555, files 0o444), opened by a
    user who cannot write there: the lock file cannot be opened read-write (or created),
    so the handle reads without a reader table (readers() is empty).  Root ignores file
    modes, so as root the opening process first becomes ``nobody`` (a forked child)."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and there is no 'nobody' user to drop to")
    base = tempfile.mkdtemp(prefix="kvmap-ro-")
    try:
        os.chmod(base, 0o755)  # reachable by nobody (pytest's tmp_path is not)
        src, copy = os.path.join(base, "src"), os.path.join(base, "copy")
        with kvmap.open(src, page_size=512) as db:
            db.put_many([(b"k%04d" % i, b"v%d" % i) for i in range(500)])
            db.put(b"wal-only", b"yes")  # close() checkpoints: everything is in the tree
            want = (digest(db.items()), len(db))
        shutil.copytree(src, copy)
        if not with_lock_file:
            os.unlink(os.path.join(copy, LOCK_FILE))
        before = sorted(os.listdir(copy))
        for name in before:
            os.chmod(os.path.join(copy, name), 0o444)
        os.chmod(copy, 0o555)
        ctx = mp.get_context("fork")
        parent_conn, child_conn = ctx.Pipe()
        child = ctx.Process(target=_readonly_copy_child, args=(copy, child_conn))
        child.start()
        assert parent_conn.poll(60)
        reply = parent_conn.recv()
        child.join(10)
        assert reply[0] == "ok", reply[1]
        assert reply[1] == (*want, [], True)
        assert sorted(os.listdir(copy)) == before  # nothing created
    finally:
        for dirpath, _, _ in os.walk(base):
            os.chmod(dirpath, stat.S_IRWXU)
        shutil.rmtree(base)


# == the measurement (issue 4, "Measure") ====================================================
@pytest.mark.slow
def test_measure_readers_against_lmdb() -> None:
    """Runs ``python -m bench.readers`` (random-get throughput with 1 and 2 reader
    processes, snapshot-begin cost idle and after a commit; kvmap next to LMDB) and
    prints its table.  Numbers are reported, not asserted."""
    pytest.importorskip("lmdb")
    tmp = tempfile.mkdtemp(prefix="kvmap-bench-")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.readers", "--seconds", "2", "--dir", tmp],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(out.stdout)
    assert out.returncode == 0, out.stderr
    assert "scaling" in out.stdout and "begin" in out.stdout


def test_file_growth_while_a_snapshot_is_held_is_bounded(
    db_path: str, procs: list[Agent | Worker]
) -> None:
    """A snapshot held by a reader process pins the tree pages replaced since it began,
    nothing more: over N = 300 small checkpoints (each rewrites at most the branch and 3
    leaves of a 4-page tree) the file may grow by those 4 N pages plus the freelist runs
    that list them; even if no run were ever reused that is at most
    sum(ceil(8 * 8k / 500) for k <= N) more pages.  It must not grow exponentially."""
    n = 300
    with kvmap.open(db_path, page_size=512, sync="normal") as db:
        db.put_many([(ACCT % i, b"1000") for i in range(N_ACCOUNTS)])
        db.checkpoint()
        r = agent(procs)
        r("open", db_path, readonly=True)
        r("begin")
        hwm = [db.stats()["high_water_mark"]]
        for c in range(1, n + 1):
            with db.begin(write=True) as txn:
                for j in range(4):
                    txn.put(ACCT % ((c * 7 + j * 16) % N_ACCOUNTS), b"%d" % c)
            db.checkpoint()
            if c % 50 == 0:
                stats = db.stats()
                assert stats["pages"]["branch"] + stats["pages"]["leaf"] <= 4
                hwm.append(stats["high_water_mark"])
        r.kill()
    runs = sum(-(-8 * 8 * k // 500) for k in range(n + 1))
    bound = hwm[0] + 4 * n + runs
    print(f"high-water mark every 50 checkpoints: {hwm}; bound {bound}")
    assert hwm[-1] <= bound


class _CountingReads(fileio.FileSystem):
    """Counts the bytes ``pread`` returns."""

    def __init__(self) -> None:
        self.read = 0

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        data = super().pread(fd, size, offset)
        self.read += len(data)
        return data


def test_a_follower_reads_a_backlog_and_frames_bigger_than_its_first_read(
    db_path: str,
) -> None:
    """A follower's first read of the log per look is one page: a frame of 100 KB, and a
    backlog of hundreds of frames, are read on in bigger chunks, up to the commit the
    writer published, and no further than the allocated zeros after it."""
    with kvmap.open(db_path, checkpoint_size=1 << 30, sync="normal") as db:
        db.put(b"a", b"1")
        with kvmap.open(db_path, readonly=True) as ro:
            assert ro.get(b"a") == b"1"
            big = bytes(range(256)) * 400
            db.put(b"big", big)
            assert ro.get(b"big") == big  # one frame of 25 pages
            for i in range(300):
                db.put(b"s%03d" % i, b"x" * 50)
            db.put(b"big2", big[::-1])
            assert ro.get(b"s299") == b"x" * 50 and ro.get(b"big2") == big[::-1]
            assert len(ro) == len(db) == 303
            assert dict(ro.items()) == dict(db.items())


def test_a_follower_stops_at_a_frame_length_the_file_cannot_hold(db_path: str) -> None:
    """The length field of the next frame is damaged to 2**45: the follower must not try
    to read that much (MemoryError), but stop there, as replay stops at any bad frame."""
    with kvmap.open(db_path, sync="normal", checkpoint_size=1 << 30) as w:
        for i in range(5):
            w[b"k%d" % i] = b"v"
        with kvmap.open(db_path, readonly=True) as r:
            assert len(r) == 5
            assert w._wal is not None
            off = w._wal.offset
            w[b"k5"] = b"v" * 5000  # a frame longer than the follower's first read
            w[b"k6"] = b"v"
            [(_, path)] = list_wals(db_path)
            fd = os.open(path, os.O_RDWR)
            try:
                os.pwrite(fd, (1 << 45).to_bytes(8, "little"), off)
            finally:
                os.close(fd)
            assert len(r) == 5 and r.get(b"k4") == b"v" and r.get(b"k5") is None
            assert len(r) == 5  # looked again (the writer published more): still stops


def test_follower_catch_up_reads_only_what_was_appended(db_path: str) -> None:
    """A follower that catches up after each of N commits reads each WAL byte about once
    (plus a header and a page of the allocated tail per look), not the whole log each time
    (which would be O(N^2))."""
    counting = _CountingReads()
    with kvmap.open(db_path, checkpoint_size=1 << 30, sync="normal") as db:
        db.put(b"start", b"0")
        with fileio.installed(counting):
            follower = kvmap.open(db_path, readonly=True)
        try:
            before = counting.read
            for i in range(400):
                db.put(b"k%04d" % i, b"v" * 200)
                assert follower.get(b"k%04d" % i) == b"v" * 200
            wal = db.stats()["wal_size"]
            read = counting.read - before
        finally:
            follower.close()
    print(f"WAL {wal} bytes, the follower read {read} bytes over 400 catch-ups")
    assert wal > 400 * 200
    assert read < wal + 400 * (2 * 64 + 4096)  # a header and a page of the allocated tail per look


def test_an_idle_follower_does_not_pin_old_trees(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A readonly handle that reads once and then sits idle must not keep the writer from
    reusing pages: the follower refresher moves its hold to each new tree.  Without it,
    every checkpoint below would write fresh pages and the file would grow by all of them
    (the model: the same rounds with a snapshot held, which must pin)."""
    import kvmap.db as kdb

    monkeypatch.setattr(kdb, "_REFRESH_INTERVAL", 0.02)
    rounds = 40

    def grow(hold_snapshot: bool, path: str) -> int:
        with kvmap.open(path, page_size=512, checkpoint_size=0) as db:
            db.put_many([(b"k%04d" % i, b"0" * 40) for i in range(400)])
            follower = kvmap.open(path, readonly=True)
            snap = follower.begin() if hold_snapshot else None
            try:
                assert follower.get(b"k0000") == b"0" * 40  # then idle
                start = db.stats()["high_water_mark"]
                for r in range(rounds):
                    with db.begin(write=True) as txn:
                        for i in range(0, 400, 2):
                            txn.put(b"k%04d" % i, b"%d" % r * 40)
                    deadline = time.monotonic() + 5
                    # wait until the refresher moved the follower's hold (or time out)
                    while (
                        not hold_snapshot
                        and follower._seen.txnid != db._state.txnid  # type: ignore[union-attr]
                        and time.monotonic() < deadline
                    ):
                        time.sleep(0.005)
                grown = db.stats()["high_water_mark"] - start
            finally:
                if snap is not None:
                    snap.close()
                follower.close()
        return grown

    pinned = grow(True, db_path + "-pinned")
    idle = grow(False, db_path)
    print(f"pages grown over {rounds} checkpoints: idle follower {idle}, snapshot held {pinned}")
    assert pinned > 10 * rounds  # the model: a held snapshot pins every replaced page
    assert idle < pinned // 4


def test_fork_while_the_follower_refresher_holds_its_lock(db_path: str) -> None:
    """If fork() happens while the refresher thread holds its lock, the child's copy of
    the lock would stay held forever: a readonly open in the child must not hang."""
    import kvmap.db as kdb

    with kvmap.open(db_path) as db:
        db.put(b"k", b"v")
        with kdb._refresher_lock:  # as if the refresher thread were copying its set
            pid = os.fork()
            if pid == 0:  # the child: open a follower (which registers with the refresher)
                signal.alarm(10)
                try:
                    with kvmap.open(db_path, readonly=True) as r:
                        os._exit(0 if r.get(b"k") == b"v" else 1)
                except BaseException:
                    os._exit(2)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
