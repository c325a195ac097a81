"""Reader processes and snapshot begins, kvmap next to LMDB in one run (issue 4, "Measure").

``python -m bench.readers [--n 100000] [--seconds 3] [--dir DIR]`` prints a markdown table:

- **random gets, 1 and 2 reader processes**: each process opens its own readonly handle,
  makes one untimed pass over every key (warm caches, every answer checked), then does
  random gets of present keys for ``--seconds``; the row is the total gets/s of all
  processes, and the scaling is 2 processes / 1.  Two ways each: kvmap ``db.get`` (every
  call reads the latest commit) next to LMDB with a read transaction per get, and
  kvmap ``snapshot.get`` in one snapshot next to LMDB ``txn.get`` in one read transaction.
  The machine's own scaling (a pure-Python loop in 1 and in 2 processes) is printed
  beside it: on a 2-core machine with other tenants 2.0 is not available.
- **snapshot begin**: the cost of ``db.begin()`` + ``close()`` (LMDB: ``env.begin()`` +
  ``abort()``) in a reader process when nothing changed since the last begin, and right
  after another process committed one put (``sync="normal"``; LMDB ``sync=False``).  kvmap
  is measured with a fresh WAL and again once the writer's WAL holds ``--wal-mb`` MB of
  frames (a follower tails the WAL, so what it reads may depend on the WAL's size).

Numbers are medians of ``--repeat`` runs (begin costs) or of the timed window (gets).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import kvmap

try:
    import lmdb
except ImportError:  # pragma: no cover - the table then has kvmap only
    lmdb = None

VALUE = bytes(range(100))
MAP_SIZE = 1 << 34


def make_keys(n: int) -> list[bytes]:
    """``n`` distinct 16-byte keys (sorted: the bulk load wants them in order)."""
    rng = random.Random(42)
    return sorted({rng.randbytes(16) for _ in range(int(n * 1.01) + 16)})[:n]


def load(engine: str, path: str, keys: list[bytes]) -> None:
    if engine == "kvmap":
        with kvmap.open(path, sync="normal") as db:
            db.put_many(((k, VALUE) for k in keys), append=True)
    else:
        os.makedirs(path, exist_ok=True)
        env = lmdb.open(path, map_size=MAP_SIZE, sync=False)
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(((k, VALUE) for k in keys), append=True)
        env.sync(True)
        env.close()


# -- reader processes ------------------------------------------------------------------
def _getter(engine: str, mode: str, path: str) -> tuple[Callable[[bytes], Any], Any]:
    """(get function, handle to close) for one reader process."""
    if engine == "kvmap":
        db = kvmap.open(path, readonly=True)
        if mode == "latest":
            return db.get, db
        snap = db.begin()
        return snap.get, db
    env = lmdb.open(path, map_size=MAP_SIZE, readonly=True, lock=True)
    if mode == "snapshot":
        txn = env.begin()
        return txn.get, env

    def get(key: bytes) -> Any:
        with env.begin() as txn:
            return txn.get(key)

    return get, env


def reader_main(conn: Connection, engine: str, mode: str, path: str, n: int, seconds: float,
                seed: int) -> None:  # fmt: skip
    keys = make_keys(n)
    order = random.Random(seed).sample(keys, len(keys))
    if engine == "spin":
        get: Callable[[bytes], Any] = len
        handle = None
    else:
        get, handle = _getter(engine, mode, path)
        for k in order:  # the warm pass, every answer checked
            if get(k) != VALUE:
                raise AssertionError(f"{engine}: wrong value for {k!r}")
    conn.send("ready")
    conn.recv()
    count = 0
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + seconds
    i = 0
    while True:
        chunk = order[i : i + 1000]
        if len(chunk) < 1000:
            i = 0
            continue
        i += 1000
        for k in chunk:
            get(k)
        count += 1000
        if clock() >= deadline:
            break
    conn.send((count, clock() - t0))
    if handle is not None:
        handle.close()


def throughput(ctx: Any, engine: str, mode: str, path: str, nproc: int, n: int,
               seconds: float) -> float:  # fmt: skip
    """Total gets/s of ``nproc`` reader processes started at once."""
    conns, procs = [], []
    for i in range(nproc):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=reader_main, args=(child, engine, mode, path, n, seconds, i))
        p.start()
        conns.append(parent)
        procs.append(p)
    for c in conns:
        if c.recv() != "ready":
            raise RuntimeError("a reader failed")
    for c in conns:
        c.send("go")
    total = 0.0
    for c in conns:
        count, elapsed = c.recv()
        total += count / elapsed
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a reader process exited with {p.exitcode}")
    return total


# -- snapshot begin ----------------------------------------------------------------------
def writer_main(conn: Connection, engine: str, path: str) -> None:
    """Commit one put per request ("commit"), or ``("fill", nbytes)`` of puts, until None."""
    if engine == "kvmap":
        db = kvmap.open(path, sync="normal", checkpoint_size=1 << 30)

        def put(k: bytes) -> None:
            db.put(k, VALUE)

        close = db.close
    else:
        env = lmdb.open(path, map_size=MAP_SIZE, sync=False)

        def put(k: bytes) -> None:
            with env.begin(write=True) as txn:
                txn.put(k, VALUE)

        close = env.close
    i = 0
    while True:
        msg = conn.recv()
        if msg is None:
            break
        if msg == "commit":
            i += 1
            put(b"w%015d" % i)
        else:  # fill: about nbytes of WAL frames
            for _ in range(msg[1] // 130):
                i += 1
                put(b"w%015d" % i)
        conn.send(i)
    close()
    conn.send("closed")


def begin_cost(engine: str, path: str, writer: Connection | None, loops: int) -> float:
    """Seconds per begin+close; after a commit by ``writer`` each time if given."""
    if engine == "kvmap":
        db = kvmap.open(path, readonly=True)
        begin = db.begin
        end: Callable[[Any], None] = lambda s: s.close()  # noqa: E731
        close = db.close
    else:
        env = lmdb.open(path, map_size=MAP_SIZE, readonly=True, lock=True)
        begin = env.begin
        end = lambda t: t.abort()  # noqa: E731
        close = env.close
    end(begin())  # the first one pays for whatever the open left
    clock = time.perf_counter
    total = 0.0
    if writer is None:
        t0 = clock()
        for _ in range(loops):
            end(begin())
        total = clock() - t0
    else:
        for _ in range(loops):
            writer.send("commit")
            writer.recv()
            t0 = clock()
            s = begin()
            total += clock() - t0
            end(s)
    close()
    return total / loops


def begin_costs(ctx: Any, engine: str, path: str, repeat: int, wal_mb: float) -> dict[str, float]:
    out: dict[str, list[float]] = {"idle": [], "commit": [], "commit_big_wal": []}
    parent, child = ctx.Pipe()
    w = ctx.Process(target=writer_main, args=(child, engine, path))
    w.start()
    try:
        for _ in range(repeat):
            out["idle"].append(begin_cost(engine, path, None, 20000))
            out["commit"].append(begin_cost(engine, path, parent, 1000))
        if engine == "kvmap":
            parent.send(("fill", int(wal_mb * 1e6)))
            parent.recv()
            for _ in range(repeat):
                out["commit_big_wal"].append(begin_cost(engine, path, parent, 200))
    finally:
        parent.send(None)
        parent.recv()
        w.join()
    return {k: statistics.median(v) for k, v in out.items() if v}


# -- the run -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.readers", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="keys (default 100000)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed window per get run")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each begin measurement")
    ap.add_argument("--wal-mb", type=float, default=8.0, help="WAL size for the last row")
    ap.add_argument("--dir", default=None, help="where the databases go (default: a temp dir)")
    args = ap.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    base = tempfile.mkdtemp(prefix="bench-readers-", dir=args.dir)
    engines = ["kvmap"] + (["lmdb"] if lmdb is not None else [])
    keys = make_keys(args.n)
    try:
        paths = {}
        for e in engines:
            paths[e] = os.path.join(base, e)
            load(e, paths[e], keys)
        del keys
        spin = {p: throughput(ctx, "spin", "", "", p, args.n, args.seconds) for p in (1, 2)}
        gets: dict[tuple[str, str], dict[int, float]] = {}
        for mode in ("latest", "snapshot"):
            for e in engines:
                gets[e, mode] = {
                    p: throughput(ctx, e, mode, paths[e], p, args.n, args.seconds) for p in (1, 2)
                }
        begins = {e: begin_costs(ctx, e, paths[e], args.repeat, args.wal_mb) for e in engines}
    finally:
        shutil.rmtree(base, ignore_errors=True)

    lm = f"lmdb {lmdb.__version__}" if lmdb is not None else "lmdb (not installed)"
    print(
        f"# readers: kvmap {kvmap.__version__} vs {lm}; n={args.n}, 100-byte values, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"
    )
    print()
    print("| random gets | 1 process | 2 processes | scaling |")
    print("| --- | ---: | ---: | ---: |")
    label = {
        ("kvmap", "latest"): "kvmap `db.get` (latest commit each call)",
        ("lmdb", "latest"): "lmdb read txn per get",
        ("kvmap", "snapshot"): "kvmap `snapshot.get` (one snapshot)",
        ("lmdb", "snapshot"): "lmdb `txn.get` (one read txn)",
    }
    for key, row in gets.items():
        print(f"| {label[key]} | {row[1]:,.0f}/s | {row[2]:,.0f}/s | {row[2] / row[1]:.2f}x |")
    print(f"| (machine: pure-Python loop) | {spin[1]:,.0f}/s | {spin[2]:,.0f}/s | "
          f"{spin[2] / spin[1]:.2f}x |")  # fmt: skip
    print()
    print("| snapshot begin + close | nothing changed | after a commit by another process |")
    print("| --- | ---: | ---: |")
    for e in engines:
        b = begins[e]
        print(f"| {e} | {b['idle'] * 1e6:.2f} µs | {b['commit'] * 1e6:.2f} µs |")
    if "commit_big_wal" in begins["kvmap"]:
        print(f"| kvmap, writer's WAL at {args.wal_mb:g} MB | | "
              f"{begins['kvmap']['commit_big_wal'] * 1e6:.2f} µs |")  # fmt: skip
    return 0


if __name__ == "__main__":  # spawned children import this module as __mp_main__
    sys.exit(main())
