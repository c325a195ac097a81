"""kvmap: ``sync="full"``/``"normal"``, default page and cache sizes.

Reads in a snapshot use ``db.begin()``; the autocommit read is ``db.get``; one commit is
``db.put``; a batch is ``txn.put_many`` in ``db.begin(write=True)``; the bulk load is
``put_many(append=True)`` (written straight into the tree).  ``close()`` runs the final
checkpoint (the memtable folded into the tree, fsynced), so write workloads pay for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice

import kvmap

from .base import Adapter, Reader


class KvmapReader(Reader):
    def __init__(self, db: kvmap.Database) -> None:
        self._snap = db.begin()
        self.get = self._snap.get  # type: ignore[method-assign]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return self._snap.items()

    def items_from(self, start: bytes, limit: int) -> Iterator[tuple[bytes, bytes]]:
        return islice(self._snap.items(start), limit)

    def close(self) -> None:
        self._snap.close()


class KvmapAdapter(Adapter):
    name = "kvmap"
    durability = {"full": 'sync="full"', "normal": 'sync="normal"'}
    concurrent_writer = None  # readonly handles follow a live writer (issue 4)
    bulk_path = "txn.put_many(items, append=True)"

    def __init__(self, path: str, mode: str = "normal", readonly: bool = False) -> None:
        super().__init__(path, mode, readonly)
        self.db = kvmap.open(path, sync=mode, readonly=readonly)
        self.get = self.db.get  # type: ignore[method-assign]
        self.put = self.db.put  # type: ignore[method-assign]

    @classmethod
    def version(cls) -> str:
        return getattr(kvmap, "__version__", None) or _dist_version("kvmap")

    def bulk_load(self, keys: Sequence[bytes], value: bytes) -> None:
        with self.db.begin(write=True) as txn:
            txn.put_many(((k, value) for k in keys), append=True)

    def put_batch(self, keys: Sequence[bytes], value: bytes) -> None:
        with self.db.begin(write=True) as txn:
            txn.put_many((k, value) for k in keys)

    def snapshot(self) -> Reader:
        return KvmapReader(self.db)

    def close(self) -> None:
        self.db.close()


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
