"""The memtable: puts and deletes committed since the last checkpoint, newest first.

Each key maps to a version chain ``(seq, value, older)``: ``value`` is None for a delete (a
tombstone), ``seq`` the commit that wrote it, ``older`` the previous version or None.  A
reader at commit sequence S takes the first version with ``seq <= S``; finding none, it
falls through to older memtables and then the tree.

Design note: which old versions are kept.  A commit always keeps the version it replaces
(one step back), and the whole chain only when some registered reader is older than the
commit (``keep_old``); so a memtable without long-lived snapshots holds at most two
versions per key.  The one step back is for a reader that read the latest State just as the
commit began: it publishes its slot after the writer looked at the slots, finds the State
unchanged (the commit is not published yet), and reads at the sequence just before the
commit, which needs exactly that version.  Any older reader was registered in time and is
counted by ``keep_old`` (see db.py).

Design note: order is kept lazily.  Point reads need only the ``dict``; order matters only
to scans and checkpoints.  A commit appends keys new to the memtable to ``pending``
(~30 ns) instead of inserting into a sorted list (~1 µs); the first ordered read after
writes merges ``pending`` into the ``SortedList`` in one batch.  Write-heavy use never
pays for order it does not read.

Threads: point reads are one ``dict.get`` (atomic under the GIL) and need no lock.  Ordered
reads and the merge of ``pending`` happen under :attr:`lock`, in short chunks, which
:meth:`apply` also holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import islice
from operator import itemgetter
from typing import Any

from sortedcontainers import SortedList

MISSING: Any = object()
Op = tuple[bytes, bytes | None]
_CHUNK = 256
_VALUE = itemgetter(1)  # the value of a version (seq, value, older)


class Memtable:
    """Versions of keys written by commits ``first_seq + 1 .. last_seq``."""

    __slots__ = ("data", "order", "pending", "first_seq", "last_seq", "lock")

    def __init__(self, first_seq: int) -> None:
        self.data: dict[bytes, tuple[int, bytes | None, Any]] = {}
        self.order: Any = SortedList()  # keys of data, minus those still in pending
        self.pending: list[bytes] = []
        self.first_seq = first_seq
        self.last_seq = first_seq
        self.lock = threading.Lock()

    def __len__(self) -> int:
        """Distinct keys held (any version)."""
        return len(self.data)

    def apply(self, seq: int, ops: list[Op], keep_old: bool) -> None:
        """Record commit ``seq``'s operations.  Cost: a ``dict`` store per key, plus a list
        append for a key new to the memtable."""
        data = self.data
        get = data.get
        pend = self.pending.append
        with self.lock:
            for k, v in ops:
                old = get(k)
                if old is None:
                    pend(k)
                    data[k] = (seq, v, None)
                elif keep_old or old[2] is None:
                    data[k] = (seq, v, old)
                else:
                    data[k] = (seq, v, (old[0], old[1], None))
            self.last_seq = seq

    def get(self, key: bytes, seq: int) -> Any:
        """The value of ``key`` as of commit ``seq``: bytes, None (deleted), or
        :data:`MISSING` (not in this memtable).  Cost: one ``dict.get``."""
        e = self.data.get(key)
        while e is not None:
            if e[0] <= seq:
                return e[1]
            e = e[2]
        return MISSING

    def _ordered(self) -> Any:
        """The sorted key list, with pending keys merged in (``lock`` held)."""
        if self.pending:
            self.order.update(self.pending)
            self.pending = []
        return self.order

    def range(
        self, start: bytes | None, stop: bytes | None, reverse: bool, seq: int
    ) -> Iterator[tuple[bytes, bytes | None]]:
        """Yield (key, value or None) for keys in ``[start, stop)`` that have a version as of
        ``seq``, in key order (descending if ``reverse``).  Safe while a writer applies."""
        data = self.data
        lo, hi = start, stop
        first = True
        while True:
            with self.lock:
                order = self._ordered()
                if reverse:
                    it = order.irange(lo, hi, inclusive=(True, False), reverse=True)
                else:
                    it = order.irange(lo, hi, inclusive=(first, False))
                keys = list(islice(it, _CHUNK))
                entries = [data[k] for k in keys]
            for k, e in zip(keys, entries):
                while e is not None:
                    if e[0] <= seq:
                        yield k, e[1]
                        break
                    e = e[2]
            if len(keys) < _CHUNK:
                return
            if reverse:
                hi = keys[-1]
            else:
                lo = keys[-1]
                first = False

    def latest(self) -> tuple[list[bytes], list[bytes | None]]:
        """Every key's newest version, sorted, as parallel lists of keys and values (None
        for a delete): the batch a checkpoint applies."""
        with self.lock:
            keys = list(self._ordered())
            return keys, list(map(_VALUE, map(self.data.__getitem__, keys)))
