"""The :class:`Database` handle and :func:`open`: the public face of kvmap.

A database is a directory holding the data file (``kvmap.data``) and a lock file
(``kvmap.lock``).  One :class:`Database` is thread-safe: any number of threads read at once
(without locks), and one write transaction exists at a time (others wait for it).

Design note: lock-free point reads within a process.  ``db.get`` does not open a snapshot
object; it publishes the txn id it is about to read in a per-thread slot (``_getters``), then
re-checks that the current state did not move, and reads.  The writer computes the oldest
txn id any slot or registered snapshot holds before it reuses freed pages, so the pages the
reader walks cannot be reused under it (invariant 4).  If the state moved between reading
it and publishing the slot, the reader retries with the newer state: the writer may have
computed its oldest reader before the slot was published.  This is LMDB's reader-table
protocol, kept within one process; issue "multi-process" extends it across processes.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from threading import get_ident
from typing import Any

from . import fileio
from .btree import MISSING, Builder, read_overflow
from .check import check as check_tree
from .check import read_freelist
from .errors import (
    CorruptionError,
    DatabaseClosedError,
    DatabaseLockedError,
    Error,
    FatalError,
    NestedWriteError,
    ReadOnlyError,
)
from .format import DATA_FILE, DEFAULT_PAGE_SIZE, LOCK_FILE, max_key_size, valid_page_size
from .freelist import Freelist
from .meta import Meta, peek_page_size, pick
from .node import Ovf, decode
from .pager import Pager
from .txn import Snapshot, WriteTxn, as_key, commit_tree

SYNC_MODES = ("full", "normal", "off")
_IDLE = 1 << 64  # a getter slot that is not reading


class State:
    """What a reader needs, swapped atomically (one attribute store) on commit and
    compaction.  ``txnid``, ``root``, ``cache`` and ``node`` repeat fields of ``meta`` and
    ``pager`` so the lookup path reads one attribute instead of two."""

    __slots__ = ("meta", "pager", "freelist", "txnid", "root", "cache", "node")

    def __init__(self, meta: Meta, pager: Pager, freelist: Freelist) -> None:
        self.meta = meta
        self.pager = pager
        self.freelist = freelist
        self.txnid = meta.txnid
        self.root = meta.root
        self.cache = pager.cache
        self.node = pager.node


def open(  # noqa: A001 - the natural name, like dbm.open and gzip.open
    path: str | os.PathLike[str],
    *,
    create: bool = True,
    readonly: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
    sync: str = "full",
    cache_size: int = 64 * 1024 * 1024,
    lock_timeout: float = 0.0,
) -> Database:
    """Open (or create) the database in directory ``path``.

    ``page_size`` (a power of two in [512, 65536]) only matters when the database is created;
    an existing database keeps its own.  ``sync`` is the default durability of commits:
    ``"full"`` (fsync data and meta: survives power loss), ``"normal"`` (fsync data only:
    survives a process crash, may lose the last commit on power loss), ``"off"`` (no fsync:
    call ``sync()``/``close()``).  ``cache_size`` bounds the decoded-page cache, in bytes.
    A writable open takes the database's writer lock, waiting up to ``lock_timeout`` seconds.

    Raises ``TypeError``/``ValueError`` for bad arguments, ``FileNotFoundError`` when the
    database does not exist and ``create`` is false or ``readonly`` is true,
    :class:`~kvmap.DatabaseLockedError` when another handle writes it, and
    :class:`~kvmap.CorruptionError` when no valid meta page is found.

    >>> import tempfile, kvmap
    >>> with kvmap.open(tempfile.mkdtemp() + "/db") as db:
    ...     db[b"hello"] = b"world"
    ...     db[b"hello"]
    b'world'
    """
    return Database(
        os.fspath(path), create=create, readonly=readonly, page_size=page_size, sync=sync,
        cache_size=cache_size, lock_timeout=lock_timeout,
    )  # fmt: skip


def _check_options(
    path: object, create: object, readonly: object, page_size: object, sync: object,
    cache_size: object, lock_timeout: object,
) -> None:  # fmt: skip
    if not isinstance(path, str):
        raise TypeError(f"path must be str or os.PathLike, not {type(path).__name__}")
    for name, val in (("create", create), ("readonly", readonly)):
        if not isinstance(val, bool):
            raise TypeError(f"{name} must be bool, not {type(val).__name__}")
    if not isinstance(page_size, int) or isinstance(page_size, bool):
        raise TypeError(f"page_size must be int, not {type(page_size).__name__}")
    if not valid_page_size(page_size):
        raise ValueError(f"page_size must be a power of two in [512, 65536], not {page_size}")
    if not isinstance(sync, str):
        raise TypeError(f"sync must be str, not {type(sync).__name__}")
    if sync not in SYNC_MODES:
        raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
    if not isinstance(cache_size, int) or isinstance(cache_size, bool):
        raise TypeError(f"cache_size must be int, not {type(cache_size).__name__}")
    if cache_size < 0:
        raise ValueError(f"cache_size must be >= 0, not {cache_size}")
    if not isinstance(lock_timeout, (int, float)) or isinstance(lock_timeout, bool):
        raise TypeError(f"lock_timeout must be a number, not {type(lock_timeout).__name__}")


class Database:
    """An open kvmap database: a thread-safe mapping of bytes keys to bytes values.

    Use :func:`kvmap.open` to make one.  Reads (``get``, ``in``, iteration) see the latest
    commit; ``begin()`` gives a snapshot that keeps one commit's view; ``begin(write=True)``
    gives the write transaction.  ``put``/``delete``/``db[k] = v`` each commit on their own
    (one fsync pair under ``sync="full"``: batch writes in a transaction).
    """

    def __init__(
        self, path: str, *, create: bool = True, readonly: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE, sync: str = "full",
        cache_size: int = 64 * 1024 * 1024, lock_timeout: float = 0.0,
    ) -> None:  # fmt: skip
        self._closed = True  # until fully open, so __del__ and close() are safe
        _check_options(path, create, readonly, page_size, sync, cache_size, lock_timeout)
        self.path = path
        self.readonly = readonly
        self.sync_mode = sync
        self._fs = fileio.fs()
        self._fd = -1
        self._lockfd = -1
        self._state: State | None = None
        self._failed: BaseException | None = None
        self._write_lock = threading.Lock()
        self._writer: int | None = None
        self._snapshots: dict[int, int] = {}
        self._getters: dict[int, int] = {}
        self._tokens = itertools.count(1)
        self._pid = os.getpid()
        try:
            self._open(create, page_size, cache_size, lock_timeout)
        except BaseException:
            self._release_files()
            raise
        self._closed = False

    # -- opening -----------------------------------------------------------------------
    def _open(self, create: bool, page_size: int, cache_size: int, lock_timeout: float) -> None:
        fs = self._fs
        data = os.path.join(self.path, DATA_FILE)
        if not os.path.exists(data):
            if self.readonly or not create:
                raise FileNotFoundError(errno.ENOENT, "no kvmap database here", self.path)
            os.makedirs(self.path, exist_ok=True)
        if not self.readonly:
            self._lockfd = fs.open(os.path.join(self.path, LOCK_FILE), os.O_RDWR | os.O_CREAT)
            self._lock_writer(lock_timeout)
            if not os.path.exists(data):
                self._create(data, page_size)
        self._fd = fs.open(data, os.O_RDONLY if self.readonly else os.O_RDWR)
        meta, ps = self._read_meta(data)
        pager = Pager(fs, self._fd, ps, decode, cache_size)
        pager.check_covers(meta.hwm)
        freelist, _ = read_freelist(pager, meta)
        self._state = State(meta, pager, freelist)
        self._durable_txnid = meta.txnid
        self.page_size = ps
        self.max_key_size = max_key_size(ps)

    def _read_meta(self, data: str) -> tuple[Meta, int]:
        """The newest valid meta page and the page size.  The page size meta 0 records is
        tried first; if that fails (meta 0 may be the damaged one, even in its page size
        field), every other page size is tried, so an intact meta 1 is always found."""
        fs = self._fs
        first = peek_page_size(fs.pread(self._fd, 4096, 0))
        sizes = [512 << i for i in range(8)]
        if first is not None:
            sizes.remove(first)
            sizes.insert(0, first)
        errors = []
        for ps in sizes:
            meta0 = fs.pread(self._fd, ps, 0).ljust(ps, b"\0")
            meta1 = fs.pread(self._fd, ps, ps).ljust(ps, b"\0")
            try:
                return pick(meta0, meta1)[0], ps
            except CorruptionError as exc:
                if ps == first:
                    errors.append(str(exc))
        detail = f": {errors[0]}" if errors else " (not a kvmap database?)"
        raise CorruptionError(f"{data}: no valid meta page{detail}")

    def _lock_writer(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DatabaseLockedError(
                        f"{self.path}: another handle has it open for writing"
                    ) from None
                time.sleep(0.01)

    def _create(self, data: str, page_size: int) -> None:
        """Write a fresh data file (both metas, empty tree) under a temporary name, sync it,
        and rename it into place, so a crash never leaves a half-made database."""
        fs = self._fs
        tmp = data + ".new"
        fd = fs.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            from .segments import first_segment

            fs.truncate(fd, first_segment(page_size))
            for txnid in (0, 1):
                fs.pwrite(fd, Meta(txnid, page_size, 0, 0, 2, 0, 0).encode(), txnid * page_size)
            fs.fdatasync(fd)
        finally:
            fs.close(fd)
        fs.rename(tmp, data)
        fs.fsync_dir(self.path)

    # -- state and the reader registry ---------------------------------------------------
    def _live(self) -> State:
        state = self._state
        if state is None:
            self._raise_unusable()
        return state  # type: ignore[return-value]

    def _raise_unusable(self) -> None:
        if self._failed is not None:
            raise FatalError(
                f"{self.path}: an earlier write failed ({self._failed!r}); reopen the database"
            )
        raise DatabaseClosedError(f"{self.path}: the database is closed")

    def _oldest_reader(self, limit: int) -> int:
        """The oldest txn id any snapshot or in-flight read of this process holds, capped
        at ``limit``.  ``list()`` copies each registry atomically under the GIL."""
        oldest = limit
        for txnid in list(self._snapshots.values()):
            oldest = min(oldest, txnid)
        for txnid in list(self._getters.values()):
            oldest = min(oldest, txnid)
        return oldest

    def _register(self) -> tuple[State, int]:
        """Pin the current state for a snapshot (the protocol in the module docstring)."""
        token = next(self._tokens)
        snapshots = self._snapshots
        state = self._live()
        while True:
            snapshots[token] = state.txnid
            now = self._live()
            if now is state:
                return state, token
            state = now

    # -- transactions --------------------------------------------------------------------
    def begin(self, write: bool = False, *, sync: str | None = None) -> Snapshot:
        """Start a transaction.  ``begin()`` is a read snapshot (cost: O(1), no lock);
        ``begin(write=True)`` is the write transaction, waiting while another thread holds
        it.  ``sync`` overrides the database's sync mode for this write transaction.

        Raises :class:`~kvmap.ReadOnlyError` for a write on a readonly handle,
        :class:`~kvmap.NestedWriteError` if this thread already holds the write
        transaction, :class:`~kvmap.DatabaseClosedError` after ``close()``.
        """
        if not write:
            state, token = self._register()
            return Snapshot(self, state, token)
        self._live()
        if self.readonly:
            raise ReadOnlyError(f"{self.path} is open readonly")
        if sync is None:
            sync = self.sync_mode
        elif sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        if self._writer == get_ident():
            raise NestedWriteError("this thread already holds the write transaction")
        self._write_lock.acquire()
        self._writer = get_ident()
        try:
            state = self._live()
        except BaseException:
            self._end_write()
            raise
        return WriteTxn(self, state, sync)

    def _end_write(self) -> None:
        self._writer = None
        self._write_lock.release()

    def _commit(self, state: State, writes: Any, sync: str) -> None:
        """Run the commit sequence (``txn.commit_tree``) and publish the result.  Any failure
        leaves the handle unusable: memory no longer matches the file."""
        if self._state is not state:
            self._raise_unusable()
        try:
            meta = commit_tree(self, state, writes, sync)
        except BaseException as exc:
            self._failed = exc
            self._state = None
            if isinstance(exc, OSError):
                raise FatalError(f"{self.path}: commit failed: {exc}") from exc
            raise
        self._state = State(meta, state.pager, state.freelist)

    # -- the mapping interface (autocommit) ----------------------------------------------
    def get(self, key: bytes, default: Any = None) -> Any:
        """The value stored under ``key`` in the latest commit, or ``default``.
        Cost: one tree descent, ~1-2 µs with cached pages; no lock, no system call.
        Raises ``TypeError`` for a key that is not bytes, bytearray or memoryview."""
        if key.__class__ is not bytes:
            key = as_key(key)
        getters = self._getters
        ident = get_ident()
        state = self._state
        while True:
            if state is None:
                self._raise_unusable()
            getters[ident] = state.txnid  # type: ignore[union-attr]
            now = self._state
            if now is state:
                break
            state = now
        try:  # btree.lookup, inlined: this is the hottest path of all
            root = state.root  # type: ignore[union-attr]
            if not root:
                return default
            cache = state.cache  # type: ignore[union-attr]
            node = cache.get(root) or state.node(root)  # type: ignore[union-attr]
            while (kids := node.kids) is not None:
                pgno = kids[bisect_right(node.keys, key) - 1]
                node = cache.get(pgno) or state.node(pgno)  # type: ignore[union-attr]
            keys = node.keys
            i = bisect_left(keys, key)
            if i != len(keys) and keys[i] == key:
                v = node.vals[i]
                if v.__class__ is Ovf:
                    return read_overflow(state.pager, v)  # type: ignore[union-attr]
                return v
            return default
        finally:
            getters[ident] = _IDLE

    def __getitem__(self, key: bytes) -> bytes:
        """``db[key]``: the value, or ``KeyError``.  Cost as :meth:`get`."""
        v = self.get(key, MISSING)
        if v is MISSING:
            raise KeyError(key)
        return v  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        """``key in db``.  Cost as :meth:`get`."""
        return self.get(key, MISSING) is not MISSING  # type: ignore[arg-type]

    def __len__(self) -> int:
        """Number of keys in the latest commit.  Cost: O(1)."""
        return self._live().meta.entries

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key`` and commit.  Cost: one commit (two fsyncs under
        ``sync="full"``).  Raises ``TypeError``, :class:`~kvmap.KeyTooLargeError`,
        :class:`~kvmap.ReadOnlyError`, :class:`~kvmap.NestedWriteError`."""
        with self.begin(write=True) as txn:
            txn.put(key, value)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def delete(self, key: bytes) -> bool:
        """Remove ``key`` and commit; returns whether it was present.  Cost: one commit."""
        with self.begin(write=True) as txn:
            return txn.delete(key)

    def __delitem__(self, key: bytes) -> None:
        """``del db[key]``: raises ``KeyError`` if the key is missing."""
        if not self.delete(key):
            raise KeyError(key)

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Store every (key, value) of ``items`` in one transaction (one commit)."""
        with self.begin(write=True) as txn:
            txn.put_many(items)

    def _scan(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
        snap = self.begin()
        try:
            yield from getattr(snap, kind)(*args, **kwargs)
        finally:
            snap.close()

    def items(
        self, start: bytes | None = None, stop: bytes | None = None, *,
        prefix: bytes | None = None, reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:  # fmt: skip
        """Iterate (key, value) with ``start <= key < stop`` (and ``prefix``), in key order
        (descending with ``reverse``), over a snapshot taken at the first ``next()``.
        Cost: O(log n) to start, O(1) per item."""
        return self._scan("items", (start, stop), {"prefix": prefix, "reverse": reverse})

    def keys(
        self, start: bytes | None = None, stop: bytes | None = None, *,
        prefix: bytes | None = None, reverse: bool = False,
    ) -> Iterator[bytes]:  # fmt: skip
        """Like :meth:`items`, keys only."""
        return self._scan("keys", (start, stop), {"prefix": prefix, "reverse": reverse})

    def values(
        self, start: bytes | None = None, stop: bytes | None = None, *,
        prefix: bytes | None = None, reverse: bool = False,
    ) -> Iterator[bytes]:  # fmt: skip
        """Like :meth:`items`, values only."""
        return self._scan("values", (start, stop), {"prefix": prefix, "reverse": reverse})

    def __iter__(self) -> Iterator[bytes]:
        """Iterate keys in order (over a snapshot)."""
        return self.keys()

    # -- maintenance ---------------------------------------------------------------------
    def sync(self) -> None:
        """Make every commit so far durable (matters under ``sync="normal"``/``"off"``).
        Cost: one ``fdatasync``.  Raises :class:`~kvmap.FatalError` if it fails."""
        state = self._live()
        if self.readonly:
            return
        with self._write_lock:
            try:
                state.pager.sync()
            except OSError as exc:
                self._failed = exc
                self._state = None
                raise FatalError(f"{self.path}: sync failed: {exc}") from exc
            self._durable_txnid = state.meta.txnid

    flush = sync

    def checkpoint(self) -> None:
        """Make every commit durable in the tree.  Commits write the tree directly until the
        write-ahead log lands, so this is :meth:`sync`."""
        self.sync()

    def check(self) -> dict[str, Any]:
        """Verify the latest commit: checksums, key order, page accounting (invariant 3),
        entry count.  Returns page counts by type.  Cost: reads every page once.
        Raises :class:`~kvmap.CorruptionError` describing the first problem."""
        state, token = self._register()
        try:
            return check_tree(state.pager, state.meta)
        finally:
            self._snapshots.pop(token, None)

    def stats(self) -> dict[str, Any]:
        """Entries, depth, pages by type, file size, free pages and more, as a dict.
        Cost: reads every page once (like :meth:`check`)."""
        state, token = self._register()
        try:
            counts = check_tree(state.pager, state.meta)
            meta = state.meta
            return {
                "entries": meta.entries,
                "depth": meta.depth,
                "page_size": meta.page_size,
                "pages": counts,
                "high_water_mark": meta.hwm,
                "free_pages": counts["free"],
                "file_size": state.pager.file_size(),
                "txnid": meta.txnid,
                "segments": state.pager.segments.count,
                "cached_pages": len(state.pager.cache),
            }
        finally:
            self._snapshots.pop(token, None)

    def compact(self) -> int:
        """Rewrite the live tree into a fresh, dense file and swap it in; returns the bytes
        saved.  Waits for the write transaction; open snapshots keep reading the old file
        until they close.  Cost: reads every live page once, writes the tree once, 3 fsyncs.
        Raises :class:`~kvmap.ReadOnlyError` on a readonly handle."""
        with self.begin(write=True):
            state = self._live()
            data = os.path.join(self.path, DATA_FILE)
            tmp = data + ".compact"
            fs = self._fs
            ps = state.meta.page_size
            old_size = state.pager.file_size()
            fd = fs.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            try:
                txnid = state.meta.txnid + 1
                hwm = [2]
                buf: list[tuple[int, bytes]] = []

                def alloc(n: int) -> int:
                    pg = hwm[0]
                    hwm[0] += n
                    return pg

                def emit(pgno: int, page: bytes) -> None:
                    buf.append((pgno, page))
                    if len(buf) >= 256:
                        flush()

                def flush() -> None:
                    if buf:
                        fs.pwrite(fd, b"".join(p for _, p in buf), buf[0][0] * ps)
                        buf.clear()

                builder = Builder(ps, txnid, alloc, emit)
                snap = Snapshot(self, state, None)
                builder.add_all(snap.items())
                root, depth, entries = builder.finish()
                flush()
                from .segments import segment_end

                fs.truncate(fd, segment_end(hwm[0] * ps, ps))
                meta = Meta(
                    txnid,
                    ps,
                    root,
                    0,
                    hwm[0],
                    entries,
                    depth,
                    state.meta.wal_seq,
                    state.meta.wal_salt,
                )
                fs.pwrite(fd, meta.encode(), (txnid % 2) * ps)
                other = meta._replace(txnid=txnid - 1)
                fs.pwrite(fd, other.encode(), ((txnid - 1) % 2) * ps)
                fs.fdatasync(fd)
                fs.rename(tmp, data)
            except BaseException as exc:
                fs.close(fd)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                if isinstance(exc, OSError):  # like a failed commit: the handle is done
                    self._failed = exc
                    self._state = None
                    raise FatalError(f"{self.path}: compact failed: {exc}") from exc
                raise
            # The new file is in place: from here on a failure must not leave this handle
            # writing to the old, replaced file.
            # The old descriptor can go now: the mappings old snapshots read through keep
            # the old (unlinked) file alive on their own, and nothing writes to it again.
            old_fd, self._fd = self._fd, fd
            _close_quietly(fs, old_fd)
            try:
                fs.fsync_dir(self.path)
                pager = Pager(fs, fd, ps, decode, state.pager.max_cached * 2 * ps)
                pager.check_covers(meta.hwm)
            except BaseException as exc:
                self._failed = exc
                self._state = None
                raise FatalError(f"{self.path}: compact failed after the swap: {exc}") from exc
            self._state = State(meta, pager, Freelist())
            self._durable_txnid = meta.txnid
            return old_size - pager.file_size()

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Make every commit durable, release the lock and the mappings (idempotent).
        Snapshots still open raise :class:`~kvmap.TxnClosedError` afterwards.  Waits for a
        write transaction held by another thread."""
        if self._closed:
            return
        own = self._writer == get_ident()
        if not own:
            self._write_lock.acquire()
        try:
            if self._closed:
                return
            self._closed = True
            state = self._state
            if state is not None and not self.readonly and self._durable_txnid != state.meta.txnid:
                try:
                    state.pager.sync()
                except OSError:
                    pass  # nothing more can be done; the last commits may not be durable
            self._state = None
            if state is not None:
                state.pager.close()
            self._release_files()
        finally:
            if not own:
                self._write_lock.release()

    def _release_files(self) -> None:
        for attr in ("_fd", "_lockfd"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                setattr(self, attr, -1)
                _close_quietly(self._fs, fd)

    def __enter__(self) -> Database:
        self._live()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed and os.getpid() == self._pid:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = self._state
        if state is None:
            return f"<kvmap.Database {self.path!r} closed>"
        mode = "readonly" if self.readonly else f"sync={self.sync_mode}"
        return f"<kvmap.Database {self.path!r} {mode} entries={state.meta.entries}>"


def _close_quietly(fs: fileio.FileSystem, fd: int) -> None:
    try:
        fs.close(fd)
    except OSError:
        pass


__all__ = ["Database", "open", "Error"]
