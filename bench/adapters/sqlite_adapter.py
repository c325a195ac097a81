"""SQLite (stdlib ``sqlite3``) in WAL mode with a ``kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT
ROWID`` table: ``synchronous=FULL`` (full: the WAL is fsynced at each commit) or
``synchronous=NORMAL`` (normal: fsync only at checkpoints).  The page cache is set to 32 MiB,
kvmap's default ``cache_size``; everything else is SQLite's default (autocheckpoint at 1000
pages).

Reads in a snapshot share one ``BEGIN``…``COMMIT`` read transaction; the autocommit read is
one ``SELECT``; one commit is an autocommit ``INSERT OR REPLACE``; a batch and the bulk load
are ``executemany`` in one transaction.  ``close()`` closes the connection (SQLite then
checkpoints the WAL into the database file, fsynced, and removes it).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence

from .base import Adapter, Reader

FILE = "kv.sqlite"
CACHE_KIB = 32 * 1024  # kvmap's default cache_size
GET = "SELECT v FROM kv WHERE k = ?"
PUT = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
SCAN = "SELECT k, v FROM kv ORDER BY k"
RANGE = "SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT ?"


class SqliteReader(Reader):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        conn.execute("BEGIN")
        execute = conn.execute

        def get(key: bytes) -> bytes | None:
            row = execute(GET, (key,)).fetchone()
            return None if row is None else row[0]  # type: ignore[no-any-return]

        self.get = get  # type: ignore[method-assign]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return self._conn.execute(SCAN)

    def items_from(self, start: bytes, limit: int) -> Iterator[tuple[bytes, bytes]]:
        return self._conn.execute(RANGE, (start, limit))

    def close(self) -> None:
        self._conn.execute("COMMIT")


class SqliteAdapter(Adapter):
    name = "sqlite"
    durability = {
        "full": "WAL, synchronous=FULL",
        "normal": "WAL, synchronous=NORMAL",
    }
    bulk_path = "executemany in one transaction"

    def __init__(self, path: str, mode: str = "normal", readonly: bool = False) -> None:
        super().__init__(path, mode, readonly)
        os.makedirs(path, exist_ok=True)
        conn = sqlite3.connect(
            os.path.join(path, FILE), isolation_level=None, check_same_thread=False
        )
        self.conn = conn
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if mode == 'full' else 'NORMAL'}")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        if readonly:
            conn.execute("PRAGMA query_only=1")
        else:
            conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        execute = conn.execute

        def get(key: bytes) -> bytes | None:
            row = execute(GET, (key,)).fetchone()
            return None if row is None else row[0]  # type: ignore[no-any-return]

        def put(key: bytes, value: bytes) -> None:
            execute(PUT, (key, value))

        self.get = get  # type: ignore[method-assign]
        self.put = put  # type: ignore[method-assign]

    @classmethod
    def version(cls) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    def bulk_load(self, keys: Sequence[bytes], value: bytes) -> None:
        self.put_batch(keys, value)

    def put_batch(self, keys: Sequence[bytes], value: bytes) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            conn.executemany(PUT, ((k, value) for k in keys))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def snapshot(self) -> Reader:
        return SqliteReader(self.conn)

    def close(self) -> None:
        self.conn.close()
