"""Free pages: which pages a writer may reuse, and when.

Invariant 4 (design.md): pages freed by transaction T were reachable from snapshots older
than T, so they stay *pending* until no live snapshot is older than T, then become
*reusable*.  A page allocated and freed inside the same uncommitted transaction was never
reachable by anyone and is reusable at once (the pager handles that case).

Group 0 is special: it holds the pages of replaced freelist runs, which no snapshot reads,
so the next fold releases it whatever readers hold (see checkpoint.fold).  Only the newest
meta's freelist run is therefore guaranteed intact.

The freelist is persisted at every commit as one run of type ``PAGE_FREELIST``
(docs/format.md "Freelist run"), pending groups included, so a crash never leaks pages and a
reopen knows which pages older snapshots of other processes may still read.
"""

from __future__ import annotations

from .errors import CorruptionError
from .format import FREELIST_HEAD
from .format import array as _array


class Freelist:
    """Reusable pages (``free``, kept in *descending* order so ``pop()`` hands out the lowest
    page) and pending pages grouped by the transaction that freed them.

    Cost: allocating one page is a ``list.pop``; a contiguous run scans the list.
    """

    __slots__ = ("free", "pending")

    def __init__(self) -> None:
        self.free: list[int] = []
        self.pending: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.free) + sum(map(len, self.pending.values()))

    def pages(self) -> list[int]:
        """Every free page, reusable or pending (for ``check()``)."""
        out = list(self.free)
        for group in self.pending.values():
            out.extend(group)
        return out

    def allocate(self, n: int = 1) -> int | None:
        """Take ``n`` contiguous reusable pages; returns the first, or None if no run of
        ``n`` is free (the caller then extends the file)."""
        free = self.free
        if n == 1:
            return free.pop() if free else None
        # free is descending: a run p, p+1, ..., p+n-1 sits at indexes i+n-1 ... i.
        for i in range(len(free) - n, -1, -1):
            if free[i] - free[i + n - 1] == n - 1:
                first = free[i + n - 1]
                del free[i : i + n]
                return first
        return None

    def add_reusable(self, pgnos: list[int]) -> None:
        """Make ``pgnos`` reusable now (pages never committed, or released groups)."""
        if pgnos:
            self.free.extend(pgnos)
            self.free.sort(reverse=True)

    def add_pending(self, txnid: int, pgnos: list[int]) -> None:
        """Record ``pgnos`` as freed by transaction ``txnid``."""
        if pgnos:
            self.pending.setdefault(txnid, []).extend(pgnos)

    def release(self, oldest_snapshot: int | None) -> int:
        """Make reusable every pending group freed by a transaction ``T <= oldest_snapshot``
        (no live snapshot is older than ``T``); all of them when ``oldest_snapshot`` is None
        (nobody is reading).  Returns the number of pages released."""
        ready = [t for t in self.pending if oldest_snapshot is None or t <= oldest_snapshot]
        pages: list[int] = []
        for t in ready:
            pages.extend(self.pending.pop(t))
        self.add_reusable(pages)
        return len(pages)

    def encode(self) -> bytes:
        """The payload of a freelist run (docs/format.md "Freelist run")."""
        free = sorted(self.free)
        parts = [
            FREELIST_HEAD.pack(len(free), len(self.pending)),
            _array("Q", len(free)).pack(*free),
        ]
        for txnid in sorted(self.pending):
            group = sorted(self.pending[txnid])
            parts.append(_array("Q", 2 + len(group)).pack(txnid, len(group), *group))
        return b"".join(parts)

    def encoded_size(self) -> int:
        """Length of :meth:`encode`'s result, without building it."""
        return (
            FREELIST_HEAD.size
            + 8 * len(self.free)
            + sum(16 + 8 * len(g) for g in self.pending.values())
        )

    @classmethod
    def decode(cls, payload: bytes, hwm: int) -> Freelist:
        """Parse a freelist payload; every page must be in ``[2, hwm)``.  Raises
        :class:`CorruptionError` on truncation or an impossible page number."""
        fl = cls()
        try:
            nfree, ngroups = FREELIST_HEAD.unpack_from(payload, 0)
            off = FREELIST_HEAD.size
            if off + 8 * nfree > len(payload):
                raise CorruptionError("freelist: truncated")
            fl.free = sorted(_array("Q", nfree).unpack_from(payload, off), reverse=True)
            off += 8 * nfree
            for _ in range(ngroups):
                txnid, n = _array("Q", 2).unpack_from(payload, off)
                off += 16
                if off + 8 * n > len(payload):
                    raise CorruptionError("freelist: truncated")
                fl.pending.setdefault(txnid, []).extend(_array("Q", n).unpack_from(payload, off))
                off += 8 * n
        except Exception as exc:  # struct.error on a short payload
            if isinstance(exc, CorruptionError):
                raise
            raise CorruptionError(f"freelist: {exc}") from None
        for p in fl.pages():
            if not 2 <= p < hwm:
                raise CorruptionError(f"freelist: page {p} outside [2, {hwm})")
        return fl

    def copy(self) -> Freelist:
        """An independent copy (compaction and tests)."""
        fl = Freelist()
        fl.free = list(self.free)
        fl.pending = {t: list(g) for t, g in self.pending.items()}
        return fl
