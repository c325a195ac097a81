"""``semidbm`` (pure Python, append-only data file with an in-memory index), if it imports.

Every put is one ``os.write`` (normal: survives a crash of the process); under "full" each
commit is followed by ``db.sync()`` (an fsync), and a batch of puts by one ``sync()``.
There is no ordered scan: a scan sorts the in-memory key index first (timed).
"""

from __future__ import annotations

from collections.abc import Sequence

import semidbm

from .base import Adapter, Reader
from .dbm_adapter import DictReader


class SemidbmAdapter(Adapter):
    name = "semidbm"
    durability = {"full": "write + fsync (db.sync()) per commit", "normal": "write per put"}
    concurrent_writer = "no multi-process support"
    bulk_path = "plain loop of db[k] = v, then sync()"

    def __init__(self, path: str, mode: str = "normal", readonly: bool = False) -> None:
        super().__init__(path, mode, readonly)
        self.db = semidbm.open(path, "r" if readonly else "c")
        self._full = mode == "full"
        db = self.db

        def get(key: bytes) -> bytes | None:
            try:
                return db[key]  # type: ignore[no-any-return]
            except KeyError:
                return None

        self.get = get  # type: ignore[method-assign]
        if self._full:

            def put(key: bytes, value: bytes) -> None:
                db[key] = value
                db.sync()

            self.put = put  # type: ignore[method-assign]
        else:
            self.put = db.__setitem__  # type: ignore[method-assign]

    @classmethod
    def version(cls) -> str:
        return str(getattr(semidbm, "__version__", "unknown"))

    def bulk_load(self, keys: Sequence[bytes], value: bytes) -> None:
        self.put_batch(keys, value)

    def put_batch(self, keys: Sequence[bytes], value: bytes) -> None:
        db = self.db
        for k in keys:
            db[k] = value
        if self._full:
            db.sync()

    def snapshot(self) -> Reader:
        return DictReader(self.db, self.get)

    def close(self) -> None:
        self.db.close()
