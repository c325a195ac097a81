"""Reader processes serving lookups while one writer updates: the web-worker pattern.

A web application often runs several worker processes (gunicorn, uWSGI, a
multiprocessing pool) that answer requests from the same data, while one process updates
it. With kvmap each worker opens the database once with ``readonly=True`` and keeps the
handle: reads take no lock, and each read first picks up whatever the writer committed
since (the handle *follows* the writer).

This script builds a catalog of products, starts a pool of reader processes that answer
"requests" (a batch of product lookups, each request in one snapshot), and meanwhile
commits price updates from a writer thread in the main process. Each update changes some
products and the catalog version in one transaction; every request checks that it saw one
consistent catalog (no product newer than the catalog version it read alongside).

Run it:  python examples/web_workers.py [--workers 4] [--seconds 2] [DBPATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import threading
import time

import kvmap

PRODUCTS = 20_000
LOOKUPS_PER_REQUEST = 100

_db: kvmap.Database | None = None  # each worker process's own readonly handle


def product_key(i: int) -> bytes:
    return b"product:%06d" % i


def open_reader(path: str) -> None:
    """Pool initializer: runs once in each worker process.  A handle inherited through
    fork() is unusable in the child, so every worker opens its own."""
    global _db
    _db = kvmap.open(path, readonly=True)


def handle_request(seed: int) -> tuple[int, int, int, int]:
    """One request: look up a batch of products in one snapshot.  Returns (pid, catalog
    version seen, products found, inconsistencies) for the summary."""
    assert _db is not None
    rng = random.Random(seed)
    found = bad = 0
    with _db.begin() as snap:  # one consistent view for the whole request
        version = int(snap[b"catalog:version"])
        for _ in range(LOOKUPS_PER_REQUEST):
            value = snap.get(product_key(rng.randrange(PRODUCTS)))
            if value is not None:
                found += 1
                if json.loads(value)["version"] > version:
                    bad += 1  # would mean the snapshot mixed two commits
    return os.getpid(), version, found, bad


def load_catalog(db: kvmap.Database) -> None:
    items = (
        (product_key(i), json.dumps({"price": 100 + i % 900, "version": 0}).encode())
        for i in range(PRODUCTS)
    )
    db.put_many(items, append=True)  # a sorted bulk load, straight into the tree
    db[b"catalog:version"] = b"0"


def writer(db: kvmap.Database, stop: threading.Event, commits: list[int]) -> None:
    """Commit a price update every few milliseconds until told to stop."""
    rng = random.Random(1)
    version = 0
    while not stop.is_set():
        version += 1
        with db.begin(write=True) as txn:  # the products and the version change together
            for _ in range(50):
                i = rng.randrange(PRODUCTS)
                price = 100 + rng.randrange(900)
                txn.put(product_key(i), json.dumps({"price": price, "version": version}).encode())
            txn.put(b"catalog:version", b"%d" % version)
        commits.append(version)
        time.sleep(0.005)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="database directory (default: a temporary one)")
    parser.add_argument("--workers", type=int, default=4, help="reader processes (4)")
    parser.add_argument("--seconds", type=float, default=2.0, help="how long to serve (2)")
    args = parser.parse_args()
    tmp = None if args.path else tempfile.mkdtemp(prefix="kvmap-web-")
    path = args.path or os.path.join(tmp, "catalog")  # type: ignore[arg-type]
    try:
        # The writer: "normal" durability, so a commit costs one write, not a disk sync.
        with kvmap.open(path, sync="normal") as db:
            load_catalog(db)
            print(f"catalog: {len(db):,} keys in {path}")
            stop = threading.Event()
            commits: list[int] = []
            update = threading.Thread(target=writer, args=(db, stop, commits))
            ctx = multiprocessing.get_context("spawn")  # works with "fork" too
            with ctx.Pool(args.workers, initializer=open_reader, initargs=(path,)) as pool:
                deadline = time.monotonic() + 60  # wait until every worker has opened
                while len(db.readers()) < args.workers and time.monotonic() < deadline:
                    time.sleep(0.01)
                print(f"reader slots in use: {len(db.readers())} (one per worker process)")
                update.start()
                start = time.monotonic()
                results = []
                seed = 0
                while time.monotonic() - start < args.seconds:
                    results += pool.map(handle_request, range(seed, seed + 8 * args.workers))
                    seed += 8 * args.workers
                elapsed = time.monotonic() - start
                stop.set()
                update.join()
        lookups = len(results) * LOOKUPS_PER_REQUEST
        print(f"writer: {len(commits)} commits, catalog version 0 -> {commits[-1]}")
        print(
            f"readers: {len(results):,} requests, {lookups:,} lookups in {elapsed:.1f} s "
            f"({lookups / elapsed:,.0f} lookups/s over {args.workers} processes)"
        )
        by_pid: dict[int, list[int]] = {}
        for pid, version, _, _ in results:
            by_pid.setdefault(pid, []).append(version)
        for pid, versions in sorted(by_pid.items()):
            print(
                f"  worker {pid}: {len(versions)} requests, "
                f"saw catalog versions {min(versions)} .. {max(versions)}"
            )
        missing = sum(LOOKUPS_PER_REQUEST - found for _, _, found, _ in results)
        bad = sum(b for *_, b in results)
        newest = max(v for _, v, _, _ in results)
        print(f"lookups that found nothing: {missing}; requests that mixed two commits: {bad}")
        print(f"readers followed the writer: newest version seen {newest} of {commits[-1]}")
        return 0 if missing == 0 and bad == 0 else 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
