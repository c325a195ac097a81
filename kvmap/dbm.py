"""The stdlib :mod:`dbm` interface over a kvmap database: ``kvmap.dbm.open(file, flag, mode)``.

It behaves like the stdlib backends (``dbm.gnu``, ``dbm.ndbm``, ``dbm.dumb``), so code and
libraries written for :mod:`dbm` (:mod:`shelve` among them) run on kvmap unchanged:

>>> import shelve, tempfile, kvmap.dbm
>>> path = tempfile.mkdtemp() + "/db"
>>> with kvmap.dbm.open(path, "c") as db:
...     db["hello"] = "world"            # str is encoded as UTF-8
...     db[b"hello"], len(db), db.keys()
(b'world', 1, [b'hello'])
>>> with shelve.Shelf(kvmap.dbm.open(path, "c")) as shelf:
...     shelf["config"] = {"retries": 3}
...     shelf["config"]["retries"]
3

The contract, as the stdlib backends implement it:

- ``file`` names the database, which for kvmap is a *directory* (holding the data file, the
  write-ahead log and the lock file).
- ``flag``: ``"r"`` opens an existing database read-only (the default), ``"w"`` opens an
  existing one for reading and writing, ``"c"`` opens it for reading and writing and
  creates it if missing, ``"n"`` always creates a new, empty database (an existing one at
  ``file`` is emptied).  As with :mod:`dbm.gnu`, modifier letters may follow: ``"f"``
  (fast: commits are buffered in the process until ``sync()``/``close()``, kvmap's
  ``sync="off"``), ``"s"`` (synchronized: every assignment is fsynced, ``sync="full"``) and
  ``"u"`` (accepted for compatibility and ignored: kvmap always takes its single-writer
  lock, and readers never lock).  :data:`open_flags` lists them; any other letter, or a
  first letter other than r/w/c/n, raises :class:`error`.
- ``mode`` sets the permission bits of the files created (the process umask applies, as for
  ``os.open``); the directory, when created, gets the same bits plus search (x) permission
  wherever read permission is given.  Files kvmap creates later in an existing database (a
  new log at each checkpoint) get the permissions of its data file.
- Keys and values are ``bytes`` (or ``bytearray``/``memoryview``) or ``str``, encoded as
  UTF-8; values always come back as ``bytes``.  Any other type raises ``TypeError``.
- A missing key raises ``KeyError``; writing to a database opened with ``"r"``, any use
  after ``close()`` and every failure of the database itself raise :class:`error`.

Durability: every assignment or deletion is one kvmap commit (autocommit) under
``sync="normal"`` unless a modifier says otherwise: the commit reaches the operating system
before the call returns, so it survives a crash of the process, but not a power loss until
:meth:`~KvmapDbm.sync` or :meth:`~KvmapDbm.close` (both make every commit so far durable).
This is what dbm users expect of ``gdbm`` (fast writes, ``sync()`` to persist).  For many
writes at once, :meth:`~KvmapDbm.update` commits them in one transaction.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import mmap as _mmap  # the name mmap is also a method of the file layer
import os
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from . import fileio
from .db import Database
from .db import open as kv_open
from .errors import Error
from .format import DATA_FILE, LOCK_FILE
from .wal import list_wals

__all__ = ["open", "error", "open_flags", "KvmapDbm"]

open_flags = "rwcnfsu"
"""The flag letters :func:`open` accepts (first one of ``rwcn``, then any of ``fsu``), as in
:data:`dbm.gnu.open_flags`."""

_Key = bytes | bytearray | memoryview | str


class error(Error, OSError):  # noqa: N801 - the dbm modules' name for it
    """The exception :mod:`kvmap.dbm` raises for every failure that is not a ``KeyError``
    or a wrong argument type: a bad flag, a missing database under ``"r"``/``"w"``, a write
    to a read-only database, use after ``close()``, a database locked by another writer,
    corruption.

    It derives from both :class:`kvmap.Error` and :class:`OSError`, so ``except
    kvmap.dbm.error``, ``except kvmap.Error`` and the stdlib's ``except dbm.error`` (whose
    tuple includes ``OSError``) all catch it.  The kvmap error behind it, if any, is its
    ``__cause__``.
    """


def _as_bytes(obj: object, what: str) -> bytes:
    cls = obj.__class__
    if cls is bytes:
        return obj  # type: ignore[return-value]
    if cls is str:
        return obj.encode("utf-8")  # type: ignore[attr-defined, no-any-return]
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, str):
        return str(obj).encode("utf-8")
    raise TypeError(f"{what} must be bytes or str, not {type(obj).__name__}")


def _parse_flag(flag: object) -> tuple[str, str]:
    """(``"r"|"w"|"c"|"n"``, sync mode) from a dbm flag string, like dbm.gnu checks it."""
    if not isinstance(flag, str):
        raise TypeError(f"flag must be str, not {type(flag).__name__}")
    if not flag or flag[0] not in "rwcn":
        raise error("First flag must be one of 'r', 'w', 'c' or 'n'")
    sync = "normal"
    for letter in flag[1:]:
        if letter == "f":
            sync = "off"
        elif letter == "s":
            sync = "full"
        elif letter != "u":
            raise error(f"Flag {letter!r} is not supported.")
    return flag[0], sync


class _ModeFS(fileio.FileSystem):
    """The installed file layer, creating files with ``mode`` (minus the umask).  Every
    method delegates to it (tests/test_dbm.py checks that none is left out)."""

    def __init__(self, base: fileio.FileSystem, mode: int) -> None:
        self._base = base
        self._mode = mode

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        return self._base.open(path, flags, self._mode)

    def close(self, fd: int) -> None:
        self._base.close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self._base.pwrite(fd, data, offset)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return self._base.pread(fd, size, offset)

    def fdatasync(self, fd: int) -> None:
        self._base.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self._base.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        self._base.truncate(fd, size)

    def size(self, fd: int) -> int:
        return self._base.size(fd)

    def rename(self, src: str, dst: str) -> None:
        self._base.rename(src, dst)

    def unlink(self, path: str) -> None:
        self._base.unlink(path)

    def fsync_dir(self, path: str) -> None:
        self._base.fsync_dir(path)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        return self._base.mmap(fd, length, offset)

    def mmap_shared(self, fd: int, length: int) -> _mmap.mmap:
        return self._base.mmap_shared(fd, length)

    def allocate(self, fd: int, size: int) -> None:
        self._base.allocate(fd, size)

    def mmap_log(self, fd: int, length: int) -> _mmap.mmap:
        return self._base.mmap_log(fd, length)

    def store(self, m: _mmap.mmap, fd: int, offset: int, data: bytes) -> None:
        self._base.store(m, fd, offset, data)


# The file layer is chosen when a Database is constructed (``fileio.fs()``); opens that need
# a creation mode install theirs for the duration of the constructor, one at a time.
_install_lock = threading.Lock()


def _empty_out(path: str) -> None:
    """Flag ``"n"``: remove the database files at ``path`` (data file and logs), under the
    writer lock so a live writer is never pulled from under; the lock file stays."""
    if not os.path.isdir(path):
        return
    lock = os.path.join(path, LOCK_FILE)
    try:
        fd = os.open(lock, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        fd = -1
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise error(
                    errno.EAGAIN, "another handle has the database open for writing", path
                ) from None
        names = [DATA_FILE, DATA_FILE + ".new", DATA_FILE + ".compact"]
        paths = [os.path.join(path, n) for n in names] + [p for _, p in list_wals(path)]
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    finally:
        if fd >= 0:
            os.close(fd)  # releases the flock


def open(  # noqa: A001 - the dbm modules' name for it
    file: str | bytes | os.PathLike[str] | os.PathLike[bytes], flag: str = "r", mode: int = 0o666
) -> KvmapDbm:
    """Open the kvmap database in directory ``file`` as a dbm object (see the module
    docstring for ``flag`` and ``mode``).  Raises :class:`error` when the database is
    missing under ``"r"``/``"w"``, locked by another writer, or unreadable, and for a bad
    flag; ``TypeError`` for arguments of the wrong type."""
    path = os.fsdecode(file)
    kind, sync = _parse_flag(flag)
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise TypeError(f"mode must be int, not {type(mode).__name__}")
    data = os.path.join(path, DATA_FILE)
    try:
        if kind in "rw" and not os.path.exists(data):
            raise error(errno.ENOENT, "no kvmap database here", path)
        if kind == "n":
            _empty_out(path)
        if kind in "cn" and not os.path.exists(data):
            if not os.path.isdir(path):
                # the directory needs search permission wherever it may be read
                os.mkdir(path, (mode | (mode & 0o444) >> 2) & 0o7777)
            create_mode = mode & 0o7777
        else:
            create_mode = stat.S_IMODE(os.stat(data).st_mode)
        if kind == "r":
            db = kv_open(path, readonly=True)
        elif create_mode == 0o666:
            db = kv_open(path, sync=sync)
        else:
            with _install_lock, fileio.installed(_ModeFS(fileio.fs(), create_mode)):
                db = kv_open(path, sync=sync)
    except error:
        raise
    except (Error, OSError) as exc:
        raise _wrap(exc) from exc
    return KvmapDbm(db)


def _wrap(exc: BaseException) -> error:
    if isinstance(exc, OSError) and exc.errno is not None:
        return error(exc.errno, exc.strerror, exc.filename)
    return error(str(exc))


class KvmapDbm(MutableMapping[Any, bytes]):
    """A kvmap database seen through the dbm interface (what :func:`open` returns).

    A mutable mapping of ``bytes`` to ``bytes`` that also takes ``str`` keys and values
    (UTF-8).  Iteration, :meth:`keys`, :meth:`items` and :meth:`values` are in key order and
    read a snapshot, so the database may be modified meanwhile.  The underlying
    :class:`kvmap.Database` is :attr:`db` (for transactions, range scans and the rest).
    """

    def __init__(self, db: Database) -> None:
        self._db: Database | None = db
        self.readonly = db.readonly

    @property
    def db(self) -> Database:
        """The open :class:`kvmap.Database`; raises :class:`error` after ``close()``."""
        return self._live()

    def _live(self) -> Database:
        db = self._db
        if db is None:
            raise error("DBM object has already been closed")
        return db

    def _writable(self) -> Database:
        db = self._live()
        if self.readonly:
            raise error("The database is opened for reading only")
        return db

    # -- reading -----------------------------------------------------------------------
    def __getitem__(self, key: _Key) -> bytes:
        k = _as_bytes(key, "keys")
        try:
            v = self._live().get(k)
        except Error as exc:
            raise _wrap(exc) from exc
        if v is None:
            raise KeyError(key)
        return v  # type: ignore[no-any-return]

    def get(self, key: _Key, default: Any = None) -> Any:
        """The value of ``key`` (bytes), or ``default``."""
        k = _as_bytes(key, "keys")
        try:
            return self._live().get(k, default)
        except Error as exc:
            raise _wrap(exc) from exc

    def __contains__(self, key: object) -> bool:
        k = _as_bytes(key, "keys")
        try:
            return k in self._live()
        except Error as exc:
            raise _wrap(exc) from exc

    def __len__(self) -> int:
        try:
            return len(self._live())
        except Error as exc:
            raise _wrap(exc) from exc

    def __iter__(self) -> Iterator[bytes]:
        return self._keys(self._live())

    def _keys(self, db: Database) -> Iterator[bytes]:
        try:
            yield from db.keys()
        except Error as exc:
            raise _wrap(exc) from exc

    def keys(self) -> list[bytes]:  # type: ignore[override]
        """Every key, in order, as a list (like the stdlib backends)."""
        return list(self._keys(self._live()))

    # -- writing -----------------------------------------------------------------------
    def __setitem__(self, key: _Key, value: _Key) -> None:
        k = _as_bytes(key, "keys")
        v = _as_bytes(value, "values")
        try:
            self._writable().put(k, v)
        except Error as exc:
            raise _wrap(exc) from exc

    def __delitem__(self, key: _Key) -> None:
        k = _as_bytes(key, "keys")
        try:
            found = self._writable().delete(k)
        except Error as exc:
            raise _wrap(exc) from exc
        if not found:
            raise KeyError(key)

    def setdefault(self, key: _Key, default: _Key = b"") -> bytes:
        """The value of ``key``; if it is missing, store ``default`` first and return it
        (as bytes).  Like ``dbm.gnu``, the default default is ``b""``."""
        k = _as_bytes(key, "keys")
        v = self.get(k)
        if v is not None:
            return v  # type: ignore[no-any-return]
        d = _as_bytes(default, "values")
        self[k] = d
        return d

    def update(self, other: Any = (), /, **kwds: _Key) -> None:
        """Store every (key, value) of ``other`` (a mapping or pairs) and ``kwds`` in one
        commit (one transaction)."""
        db = self._writable()
        pairs: Iterable[tuple[Any, Any]]
        if isinstance(other, Mapping):
            pairs = ((k, other[k]) for k in other)
        elif hasattr(other, "keys"):
            pairs = ((k, other[k]) for k in other.keys())
        else:
            pairs = other
        try:
            with db.begin(write=True) as txn:
                for k, v in pairs:
                    txn.put(_as_bytes(k, "keys"), _as_bytes(v, "values"))
                for k, v in kwds.items():
                    txn.put(_as_bytes(k, "keys"), _as_bytes(v, "values"))
        except Error as exc:
            raise _wrap(exc) from exc

    def clear(self) -> None:
        """Delete every key, in one commit."""
        db = self._writable()
        try:
            with db.begin(write=True) as txn:
                for k in list(txn.keys()):
                    txn.delete(k)
        except Error as exc:
            raise _wrap(exc) from exc

    # -- durability and life cycle -------------------------------------------------------
    def sync(self) -> None:
        """Make every write so far durable (fsync the log; a no-op when read-only)."""
        try:
            self._live().sync()
        except Error as exc:
            raise _wrap(exc) from exc

    def reorganize(self) -> None:
        """Rewrite the database densely, giving back the space of deleted items (like
        ``dbm.gnu``'s ``reorganize()``; it is :meth:`kvmap.Database.compact`)."""
        try:
            self._writable().compact()
        except Error as exc:
            raise _wrap(exc) from exc

    def close(self) -> None:
        """Checkpoint, make everything durable and close (idempotent)."""
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Error as exc:
                raise _wrap(exc) from exc

    def __enter__(self) -> KvmapDbm:
        self._live()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __repr__(self) -> str:
        db = self._db
        if db is None:
            return "<kvmap.dbm object, closed>"
        return f"<kvmap.dbm object {db.path!r}{' readonly' if self.readonly else ''}>"
