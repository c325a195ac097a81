"""Transactions: read snapshots and the write transaction, and the commit sequence.

A :class:`Snapshot` pins one committed meta (a tree root) and reads it without locks: the
tree it names is immutable while the snapshot is registered (invariants 1 and 4).  A
:class:`WriteTxn` buffers its puts and deletes in a sorted dict over the snapshot it began
from; reads inside it see the buffer first.  ``commit()`` folds the buffer into the tree in
one copy-on-write pass and flips the meta page (see :meth:`WriteTxn.commit` for the ordered
steps).  Nothing reaches the file before ``commit()``, so ``abort()`` only drops the buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedDict

from .btree import MISSING, TreeWriter, lookup, read_overflow
from .cursor import bounds, merge, scan
from .errors import (
    KeyTooLargeError,
    ReadOnlyError,
    TxnClosedError,
    ValueTooLargeError,
)
from .format import MAX_VALUE_SIZE, PAGE_FREELIST, RUN_DATA_OFFSET
from .meta import Meta
from .node import Ovf, encode_run, run_header, run_pages

if TYPE_CHECKING:
    from .db import Database, State


def as_key(key: object) -> bytes:
    """``key`` as bytes (a copy for mutable buffers); ``TypeError`` names any other type."""
    cls = key.__class__
    if cls is bytes:
        return key  # type: ignore[return-value]
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"keys must be bytes, bytearray or memoryview, not {type(key).__name__}")


def as_value(value: object) -> bytes:
    """``value`` as bytes (a copy for mutable buffers); ``TypeError`` names any other type."""
    cls = value.__class__
    if cls is bytes:
        return value  # type: ignore[return-value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"values must be bytes, bytearray or memoryview, not {type(value).__name__}")


def as_bound(name: str, key: object) -> bytes | None:
    """A range bound: None or something :func:`as_key` accepts."""
    if key is None:
        return None
    try:
        return as_key(key)
    except TypeError:
        raise TypeError(
            f"{name} must be bytes, bytearray, memoryview or None, not {type(key).__name__}"
        ) from None


class Snapshot:
    """A read-only view of the database as of one commit.

    It never sees later commits, and costs nothing to hold except that pages it can reach
    are not reused (the file may grow while an old snapshot stays open).  Use it as a context
    manager, or call :meth:`close`.  All methods raise :class:`~kvmap.TxnClosedError` once
    it is closed, and :class:`~kvmap.ReadOnlyError` for writes.
    """

    __slots__ = ("_db", "_state", "_meta", "_token", "_done", "__weakref__")

    write = False

    def __init__(self, db: Database, state: State, token: int | None) -> None:
        self._db = db
        self._state = state
        self._meta: Meta = state.meta
        self._token = token
        self._done = False

    # -- lifecycle ---------------------------------------------------------------------
    def _live(self) -> State:
        if self._done:
            raise TxnClosedError("this transaction is finished")
        if self._db._closed:
            raise TxnClosedError("the database of this transaction was closed")
        return self._state

    def close(self) -> None:
        """Release the snapshot (idempotent).  Cost: O(1)."""
        if not self._done:
            self._done = True
            if self._token is not None:
                self._db._snapshots.pop(self._token, None)

    def abort(self) -> None:
        """Same as :meth:`close` for a read snapshot."""
        self.close()

    def commit(self) -> None:
        """Same as :meth:`close` for a read snapshot (there is nothing to commit)."""
        self.close()

    def __enter__(self) -> Snapshot:
        self._live()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._done and self._token is not None:
            self._db._snapshots.pop(self._token, None)

    def __repr__(self) -> str:
        state = "finished" if self._done else f"txn {self._meta.txnid}"
        return f"<kvmap.{type(self).__name__} {state} of {self._db.path!r}>"

    @property
    def txnid(self) -> int:
        """The id of the commit this snapshot sees."""
        return self._meta.txnid

    # -- reads -------------------------------------------------------------------------
    def _value(self, stored: Any) -> bytes:
        if stored.__class__ is Ovf:
            return read_overflow(self._state.pager, stored)
        return stored  # type: ignore[no-any-return]

    def get(self, key: bytes, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``.  Cost: one tree descent
        (~1-2 µs with cached pages).  Raises ``TypeError`` for a non-bytes key."""
        state = self._live()
        v = lookup(state.pager, self._meta.root, as_key(key))
        if v is MISSING:
            return default
        return self._value(v)

    def __getitem__(self, key: bytes) -> bytes:
        """``snap[key]``: like :meth:`get` but raises ``KeyError`` for a missing key."""
        v = self.get(key, MISSING)
        if v is MISSING:
            raise KeyError(key)
        return v  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return self.get(key, MISSING) is not MISSING  # type: ignore[arg-type]

    def __len__(self) -> int:
        """Number of keys.  Cost: O(1)."""
        self._live()
        return self._meta.entries

    def _raw(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, Any]]:
        state = self._live()
        return scan(state.pager, self._meta.root, start, stop, reverse)

    def _range(
        self, start: object, stop: object, prefix: object, reverse: bool
    ) -> Iterator[tuple[bytes, Any]]:
        lo, hi = bounds(
            as_bound("start", start), as_bound("stop", stop), as_bound("prefix", prefix)
        )
        return self._raw(lo, hi, reverse)

    def items(
        self, start: bytes | None = None, stop: bytes | None = None, *,
        prefix: bytes | None = None, reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:  # fmt: skip
        """Iterate (key, value) pairs with ``start <= key < stop`` and keys starting with
        ``prefix``, ascending (descending if ``reverse``).  Lazy: O(log n) to start, then
        O(1) per item.  Raises ``TypeError`` for a bound that is not bytes or None."""
        value = self._value
        for k, v in self._range(start, stop, prefix, reverse):
            yield k, value(v)

    def keys(
        self, start: bytes | None = None, stop: bytes | None = None, *,
        prefix: bytes | None = None, reverse: bool = False,
    ) -> Iterator[bytes]:  # fmt: skip
        """Like :meth:`items`, keys only (overflow values are not read)."""
        for k, _ in self._range(start, stop, prefix, reverse):
            yield k

    def values(
        self, start: bytes | None = None, stop: bytes | None = None, *,
        prefix: bytes | None = None, reverse: bool = False,
    ) -> Iterator[bytes]:  # fmt: skip
        """Like :meth:`items`, values only."""
        value = self._value
        for _, v in self._range(start, stop, prefix, reverse):
            yield value(v)

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    # -- writes are refused --------------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> None:
        """Refused on a read snapshot: raises :class:`~kvmap.ReadOnlyError`."""
        self._live()
        raise ReadOnlyError("cannot write in a read snapshot; use db.begin(write=True)")

    def delete(self, key: bytes) -> bool:
        """Refused on a read snapshot: raises :class:`~kvmap.ReadOnlyError`."""
        self._live()
        raise ReadOnlyError("cannot write in a read snapshot; use db.begin(write=True)")

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Refused on a read snapshot: raises :class:`~kvmap.ReadOnlyError`."""
        self._live()
        raise ReadOnlyError("cannot write in a read snapshot; use db.begin(write=True)")

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.delete(key)


class WriteTxn(Snapshot):
    """The one write transaction: reads see its own writes; nothing is visible to anyone
    else until :meth:`commit`.  Used as a context manager it commits on success and aborts
    on an exception.  Only one exists at a time per database (other threads wait in
    ``begin(write=True)``)."""

    __slots__ = ("_writes", "_len", "_max_key", "_sync")

    write = True

    def __init__(self, db: Database, state: State, sync: str) -> None:
        super().__init__(db, state, None)
        self._writes: Any = SortedDict()
        self._len: int | None = state.meta.entries
        self._max_key = db.max_key_size
        self._sync = sync

    def __enter__(self) -> WriteTxn:
        self._live()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self) -> None:
        if not self._done:
            self._done = True
            self._db._end_write()

    # -- writes --------------------------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key`` (replacing any old value).  Cost: a sorted-dict
        insert (~1 µs); the tree is touched at commit.  Raises ``TypeError``,
        :class:`~kvmap.KeyTooLargeError`, :class:`~kvmap.ValueTooLargeError`."""
        self._live()
        k = as_key(key)
        v = as_value(value)
        if len(k) > self._max_key:
            raise KeyTooLargeError(f"key of {len(k)} bytes exceeds max_key_size={self._max_key}")
        if len(v) > MAX_VALUE_SIZE:
            raise ValueTooLargeError(f"value of {len(v)} bytes exceeds {MAX_VALUE_SIZE}")
        self._writes[k] = v
        self._len = None

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; returns whether it was present.  Cost: one lookup plus a
        sorted-dict insert.  Raises ``TypeError``."""
        self._live()
        k = as_key(key)
        present = self.get(k, MISSING) is not MISSING
        if present:
            self._writes[k] = None
            self._len = None
        return present

    def __delitem__(self, key: bytes) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """``put`` every (key, value) pair of ``items``, in any order."""
        put = self.put
        for k, v in items:
            put(k, v)

    # -- reads see the buffer first ------------------------------------------------------
    def get(self, key: bytes, default: Any = None) -> Any:
        """Like :meth:`Snapshot.get`, seeing this transaction's own writes."""
        state = self._live()
        k = as_key(key)
        v = self._writes.get(k, MISSING)
        if v is MISSING:
            v = lookup(state.pager, self._meta.root, k)
            if v is MISSING:
                return default
            return self._value(v)
        return default if v is None else v

    def __len__(self) -> int:
        """Number of keys, counting this transaction's writes.  Cost: O(1) after a read,
        one lookup per buffered key after a write."""
        state = self._live()
        if self._len is None:
            n = self._meta.entries
            root = self._meta.root
            for k, v in self._writes.items():
                before = lookup(state.pager, root, k) is not MISSING
                n += (v is not None) - before
            self._len = n
        return self._len

    def _raw(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, Any]]:
        base = super()._raw(start, stop, reverse)
        writes = self._writes
        if not writes:
            return base
        # Iterate a copy of the buffered keys in range, so writes during iteration are safe.
        keys = list(writes.irange(start, stop, inclusive=(True, False), reverse=reverse))
        overlay = ((k, writes[k] if k in writes else None) for k in keys)
        return merge(base, overlay, reverse)

    # -- end -----------------------------------------------------------------------------
    def abort(self) -> None:
        """Discard every write of this transaction (idempotent).  Cost: O(1)."""
        if not self._done:
            self._done = True
            self._writes = SortedDict()
            self._db._end_write()

    def close(self) -> None:
        """Same as :meth:`abort`."""
        self.abort()

    def commit(self) -> None:
        """Make this transaction's writes durable (per the sync mode) and visible.

        The steps, in this order (a crash between any two leaves the previous commit):

        1. release pending pages that no snapshot can reach any more (invariant 4);
        2. apply the sorted write buffer to the tree, copy-on-write (new pages only);
        3. free the replaced pages and persist the freelist as a new run;
        4. extend the file (and mappings) to cover the new high-water mark;
        5. write every new page, then ``fdatasync`` (unless ``sync="off"``);
        6. write meta page ``txnid % 2``, then ``fdatasync`` (``sync="full"`` only);
        7. publish: new pages enter the decoded-page cache, the new meta becomes current.

        Raises :class:`~kvmap.FatalError` if a write or sync fails (the handle is then
        unusable and the commit did not happen), :class:`~kvmap.TxnClosedError` if the
        transaction is finished.  Cost: O(touched pages) encodes and writes, plus the syncs.
        """
        self._live()
        self._done = True
        db = self._db
        try:
            if self._writes:
                db._commit(self._state, self._writes, self._sync)
        finally:
            self._writes = SortedDict()
            db._end_write()


