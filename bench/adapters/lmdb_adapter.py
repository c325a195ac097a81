"""LMDB through the ``lmdb`` package, the reference: ``sync=True`` (full) or ``sync=False``
(normal: each commit is written to the OS, no fsync), default options otherwise.

Reads in a snapshot share one read transaction; the autocommit read opens a read transaction
per get; one commit is a write transaction per put; a batch is ``cursor.putmulti``; the bulk
load is ``cursor.putmulti(append=True)`` in one transaction.  ``close()`` is
``env.sync(True)`` then ``env.close()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from itertools import islice

import lmdb

from .base import Adapter, Reader

MAP_SIZE = 1 << 36  # address space only: without writemap the file grows as pages are used


class LmdbReader(Reader):
    def __init__(self, env: lmdb.Environment) -> None:
        self._txn = env.begin()
        self._cur = self._txn.cursor()
        self.get = self._txn.get  # type: ignore[method-assign]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        cur = self._txn.cursor()
        cur.first()
        return cur.iternext()

    def items_from(self, start: bytes, limit: int) -> Iterator[tuple[bytes, bytes]]:
        cur = self._cur
        if not cur.set_range(start):
            return iter(())
        return islice(cur.iternext(), limit)

    def close(self) -> None:
        self._txn.abort()


class LmdbAdapter(Adapter):
    name = "lmdb"
    durability = {"full": "sync=True", "normal": "sync=False"}
    bulk_path = "cursor.putmulti(items, append=True)"

    def __init__(self, path: str, mode: str = "normal", readonly: bool = False) -> None:
        super().__init__(path, mode, readonly)
        if readonly:
            self.env = lmdb.open(path, map_size=MAP_SIZE, readonly=True, lock=True)
        else:
            os.makedirs(path, exist_ok=True)
            self.env = lmdb.open(path, map_size=MAP_SIZE, sync=(mode == "full"))

    @classmethod
    def version(cls) -> str:
        return f"{lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})"

    def bulk_load(self, keys: Sequence[bytes], value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(((k, value) for k in keys), append=True)

    def put_batch(self, keys: Sequence[bytes], value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti((k, value) for k in keys)

    def put(self, key: bytes, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key)  # type: ignore[no-any-return]

    def snapshot(self) -> Reader:
        return LmdbReader(self.env)

    def close(self) -> None:
        if not self.readonly:
            self.env.sync(True)
        self.env.close()
