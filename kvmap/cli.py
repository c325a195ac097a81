"""The ``kvmap`` command line (also ``python -m kvmap``).

``kvmap COMMAND DBPATH [ARGS]``; exit status 0 on success, 1 on error, 2 on bad usage.
Errors print one line to stderr (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence

from .db import open as kv_open
from .errors import Error


def _demo(args: argparse.Namespace) -> int:
    path = args.path or os.path.join(tempfile.mkdtemp(prefix="kvmap-demo-"), "db")
    n = args.n
    rng = random.Random(42)
    keys = [b"user:%08d" % i for i in range(n)]
    rng.shuffle(keys)
    print(f"kvmap demo: database at {path}")
    with kv_open(path, sync="full") as db:
        t = time.perf_counter()
        with db.begin(write=True) as txn:
            for k in keys:
                txn.put(k, b"profile-of-" + k)
        dt = time.perf_counter() - t
        print(
            f"  wrote {n} keys in random order in one transaction: {dt:.2f} s "
            f"({n / dt:,.0f} puts/s)"
        )
        t = time.perf_counter()
        for k in keys:
            assert db[k] == b"profile-of-" + k
        dt = time.perf_counter() - t
        print(f"  read them back with db[key]: {dt:.2f} s ({n / dt:,.0f} gets/s)")
        first = list(db.items(prefix=b"user:0000001", reverse=True))[:3]
        print(f"  prefix scan user:0000001*, newest first: {[k.decode() for k, _ in first]}")
        t = time.perf_counter()
        count = sum(1 for _ in db.items())
        dt = time.perf_counter() - t
        print(f"  full ordered scan of {count} items: {dt:.3f} s")
        with db.begin() as snap:
            del db[keys[0]]
            print(
                f"  deleted {keys[0].decode()}; an older snapshot still sees it: "
                f"{keys[0] in snap}, the database does not: {keys[0] in db}"
            )
        stats = db.stats()
        print(
            f"  {stats['entries']} entries, depth {stats['depth']}, "
            f"{stats['file_size'] / 1024:.0f} KiB file, pages: {stats['pages']}"
        )
        db.check()
        print("  check(): ok")
    return 0


def _stat(args: argparse.Namespace) -> int:
    with kv_open(args.path, readonly=True) as db:
        print(json.dumps(db.stats(), indent=2))
    return 0


def _check(args: argparse.Namespace) -> int:
    with kv_open(args.path, readonly=True) as db:
        counts = db.check()
    print(f"ok: {json.dumps(counts)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(prog="kvmap", description="kvmap database tool")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="create a database, write, read, scan, print what it did")
    p.add_argument("path", nargs="?", help="database directory (default: a temporary one)")
    p.add_argument("-n", type=int, default=100_000, help="number of keys (default 100000)")
    p.set_defaults(func=_demo)
    p = sub.add_parser("stat", help="print entries, depth, pages by type, sizes")
    p.add_argument("path")
    p.set_defaults(func=_stat)
    p = sub.add_parser("check", help="verify every page of the database")
    p.add_argument("path")
    p.set_defaults(func=_check)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (Error, OSError) as exc:
        if args.debug:
            raise
        print(f"kvmap: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
