"""Reads at scale: random gets over 100k and 1M keys from a fresh reader process.

    python -m bench.scale [--sizes 100000 1000000] [--gets 300000] [--engines kvmap lmdb]

For each size, each engine bulk-loads the keys (16 random bytes, 100-byte values) and
closes; then a new process opens the database (kvmap ``readonly=True`` with the default
32 MiB page cache, or ``--cache-size``; lmdb ``readonly=True``), does one warm-up pass of
``--gets`` random gets of present keys, then a timed pass of the same number, and reports
gets/s and its peak
resident set size (``VmHWM``).  Printed: a table per engine and size, the 1M/100k
throughput ratio (issue 5 asks kvmap for >= 0.7) and the reader's peak RSS (< 200 MiB).

The reader is a fresh process so that its RSS counts only what reading costs: the
mapping's resident pages (shared with the OS page cache) plus the decoded-page cache.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import shutil
import tempfile
import time
from typing import Any

VALUE = b"v" * 100


def _keys(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    keys: set[bytes] = set()
    while len(keys) < n:
        keys.add(rng.randbytes(16))
    return sorted(keys)


def load(engine: str, path: str, keys: list[bytes]) -> float:
    """Bulk-load ``keys`` in order; returns seconds."""
    t = time.perf_counter()
    if engine == "kvmap":
        import kvmap

        with kvmap.open(path, sync="normal") as db:
            db.put_many(((k, VALUE) for k in keys), append=True)
    else:
        import lmdb

        os.makedirs(path, exist_ok=True)
        env = lmdb.open(path, map_size=1 << 36, sync=False)
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(((k, VALUE) for k in keys), append=True)
        env.sync(True)
        env.close()
    return time.perf_counter() - t


def _reader(engine: str, path: str, probe: list[bytes], out: Any, cache_size: int) -> None:
    """In a fresh process: warm pass, timed pass; sends (gets/s, peak RSS bytes)."""
    if engine == "kvmap":
        import kvmap

        db = kvmap.open(path, readonly=True, cache_size=cache_size)
        snap = db.begin()
        get = snap.get
    else:
        import lmdb

        env = lmdb.open(path, readonly=True, lock=True)
        txn = env.begin()
        get = txn.get
    for k in probe:  # warm-up: every page the probe touches is mapped and decoded
        get(k)
    t = time.perf_counter()
    misses = 0
    for k in probe:
        if get(k) != VALUE:
            misses += 1
    elapsed = time.perf_counter() - t
    if misses:
        raise SystemExit(f"{engine}: {misses} gets returned a wrong value")
    out.send((len(probe) / elapsed, _peak_rss()))


def _peak_rss() -> int:
    """This process's peak resident set size in bytes: ``VmHWM`` (``ru_maxrss`` would
    report the parent's size: Linux carries it across the fork and exec of a spawn)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read(engine: str, path: str, probe: list[bytes], cache_size: int) -> tuple[float, int]:
    """(gets/s, peak RSS in bytes) of a fresh reader process."""
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_reader, args=(engine, path, probe, b, cache_size))
    p.start()
    b.close()
    result = a.recv()
    p.join()
    return result  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--gets", type=int, default=300_000)
    ap.add_argument("--engines", nargs="+", default=["kvmap", "lmdb"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--cache-size", type=int, default=32, metavar="MIB",
        help="kvmap's cache_size for the reader, in MiB (default 32, kvmap's default)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="kvmap-scale-")
    rows: dict[tuple[str, int], tuple[float, float, int]] = {}
    try:
        for n in args.sizes:
            keys = _keys(n, args.seed)
            rng = random.Random(args.seed + 1)
            probe = [keys[rng.randrange(n)] for _ in range(args.gets)]
            for engine in args.engines:
                path = os.path.join(work, f"{engine}-{n}")
                secs = load(engine, path, keys)
                rate, rss = read(engine, path, probe, args.cache_size << 20)
                rows[engine, n] = (secs, rate, rss)
                shutil.rmtree(path)
                print(
                    f"{engine:6} n={n:>9,}: load {secs:6.2f} s, {rate:>10,.0f} gets/s, "
                    f"reader peak RSS {rss / 2**20:6.1f} MiB",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, big = min(args.sizes), max(args.sizes)
    print()
    print(f"| engine | gets/s at {small:,} | gets/s at {big:,} | ratio | peak RSS at {big:,} |")
    print("| --- | --- | --- | --- | --- |")
    for engine in args.engines:
        a, b = rows[engine, small], rows[engine, big]
        print(
            f"| {engine} | {a[1]:,.0f} | {b[1]:,.0f} | {b[1] / a[1]:.2f} | {b[2] / 2**20:.0f} MiB |"
        )
    if "kvmap" in args.engines and "lmdb" in args.engines:
        for n in args.sizes:
            print(f"kvmap/lmdb gets at {n:,}: {rows['kvmap', n][1] / rows['lmdb', n][1]:.2f}")


if __name__ == "__main__":
    main()