def commit_tree(db: Database, state: State, writes: Any, sync: str) -> Meta:
    """The commit sequence of :meth:`WriteTxn.commit` (steps 1-6); returns the new meta.
    The caller publishes it (step 7).  Raises ``OSError`` on I/O failure."""
    meta = state.meta
    pager = state.pager
    freelist = state.freelist
    txnid = meta.txnid + 1
    ps = meta.page_size
    # 1. pending pages become reusable once no snapshot can reach them and the meta that
    #    stopped referencing them is durable (a torn newer meta falls back to it).
    #    Under sync="off" nothing is promised across power loss, so only readers count.
    durable = meta.txnid if sync == "off" else db._durable_txnid
    freelist.release(db._oldest_reader(durable))
    # 2. the batch, copy-on-write
    writer = TreeWriter(pager, freelist, txnid, meta.hwm)
    root, depth = writer.apply(meta.root, meta.depth, list(writes.items()))
    # 3. freelist: the old run is freed like any replaced page; the new run is allocated
    #    last, which only shrinks what it must hold, so the estimate is an upper bound.
    if meta.freelist:
        _, length = run_header(pager.page(meta.freelist), meta.freelist, PAGE_FREELIST)
        writer.free(meta.freelist, run_pages(length, ps))
    freelist.add_pending(txnid, writer.freed)
    fl_pgno = 0
    if len(freelist):
        npages = run_pages(freelist.encoded_size(), ps)
        fl_pgno = writer.alloc(npages)
        payload = freelist.encode()
        # Taking the run's own pages off the list may leave it needing fewer pages than
        # allocated: pad the payload so its recorded length spans every page of the run
        # (the decoder ignores bytes after the groups), or those pages would leak.
        capacity = npages * ps - RUN_DATA_OFFSET
        assert len(payload) <= capacity
        payload += bytes(capacity - len(payload))
        writer.runs[fl_pgno] = encode_run(PAGE_FREELIST, fl_pgno, txnid, payload, ps)
    new = Meta(
        txnid, ps, root, fl_pgno, writer.hwm, meta.entries + writer.delta, depth,
        meta.wal_seq, meta.wal_salt,
    )  # fmt: skip
    # 4. grow the file before anything refers to the new pages (invariant 7)
    pager.ensure_pages(new.hwm)
    # 5. pages, then sync
    pager.write_all(writer.encoded_pages())
    if sync != "off":
        pager.sync()
        db._durable_txnid = meta.txnid
    # 6. meta, then sync
    pager.write(txnid % 2, new.encode())
    if sync == "full":
        pager.sync()
        db._durable_txnid = txnid
    # the new nodes are decoded already: the cache gets them (step 7 begins here)
    for pgno, node in writer.dirty.items():
        pager.remember(pgno, node)
    return new
