"""Transactions: read snapshots and the write transaction.

A :class:`Snapshot` pins one :class:`~kvmap.db.State`: a tree root plus the memtables and
the commit sequence it reads at.  It sees exactly the commits up to that sequence and never
a later one (invariant 6): memtable versions carry their commit sequence, and the tree it
names is immutable while the snapshot is registered (invariants 1 and 4).

A :class:`WriteTxn` buffers its puts and deletes in a sorted dict over the state it began
from; reads inside it see the buffer first.  ``commit()`` turns the buffer into one WAL frame
and applies it to the memtable (see ``Database._commit``); nothing reaches any file before
``commit()``, so ``abort()`` only drops the buffer.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from itertools import islice
from operator import lt
from typing import TYPE_CHECKING, Any

from .btree import MISSING, read_overflow
from .cursor import bounds, merge, scan
from .errors import (
    KeyTooLargeError,
    OrderError,
    ReadOnlyError,
    TxnClosedError,
    ValueTooLargeError,
)
from .format import MAX_VALUE_SIZE
from .node import Ovf

if TYPE_CHECKING:
    from .db import Database, State


def read_state(state: State, key: bytes) -> Any:
    """The stored value of ``key`` as of ``state`` (``bytes`` or an ``Ovf`` reference, not
    followed), or :data:`MISSING`.  Memtables first (newest first), then the tree."""
    return get_value(state, key, MISSING, False)


def get_value(state: State, key: bytes, default: Any, follow: bool = True) -> Any:
    """The value of ``key`` (bytes) as of ``state``, or ``default``; an overflow value is
    read unless ``follow`` is false (then its ``Ovf`` reference is returned).  The memtable
    probe, ``btree.lookup`` and the overflow read inlined: this is the lookup of the two
    hottest paths of all (``Database.get`` and ``Snapshot.get``).  Cost: a dict probe per
    memtable, one cached node and one ``bisect`` per tree level (a leaf missing from a full
    cache is peeked: ~1 µs more, see kvmap/pager.py)."""
    seq = state.seq
    for mem in state.mems:
        e = mem.data.get(key)
        while e is not None:
            if e[0] <= seq:
                v = e[1]
                return default if v is None else v
            e = e[2]
    root = state.root
    if not root:
        return default
    cache = state.cache
    node = cache.get(root) or state.node(root)
    while (kids := node.kids) is not None:
        pgno = kids[bisect_right(node.keys, key) - 1]
        node = cache.get(pgno) or state.node(pgno)
    keys = node.keys
    i = bisect_left(keys, key)
    if i != len(keys) and keys[i] == key:
        v = node.vals[i]
        if v.__class__ is Ovf and follow:
            return read_overflow(state.pager, v)
        return v
    return default


def _append_fast(
    keys: list[Any], vals: list[Any], last: bytes | None, max_key: int,
    akeys: list[bytes], avals: list[bytes],
) -> bool:  # fmt: skip
    """``put_many(append=True)``'s common case in whole-list passes that run in C (types,
    sizes, order): ~0.1 µs per item instead of ~0.6 µs for the per-item loop.  Appends and
    returns True when every item passes; otherwise touches nothing and returns False, and
    the per-item loop runs to raise the right error at the right item."""
    if not keys:
        return True
    if set(map(type, keys)) != {bytes} or set(map(type, vals)) != {bytes}:
        return False
    if max(map(len, keys)) > max_key or max(map(len, vals)) > MAX_VALUE_SIZE:
        return False
    if last is not None and keys[0] <= last:
        return False
    if not all(map(lt, keys, islice(keys, 1, None))):
        return False
    akeys.extend(keys)
    avals.extend(vals)
    return True


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


def checked_item(key: object, value: object, max_key: int) -> tuple[bytes, bytes]:
    """A (key, value) ready to store: bytes, within the size limits.  Raises
    ``TypeError``, :class:`~kvmap.KeyTooLargeError`, :class:`~kvmap.ValueTooLargeError`."""
    k = as_key(key)
    v = as_value(value)
    if len(k) > max_key:
        raise KeyTooLargeError(f"key of {len(k)} bytes exceeds max_key_size={max_key}")
    if len(v) > MAX_VALUE_SIZE:
        raise ValueTooLargeError(f"value of {len(v)} bytes exceeds {MAX_VALUE_SIZE}")
    return k, v


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

    __slots__ = ("_db", "_state", "_token", "_done", "__weakref__")

    write = False

    def __init__(self, db: Database, state: State, token: int | None) -> None:
        self._db = db
        self._state = state
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
                self._db._unregister(self._token)

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
        state = "finished" if self._done else f"seq {self._state.seq}"
        return f"<kvmap.{type(self).__name__} {state} of {self._db.path!r}>"

    @property
    def seq(self) -> int:
        """The commit sequence number this snapshot sees."""
        return self._state.seq

    # -- reads -------------------------------------------------------------------------
    def _value(self, stored: Any) -> bytes:
        if stored.__class__ is Ovf:
            return read_overflow(self._state.pager, stored)
        return stored  # type: ignore[no-any-return]

    def get(self, key: bytes, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``.  Cost: a memtable probe and one
        tree descent (~1-2 µs with cached pages).  Raises ``TypeError`` for a non-bytes
        key."""
        if self._done or self._db._closed:
            self._live()  # raises
        return get_value(self._state, key if key.__class__ is bytes else as_key(key), default)

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
        return self._live().entries

    def _raw(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, Any]]:
        state = self._live()
        it = scan(state.pager, state.root, start, stop, reverse)
        for mem in reversed(state.mems):  # oldest overlay first, the newest wins
            if len(mem):
                it = merge(it, mem.range(start, stop, reverse, state.seq), reverse)
        return it

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
        db = self._db
        for k, v in self._range(start, stop, prefix, reverse):
            if self._done or db._closed:  # pages may be reused once it is closed
                self._live()
            yield k, value(v)

    def keys(
        self, start: bytes | None = None, stop: bytes | None = None, *,
        prefix: bytes | None = None, reverse: bool = False,
    ) -> Iterator[bytes]:  # fmt: skip
        """Like :meth:`items`, keys only (overflow values are not read)."""
        db = self._db
        for k, _ in self._range(start, stop, prefix, reverse):
            if self._done or db._closed:
                self._live()
            yield k

    def values(
        self, start: bytes | None = None, stop: bytes | None = None, *,
        prefix: bytes | None = None, reverse: bool = False,
    ) -> Iterator[bytes]:  # fmt: skip
        """Like :meth:`items`, values only."""
        value = self._value
        db = self._db
        for _, v in self._range(start, stop, prefix, reverse):
            if self._done or db._closed:
                self._live()
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

    def put_many(self, items: Iterable[tuple[bytes, bytes]], append: bool = False) -> None:
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

    __slots__ = ("_writes", "_akeys", "_avals", "_replaced", "_len", "_max_key", "_sync")

    write = True

    def __init__(self, db: Database, state: State, token: int, sync: str) -> None:
        super().__init__(db, state, token)
        # a plain dict: put is one store; the batch is sorted once, at commit
        self._writes: dict[bytes, bytes | None] = {}
        self._akeys: list[bytes] = []  # put_many(append=True) batch, ascending
        self._avals: list[bytes] = []
        self._replaced = 0  # appended keys that replace a key deleted in this transaction
        self._len: int | None = state.entries
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
            self._db._end_write(self._token)

    # -- writes --------------------------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key`` (replacing any old value).  Cost: a sorted-dict
        insert (~1 µs); files are touched at commit.  Raises ``TypeError``,
        :class:`~kvmap.KeyTooLargeError`, :class:`~kvmap.ValueTooLargeError`."""
        self._live()
        if (
            key.__class__ is not bytes
            or value.__class__ is not bytes
            or len(key) > self._max_key
            or len(value) > MAX_VALUE_SIZE
        ):
            key, value = checked_item(key, value, self._max_key)
        self._writes[key] = value
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

    def put_many(self, items: Iterable[tuple[bytes, bytes]], append: bool = False) -> None:
        """``put`` every (key, value) pair of ``items``.

        With ``append=True`` the keys must be strictly ascending and greater than every key
        in the database and in this transaction: they are then kept in a plain list (no
        sorted insert) and, at commit, written straight into the tree bottom-up with every
        page filled (no WAL, no per-key splits), like LMDB's ``MDB_APPEND``.  The commit is
        then a checkpoint plus one tree commit: use it for loads of many keys.  A key out of
        order raises :class:`~kvmap.OrderError`; the items before it stay in the
        transaction.  Cost: O(1) per item while buffering (``append=True``), O(log n)
        otherwise.
        """
        if not append:
            self._live()
            self._len = None
            writes = self._writes
            max_key = self._max_key
            for k, v in items:  # put(), inlined
                if (
                    k.__class__ is not bytes
                    or v.__class__ is not bytes
                    or len(k) > max_key
                    or len(v) > MAX_VALUE_SIZE
                ):
                    k, v = checked_item(k, v, max_key)
                writes[k] = v
            return
        self._live()
        akeys, avals = self._akeys, self._avals
        writes = self._writes
        if akeys:  # every base key is below akeys[0]; puts since then may not be
            live = [k for k, v in writes.items() if v is not None]
            last: bytes | None = max(akeys[-1], max(live)) if live else akeys[-1]
        else:
            last = next(self.keys(reverse=True), None)
        self._len = None
        max_key = self._max_key
        if not writes:
            # Split the pairs as they come (no list of item tuples kept alive: the GC would
            # scan it), then check the two lists in C.  A bad item, or a check that fails,
            # hands the pairs to the per-item loop, which keeps every item before the bad
            # one and raises its error, as it always did.
            keys: list[bytes] = []
            vals: list[bytes] = []
            add_k, add_v = keys.append, vals.append
            try:
                for key, value in items:  # mutable buffers are copied now, as put() does
                    add_k(key if key.__class__ is bytes else as_key(key))
                    add_v(value if value.__class__ is bytes else as_value(value))
            except BaseException:
                self._append_each(zip(keys, vals), last, max_key)
                raise
            if _append_fast(keys, vals, last, max_key, akeys, avals):
                return
            items = zip(keys, vals)
        self._append_each(items, last, max_key)

    def _append_each(
        self, items: Iterable[tuple[bytes, bytes]], last: bytes | None, max_key: int
    ) -> None:
        """``put_many(append=True)``, one item at a time (after ``last``)."""
        writes = self._writes
        add_key, add_val = self._akeys.append, self._avals.append
        for key, value in items:  # a bulk-load loop: checks inlined, bound methods
            k = key if key.__class__ is bytes else as_key(key)
            v = value if value.__class__ is bytes else as_value(value)
            if len(k) > max_key or len(v) > MAX_VALUE_SIZE:
                checked_item(k, v, max_key)  # raises the right error
            if last is not None and k <= last:
                raise OrderError(
                    f"put_many(append=True): key {k[:40]!r} is not greater than "
                    f"{last[:40]!r} (keys must ascend and follow every existing key)"
                )
            if writes and k in writes:  # deleted earlier in this transaction: append wins
                del writes[k]
                self._replaced += 1  # a base key, so not a new one for len()
            add_key(k)
            add_val(v)
            last = k

    # -- reads see the buffer first ------------------------------------------------------
    def get(self, key: bytes, default: Any = None) -> Any:
        """Like :meth:`Snapshot.get`, seeing this transaction's own writes."""
        state = self._live()
        k = as_key(key)
        v = self._writes.get(k, MISSING)
        if v is MISSING:
            akeys = self._akeys
            if akeys and k >= akeys[0]:
                i = bisect_left(akeys, k)
                if i < len(akeys) and akeys[i] == k:
                    return self._avals[i]
            v = read_state(state, k)
            if v is MISSING:
                return default
            return self._value(v)
        return default if v is None else v

    def __len__(self) -> int:
        """Number of keys, counting this transaction's writes.  Cost: O(1) after a read,
        one lookup per buffered key after a write."""
        state = self._live()
        if self._len is None:
            akeys = self._akeys
            n = state.entries + len(akeys) - self._replaced
            for k, v in self._writes.items():
                i = bisect_left(akeys, k)
                if i < len(akeys) and akeys[i] == k:
                    before = True
                else:
                    before = read_state(state, k) is not MISSING
                n += (v is not None) - before
            self._len = n
        return self._len

    def _raw(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, Any]]:
        it = super()._raw(start, stop, reverse)
        akeys = self._akeys
        if akeys:
            lo = 0 if start is None else bisect_left(akeys, start)
            hi = len(akeys) if stop is None else bisect_left(akeys, stop)
            pairs = list(zip(akeys[lo:hi], self._avals[lo:hi]))
            if reverse:
                pairs.reverse()
            it = merge(it, iter(pairs), reverse)
        writes = self._writes
        if writes:
            # a sorted copy of the buffered keys in range (O(writes) per scan), so writes
            # during the iteration are safe; values are read as the scan reaches them
            keys = sorted(
                (k for k in writes if (start is None or k >= start) and (stop is None or k < stop)),
                reverse=reverse,
            )
            overlay = ((k, writes[k]) for k in keys)
            it = merge(it, overlay, reverse)
        return it

    def _ops(self) -> list[tuple[bytes, bytes | None]]:
        """The sorted batch this transaction commits to the WAL (no appended keys)."""
        return sorted(self._writes.items())  # keys are unique: values are never compared

    def _columns(self) -> tuple[list[bytes], list[bytes | None]]:
        """The sorted batch of a transaction with appended keys, as parallel lists of keys
        and values (what the tree's fold takes).  Appended keys follow all others unless a
        later ``put``/``delete`` touched them, which then wins."""
        akeys, avals = self._akeys, self._avals
        if not self._writes:
            return akeys, avals  # type: ignore[return-value]
        ops = self._ops()
        if ops[-1][0] < akeys[0]:
            return [k for k, _ in ops] + akeys, [v for _, v in ops] + avals
        merged: dict[bytes, bytes | None] = dict(zip(akeys, avals))
        merged.update(ops)
        keys = sorted(merged)
        return keys, list(map(merged.__getitem__, keys))

    # -- end -----------------------------------------------------------------------------
    def abort(self) -> None:
        """Discard every write of this transaction (idempotent).  Cost: O(1)."""
        if not self._done:
            self._done = True
            self._writes = {}
            self._akeys, self._avals = [], []
            self._db._end_write(self._token)

    def close(self) -> None:
        """Same as :meth:`abort`."""
        self.abort()

    def commit(self) -> None:
        """Make this transaction's writes visible and durable per its sync mode.

        The writes become one WAL frame and enter the memtable (``Database._commit``); under
        ``sync="full"`` the commit returns after the frame is synced (commits of other
        threads share that fsync: group commit).  A transaction that used
        ``put_many(append=True)`` instead runs a checkpoint and writes the tree directly.
        May run an automatic checkpoint afterwards when the WAL passed ``checkpoint_size``.

        Raises :class:`~kvmap.FatalError` if a write or sync fails (the handle is then
        unusable and the commit did not happen), :class:`~kvmap.TxnClosedError` if the
        transaction is finished.  Cost: one frame encode and write (plus an fsync under
        ``full``), and a memtable insert and a lookup per key.
        """
        self._live()
        self._done = True
        db = self._db
        seq = 0
        # The snapshot this transaction read from is released first: it must not count as
        # an older reader that needs the versions this commit replaces (_commit protects
        # its own reads of the base state).
        db._unregister(self._token)  # type: ignore[arg-type]
        try:
            if self._akeys:
                db._commit_tree(*self._columns())
            elif self._writes:
                seq = db._commit(self._ops(), self._sync)
        finally:
            self._writes = {}
            self._akeys, self._avals = [], []
            db._end_write(self._token)
        if seq and self._sync == "full":
            db._sync_wal(seq)
        if seq:
            db._maybe_checkpoint()
