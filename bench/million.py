"""1M random inserts and 1M random gets: kvmap next to LMDB, same machine, same run.

    python bench/million.py [--n 1000000] [--batch 1000]

Keys are 16 random bytes, values 100 bytes; inserts are committed ``--batch`` per write
transaction with full durability (kvmap sync="full", lmdb sync=True); gets are random
present keys, warm.  Prints seconds and ops/s for both and the kvmap/lmdb throughput ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time

import kvmap


def run_kvmap(
    path: str, keys: list[bytes], val: bytes, batch: int, order: list[bytes]
) -> tuple[float, float]:
    db = kvmap.open(path, sync="full", cache_size=1 << 30)
    t = time.perf_counter()
    for i in range(0, len(keys), batch):
        with db.begin(write=True) as txn:
            put = txn.put
            for k in keys[i : i + batch]:
                put(k, val)
    t_put = time.perf_counter() - t
    get = db.get
    t = time.perf_counter()
    for k in order:
        get(k)
    t_get = time.perf_counter() - t
    assert len(db) == len(keys)
    db.close()
    return t_put, t_get


def run_lmdb(
    path: str, keys: list[bytes], val: bytes, batch: int, order: list[bytes]
) -> tuple[float, float]:
    import lmdb

    env = lmdb.open(path, map_size=8 << 30, sync=True)
    t = time.perf_counter()
    for i in range(0, len(keys), batch):
        with env.begin(write=True) as txn:
            put = txn.put
            for k in keys[i : i + batch]:
                put(k, val)
    t_put = time.perf_counter() - t
    with env.begin() as txn:
        get = txn.get
        t = time.perf_counter()
        for k in order:
            get(k)
        t_get = time.perf_counter() - t
    env.close()
    return t_put, t_get


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--engines", default="kvmap,lmdb")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    keys = [rng.randbytes(16) for _ in range(args.n)]
    order = keys[:]
    rng.shuffle(order)
    val = rng.randbytes(100)
    root = tempfile.mkdtemp(prefix="kvmap-million-")
    results = {}
    try:
        for name in args.engines.split(","):
            fn = run_kvmap if name == "kvmap" else run_lmdb
            results[name] = fn(os.path.join(root, name), keys, val, args.batch, order)
            tp, tg = results[name]
            print(
                f"{name:6} {args.n} random inserts ({args.batch}/txn, full sync): {tp:6.2f} s "
                f"({args.n / tp:9,.0f}/s)   {args.n} random gets: {tg:6.2f} s "
                f"({args.n / tg:9,.0f}/s)"
            )
        if "kvmap" in results and "lmdb" in results:
            k, m = results["kvmap"], results["lmdb"]
            print(f"kvmap/lmdb throughput: inserts {m[0] / k[0]:.2f}x, gets {m[1] / k[1]:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
