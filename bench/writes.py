"""Random-write throughput, kvmap next to LMDB in the same run (issue 3's measurement).

    python bench/writes.py [--n 100000] [--single 20000]

Workloads (16-byte random keys, 100-byte values, into an empty database):
- ``1000/txn, full``: random puts, 1000 per write transaction; kvmap sync="full",
  lmdb sync=True;
- ``1/txn, normal``: random puts, one commit each; kvmap sync="normal", lmdb sync=False
  (both survive a crash of the process, not power loss);
- ``1/txn, full``: random puts, one commit each, fully durable (kvmap sync="full",
  lmdb sync=True); ``--single`` commits.
kvmap's time includes its checkpoints (and the final one at close), so the tree is complete.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable

import kvmap

Workload = Callable[[str, list[bytes], bytes], None]


def kv_batches(sync: str, batch: int) -> Workload:
    def run(path: str, keys: list[bytes], val: bytes) -> None:
        db = kvmap.open(path, sync=sync)
        if batch == 1:  # autocommit: db.put is one transaction
            put = db.put
            for k in keys:
                put(k, val)
            db.close()
            return
        for i in range(0, len(keys), batch):
            with db.begin(write=True) as txn:
                for k in keys[i : i + batch]:
                    txn.put(k, val)
        db.close()

    return run


def lm_batches(sync: bool, batch: int) -> Workload:
    def run(path: str, keys: list[bytes], val: bytes) -> None:
        import lmdb

        env = lmdb.open(path, map_size=4 << 30, sync=sync)
        for i in range(0, len(keys), batch):
            with env.begin(write=True) as txn:
                for k in keys[i : i + batch]:
                    txn.put(k, val)
        env.sync(True)
        env.close()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="puts for the batched workload")
    ap.add_argument("--single", type=int, default=20_000, help="puts for one-commit-each")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    val = rng.randbytes(100)
    cases = [
        ("1000/txn, full", args.n, kv_batches("full", 1000), lm_batches(True, 1000)),
        ("1/txn, normal", args.single, kv_batches("normal", 1), lm_batches(False, 1)),
        ("1/txn, full", args.single // 4, kv_batches("full", 1), lm_batches(True, 1)),
    ]
    root = tempfile.mkdtemp(prefix="kvmap-writes-")
    print(f"{'workload':16} {'n':>7} {'kvmap puts/s':>13} {'lmdb puts/s':>12} {'kvmap/lmdb':>10}")
    try:
        for name, n, kv, lm in cases:
            keys = [rng.randbytes(16) for _ in range(n)]
            rates = []
            for label, fn in (("kvmap", kv), ("lmdb", lm)):
                path = os.path.join(root, f"{label}-{name.replace('/', 'per')}")
                t = time.perf_counter()
                fn(path, keys, val)
                rates.append(n / (time.perf_counter() - t))
                shutil.rmtree(path, ignore_errors=True)
            print(
                f"{name:16} {n:7} {rates[0]:13,.0f} {rates[1]:12,.0f} {rates[0] / rates[1]:10.2f}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
