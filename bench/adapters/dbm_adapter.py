"""``dbm.dumb`` (stdlib, pure Python): no transactions and no fsync at all.

Every put writes the value to the data file and, for a new key, appends a line to the index
file (each through the OS, so a put survives a crash of the process, never power loss):
"full" durability is not available and the report says so.  There is no ordered scan: a scan
sorts the in-memory key index first (timed).  Values are padded to 512-byte blocks.
"""

from __future__ import annotations

import dbm.dumb
import os
import platform
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from .base import Adapter, Reader


class DictReader(Reader):
    """A "snapshot" of a store that has none: reads go to the live store; ordered reads sort
    the keys once (counted in the time of the first ordered read)."""

    def __init__(self, db: Any, get: Any) -> None:
        self._db = db
        self.get = get  # type: ignore[method-assign]
        self._sorted: list[bytes] | None = None

    def _keys(self) -> list[bytes]:
        if self._sorted is None:
            self._sorted = sorted(self._db.keys())
        return self._sorted

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        db = self._db
        return ((k, db[k]) for k in self._keys())

    def items_from(self, start: bytes, limit: int) -> Iterator[tuple[bytes, bytes]]:
        keys = self._keys()
        i = bisect_left(keys, start)
        db = self._db
        return ((k, db[k]) for k in keys[i : i + limit])


class DumbAdapter(Adapter):
    name = "dbm.dumb"
    durability = {"full": "no fsync available", "normal": "each put written to the OS"}
    matched = False
    concurrent_writer = "no multi-process support"
    bulk_path = "plain loop of db[k] = v"

    def __init__(self, path: str, mode: str = "normal", readonly: bool = False) -> None:
        super().__init__(path, mode, readonly)
        os.makedirs(path, exist_ok=True)
        self.db = dbm.dumb.open(os.path.join(path, "db"), "r" if readonly else "c")
        self.get = self.db.get  # type: ignore[method-assign]
        self.put = self.db.__setitem__  # type: ignore[method-assign]

    @classmethod
    def version(cls) -> str:
        return f"stdlib (Python {platform.python_version()})"

    def bulk_load(self, keys: Sequence[bytes], value: bytes) -> None:
        self.put_batch(keys, value)

    def put_batch(self, keys: Sequence[bytes], value: bytes) -> None:
        put = self.put
        for k in keys:
            put(k, value)

    def snapshot(self) -> Reader:
        return DictReader(self.db, self.db.get)

    def close(self) -> None:
        self.db.close()
