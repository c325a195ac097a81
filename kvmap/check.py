"""``db.check()`` and ``db.stats()``: walk every page a meta page accounts for.

``check`` proves invariant 3 of design.md for one committed meta: every page below the
high-water mark is either reachable exactly once from the meta (tree, overflow and freelist
runs) or listed free exactly once; every page's checksum, number and type are right; keys
are strictly ascending within each page and inside the bounds their parents give; all
leaves sit at the meta's depth; and the number of keys equals the meta's count.  Pages are
read from the file and decoded afresh, not taken from the cache.
"""

from __future__ import annotations

from typing import Any

from .errors import CorruptionError
from .format import PAGE_FREELIST, PAGE_OVERFLOW, PAGE_TYPE_NAMES
from .freelist import Freelist
from .meta import Meta
from .meta import decode as decode_meta
from .node import Ovf, decode, run_header, run_pages, run_payload
from .pager import Pager


def other_meta_problem(pager: Pager, meta: Meta) -> str | None:
    """Why the meta page not in use (the one ``meta`` did not come from) does not verify,
    or None when it does.  Not an error: a crash while a checkpoint writes its meta page
    leaves exactly this (the open falls back to the other page, and the next checkpoint
    rewrites it), so :func:`check` cannot call it damage; ``stats()`` and ``kvmap check``
    report it.  Cost: one page read and decode."""
    other = 1 - meta.txnid % 2
    try:
        decode_meta(pager.page(other), other)
    except CorruptionError as exc:
        return f"{exc} (meta page {meta.txnid % 2}, txn {meta.txnid}, is in use)"
    return None


def read_freelist(pager: Pager, meta: Meta) -> tuple[Freelist, int]:
    """The freelist persisted by ``meta`` and the number of pages its run spans.
    Raises :class:`CorruptionError`."""
    if not meta.freelist:
        return Freelist(), 0
    ps = meta.page_size
    _, length = run_header(pager.page(meta.freelist), meta.freelist, PAGE_FREELIST)
    npages = run_pages(length, ps)
    if meta.freelist + npages > meta.hwm:
        raise CorruptionError(f"freelist run at page {meta.freelist} runs past the high-water mark")
    run = pager.read(meta.freelist * ps, npages * ps)
    return Freelist.decode(run_payload(run, meta.freelist, length), meta.hwm), npages


def check(pager: Pager, meta: Meta, superseded: bool = False) -> dict[str, Any]:
    """Verify the database as of ``meta``; returns page counts by type.  Raises
    :class:`CorruptionError` describing the first violation found.  Cost: reads and
    verifies every page once (O(file size)).

    With ``superseded`` (``meta`` is not the newest meta any more, e.g. a snapshot's), only
    the tree and its overflow runs are checked: a superseded meta's freelist run may have
    been reused, so free-page accounting is only proven for the newest meta."""
    ps = meta.page_size
    hwm = meta.hwm
    owner: dict[int, str] = {0: "meta", 1: "meta"}
    counts = {name: 0 for name in PAGE_TYPE_NAMES.values()}
    counts["meta"] = 2

    def claim(pgno: int, what: str) -> None:
        if not 2 <= pgno < hwm:
            raise CorruptionError(f"{what}: page {pgno} is outside [2, {hwm})")
        if pgno in owner:
            raise CorruptionError(f"page {pgno} is used twice: by {owner[pgno]} and by {what}")
        owner[pgno] = what

    entries = 0
    if meta.root:
        # (page, depth, lower bound, upper bound); bounds are None when open
        stack: list[tuple[int, int, bytes | None, bytes | None]] = [(meta.root, 1, None, None)]
        while stack:
            pgno, depth, lo, hi = stack.pop()
            claim(pgno, f"tree page at depth {depth}")
            node = decode(pager.page(pgno), pgno)
            if node.txn > meta.txnid:
                raise CorruptionError(f"page {pgno}: written by txn {node.txn} > {meta.txnid}")
            keys = node.keys
            first = 1 if node.kids is not None else 0
            for a, b in zip(keys[first:], keys[first + 1 :]):
                if a >= b:
                    raise CorruptionError(f"page {pgno}: keys out of order ({a!r} >= {b!r})")
            if len(keys) > first:
                if lo is not None and keys[first] < lo:
                    raise CorruptionError(
                        f"page {pgno}: key {keys[first]!r} below its parent's bound {lo!r}"
                    )
                if hi is not None and keys[-1] >= hi:
                    raise CorruptionError(
                        f"page {pgno}: key {keys[-1]!r} not below its parent's bound {hi!r}"
                    )
            if node.kids is None:
                counts["leaf"] += 1
                if depth != meta.depth:
                    raise CorruptionError(
                        f"page {pgno}: a leaf at depth {depth}, tree depth is {meta.depth}"
                    )
                if not keys:
                    raise CorruptionError(f"page {pgno}: empty leaf")
                entries += len(keys)
                for k, v in zip(keys, node.vals):  # type: ignore[arg-type]
                    if isinstance(v, Ovf):
                        claim(v.pgno, f"overflow run of key {k[:40]!r}")
                        _, length = run_header(pager.page(v.pgno), v.pgno, PAGE_OVERFLOW)
                        n = run_pages(length, ps)
                        # verify the run (its length field included) before claiming the
                        # pages it spans: a damaged length must blame this run, not a page
                        # it happens to reach
                        if v.pgno + n > hwm:
                            raise CorruptionError(
                                f"page {v.pgno}: overflow run of {n} pages runs past the "
                                f"high-water mark {hwm}"
                            )
                        run_payload(pager.read(v.pgno * ps, n * ps), v.pgno, length)
                        for p in range(v.pgno + 1, v.pgno + n):
                            claim(p, f"overflow run of key {k[:40]!r}")
                        counts["overflow"] += n
            else:
                counts["branch"] += 1
                if depth >= meta.depth:
                    raise CorruptionError(
                        f"page {pgno}: a branch at depth {depth}, tree depth is {meta.depth}"
                    )
                kids = node.kids
                for i, child in enumerate(kids):
                    clo = lo if i == 0 else keys[i]
                    chi = keys[i + 1] if i + 1 < len(kids) else hi
                    stack.append((child, depth + 1, clo, chi))
    if entries != meta.entries:
        raise CorruptionError(f"meta counts {meta.entries} entries, the tree holds {entries}")
    if superseded:
        return counts
    freelist, fl_pages = read_freelist(pager, meta)
    for p in range(meta.freelist, meta.freelist + fl_pages):
        claim(p, "the freelist run")
    counts["freelist"] = fl_pages
    for p in freelist.pages():
        claim(p, "the freelist")
    leaked = [p for p in range(2, hwm) if p not in owner]
    if leaked:
        raise CorruptionError(
            f"{len(leaked)} page(s) neither reachable nor free, first page {leaked[0]}"
        )
    counts["free"] = len(freelist)
    return counts
