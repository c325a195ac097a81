"""The :class:`Database` handle and :func:`open`: the public face of kvmap.

A database is a directory holding the data file (``kvmap.data``), the write-ahead log
(``kvmap.wal.<start sequence>``) and a lock file (``kvmap.lock``).  One :class:`Database` is
thread-safe: any number of threads read at once (without locks), and one write transaction
exists at a time (others wait for it).

What a reader sees is a :class:`State`: a tree (meta page) plus the memtables holding the
commits since the last checkpoint, and the commit sequence it reads at.  Every commit
publishes a new State with one attribute store; nothing a published State refers to ever
changes in a way its readers can see.

Design note: lock-free point reads within a process.  ``db.get`` does not open a snapshot
object; it publishes the State it is about to read in a per-thread slot (``_getters``),
then re-checks that the current State did not move, and reads.  Before reusing freed pages
(invariant 4) or dropping an old memtable version, a writer computes the oldest tree txn id
and commit sequence any slot or registered snapshot holds, so nothing a reader walks is
reused or dropped under it.  If the State moved between reading it and publishing the slot,
the reader retries with the newer one: the writer may have looked at the slots before the
slot was published.  This is LMDB's reader-table protocol, kept within one process; across
processes each readonly handle holds a slot of the lock file's reader table
(kvmap/readers.py), and ``_oldest_txnid`` takes both into account.

Locks, always taken in this order: ``_write_lock`` (the write transaction, held from
``begin(write=True)`` to its end), ``_ckpt_lock`` (one checkpoint or tree commit at a
time), ``_publish_lock`` (short: appending a frame, applying it to the memtable, swapping
the State, rotating the WAL), ``_sync_lock`` (the group-commit fsync).
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from threading import get_ident
from typing import Any, NoReturn

from . import fileio
from .btree import MISSING, Builder
from .check import check as check_tree
from .check import other_meta_problem, read_freelist
from .checkpoint import fold
from .errors import (
    CorruptionError,
    DatabaseClosedError,
    DatabaseLockedError,
    Error,
    FatalError,
    NestedWriteError,
    ReadOnlyError,
)
from .fileio import failpoint
from .format import (
    DATA_FILE,
    DEFAULT_PAGE_SIZE,
    DEFAULT_READER_SLOTS,
    LOCK_FILE,
    MAX_VALUE_SIZE,
    WAL_HEADER_SIZE,
    max_key_size,
    valid_page_size,
)
from .freelist import Freelist
from .memtable import Memtable
from .meta import Meta, peek_page_size, pick
from .node import decode, peek
from .pager import Pager
from .readers import LockFile, Published, ReaderInfo
from .segments import first_segment, segment_end
from .txn import Snapshot, WriteTxn, as_key, checked_item, get_value, read_state
from .wal import (
    WalWriter,
    decode_header,
    encode_frame,
    encode_put_frame,
    frame_length,
    list_wals,
    read_wal,
    read_wal_header,
    read_wal_tail,
    scan_frames,
    used_end,
)

SYNC_MODES = ("full", "normal", "off")
_PUBLISHED_RAW = struct.Struct("<QQQ")


class _TreeMoved(Exception):
    """A follower's catch-up raced a checkpoint; it starts over from the newest tree."""


# seq, txnid, wal_start as the lock header holds them

# Design note: fork().  A child process inherits open handles, but not the right to use them:
# their reader slot, writer lock and WAL position belong to the parent, and the child
# touching them would corrupt the parent's view (or the files).  So in the child every
# inherited handle is disowned at once: it raises DatabaseClosedError on use, and closing it
# (or garbage collection) releases nothing the parent holds.  Open the database again in
# the child; multiprocessing with "fork" and "spawn" both work that way.
_OPEN_HANDLES: weakref.WeakSet[Database] = weakref.WeakSet()


def _disown_after_fork() -> None:
    for handle in list(_OPEN_HANDLES):
        handle._forked = True
        handle._closed = True
        handle._state = None
        # The child's copies of the descriptors must go: they share the parent's open file
        # descriptions, so while the child kept them the parent's writer lock and reader
        # slot would outlive the parent.  Closing them releases nothing the parent holds.
        fds = [handle._fd]
        if handle._lock is not None:
            fds.append(handle._lock.fd)
            try:  # the mapping holds its own dup() of the descriptor (and the slot's lock)
                handle._lock.map.close()
            except (BufferError, ValueError):
                pass
        handle._lockmap = None
        handle._follow = False
        if handle._wal is not None:
            fds.append(handle._wal.fd)
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        handle._fd = -1
        handle._lock = None
        handle._wal = None
    _OPEN_HANDLES.clear()


os.register_at_fork(after_in_child=_disown_after_fork)


def _reset_refresher_after_fork() -> None:
    """The child has no refresher thread, and the parent's may have held its lock at the
    fork: start afresh (the first follower opened in the child starts a thread)."""
    global _refresher_lock, _FOLLOWERS
    _refresher_lock = threading.Lock()
    _FOLLOWERS = weakref.WeakSet()


os.register_at_fork(after_in_child=_reset_refresher_after_fork)

# Design note: idle followers.  A readonly handle's reader slot names the oldest tree its
# reads may walk, and it moves on only when the handle reads: a web worker idle for an hour
# would pin the tree of its last request, and the writer could reuse no page freed since.
# So one daemon thread per process (started with the first follower, restarted in a forked
# child) catches every open follower up once the writer has published a new tree and at
# least _REFRESH_INTERVAL seconds passed.  An open snapshot still pins its own tree; only
# the handle's own hold moves.  A failed catch-up is left for the handle's next call to
# report.
_FOLLOWERS: weakref.WeakSet[Database] = weakref.WeakSet()
_REFRESH_INTERVAL = 1.0  # seconds
_TAIL_CHUNK = 4096  # a follower's first read of the WAL per look (doubled while frames go on)
_refresher_pid = 0
_refresher_lock = threading.Lock()


def _watch_follower(handle: Database) -> None:
    global _refresher_pid
    with _refresher_lock:
        _FOLLOWERS.add(handle)
        if _refresher_pid != os.getpid():
            _refresher_pid = os.getpid()
            threading.Thread(
                target=_refresh_followers, name="kvmap-follower-refresh", daemon=True
            ).start()


def _refresh_followers() -> None:
    while True:
        time.sleep(_REFRESH_INTERVAL)
        with _refresher_lock:  # (a WeakSet changed while it is copied raises)
            handles = list(_FOLLOWERS)
        for handle in handles:
            try:
                handle._refresh_hold()
            except Exception:  # closed or failing: its next call reports it
                pass


