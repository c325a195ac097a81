"""Every exception kvmap raises on purpose lives here, under :class:`Error`.

Wrong argument *types* are not kvmap errors: they raise the built-in :class:`TypeError`
with a message naming the type given, as Python users expect.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "CorruptionError",
    "ReadOnlyError",
    "TxnClosedError",
    "DatabaseClosedError",
    "NestedWriteError",
    "KeyTooLargeError",
    "ValueTooLargeError",
    "ReadersFullError",
    "DatabaseLockedError",
    "FatalError",
    "OrderError",
]


class Error(Exception):
    """Base class of every kvmap error; ``except kvmap.Error`` catches them all."""


class CorruptionError(Error):
    """Raised when bytes read from disk fail a check: a page or meta checksum, a page number
    or type that does not match where it was found, a cell that runs past its page, a tree
    that violates ordering, or a file shorter than its meta page claims.  kvmap never returns
    data it could not verify; it raises this instead."""


class ReadOnlyError(Error):
    """Raised when a write is attempted through a read snapshot (``begin()`` without
    ``write=True``) or on a database opened with ``readonly=True``."""


class TxnClosedError(Error):
    """Raised when a transaction or snapshot is used after ``commit()``, ``abort()``, the end
    of its ``with`` block, or after its database was closed."""


class DatabaseClosedError(Error):
    """Raised when a :class:`~kvmap.Database` is used after ``close()``."""


class NestedWriteError(Error):
    """Raised when a thread that already holds the write transaction asks for another one
    (``begin(write=True)``, or an autocommit ``put``/``delete``): it would wait on itself."""


class KeyTooLargeError(Error, ValueError):
    """Raised when a key is longer than ``db.max_key_size`` (1006 bytes at the default page
    size of 4096)."""


class ValueTooLargeError(Error, ValueError):
    """Raised when a value is longer than ``kvmap.format.MAX_VALUE_SIZE`` (2 GiB - 1)."""


class ReadersFullError(Error):
    """Raised by ``kvmap.open(..., readonly=True)`` when every slot of the reader table in
    the lock file is held by a live handle (``max_readers``, fixed when the lock file is
    created).  Snapshots take no slot: each readonly handle takes one."""


class DatabaseLockedError(Error):
    """Raised when another handle (in this or another process) holds the database's writer
    lock and ``lock_timeout`` expired (or was 0)."""


class FatalError(Error):
    """Raised when a write or sync to the data file or the write-ahead log failed (disk
    full, I/O error).  The handle then refuses all further use: close it and reopen the
    database, which recovers to a committed state.  Whether the transaction that hit it
    survives depends on where it failed: a failed log write loses it; if the log write
    reached the OS but its sync failed, the reopen may recover it (it was never reported
    committed, so either outcome is consistent).  ``kvmap.open`` raises it too when an I/O
    error (not a missing or forbidden path) stops the open.  The first raise carries the
    ``OSError`` as ``__cause__``."""


class OrderError(Error, ValueError):
    """Raised by ``put_many(items, append=True)`` when a key is not greater than the key
    before it, or than every key already in the database and the transaction."""
