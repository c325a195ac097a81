"""The data set, the workloads and the code that runs them inside one process.

Every engine runs the same workloads on the same data, regenerated from ``--seed`` in each
process (so nothing large is pickled between processes):

- ``keys``: ``n`` distinct random 16-byte keys, in random order (the order of random puts);
  ``missing``: ``n`` more that are never loaded; one random value of ``--value-size`` bytes
  (``value``) and a second one (``value2``) that the mixed workload and the writer store
  (both update loaded keys, so the main database keeps its ``n`` keys).
- An engine's workloads run in one child process per repetition (:func:`engine_child`), in
  this order: a warm-up on a scratch database (untimed), the bulk load (the "main"
  database), the reads on it (gets, missing gets, full scan, short scans), the mixed
  workload, then the random-put workloads, each into an empty database of its own.  The
  reader-process workloads then run on the main database from persistent helper processes
  (:func:`helper_main`), driven by the runner.
- A write workload's time includes ``close()``, which makes every write durable (kvmap's final
  checkpoint, LMDB's ``env.sync(True)``, SQLite's WAL checkpoint, semidbm's fsync), not the
  ``open()`` of the empty database.  A read workload first makes one untimed pass over the
  same operations (warming every cache and checking every answer), then, in a fresh
  snapshot, times whole passes repeated until ``Config.read_seconds`` have passed.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import shutil
import time
import traceback
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from multiprocessing.connection import Connection
from typing import Any

from . import adapters

KEY_SIZE = 16
BATCH = 1000  # puts per transaction in "put_batch"
SHORT_SCANS = 1000
SHORT_LEN = 100
MIXED_PUT_SHARE = 0.1
WARM_KEYS = 1000  # keys in the warm-up database
#: gets in a reader process's warm pass: at large n they touch every leaf page many times
#: over, and the engine's process has already brought the file into the OS page cache
READER_WARM = 200_000


@dataclass(frozen=True)
class Workload:
    """One row of the report."""

    name: str
    title: str
    unit: str
    #: "child": timed in the engine's process; "readers": timed in helper processes;
    #: "metric": measured, not timed; "derived": computed from other rows
    kind: str = "child"
    higher_is_better: bool = True
    #: the durability mode the workload runs in ("" for reads and metrics)
    mode: str = ""


WORKLOADS: list[Workload] = [
    Workload("load", "bulk load in key order (full)", "keys/s", mode="full"),
    Workload("put_batch", "random puts, 1000 per txn (full)", "puts/s", mode="full"),
    Workload("put_each_normal", "random puts, 1 commit each (normal)", "puts/s", mode="normal"),
    Workload("put_each_full", "random puts, 1 commit each (full)", "puts/s", mode="full"),
    Workload("get", "random gets, present keys (warm)", "gets/s"),
    Workload("get_missing", "random gets, missing keys (warm)", "gets/s"),
    Workload("scan", "full ordered scan", "keys/s"),
    Workload("short_scans", "1000 short scans of 100 keys, random starts", "scans/s"),
    Workload("mixed", "mixed 90% get / 10% put (normal)", "ops/s", mode="normal"),
    Workload("readers_1", "random gets, 1 reader process, idle", "gets/s", "readers"),
    Workload("readers_2", "random gets, 2 reader processes, idle", "gets/s", "readers"),
    Workload("readers_scaling", "2 reader processes / 1, idle (scaling)", "x", "derived"),
    Workload("readers_1_writer", "random gets, 1 reader process, 1 writer", "gets/s", "readers"),
    Workload("readers_2_writer", "random gets, 2 reader processes, 1 writer", "gets/s", "readers"),
    Workload(
        "disk_load", "bytes on disk per key after load (lower is better)", "B/key", "metric", False
    ),
    Workload(
        "disk_puts",
        "bytes on disk per key after random puts (lower is better)",
        "B/key",
        "metric",
        False,
    ),
    Workload("rss", "peak RSS of the engine's process (lower is better)", "MiB", "metric", False),
    Workload(
        "reader_rss", "RSS growth of 1 reader process (lower is better)", "MiB", "metric", False
    ),
]
BY_NAME = {w.name: w for w in WORKLOADS}
#: the names --workloads accepts
SELECTABLE = [w.name for w in WORKLOADS if w.kind in ("child", "readers")]
#: workloads that read the main database (so need the bulk load)
NEEDS_MAIN = {"get", "get_missing", "scan", "short_scans", "mixed"} | {
    w.name for w in WORKLOADS if w.kind == "readers"
}
#: reader workloads: name -> (reader processes, with a writer)
READERS = {
    "readers_1": (1, False),
    "readers_2": (2, False),
    "readers_1_writer": (1, True),
    "readers_2_writer": (2, True),
}


def sync_n(n: int) -> int:
    """Commits in "put_each_full": 1/50 of n, at least 100 (or n), at most 10,000, since each
    is an fsync (or two) and the run must stay short."""
    return min(n, max(100, min(n // 50, 10_000)))


@dataclass
class Config:
    """What a run measures; pickled to every child process."""

    n: int = 100_000
    value_size: int = 100
    seed: int = 1
    reps: int = 3
    workloads: list[str] = field(default_factory=lambda: list(SELECTABLE))
    quick: bool = False
    #: a read-only workload repeats its pass over the same operations until this long
    read_seconds: float = 0.2
    #: how long reader processes do random gets (all of them at once)
    reader_seconds: float = 1.0

    @property
    def n_sync(self) -> int:
        return sync_n(self.n)

    def ops(self, name: str) -> int:
        """How many operations workload ``name`` times."""
        if name == "put_each_full":
            return self.n_sync
        if name == "short_scans":
            return SHORT_SCANS
        return self.n

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_sync"] = self.n_sync
        d["key_size"] = KEY_SIZE
        d["batch"] = BATCH
        return d


class Dataset:
    """The keys and values of one run, the same in every process for one seed."""

    def __init__(self, n: int, value_size: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        rng = random.Random(seed)
        raw = rng.randbytes(KEY_SIZE * 2 * n)
        every = [raw[i : i + KEY_SIZE] for i in range(0, len(raw), KEY_SIZE)]
        if len(set(every)) != len(every):  # 2^-128 per pair: never, but say so if it does
            raise RuntimeError(f"seed {seed} drew a duplicate key; use another --seed")
        self.keys = every[:n]
        self.missing = every[n:]
        self.value = rng.randbytes(value_size)
        self.value2 = rng.randbytes(value_size)

    def rng(self, salt: str) -> random.Random:
        return random.Random(f"{self.seed}:{salt}")

    @cached_property
    def sorted_keys(self) -> list[bytes]:
        return sorted(self.keys)

    def shuffled(self, salt: str) -> list[bytes]:
        """The present keys in a random order of their own (per workload or reader)."""
        order = self.keys[:]
        self.rng(salt).shuffle(order)
        return order

    @cached_property
    def short_starts(self) -> list[bytes]:
        rng = self.rng("short")
        return [rng.randbytes(KEY_SIZE) for _ in range(SHORT_SCANS)]

    @cached_property
    def mixed_ops(self) -> list[tuple[bool, bytes]]:
        """n operations: (True, key) is a put of ``value2``, (False, key) a get; keys are
        drawn from the present keys."""
        rng = self.rng("mixed")
        keys = self.keys
        n = len(keys)
        rand, below = rng.random, rng.randrange
        return [(rand() < MIXED_PUT_SHARE, keys[below(n)]) for _ in range(n)]


class BenchError(Exception):
    """An engine gave a wrong answer (the harness checks every read of the warm pass)."""


# -- measurements -------------------------------------------------------------------------
def disk_usage(path: str) -> tuple[int, int]:
    """(allocated bytes = sum of st_blocks * 512, apparent bytes = sum of st_size) of every
    file under ``path``.  Allocated bytes are the primary number: a sparse file (kvmap's data
    file grows by segments) occupies only the blocks written."""
    blocks = size = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            blocks += st.st_blocks * 512
            size += st.st_size
    return blocks, size


def peak_rss_mib() -> float:
    """This process's peak resident set size, MiB: ``VmHWM`` from /proc/self/status on
    Linux.  (Not ``ru_maxrss``: Linux carries it across ``execve`` from the forked copy of
    the parent, so a spawned child would report at least its parent's size.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except OSError:
        return peak_rss_mib()


def sample(ops: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"ops": ops, "seconds": seconds, "value": ops / seconds if seconds > 0 else 0.0, **extra}


# -- the workloads of one engine process ---------------------------------------------------
AdapterT = type[adapters.Adapter]


def _check_gets(r: adapters.Reader, keys: Sequence[bytes], ok: Callable[[Any], bool]) -> None:
    get = r.get
    bad = [k for k in keys if not ok(get(k))]
    if bad:
        raise BenchError(
            f"{len(bad)} of {len(keys)} gets returned a wrong answer, e.g. key {bad[0].hex()}"
            f" -> {str(get(bad[0]))[:60]}"
        )


def _expected_short(ds: Dataset) -> int:
    keys, n = ds.sorted_keys, ds.n
    return sum(min(SHORT_LEN, n - bisect_left(keys, s)) for s in ds.short_starts)


def _check_scan(r: adapters.Reader, ds: Dataset, values: tuple[bytes, ...]) -> None:
    count = 0
    prev = b""
    for k, v in r.items():
        if k <= prev or v not in values:
            raise BenchError(f"full scan: item {count} ({k.hex()}) out of order or wrong value")
        prev = k
        count += 1
    if count != ds.n:
        raise BenchError(f"full scan returned {count} keys, expected {ds.n}")


def _time_gets(db: adapters.Adapter, keys: Sequence[bytes], least: float) -> dict[str, Any]:
    """Random gets in one snapshot: whole passes over ``keys`` until ``least`` seconds."""
    with db.snapshot() as r:
        get = r.get
        passes = 0
        t = time.perf_counter()
        while True:
            for k in keys:
                get(k)
            passes += 1
            elapsed = time.perf_counter() - t
            if elapsed >= least:
                return sample(passes * len(keys), elapsed, passes=passes)


def _verify_sample(cls: AdapterT, path: str, keys: Sequence[bytes], value: bytes) -> None:
    """After a write workload: reopen, and read back up to 1000 of the keys written."""
    db = cls(path, "normal")
    try:
        with db.snapshot() as r:
            _check_gets(r, keys[:: max(1, len(keys) // 1000)], lambda v: v == value)
    finally:
        db.close()


def run_load(cls: AdapterT, ds: Dataset, path: str) -> dict[str, dict[str, Any]]:
    db = cls(path, "full")
    t = time.perf_counter()
    db.bulk_load(ds.sorted_keys, ds.value)
    db.close()
    t = time.perf_counter() - t
    blocks, size = disk_usage(path)
    return {
        "load": sample(ds.n, t),
        "disk_load": {"value": blocks / ds.n, "bytes": blocks, "apparent_bytes": size},
    }


def run_reads(
    db: adapters.Adapter,
    ds: Dataset,
    names: list[str],
    step: Callable[[str], None],
    report: Callable[[dict[str, dict[str, Any]]], None],
    least: float,
) -> None:
    """get, get_missing, scan, short_scans on one handle of the loaded database, each
    reported as soon as it is done.  Each is checked in an untimed pass, then timed in a
    fresh snapshot, repeating whole passes until ``least`` seconds have passed (a short pass
    is mostly noise)."""
    values = (ds.value, ds.value2)
    if "get" in names:
        step("get")
        order = ds.shuffled("get")
        with db.snapshot() as r:
            _check_gets(r, order, lambda v: v == ds.value)
        report({"get": _time_gets(db, order, least)})
    if "get_missing" in names:
        step("get_missing")
        order = ds.missing
        with db.snapshot() as r:
            _check_gets(r, order, lambda v: v is None)
        report({"get_missing": _time_gets(db, order, least)})
    if "scan" in names:
        step("scan")
        with db.snapshot() as r:
            _check_scan(r, ds, values)
        with db.snapshot() as r:
            passes = 0
            t = time.perf_counter()
            while True:
                deque(r.items(), maxlen=0)
                passes += 1
                elapsed = time.perf_counter() - t
                if elapsed >= least:
                    break
        report({"scan": sample(passes * ds.n, elapsed, passes=passes)})
    if "short_scans" in names:
        step("short_scans")
        starts = ds.short_starts
        with db.snapshot() as r:
            got = sum(len(list(r.items_from(s, SHORT_LEN))) for s in starts)
        if got != _expected_short(ds):
            want = _expected_short(ds)
            raise BenchError(f"short scans returned {got} items, expected {want}")
        with db.snapshot() as r:
            items_from = r.items_from
            passes = 0
            t = time.perf_counter()
            while True:
                for s in starts:
                    deque(items_from(s, SHORT_LEN), maxlen=0)
                passes += 1
                elapsed = time.perf_counter() - t
                if elapsed >= least:
                    break
        report({"short_scans": sample(passes * len(starts), elapsed, passes=passes, items=got)})


def run_mixed(cls: AdapterT, ds: Dataset, path: str, db: adapters.Adapter | None) -> dict[str, Any]:
    """The mixed workload on ``db`` (the handle the reads warmed), or on a new handle after a
    warm pass of gets.  The handle is closed (made durable) inside the timing."""
    if db is None:
        db = cls(path, "normal")
        for k in ds.keys:  # warm this handle's caches, as the reads would have
            db.get(k)
    get, put = db.get, db.put
    ops, v2 = ds.mixed_ops, ds.value2
    t = time.perf_counter()
    for is_put, k in ops:
        if is_put:
            put(k, v2)
        else:
            get(k)
    db.close()
    t = time.perf_counter() - t
    return sample(len(ops), t, puts=sum(p for p, _ in ops))


def run_put_batch(cls: AdapterT, ds: Dataset, path: str) -> dict[str, dict[str, Any]]:
    keys, value = ds.keys, ds.value
    db = cls(path, "full")
    put_batch = db.put_batch
    t = time.perf_counter()
    for i in range(0, len(keys), BATCH):
        put_batch(keys[i : i + BATCH], value)
    db.close()
    t = time.perf_counter() - t
    blocks, size = disk_usage(path)
    _verify_sample(cls, path, keys, value)
    return {
        "put_batch": sample(len(keys), t),
        "disk_puts": {"value": blocks / len(keys), "bytes": blocks, "apparent_bytes": size},
    }


def run_put_each(
    cls: AdapterT, keys: Sequence[bytes], value: bytes, path: str, mode: str
) -> dict[str, Any]:
    db = cls(path, mode)
    put = db.put
    t = time.perf_counter()
    for k in keys:
        put(k, value)
    db.close()
    t = time.perf_counter() - t
    _verify_sample(cls, path, keys, value)
    return sample(len(keys), t)


def _close_quietly(db: adapters.Adapter | None) -> None:
    if db is not None:
        try:
            db.close()
        except Exception:
            pass


def warm_up(cls: AdapterT, ds: Dataset, workdir: str) -> None:
    """Run every code path once on a scratch database (untimed): imports, first calls and
    the interpreter's specialisation happen here, not in the first timed workload."""
    keys = ds.keys[:WARM_KEYS]
    a, b = os.path.join(workdir, "warm-a"), os.path.join(workdir, "warm-b")
    db = cls(a, "full")
    db.bulk_load(sorted(keys), ds.value)
    db.close()
    db = cls(a, "normal")
    with db.snapshot() as r:
        _check_gets(r, keys, lambda v: v == ds.value)
        _check_gets(r, ds.missing[:WARM_KEYS], lambda v: v is None)
        deque(r.items(), maxlen=0)
        for s in ds.short_starts[:50]:
            deque(r.items_from(s, SHORT_LEN), maxlen=0)
    for k in keys[:100]:
        db.get(k)
        db.put(k, ds.value2)
    db.close()
    db = cls(b, "full")
    db.put_batch(keys, ds.value)
    db.close()
    db = cls(b, "normal")
    for k in ds.missing[:100]:
        db.put(k, ds.value)
    db.close()
    shutil.rmtree(a)
    shutil.rmtree(b)


def engine_child(conn: Connection, engine: str, cfg: Config, workdir: str) -> None:
    """One engine's workloads for one repetition, in a process of its own (so its peak RSS
    is its own).  Sends ("step", name), ("sample", name, dict), ("error", name, text) and
    finally ("end", dict) through ``conn``."""
    names = cfg.workloads

    current = ["setup"]

    def step(name: str) -> None:
        current[0] = name
        conn.send(("step", name))

    def report(results: dict[str, dict[str, Any]]) -> None:
        for name, data in results.items():
            conn.send(("sample", name, data))

    def fail(name: str) -> None:
        conn.send(("error", name, traceback.format_exc()))

    try:
        ds = Dataset(cfg.n, cfg.value_size, cfg.seed)
        _ = ds.sorted_keys, ds.short_starts  # built before the baseline is taken
        if "mixed" in names:
            _ = ds.mixed_ops
        gc.collect()
        gc.freeze()  # the data set is never garbage: keep the collector off it
        baseline = peak_rss_mib()
        cls = adapters.load(engine)
        step("warm-up")
        warm_up(cls, ds, workdir)
    except Exception:
        fail("setup")
        conn.send(("end", {}))
        return

    main = os.path.join(workdir, "main")
    main_ok = False
    if "load" in names or NEEDS_MAIN & set(names):
        step("load")
        try:
            results = run_load(cls, ds, main)
            if "load" not in names:  # loaded only as the other workloads' data
                results = {}
            report(results)
            main_ok = True
        except Exception:
            fail("load")
    reads = [w for w in ("get", "get_missing", "scan", "short_scans") if w in names]
    db: adapters.Adapter | None = None
    if reads and main_ok:
        try:
            db = cls(main, "normal")
            run_reads(db, ds, reads, step, report, cfg.read_seconds)
        except Exception:
            fail(current[0])
            _close_quietly(db)
            db = None
    if "mixed" in names and main_ok:
        step("mixed")
        try:
            report({"mixed": run_mixed(cls, ds, main, db)})
        except Exception:
            fail("mixed")
        db = None  # closed by run_mixed (or left to the end of this process on failure)
    _close_quietly(db)
    if "put_batch" in names:
        step("put_batch")
        path = os.path.join(workdir, "put_batch")
        try:
            report(run_put_batch(cls, ds, path))
        except Exception:
            fail("put_batch")
        shutil.rmtree(path, ignore_errors=True)
    for name, mode, count in (
        ("put_each_normal", "normal", cfg.n),
        ("put_each_full", "full", cfg.n_sync),
    ):
        if name in names:
            step(name)
            path = os.path.join(workdir, name)
            try:
                report({name: run_put_each(cls, ds.keys[:count], ds.value, path, mode)})
            except Exception:
                fail(name)
            shutil.rmtree(path, ignore_errors=True)
    conn.send(("end", {"rss": peak_rss_mib(), "rss_baseline": baseline, "main_ok": main_ok}))


# -- helper processes: readers and the writer ----------------------------------------------
class _Held:
    """A reader handle a helper keeps open across the reader workloads of one engine and
    repetition (its caches stay warm; each reader process still has its own handle)."""

    def __init__(self, cls: AdapterT, ds: Dataset, path: str, index: int) -> None:
        self.key = (cls.name, path, index)
        self.rss0 = current_rss_mib()
        self.db = cls(path, "normal", readonly=True)
        try:
            self.order = ds.shuffled(f"reader{index}")
            with self.db.snapshot() as r:  # the warm pass, every answer checked
                _check_gets(r, self.order[:READER_WARM], lambda v: v is not None)
        except BaseException:
            self.db.close()
            raise


def helper_main(conn: Connection) -> None:
    """A persistent helper process: runs reader and writer jobs sent by the runner.

    A job is ("read", engine, path, cfg, index), ("write", engine, path, cfg, index) or
    ("release",).  A reader opens its own readonly handle the first time it reads ``path``
    and makes an untimed, checked pass over its gets; it keeps that handle (warm) for the
    next reader jobs on the same database until "release".  It then sends ("ready",), waits
    for "go" (or "abort"), does random gets in one snapshot for ``cfg.reader_seconds``, and
    sends ("done", dict).  A writer opens a handle, sends ("ready",), and after "go" commits
    one put at a time until the runner sends "stop".  Any failure is sent as ("error", text).
    """
    cache: dict[tuple[int, int, int], Dataset] = {}
    held: _Held | None = None
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if isinstance(job, str):  # a "stop" for a writer job that had already failed
            continue
        if job[0] == "spin":
            conn.send(("done", spin(conn, job[1])))
            continue
        if job[0] in ("exit", "release"):
            if held is not None:
                held.db.close()
                held = None
            if job[0] == "exit":
                return
            conn.send(("done", {}))
            continue
        kind, engine, path, cfg, index = job
        try:
            key = (cfg.n, cfg.value_size, cfg.seed)
            if key not in cache:
                cache.clear()
                cache[key] = Dataset(*key)
                gc.collect()
                gc.freeze()
            ds = cache[key]
            cls = adapters.load(engine)
            if kind == "read":
                if held is not None and held.key != (cls.name, path, index):
                    held.db.close()
                    held = None
                if held is None:
                    held = _Held(cls, ds, path, index)
                conn.send(("done", _reader_job(conn, held, cfg.reader_seconds)))
            else:
                if held is not None:  # one process, one handle: lmdb allows no second
                    held.db.close()
                    held = None
                conn.send(("done", _writer_job(conn, cls, ds, path)))
        except Exception:
            if held is not None:
                try:
                    held.db.close()
                except Exception:
                    pass
                held = None
            conn.send(("error", traceback.format_exc()))


def spin(conn: Connection, seconds: float) -> dict[str, Any]:
    """The machine's own scaling: a pure-Python loop (no engine) for ``seconds`` after "go";
    the runner compares one such process alone with two at once."""
    conn.send(("ready",))
    conn.recv()
    loops = 0
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + seconds
    while clock() < deadline:
        for _ in range(1000):
            loops += 1
    return {"ops": loops, "t0": t0, "t1": clock()}


def _reader_job(conn: Connection, held: _Held, seconds: float) -> dict[str, Any]:
    conn.send(("ready",))
    if conn.recv() != "go":
        return {"aborted": True}
    order = held.order
    chunks = [order[i : i + 1000] for i in range(0, len(order), 1000)]
    ops = 0
    with held.db.snapshot() as r:
        get = r.get
        clock = time.perf_counter  # CLOCK_MONOTONIC: comparable across processes
        t0 = clock()
        deadline = t0 + seconds
        while True:
            for chunk in chunks:
                for k in chunk:
                    get(k)
                ops += len(chunk)
                if clock() >= deadline:
                    break
            else:
                continue
            break
        t1 = clock()
    return {"ops": ops, "t0": t0, "t1": t1, "rss_growth": current_rss_mib() - held.rss0}


def _writer_job(conn: Connection, cls: AdapterT, ds: Dataset, path: str) -> dict[str, Any]:
    db = cls(path, "normal")
    try:
        # Updates of random loaded keys: the database keeps its n keys while the readers
        # read (new keys would grow it by every commit the writer makes, faster engines more).
        keys, value = ds.shuffled("writer"), ds.value2
        n = len(keys)
        put, poll = db.put, conn.poll
        conn.send(("ready",))
        if conn.recv() != "go":
            return {"aborted": True}
        i = 0
        t0 = time.perf_counter()
        while True:
            put(keys[i % n], value)
            i += 1
            if not i & 31 and poll():
                break
        t1 = time.perf_counter()
        conn.recv()  # "stop"
        return {"commits": i, "t0": t0, "t1": t1}
    finally:
        db.close()