Op = tuple[bytes, bytes | None]


class State:
    """What a reader needs, swapped atomically (one attribute store) on every commit and
    checkpoint: the tree (``meta``, with ``txnid``/``root``/``cache``/``node`` repeated so
    the lookup path reads one attribute each), the memtables (newest first), the commit
    sequence ``seq`` the state reads at, and the exact number of keys."""

    __slots__ = (
        "meta", "pager", "freelist", "txnid", "root", "cache", "node", "seq", "mems", "entries",
    )  # fmt: skip

    def __init__(
        self, meta: Meta, pager: Pager, freelist: Freelist, seq: int,
        mems: tuple[Memtable, ...], entries: int,
    ) -> None:  # fmt: skip
        self.meta = meta
        self.pager = pager
        self.freelist = freelist
        self.txnid = meta.txnid
        self.root = meta.root
        self.cache = pager.cache
        self.node = pager.visit
        self.seq = seq
        self.mems = mems
        self.entries = entries

    def advance(self, seq: int, entries: int) -> State:
        """The same tree and memtables after commit ``seq``."""
        return State(self.meta, self.pager, self.freelist, seq, self.mems, entries)

    def with_tree(self, meta: Meta, mems: tuple[Memtable, ...]) -> State:
        """The same commits, read from another tree and memtables."""
        return State(meta, self.pager, self.freelist, self.seq, mems, self.entries)


def open(  # noqa: A001 - the natural name, like dbm.open and gzip.open
    path: str | os.PathLike[str],
    *,
    create: bool = True,
    readonly: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
    sync: str = "full",
    cache_size: int = 32 * 1024 * 1024,
    checkpoint_size: int = 32 * 1024 * 1024,
    lock_timeout: float = 0.0,
    max_readers: int = DEFAULT_READER_SLOTS,
) -> Database:
    """Open (or create) the database in directory ``path``.

    ``page_size`` (a power of two in [512, 65536]) only matters when the database is created;
    an existing database keeps its own.  ``sync`` is the default durability of commits:
    ``"full"`` (the WAL is fsynced before a commit returns: survives power loss),
    ``"normal"`` (the frame is written to the OS: survives a crash of the process; synced at
    checkpoint and close), ``"off"`` (frames buffered in the process until ``sync()``, a
    checkpoint or ``close()``).  ``cache_size`` bounds the decoded-page cache, in bytes.
    ``checkpoint_size`` is the WAL size (bytes of frames) past which a commit triggers a
    checkpoint; 0 checkpoints after every commit (the tree is then always current).
    ``max_readers`` is the number of reader slots in the lock file, fixed when the lock file
    is created: each open handle other than the writer takes one, across all processes.
    A ``readonly`` handle follows the writer: each read first picks up what the writer
    published (commits that reached the WAL file, checkpoints), lock-free.
    A writable open takes the database's writer lock, waiting up to ``lock_timeout`` seconds.

    Raises ``TypeError``/``ValueError`` for bad arguments, ``FileNotFoundError`` when the
    database does not exist and ``create`` is false or ``readonly`` is true,
    ``NotADirectoryError`` when ``path`` is a file, :class:`~kvmap.DatabaseLockedError` when
    another handle writes it, :class:`~kvmap.ReadersFullError` when a ``readonly`` open finds
    every reader slot taken, :class:`~kvmap.CorruptionError` when no valid meta page is found
    (or the WAL does not reach back to the tree), and :class:`~kvmap.FatalError` when an I/O
    error stops the open.  A readonly handle starts a daemon thread (one per process) that
    catches idle readonly handles up, so that they do not keep old pages from reuse.

    >>> import tempfile, kvmap
    >>> with kvmap.open(tempfile.mkdtemp() + "/db") as db:
    ...     db[b"hello"] = b"world"
    ...     db[b"hello"]
    b'world'
    """
    return Database(
        os.fspath(path), create=create, readonly=readonly, page_size=page_size, sync=sync,
        cache_size=cache_size, checkpoint_size=checkpoint_size, lock_timeout=lock_timeout,
        max_readers=max_readers,
    )  # fmt: skip


def _check_options(
    path: object, create: object, readonly: object, page_size: object, sync: object,
    cache_size: object, checkpoint_size: object, lock_timeout: object, max_readers: object,
) -> None:  # fmt: skip
    if not isinstance(max_readers, int) or isinstance(max_readers, bool):
        raise TypeError(f"max_readers must be int, not {type(max_readers).__name__}")
    if not 1 <= max_readers <= 65536:
        raise ValueError(f"max_readers must be in [1, 65536], not {max_readers}")
    if not isinstance(path, str):
        raise TypeError(f"path must be str or os.PathLike, not {type(path).__name__}")
    for name, val in (("create", create), ("readonly", readonly)):
        if not isinstance(val, bool):
            raise TypeError(f"{name} must be bool, not {type(val).__name__}")
    if not isinstance(page_size, int) or isinstance(page_size, bool):
        raise TypeError(f"page_size must be int, not {type(page_size).__name__}")
    if not valid_page_size(page_size):
        raise ValueError(f"page_size must be a power of two in [512, 65536], not {page_size}")
    _check_sync(sync)
    if not isinstance(cache_size, int) or isinstance(cache_size, bool):
        raise TypeError(f"cache_size must be int, not {type(cache_size).__name__}")
    if cache_size < 0:
        raise ValueError(f"cache_size must be >= 0, not {cache_size}")
    if not isinstance(checkpoint_size, int) or isinstance(checkpoint_size, bool):
        raise TypeError(f"checkpoint_size must be int, not {type(checkpoint_size).__name__}")
    if checkpoint_size < 0:
        raise ValueError(f"checkpoint_size must be >= 0, not {checkpoint_size}")
    if not isinstance(lock_timeout, (int, float)) or isinstance(lock_timeout, bool):
        raise TypeError(f"lock_timeout must be a number, not {type(lock_timeout).__name__}")
    if lock_timeout != lock_timeout:  # NaN: a wait that could never time out
        raise ValueError("lock_timeout must be a number of seconds, not nan")


def _check_sync(sync: object) -> None:
    if not isinstance(sync, str):
        raise TypeError(f"sync must be str, not {type(sync).__name__}")
    if sync not in SYNC_MODES:
        raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")


