"""kvmap: an embedded key-value store.  A copy-on-write B+tree page file read through mmap.

>>> import tempfile, kvmap
>>> db = kvmap.open(tempfile.mkdtemp() + "/db", page_size=512)
>>> db.put(b"a", b"1"); db[b"b"] = b"2"
>>> list(db.items())
[(b'a', b'1'), (b'b', b'2')]
>>> db.close()
"""

from . import dbm  # kvmap.dbm.open: the stdlib dbm contract
from .db import Database, open
from .errors import (
    CorruptionError,
    DatabaseClosedError,
    DatabaseLockedError,
    Error,
    FatalError,
    KeyTooLargeError,
    NestedWriteError,
    OrderError,
    ReadersFullError,
    ReadOnlyError,
    TxnClosedError,
    ValueTooLargeError,
)
from .txn import Snapshot, WriteTxn

__version__ = "0.1.0"

__all__ = [
    "open",
    "dbm",
    "Database",
    "Snapshot",
    "WriteTxn",
    "Error",
    "CorruptionError",
    "DatabaseClosedError",
    "DatabaseLockedError",
    "FatalError",
    "KeyTooLargeError",
    "NestedWriteError",
    "OrderError",
    "ReadersFullError",
    "ReadOnlyError",
    "TxnClosedError",
    "ValueTooLargeError",
    "__version__",
]
