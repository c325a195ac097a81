"""kvmap's benchmark suite: ``python -m bench`` (from the repository root, after
``pip install -e '.[bench]'``).

The same workloads run against kvmap, LMDB (the ``lmdb`` package, the reference), SQLite
(stdlib, WAL mode, a ``WITHOUT ROWID`` table) and pure-Python stores (``dbm.dumb``, and
``semidbm`` if it imports), each through a small adapter (``bench.adapters``), with
durability matched: kvmap ``sync="full"`` ↔ lmdb ``sync=True`` ↔ SQLite ``synchronous=FULL``,
kvmap ``"normal"`` ↔ lmdb ``sync=False`` ↔ SQLite ``synchronous=NORMAL``.

Modules: ``workloads`` (the data set, the workloads, the code run in each engine's process
and in the reader/writer helper processes), ``runner`` (the command line, processes and
repetitions), ``report`` (median/min–max, the markdown table, JSON and the PNG chart).
``docs/performance.md`` describes the method and what each number means.

``bench/million.py`` and ``bench/writes.py`` are older stand-alone scripts, kept as they are.
"""