class Database:
    """An open kvmap database: a thread-safe mapping of bytes keys to bytes values.

    Use :func:`kvmap.open` to make one.  Reads (``get``, ``in``, iteration) see the latest
    commit; ``begin()`` gives a snapshot that keeps one commit's view; ``begin(write=True)``
    gives the write transaction.  ``put``/``delete``/``db[k] = v`` each commit on their own
    (one WAL append, plus an fsync under ``sync="full"``: batch writes in a transaction).
    """

    def __init__(
        self, path: str, *, create: bool = True, readonly: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE, sync: str = "full",
        cache_size: int = 32 * 1024 * 1024, checkpoint_size: int = 32 * 1024 * 1024,
        lock_timeout: float = 0.0, max_readers: int = DEFAULT_READER_SLOTS,
    ) -> None:  # fmt: skip
        self._closed = True
        self._forked = False  # until fully open, so __del__ and close() are safe
        _check_options(path, create, readonly, page_size, sync, cache_size, checkpoint_size,
                       lock_timeout, max_readers)  # fmt: skip
        self.path = path
        self.readonly = readonly
        self.sync_mode = sync
        self.checkpoint_size = checkpoint_size
        self._lock_timeout = float(lock_timeout)
        self._fs = fileio.fs()
        self._fd = -1
        self._lock: LockFile | None = None
        self._follow = False  # a reader of commits another handle makes (not the writer)
        self._tail: tuple[str, int, int, int] | None = None  # WAL path, salt, start, offset
        self._seen = Published(0, 0, 0)  # the lock file header this handle last caught up to
        self._seen_raw = bytes(24)
        self._lockmap: Any = None  # the lock file mapping, for the follower's hot path
        self._catchup_lock = threading.Lock()
        self._wal: WalWriter | None = None
        self._state: State | None = None
        self._failed: BaseException | None = None
        self._dead_pager: Pager | None = None  # the pager of a handle a failure made unusable
        self._write_lock = threading.Lock()
        self._ckpt_lock = threading.RLock()
        self._publish_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._writer: int | None = None
        self._written_seq = 0  # last commit whose frame reached the WAL writer
        self._synced_seq = 0  # last commit known durable
        self._snapshots: dict[int, State] = {}
        self._getters: dict[int, State | None] = {}
        self._tokens = itertools.count(1)
        self._pid = os.getpid()
        try:
            self._open(create, page_size, cache_size, max_readers)
            if not readonly:
                self._start_wal()
            elif self._lock is not None:
                self._follow = True
                self._lock.claim()
                self._hold()
                _watch_follower(self)
        except BaseException as exc:
            self._close_pager()
            if self._wal is not None:
                self._wal.close()
            self._release_files()
            if isinstance(exc, OSError) and not isinstance(
                exc, (FileNotFoundError, PermissionError, NotADirectoryError)
            ):
                # an I/O failure (not a missing or forbidden path): nothing was changed that
                # a later open does not recover
                raise FatalError(f"{self.path}: open failed: {exc}") from exc
            raise
        self._closed = False
        _OPEN_HANDLES.add(self)

    # -- opening -----------------------------------------------------------------------
    def _open(self, create: bool, page_size: int, cache_size: int, max_readers: int) -> None:
        fs = self._fs
        data = os.path.join(self.path, DATA_FILE)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotADirectoryError(errno.ENOTDIR, "a kvmap database is a directory", self.path)
        if not os.path.exists(data):
            if self.readonly or not create:
                raise FileNotFoundError(errno.ENOENT, "no kvmap database here", self.path)
            os.makedirs(self.path, exist_ok=True)
        lock_path = os.path.join(self.path, LOCK_FILE)
        if self.readonly:
            try:
                self._lock = LockFile(fs, lock_path, max_readers, readonly_fs=False)
                # Read before the data file and the WAL: whatever the writer publishes from
                # here on differs from it, so the first read after that catches up.
                self._seen = self._lock.published()
                self._seen_raw = self._lock.published_raw()
                self._lockmap = self._lock.map
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                # A read-only copy (read-only filesystem or no write permission): no reader
                # table and no following; the handle reads the state it opened with, which
                # is only safe while nobody writes the database.
                self._lock = None
        else:
            self._lock = LockFile(fs, lock_path, max_readers, readonly_fs=False)
            self._lock_writer(self._lock_timeout)
            if not os.path.exists(data):
                self._create(data, page_size)
        self._fd = fs.open(data, os.O_RDONLY if self.readonly else os.O_RDWR)
        meta, ps = self._read_meta(data)
        pager = Pager(fs, self._fd, ps, decode, cache_size, peek)
        self.page_size = ps
        self.max_key_size = max_key_size(ps)
        try:
            for attempt in range(1000):
                pager.check_covers(meta.hwm)
                # A readonly handle never allocates; only the newest meta's freelist run
                # is kept intact, so it does not read one (it could be reused under it).
                freelist = Freelist() if self.readonly else read_freelist(pager, meta)[0]
                try:
                    self._state = self._recover(
                        State(meta, pager, freelist, meta.wal_seq, (), meta.entries)
                    )
                    break
                except (FileNotFoundError, CorruptionError) as exc:
                    # A readonly open can race a writer's checkpoint: a WAL file the meta
                    # covers is deleted under it (harmless: list again), or a newer meta
                    # no longer reaches back to the WAL files listed (start again from it).
                    # Commits missing with the meta unchanged are real damage.
                    newest, _ = self._read_meta(data)
                    lost_file = isinstance(exc, FileNotFoundError)
                    if not self.readonly or (newest.txnid == meta.txnid and not lost_file):
                        raise
                    if attempt == 999:
                        raise
                    if newest.txnid != meta.txnid:
                        meta = newest
                        pager.forget()
        except BaseException:
            pager.close()
            raise
        self._written_seq = self._synced_seq = self._state.seq  # type: ignore[union-attr]

    def _recover(self, state: State) -> State:
        """Replay the WAL files after the tree's ``wal_seq`` into a memtable (invariant 5:
        frames count up to the first one that does not check).  Raises
        :class:`CorruptionError` when commits the tree does not cover are missing from the
        log (e.g. the newest meta page was lost after its WAL was deleted)."""
        seq = state.seq
        mem = Memtable(seq)
        entries = state.entries
        state = state.with_tree(state.meta, (mem,))
        self._stale_wals: list[str] = []
        wals = list_wals(self.path)
        for i, (_start, path) in enumerate(wals):
            buf = read_wal(self._fs, path)
            try:
                salt, wstart = decode_header(buf, path)
            except CorruptionError:
                # Harmless when the file holds no frames (nothing but the zeros of its
                # allocated space after the header: a crash while it was being created,
                # before its first frame was synced) or when the next file starts within
                # what is already recovered (every frame this one could hold is covered);
                # otherwise commits would be skipped silently, so it is an error.
                covered = i + 1 < len(wals) and wals[i + 1][0] <= seq
                if used_end(buf) > WAL_HEADER_SIZE and not covered:
                    raise
                self._stale_wals.append(path)
                continue
            if wstart > seq:
                raise CorruptionError(
                    f"{path}: the log continues from commit {wstart} but the tree covers "
                    f"only up to commit {seq}: commits {seq + 1}..{wstart} are missing"
                )
            seq, entries, end = _replay(state, mem, buf, WAL_HEADER_SIZE, salt, wstart, seq,
                                        entries, keep_old=False)  # fmt: skip
            self._tail = (path, salt, wstart, end)
            # A torn or corrupt tail ends this file's frames.  A later file must then start
            # at or before the last commit recovered so far (checked above), so a gap is
            # never skipped silently; a damaged tail the tree already covers is harmless.
            self._stale_wals.append(path)
        return state.advance(seq, entries)

    def _start_wal(self) -> None:
        """A writable handle appends to a fresh WAL: fold what recovery replayed into the
        tree (a checkpoint), or start a new log at the current sequence; then delete the
        old files (their commits are all in the durable tree)."""
        state = self._state
        assert state is not None
        if len(state.mems[0]):
            self._checkpoint()
        else:
            self._wal = WalWriter.create(self._fs, self.path, state.seq)
        for path in self._stale_wals:
            if path != self._wal.path:  # type: ignore[union-attr]
                self._fs.unlink(path)
        self._fs.fsync_dir(self.path)
        self._stale_wals = []
        with self._publish_lock:
            self._announce()

    def _read_meta(self, data: str) -> tuple[Meta, int]:
        """The newest valid meta page and the page size of this handle's data file."""
        return _read_meta_fd(self._fs, self._fd, data)

    def _lock_writer(self, timeout: float) -> None:
        """Take the writer lock, polling until ``timeout`` seconds have passed."""
        assert self._lock is not None
        deadline = time.monotonic() + timeout
        while not self._lock.try_lock_writer():
            if time.monotonic() >= deadline:
                raise DatabaseLockedError(f"{self.path}: another handle has it open for writing")
            time.sleep(0.01)

    def _create(self, data: str, page_size: int) -> None:
        """Write a fresh data file (both metas, empty tree) under a temporary name, sync it,
        and rename it into place, so a crash never leaves a half-made database."""
        fs = self._fs
        tmp = data + ".new"
        fd = fs.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
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
        return state

    def _raise_unusable(self) -> NoReturn:
        if self._forked:
            raise DatabaseClosedError(
                f"{self.path}: this handle was inherited across fork(); open the database "
                "again in the child process"
            )
        if self._failed is not None:
            raise FatalError(
                f"{self.path}: an earlier write failed ({self._failed!r}); reopen the database"
            )
        raise DatabaseClosedError(f"{self.path}: the database is closed")

    def _fail(self, exc: BaseException, what: str) -> BaseException:
        """Make the handle unusable after a failed write; returns the error to raise."""
        self._failed = exc
        if self._state is not None:
            self._dead_pager = self._state.pager  # close() still unmaps it
        self._state = None
        if isinstance(exc, OSError):
            return FatalError(f"{self.path}: {what} failed: {exc}")
        return exc

    def _readers(self) -> list[State]:
        """Every State a snapshot or an in-flight read holds (``list()`` copies each
        registry atomically under the GIL)."""
        held = list(self._snapshots.values())
        held.extend(s for s in list(self._getters.values()) if s is not None)
        return held

    def _has_readers(self) -> bool:
        """Whether any snapshot or in-flight read of this handle exists: each is older than
        the commit being applied, so the versions it replaces must be kept."""
        return bool(self._snapshots) or any(list(self._getters.values()))

    def _oldest_txnid(self, limit: int) -> int:
        """The oldest tree txn id a reader holds, in this process (the registry) or any
        other handle (the reader table), capped at ``limit``."""
        oldest = min([limit, *(s.txnid for s in self._readers())])
        if self._lock is not None:
            oldest = self._lock.oldest_txnid(oldest)
        return oldest

    def _announce(self) -> None:
        """The writer publishes its commit sequence (frames in the file), tree and WAL in
        the lock file, for handles that follow it (publish lock held)."""
        state, wal, lock = self._state, self._wal, self._lock
        if state is not None and wal is not None and lock is not None:
            lock.publish(self._written_seq, state.txnid, wal.start_seq)

    def _hold(self) -> None:
        """A following handle records in its slot the oldest tree its readers hold."""
        lock, state = self._lock, self._state
        if lock is None or state is None:
            return
        held = [state, *list(self._snapshots.values())]
        held.extend(g for g in list(self._getters.values()) if g is not None)
        oldest = min(held, key=lambda s: s.txnid)
        lock.hold(oldest.txnid, oldest.seq)

    def _refresh_hold(self) -> None:
        """Catch up if the writer published a newer tree than this handle holds, so an idle
        follower does not pin an old one (run by the refresher thread)."""
        lock = self._lock
        if self._follow and lock is not None and lock.published().txnid != self._seen.txnid:
            self._fresh()

    def _fresh(self) -> State:
        """The current state, first catching up with the writer if it published anything
        since this handle last looked.  Cost when nothing moved: one ``unpack_from`` on the
        lock file mapping and a tuple comparison."""
        state = self._live()
        if self._lock.map[16:40] == self._seen_raw:  # type: ignore[union-attr]
            return state
        with self._catchup_lock:
            return self._catch_up()

    def _catch_up(self) -> State:
        """Follow the writer (``_catchup_lock`` held): when a checkpoint moved the tree,
        re-read the meta, map new segments, drop the page cache (page numbers may have been
        reused) and replay the WAL from the new tree; otherwise read the frames appended
        since the last look.  Then record the tree in this handle's slot and check that no
        checkpoint moved the tree meanwhile (the protocol in kvmap/readers.py), starting
        over if one did."""
        lock = self._lock
        assert lock is not None
        while True:
            state = self._live()
            pub = lock.published()
            if pub == self._seen:
                return state
            try:
                if pub.txnid != self._seen.txnid or self._tail is None:
                    new = self._rebuild(state)
                else:
                    new = self._follow_wal(state, pub.wal_start, pub.seq)
            except (FileNotFoundError, _TreeMoved):
                # A checkpoint deleted the WAL being read, after writing the meta that covers
                # it: start again from the newest tree.
                self._tail = None
                continue
            self._state = new
            self._hold()
            if lock.published().txnid == pub.txnid:
                # Frames are stores into shared memory, published by another store: a CPU
                # that reorders stores may show the new sequence before the frame.  Commits
                # not read yet leave the sequence unseen, so the next read looks again.
                seen = pub if new.seq >= pub.seq else Published(new.seq, pub.txnid, pub.wal_start)
                self._seen = seen
                self._seen_raw = _PUBLISHED_RAW.pack(seen.seq, seen.txnid, seen.wal_start)
                return new

    def _rebuild(self, state: State) -> State:
        """A state on the newest tree, with the WAL after it replayed.  Raises
        :class:`_TreeMoved` when a checkpoint or a compaction overtook the reads (the
        caller starts over), :class:`CorruptionError` for real damage."""
        data = os.path.join(self.path, DATA_FILE)
        pager = state.pager
        fd = self._fd
        if os.stat(data).st_ino != os.fstat(pager.fd).st_ino:
            # compact() swapped in a new file: read it through a new descriptor and pager;
            # old snapshots keep the old mappings, which keep the old file alive.  The
            # handle switches to them only once the new state is complete.
            fd = self._fs.open(data, os.O_RDONLY)
            pager = Pager(
                self._fs, fd, pager.page_size, decode, pager.max_cached * 2 * pager.page_size,
                peek,
            )  # fmt: skip
        try:
            meta, _ = _read_meta_fd(self._fs, fd, data)
            pager.check_covers(meta.hwm)
            if meta.txnid != state.txnid or pager is not state.pager:
                pager.forget()
            self._tail = None
            try:
                new = self._recover(
                    State(meta, pager, state.freelist, meta.wal_seq, (), meta.entries)
                )
            except (CorruptionError, FileNotFoundError):
                if self._moved(data, fd, meta):
                    raise _TreeMoved from None
                raise
            if self._moved(data, fd, meta):
                raise _TreeMoved  # the WAL listed may belong to a newer tree: do it again
        except BaseException:
            if fd != self._fd:
                pager.close()
                _close_quietly(self._fs, fd)
            raise
        if fd != self._fd:
            old_fd, self._fd = self._fd, fd
            _close_quietly(self._fs, old_fd)
        return new

    def _moved(self, data: str, fd: int, meta: Meta) -> bool:
        """Whether the data file was replaced or its newest meta changed since ``meta``."""
        if os.stat(data).st_ino != os.fstat(fd).st_ino:
            return True
        return _read_meta_fd(self._fs, fd, data)[0].txnid != meta.txnid

    def _follow_wal(self, state: State, wal_start: int, target: int) -> State:
        """The frames appended to the WAL since the last look (and to newer WAL files), up
        to commit ``target`` (what the writer published).  The log is read in growing
        chunks from where the last look ended, so a look costs about what was appended,
        and a file's allocated tail (zeros, see kvmap/wal.py) is never read beyond one
        chunk."""
        path, salt, wstart, offset = self._tail  # type: ignore[misc]
        seq, entries = state.seq, state.entries
        mem = state.mems[0]
        keep_old = self._has_readers()
        size = _TAIL_CHUNK
        while True:
            head, buf = read_wal_tail(self._fs, path, offset, size)
            try:
                if decode_header(head, path)[0] != salt:
                    raise _TreeMoved  # a new writer process made a new file of that name
            except CorruptionError:
                raise _TreeMoved from None
            start = offset
            seq, entries, offset = _replay(state, mem, buf, offset, salt, wstart, seq, entries,
                                           keep_old, base=start)  # fmt: skip
            self._tail = (path, salt, wstart, offset)
            if seq < target and len(buf) == size:  # this file may hold more frames
                need = frame_length(buf, offset - start)
                if need > 2 * size and need > os.path.getsize(path) - offset:
                    need = 0  # a length the file cannot hold: damage, not a frame
                if offset > start or need > len(buf):
                    size = max(2 * size, need)
                    continue  # read on from the end of the last whole frame
            if wal_start == wstart or seq >= target:
                break  # the file the writer appends to (or a torn tail: wait for more)
            nxt = [(s, p) for s, p in list_wals(self.path) if s > wstart]
            if not nxt or nxt[0][0] > seq:
                break
            wstart, path = nxt[0]
            salt, wstart = decode_header(read_wal_header(self._fs, path), path)
            offset = WAL_HEADER_SIZE
            size = _TAIL_CHUNK
        return State(state.meta, state.pager, state.freelist, seq, state.mems, entries)

    def readers(self, clear_stale: bool = False) -> list[ReaderInfo]:
        """The live handles of every process that hold a reader slot on this database
        (slot, pid, oldest tree txn id and commit sequence they read), this handle
        included.  Slots of dead processes are never listed; the writer reclaims them at
        its next checkpoint, or now with ``clear_stale=True``.  Cost: one ``fcntl`` per
        used slot."""
        self._live()
        if self._lock is None:
            return []
        out = self._lock.readers(clear_stale=clear_stale)
        if self._lock.slot >= 0:
            state = self._live()
            out.append(ReaderInfo(self._lock.slot, os.getpid(), state.txnid, state.seq))
        return sorted(out)

    def _register(self) -> tuple[State, int]:
        """Pin the current state for a snapshot (the protocol in the module docstring)."""
        token = next(self._tokens)
        snapshots = self._snapshots
        state = self._fresh() if self._follow else self._live()
        while True:
            snapshots[token] = state
            now = self._live()
            if now is state:
                return state, token
            state = now

    def _unregister(self, token: int) -> None:
        self._snapshots.pop(token, None)
        if self._follow:
            self._hold()  # the oldest tree this handle needs may have moved on

    # -- transactions --------------------------------------------------------------------
    def begin(self, write: bool = False, *, sync: str | None = None) -> Snapshot:
        """Start a transaction.  ``begin()`` is a read snapshot (cost: O(1), no lock);
        ``begin(write=True)`` is the write transaction, waiting while another thread holds
        it.  ``sync`` overrides the database's sync mode for this write transaction.

        Raises :class:`~kvmap.ReadOnlyError` for a write on a readonly handle,
        :class:`~kvmap.NestedWriteError` if this thread already holds the write
        transaction, :class:`~kvmap.DatabaseClosedError` after ``close()``.
        """
        if sync is not None:
            _check_sync(sync)
        if not write:
            state, token = self._register()
            return Snapshot(self, state, token)
        self._live()
        if self.readonly:
            raise ReadOnlyError(f"{self.path} is open readonly")
        if sync is None:
            sync = self.sync_mode
        if self._writer == get_ident():
            raise NestedWriteError("this thread already holds the write transaction")
        self._write_lock.acquire()
        self._writer = get_ident()
        try:
            state, token = self._register()
        except BaseException:
            self._writer = None
            self._write_lock.release()
            raise
        return WriteTxn(self, state, token, sync)

    def _end_write(self, token: int | None) -> None:
        if token is not None:
            self._snapshots.pop(token, None)
        self._writer = None
        self._write_lock.release()

    def _commit(self, ops: list[Op], sync: str) -> int:
        """Commit ``ops`` (sorted, unique keys; the write lock is held).  Returns the commit
        sequence.  Any failure leaves the handle unusable, as memory may no longer match the
        files.  The steps, in order, all under the publish lock (which keeps the State
        current while its tree is read: a checkpoint cannot publish meanwhile, and the pages
        its fold reuses were free before it began, so none of this tree's):

        1. existence of each key in the current State, so that ``len()`` stays exact;
        2. one WAL frame reaches the OS (or the buffer under ``sync="off"``);
        3. the memtable, keeping replaced versions while an older reader may need them;
        4. a new State, published in this process and in the lock file.
        """
        with self._publish_lock:
            state = self._state
            if state is None:
                self._raise_unusable()
            seq = state.seq + 1
            wal = self._wal
            assert wal is not None
            # 1. existence
            delta = 0
            for k, v in ops:
                delta += (v is not None) - (get_value(state, k, MISSING, False) is not MISSING)
            # 2. the frame (one put, the commonest commit, packs with one struct call)
            if len(ops) == 1 and (put := ops[0])[1] is not None:
                frame = encode_put_frame(wal.salt, seq, put[0], put[1])
            else:
                frame = encode_frame(wal.salt, seq, ops)
            try:
                wal.append(frame, sync)
            except BaseException as exc:
                raise self._fail(exc, "WAL write") from exc
            # 3. every registered snapshot and in-flight read is older than this commit
            state.mems[0].apply(seq, ops, self._has_readers())
            # 4. publish
            self._state = state = state.advance(seq, state.entries + delta)
            if not wal.buffer:  # every frame up to this one reached the OS
                self._written_seq = seq
                lock = self._lock
                if lock is not None:
                    lock.publish(seq, state.txnid, wal.start_seq)
        return seq

    def _sync_wal(self, seq: int) -> None:
        """Return once commit ``seq`` is durable.  Group commit: whoever holds the sync lock
        fsyncs every frame written so far, so threads that committed meanwhile find their
        commit already durable and skip their own fsync."""
        with self._sync_lock:
            if self._synced_seq >= seq:
                return
            target = self._written_seq
            wal = self._wal
            if wal is None:
                self._raise_unusable()
            try:
                self._fs.fdatasync(wal.fd)
            except BaseException as exc:
                raise self._fail(exc, "WAL sync") from exc
            self._synced_seq = max(self._synced_seq, target)

    def _commit_tree(self, keys: list[bytes], vals: list[bytes | None]) -> None:
        """Write the batch ``keys``/``vals`` straight into the tree (``put_many(append=True)``;
        the write lock is held): checkpoint, then one copy-on-write fold and meta flip."""
        with self._ckpt_lock:
            self._checkpoint()
            state = self._live()
            try:
                meta, delta = fold(
                    state.pager, state.freelist, state.meta, keys, vals, state.seq,
                    self._oldest_txnid,
                )  # fmt: skip
            except BaseException as exc:
                raise self._fail(exc, "tree commit") from exc
            with self._publish_lock:
                cur = self._live()
                new = State(meta, cur.pager, cur.freelist, cur.seq, cur.mems, cur.entries + delta)
                self._state = new
                self._announce()

    # -- the mapping interface (autocommit) ----------------------------------------------
    def get(self, key: bytes, default: Any = None) -> Any:
        """The value stored under ``key`` in the latest commit, or ``default``.
        Cost: a memtable probe and one tree descent, ~1-2 µs with cached pages; no lock,
        no system call.  Raises ``TypeError`` for a key that is not bytes, bytearray or
        memoryview."""
        if key.__class__ is not bytes:
            key = as_key(key)
        getters = self._getters
        ident = get_ident()
        state = self._state
        if self._follow and self._lockmap[16:40] != self._seen_raw:
            state = self._fresh()  # the writer published something: catch up first
        while True:
            if state is None:
                self._raise_unusable()
            getters[ident] = state
            now = self._state
            if now is state:
                break
            state = now
        try:
            return get_value(state, key, default)
        finally:
            getters[ident] = None

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
        return (self._fresh() if self._follow else self._live()).entries

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key`` and commit.  Cost: one commit (one WAL append, plus
        an fsync under ``sync="full"``).  Raises ``TypeError``,
        :class:`~kvmap.KeyTooLargeError`, :class:`~kvmap.ValueTooLargeError`,
        :class:`~kvmap.ReadOnlyError`, :class:`~kvmap.NestedWriteError`,
        :class:`~kvmap.FatalError` (the write failed)."""
        if (
            key.__class__ is not bytes
            or value.__class__ is not bytes
            or len(key) > self.max_key_size
            or len(value) > MAX_VALUE_SIZE
        ):
            key, value = checked_item(key, value, self.max_key_size)
        ident = get_ident()
        if self._writer == ident:
            raise NestedWriteError("this thread already holds the write transaction")
        if self._state is None or self.readonly:
            self._live()
            raise ReadOnlyError(f"{self.path} is open readonly")
        with self._write_lock:  # a write transaction of one put, without the object
            self._writer = ident
            try:
                seq = self._commit([(key, value)], self.sync_mode)
            finally:
                self._writer = None
        if self.sync_mode == "full":
            self._sync_wal(seq)
        wal = self._wal
        if (
            wal is not None
            and wal.offset + len(wal.buffer) - WAL_HEADER_SIZE > self.checkpoint_size
        ):
            self._maybe_checkpoint()  # (its test, inlined: put is the hottest write path)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def delete(self, key: bytes) -> bool:
        """Remove ``key`` and commit; returns whether it was present (a missing key commits
        nothing).  Cost: a lookup, and one commit if the key was there."""
        with self.begin(write=True) as txn:
            return txn.delete(key)

    def __delitem__(self, key: bytes) -> None:
        """``del db[key]``: raises ``KeyError`` if the key is missing."""
        if not self.delete(key):
            raise KeyError(key)

    def put_many(self, items: Iterable[tuple[bytes, bytes]], append: bool = False) -> None:
        """Store every (key, value) of ``items`` in one transaction (one commit).  See
        :meth:`WriteTxn.put_many` for ``append=True`` (sorted bulk loads)."""
        with self.begin(write=True) as txn:
            txn.put_many(items, append=append)

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

    # -- durability and checkpoints ------------------------------------------------------
    def sync(self) -> None:
        """Make every commit so far durable (it matters under ``sync="normal"``/``"off"``):
        write buffered WAL frames and fsync the WAL.  Cost: one write and one
        ``fdatasync``.  Raises :class:`~kvmap.FatalError` if it fails."""
        self._live()
        if self.readonly:
            return
        with self._publish_lock:
            wal = self._wal
            seq = self._live().seq
            try:
                wal.flush()  # type: ignore[union-attr]
            except BaseException as exc:
                raise self._fail(exc, "WAL write") from exc
            self._written_seq = seq
            self._announce()
        self._sync_wal(seq)

    flush = sync

    def checkpoint(self) -> None:
        """Fold every commit in the WAL into the tree, durably, and start a new WAL.

        Writers are not blocked while the tree is written: commits made meanwhile go to
        the new WAL.  Runs automatically when the WAL passes ``checkpoint_size`` bytes (in
        the thread whose commit crossed it) and on ``close()``.  Cost: each tree page the
        memtable touches is rewritten once, plus three fsyncs.  Raises
        :class:`~kvmap.FatalError` on I/O failure; a no-op on a readonly handle."""
        self._live()
        if self.readonly:
            return
        with self._ckpt_lock:
            self._checkpoint()

    def _maybe_checkpoint(self) -> None:
        wal = self._wal
        if wal is not None and wal.size - WAL_HEADER_SIZE > self.checkpoint_size:
            if self._ckpt_lock.acquire(blocking=False):
                try:
                    if self._state is not None:
                        self._checkpoint()
                finally:
                    self._ckpt_lock.release()

    def _checkpoint(self) -> None:
        """The checkpoint (``_ckpt_lock`` held).  The steps, in order:

        1. freeze: under the publish lock, sync the current WAL (every frozen commit is then
           durable in it), start a new WAL at the current sequence, and publish a State
           whose active memtable is new and empty, the old one frozen behind it;
        2. fold the frozen memtable into the tree (``checkpoint.fold``: pages, fsync, meta
           recording ``wal_seq``, fsync) while writers go on;
        3. publish a State on the new tree without the frozen memtable;
        4. delete the WAL files the new meta covers, and fsync the directory.
        """
        # 1. freeze
        with self._publish_lock:
            state = self._live()
            active = state.mems[0]
            old = self._wal
            if not len(active) and old is not None:
                return
            try:
                if old is not None:
                    with self._sync_lock:
                        if old.buffer or self._synced_seq < state.seq:
                            old.sync()
                        self._written_seq = self._synced_seq = state.seq
                self._wal = WalWriter.create(self._fs, self.path, state.seq)
            except BaseException as exc:
                raise self._fail(exc, "checkpoint") from exc
            frozen = active
            self._state = state.with_tree(state.meta, (Memtable(state.seq), frozen))
        # 2. fold (readers and writers go on; nothing else touches the tree)
        try:
            meta, _ = fold(
                state.pager, state.freelist, state.meta, *frozen.latest(), frozen.last_seq,
                self._oldest_txnid,
            )  # fmt: skip
        except BaseException as exc:
            if old is not None:  # nothing else would close it: step 4 is not reached
                try:
                    old.close()
                except OSError:
                    pass
            raise self._fail(exc, "checkpoint") from exc
        failpoint("ckpt-after-meta")
        # 3. publish
        with self._publish_lock:
            cur = self._live()
            self._state = cur.with_tree(meta, tuple(m for m in cur.mems if m is not frozen))
            self._announce()
        # 4. the old logs are covered by a durable meta now
        if old is not None:
            old.close()
        new_path = self._wal.path
        try:
            for _, path in list_wals(self.path):
                if path != new_path:
                    self._fs.unlink(path)
            self._fs.fsync_dir(self.path)
        except BaseException as exc:
            raise self._fail(exc, "checkpoint") from exc

    # -- maintenance ---------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """Verify the latest commit's tree: checksums, key order, page accounting
        (invariant 3), entry count.  Returns page counts by type.  Cost: reads every page
        once.  Raises :class:`~kvmap.CorruptionError` describing the first problem."""
        return self._checked_tree()[1]

    def _checked_tree(self) -> tuple[State, dict[str, Any]]:
        """check() of the newest tree.  Only the newest meta's freelist run is kept intact,
        so no checkpoint may run during the check: a writable handle holds the checkpoint
        lock; a follower starts over if the writer's checkpoint moved the tree meanwhile."""
        for _ in range(100):
            state, token = self._register()
            try:
                if not self.readonly:
                    with self._ckpt_lock:
                        return self._live(), check_tree(self._live().pager, self._live().meta)
                before = self._lock.published().txnid if self._lock is not None else 0
                try:
                    return state, check_tree(state.pager, state.meta)
                except CorruptionError:
                    if self._lock is None or self._lock.published().txnid == before:
                        raise
            finally:
                self._unregister(token)
        raise CorruptionError(f"{self.path}: the tree kept moving during check()")

    def stats(self) -> dict[str, Any]:
        """Entries, depth, pages by type, file and WAL sizes, free pages and more, as a
        dict; ``other_meta_problem`` says why the meta page not in use does not verify (a
        crash during a checkpoint leaves that; the next checkpoint rewrites it), or is
        None.  Cost: reads every page once (like :meth:`check`)."""
        state, counts = self._checked_tree()
        meta = state.meta
        wal = self._wal
        return {
            "entries": state.entries,
            "depth": meta.depth,
            "page_size": meta.page_size,
            "pages": counts,
            "high_water_mark": meta.hwm,
            "free_pages": counts["free"],
            "file_size": state.pager.file_size(),
            "wal_size": wal.size if wal is not None else _wal_bytes(self._fs, self.path),
            "memtable_keys": sum(len(m) for m in state.mems),
            "commit_seq": state.seq,
            "checkpoint_seq": meta.wal_seq,
            "txnid": meta.txnid,
            "segments": state.pager.segments.count,
            "cached_pages": len(state.pager.cache),
            "other_meta_problem": other_meta_problem(state.pager, meta),
        }

    def compact(self) -> int:
        """Rewrite the live tree into a fresh, dense file and swap it in; returns the bytes
        saved.  Checkpoints first and holds the write transaction meanwhile; open
        snapshots keep reading the old file until they close.  Cost: reads every live page
        once, writes the tree once, a handful of fsyncs.  Raises
        :class:`~kvmap.ReadOnlyError` on a readonly handle."""
        with self.begin(write=True), self._ckpt_lock:
            self._checkpoint()
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
                builder.add_all(Snapshot(self, state, None).items())
                root, depth, entries = builder.finish()
                flush()
                fs.truncate(fd, segment_end(hwm[0] * ps, ps))
                meta = Meta(txnid, ps, root, 0, hwm[0], entries, depth, state.seq,
                            state.meta.wal_salt)  # fmt: skip
                fs.pwrite(fd, meta.encode(), (txnid % 2) * ps)
                fs.pwrite(fd, meta._replace(txnid=txnid - 1).encode(), ((txnid - 1) % 2) * ps)
                fs.fdatasync(fd)
                fs.rename(tmp, data)
            except BaseException as exc:
                fs.close(fd)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                if isinstance(exc, OSError):  # like a failed commit: the handle is done
                    raise self._fail(exc, "compact") from exc
                raise
            # The new file is in place: from here on a failure must not leave this handle
            # writing to the old, replaced file.  The old descriptor can go now: the
            # mappings old snapshots read through keep the old (unlinked) file alive on
            # their own, and nothing writes to it again.
            old_fd, self._fd = self._fd, fd
            _close_quietly(fs, old_fd)
            try:
                fs.fsync_dir(self.path)
                pager = Pager(fs, fd, ps, decode, state.pager.max_cached * 2 * ps, peek)
                pager.check_covers(meta.hwm)
            except BaseException as exc:
                raise self._fail(exc, "compact, after the swap") from exc
            with self._publish_lock:
                cur = self._live()
                self._state = State(meta, pager, Freelist(), cur.seq, cur.mems, cur.entries)
                self._announce()
            return old_size - pager.file_size()

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Checkpoint (so the next open replays nothing), make everything durable, release
        the lock and the mappings (idempotent).  Snapshots still open raise
        :class:`~kvmap.TxnClosedError` afterwards.  Waits for a write transaction held by
        another thread.  Raises :class:`~kvmap.FatalError` if the final checkpoint fails
        (the handle is closed anyway; the WAL still holds the commits)."""
        if self._closed:
            return
        own = self._writer == get_ident()
        if not own:
            self._write_lock.acquire()
        error: BaseException | None = None
        try:
            if self._closed:
                return
            if self._state is not None and not self.readonly:
                try:
                    with self._ckpt_lock:
                        self._checkpoint()
                except BaseException as exc:
                    error = exc
            self._closed = True
            self._close_pager()
            if self._wal is not None:
                try:
                    self._wal.close()
                except OSError:
                    pass
                self._wal = None
            self._release_files()
        finally:
            if not own:
                self._write_lock.release()
        if error is not None:
            raise error

    def _close_pager(self) -> None:
        """Unmap the data file: the live State's pager, or the one a failure left."""
        state, self._state = self._state, None
        pager = state.pager if state is not None else self._dead_pager
        self._dead_pager = None
        if pager is not None:
            pager.close()

    def _release_files(self) -> None:
        self._follow = False  # reads now fail on the state (closed), not on the mapping
        with _refresher_lock:
            _FOLLOWERS.discard(self)
        self._lockmap = None
        fd, self._fd = self._fd, -1
        if fd >= 0:
            _close_quietly(self._fs, fd)
        lock, self._lock = self._lock, None
        if lock is not None:
            try:
                lock.release()
            except OSError:
                pass

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
        return f"<kvmap.Database {self.path!r} {mode} entries={state.entries}>"


def _read_meta_fd(fs: fileio.FileSystem, fd: int, data: str) -> tuple[Meta, int]:
    """The newest valid meta page and the page size.  The page size meta 0 records is
    tried first; if that fails (meta 0 may be the damaged one, even in its page size
    field), every other page size is tried, so an intact meta 1 is always found."""
    first = peek_page_size(fs.pread(fd, 4096, 0))
    sizes = [512 << i for i in range(8)]
    if first is not None:
        sizes.remove(first)
        sizes.insert(0, first)
    errors = []
    for ps in sizes:
        meta0 = fs.pread(fd, ps, 0).ljust(ps, b"\0")
        meta1 = fs.pread(fd, ps, ps).ljust(ps, b"\0")
        try:
            return pick(meta0, meta1)[0], ps
        except CorruptionError as exc:
            if ps == first:
                errors.append(str(exc))
    detail = f": {errors[0]}" if errors else " (not a kvmap database?)"
    raise CorruptionError(f"{data}: no valid meta page{detail}")


def _replay(
    state: State, mem: Memtable, buf: bytes, offset: int, salt: int, wstart: int, seq: int,
    entries: int, keep_old: bool, base: int = 0,
) -> tuple[int, int, int]:  # fmt: skip
    """Apply the valid frames of one WAL file from file offset ``offset`` that come after
    commit ``seq`` to ``mem``, keeping ``entries`` exact; ``buf`` holds the file's bytes
    from offset ``base`` on.  Returns (last seq, entries, the file offset after the last
    valid frame)."""
    end = offset
    first = wstart if offset == WAL_HEADER_SIZE else seq
    for fseq, ops, fend in scan_frames(
        buf, offset - base, salt, first, max_key_size(state.meta.page_size)
    ):
        end = fend + base
        if fseq <= seq:
            continue
        cur = state.advance(seq, entries)
        for k, v in ops:
            entries += (v is not None) - (read_state(cur, k) is not MISSING)
        mem.apply(fseq, ops, keep_old)
        seq = fseq
    return seq, entries, end


def _wal_bytes(fs: fileio.FileSystem, directory: str) -> int:
    """Bytes of the WAL files up to the end of their frames, headers included (what a
    handle that does not write sees; the writer's count is ``WalWriter.size``)."""
    total = 0
    for _, path in list_wals(directory):
        try:
            total += used_end(read_wal(fs, path))
        except FileNotFoundError:
            pass  # deleted by a checkpoint meanwhile
    return total


def _close_quietly(fs: fileio.FileSystem, fd: int) -> None:
    try:
        fs.close(fd)
    except OSError:
        pass


__all__ = ["Database", "State", "open", "Error"]
