"""The copy-on-write B+tree: lookups, batched updates and bottom-up builds.

Shape.  Leaves hold sorted keys and their values (inline, or an :class:`~kvmap.node.Ovf`
reference to an overflow run when the cell would not fit in a quarter page).  Branches hold
child page numbers and separators: child ``i`` holds keys in ``[keys[i], keys[i+1])``.  All
leaves are at the same depth.  There are no sibling pointers: copy-on-write would have to
rewrite a neighbour on every split, so scans walk a stack instead (see :mod:`kvmap.cursor`).

Updates are batched.  A write transaction buffers its puts and deletes, sorted; at commit
:meth:`TreeWriter.apply` walks the tree once, partitioning the batch among children, so each
touched page is copied and rewritten exactly once however many keys land in it.  A changed
page is never modified in place: it gets a new page number and the old one is freed (pending
until no snapshot can reach it, invariant 4), so every snapshot keeps seeing its tree.

Balance.  A page that overflows is split into as many balanced pieces as needed (a bulk
append fills pieces completely).  A new page under a quarter full is merged with a sibling,
and re-split if the two no longer fit.  A root branch left with one child is dropped.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, repeat
from operator import add
from typing import Any

from .errors import CorruptionError
from .format import (
    BRANCH_CELL_OVERHEAD,
    LEAF_CELL_OVERHEAD,
    PAGE_HEADER_SIZE,
    PAGE_OVERFLOW,
    max_inline_cell,
)
from .freelist import Freelist
from .node import Node, Ovf, Value, encode, encode_run, run_header, run_pages, run_payload
from .pager import Pager

MISSING = object()


def lookup(pager: Pager, root: int, key: bytes) -> object:
    """The stored value for ``key`` (``bytes`` or an :class:`Ovf`) or :data:`MISSING`.

    Cost: one cached-node fetch and one ``bisect`` per level (~0.4 µs per level).
    """
    if not root:
        return MISSING
    node_of = pager.node
    node = node_of(root)
    while (kids := node.kids) is not None:
        node = node_of(kids[bisect_right(node.keys, key) - 1])
    keys = node.keys
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        return node.vals[i]
    return MISSING


def read_overflow(pager: Pager, ref: Ovf) -> bytes:
    """The value stored in the overflow run ``ref``; checksum verified.  Cost: one copy of
    the run and a crc32c over it.  Raises :class:`CorruptionError`."""
    ps = pager.page_size
    _, length = run_header(pager.page(ref.pgno), ref.pgno, PAGE_OVERFLOW)
    try:
        run = pager.read(ref.pgno * ps, run_pages(length, ps) * ps)
    except CorruptionError as exc:  # a damaged length field: name the run
        raise CorruptionError(f"page {ref.pgno}: overflow run: {exc}") from None
    return run_payload(run, ref.pgno, length)


def _leaf_bounds(keys: list[bytes], vals: list[Value], usable: int, target: int) -> list[int]:
    """Where to cut leaf cells into pages: [0, b1, ..., len(keys)].  A page takes cells
    until it holds at least ``target`` bytes (the last cell may pass it, never ``usable``).
    Cost: sizes and their prefix sums in C (``map``/``accumulate``), one ``bisect`` per
    page, instead of a Python step per cell.

    >>> _leaf_bounds([b"a", b"b", b"c"], [b"x" * 10] * 3, usable=40, target=20)
    [0, 2, 3]
    """
    n = len(keys)
    klens = set(map(len, keys))
    if len(klens) == 1:
        vlens = set(map(len, vals))
        if len(vlens) == 1:  # cells of one size s (fixed-size records): k cells per page
            size = LEAF_CELL_OVERHEAD + klens.pop() + vlens.pop()
            per = min(-(-target // size), usable // size)  # reach the target, never pass usable
            if per < 1:
                raise CorruptionError(f"a leaf cell of {size} bytes > {usable}")
            return [*range(0, n, per), n]
    # cum[i] = bytes of cells [0, i); an Ovf's len() is that of its stored reference
    sizes = map(add, map(add, map(len, keys), map(len, vals)), repeat(LEAF_CELL_OVERHEAD, n))
    cum = list(accumulate(sizes, initial=0))
    bounds = [0]
    a = 0
    while a < n:
        base = cum[a]
        i = bisect_left(cum, base + target, a + 1)  # cells [a, i) reach the target
        if i > n:
            i = n
        if cum[i] - base > usable:  # cell i-1 overflows the page: it starts the next one
            i -= 1
            if i == a:  # a cell larger than a page: nothing can hold it (never loop)
                raise CorruptionError(f"a leaf cell of {cum[a + 1] - base} bytes > {usable}")
        bounds.append(i)
        a = i
    return bounds


class TreeWriter:
    """Applies batches of updates to a tree for one write transaction.

    New pages are allocated from ``freelist`` (or the high-water mark) and kept in
    :attr:`dirty` until the commit encodes and writes them; committed pages that the
    transaction replaces are collected in :attr:`freed` (they become pending under the
    transaction's id).  Pages allocated and dropped within the transaction go straight back
    to the freelist.
    """

    def __init__(self, pager: Pager, freelist: Freelist, txnid: int, hwm: int) -> None:
        self.pager = pager
        self.freelist = freelist
        self.txnid = txnid
        self.hwm = hwm
        self.page_size = ps = pager.page_size
        self.usable = ps - PAGE_HEADER_SIZE
        self.max_cell = max_inline_cell(ps)
        self.min_size = ps // 4
        self.dirty: dict[int, Node] = {}
        self.runs: dict[int, bytes] = {}  # overflow/freelist runs written by this txn
        self.freed: list[int] = []
        self.delta = 0  # change in the number of entries

    # -- allocation --------------------------------------------------------------------
    def alloc(self, npages: int = 1) -> int:
        """First page of ``npages`` fresh contiguous pages."""
        pgno = self.freelist.allocate(npages)
        if pgno is None:
            pgno = self.hwm
            self.hwm += npages
        return pgno

    def free(self, pgno: int, npages: int = 1) -> None:
        """Drop a page (or run) from the tree being built."""
        if pgno in self.dirty:
            del self.dirty[pgno]
            self.freelist.add_reusable([pgno])
        elif pgno in self.runs:
            del self.runs[pgno]
            self.freelist.add_reusable(list(range(pgno, pgno + npages)))
        else:
            self.freed.extend(range(pgno, pgno + npages))

    def free_value(self, ref: Ovf) -> None:
        """Free the overflow run holding a replaced or deleted value."""
        data = self.runs.get(ref.pgno)
        if data is not None:
            npages = len(data) // self.page_size
        else:
            _, length = run_header(self.pager.page(ref.pgno), ref.pgno, PAGE_OVERFLOW)
            npages = run_pages(length, self.page_size)
        self.free(ref.pgno, npages)

    def store_value(self, key: bytes, value: bytes) -> Value:
        """``value`` itself if its cell fits inline, else a reference to a new overflow run."""
        if LEAF_CELL_OVERHEAD + len(key) + len(value) <= self.max_cell:
            return value
        pgno = self.alloc(run_pages(len(value), self.page_size))
        self.runs[pgno] = encode_run(PAGE_OVERFLOW, pgno, self.txnid, value, self.page_size)
        return Ovf(pgno)

    def new_node(self, keys: list[bytes], vals: list[Value] | None, kids: list[int] | None) -> int:
        pgno = self.alloc()
        self.dirty[pgno] = Node(keys, vals, kids, pgno, self.txnid)
        return pgno

    def load(self, pgno: int, leaf: bool) -> Node:
        node = self.dirty.get(pgno)
        if node is None:
            node = self.pager.node(pgno)
        if (node.kids is None) != leaf:
            raise CorruptionError(
                f"page {pgno}: a {'branch' if leaf else 'leaf'} where the tree's depth "
                f"needs a {'leaf' if leaf else 'branch'}"
            )
        return node

    # -- batched update ----------------------------------------------------------------
    def apply(
        self, root: int, depth: int, opkeys: Sequence[bytes], opvals: Sequence[bytes | None]
    ) -> tuple[int, int]:
        """Apply the batch ``opkeys``/``opvals`` (parallel lists: keys sorted and unique;
        value None deletes) to the tree at ``root`` of ``depth`` levels.  Returns the new
        (root, depth).  Cost: each touched page is read once and rewritten once;
        O(len(opkeys) + touched pages).  (Two lists, not a list of pairs: a bulk load or a
        checkpoint of 100k keys would spend ~10 ms making and splitting the pairs.)"""
        if not opkeys:
            return root, depth
        if root == 0:
            entries = self._leaf(None, opkeys, opvals, 0, len(opkeys), b"")
            depth = 1
        else:
            entries = self._apply(root, depth, opkeys, opvals, 0, len(opkeys), b"")
        while len(entries) > 1:
            entries = self._pack(entries, None, b"", appending=False)
            depth += 1
        if not entries:
            return 0, 0
        root = entries[0][1]
        while depth > 1:  # a root branch with a single child is dropped
            node = self.load(root, leaf=False)
            if len(node.kids) > 1:  # type: ignore[arg-type]
                break
            self.free(root)
            root = node.kids[0]  # type: ignore[index]
            depth -= 1
        return root, depth

    def _apply(
        self, pgno: int, level: int, opkeys: Sequence[bytes], opvals: Sequence[bytes | None],
        j: int, end: int, lo: bytes,
    ) -> list[tuple[bytes, int]]:  # fmt: skip
        """Apply ops ``j:end`` under page ``pgno``; returns the (separator, page) entries
        that replace it in its parent (none if it became empty)."""
        if level == 1:
            return self._leaf(self.load(pgno, leaf=True), opkeys, opvals, j, end, lo)
        node = self.load(pgno, leaf=False)
        keys, kids = node.keys, node.kids
        assert kids is not None
        n = len(kids)
        entries: list[tuple[bytes, int]] = []
        changed = False
        done = 0  # children before this index are already in entries
        while j < end:
            c = bisect_right(keys, opkeys[j], 1) - 1
            stop = bisect_left(opkeys, keys[c + 1], j, end) if c + 1 < n else end
            entries.extend(zip(keys[done:c], kids[done:c]))
            sep = keys[c] if c else lo
            sub = self._apply(kids[c], level - 1, opkeys, opvals, j, stop, sep)
            if len(sub) != 1 or sub[0][1] != kids[c]:
                changed = True
            entries.extend(sub)
            done = c + 1
            j = stop
        if not changed:
            return [(lo, pgno)]
        entries.extend(zip(keys[done:], kids[done:]))
        if entries:
            entries[0] = (lo, entries[0][1])
        self._rebalance(entries, level - 1)
        self.free(pgno)
        if not entries:
            return []
        return self._pack(entries, None, lo, appending=False)

    def _leaf(
        self, node: Node | None, opkeys: Sequence[bytes], opvals: Sequence[bytes | None],
        j: int, end: int, lo: bytes,
    ) -> list[tuple[bytes, int]]:  # fmt: skip
        if node is None:
            keys: list[bytes] = []
            vals: list[Value] = []
        else:
            keys = list(node.keys)
            vals = list(node.vals)  # type: ignore[arg-type]
        last = keys[-1] if keys else None
        appending = last is None or opkeys[j] > last
        changed = False
        if appending:
            # Every op lands after the last key (a bulk load, or a new tree): no search, no
            # insert in the middle; deletes of keys that are not there are no-ops.
            room = self.max_cell - LEAF_CELL_OVERHEAD
            new_keys = opkeys[j:end] if j or end != len(opkeys) else opkeys
            new_vals: Sequence[Any] = opvals[j:end] if j or end != len(opvals) else opvals
            if None in new_vals or (
                max(map(len, new_keys)) + max(map(len, new_vals)) > room  # cheap bound first
                and max(map(add, map(len, new_keys), map(len, new_vals))) > room
            ):
                # deletes to skip or values to move to overflow runs: one item at a time
                store = self.store_value
                seg = list(zip(new_keys, new_vals))
                new_keys = [k for k, v in seg if v is not None]
                new_vals = [v if len(k) + len(v) <= room else store(k, v) for k, v in seg
                            if v is not None]  # fmt: skip
            if new_keys:
                keys.extend(new_keys)
                vals.extend(new_vals)
                self.delta += len(new_keys)
                changed = True
            end = j  # nothing left for the general loop below
        i = 0
        for t in range(j, end):
            k = opkeys[t]
            v = opvals[t]
            i = bisect_left(keys, k, i)
            if i < len(keys) and keys[i] == k:
                old = vals[i]
                if old.__class__ is Ovf:
                    self.free_value(old)
                if v is None:
                    del keys[i]
                    del vals[i]
                    self.delta -= 1
                else:
                    vals[i] = self.store_value(k, v)
                changed = True
            elif v is not None:
                keys.insert(i, k)
                vals.insert(i, self.store_value(k, v))
                self.delta += 1
                changed = True
        if node is not None:
            if not changed:
                return [(lo, node.pgno)]
            self.free(node.pgno)
        if not keys:
            return []
        return self._pack(keys, vals, lo, appending)

    def _pack(
        self, keys: list[bytes] | list[tuple[bytes, int]], vals: list[Value] | None, lo: bytes,
        appending: bool,
    ) -> list[tuple[bytes, int]]:  # fmt: skip
        """Make new page(s) from cells.  For a leaf, ``keys``/``vals`` are parallel lists;
        for a branch, ``keys`` is the list of (separator, child) entries and ``vals`` is
        None.  Returns the (separator, page) entries of the new pages, the first separator
        being ``lo``.  Pieces are balanced, or filled completely when ``appending``."""
        branch = vals is None
        if branch:
            entries: list[tuple[bytes, int]] = keys  # type: ignore[assignment]
            seps = [k for k, _ in entries]
            kids: list[int] | None = [c for _, c in entries]
            # a page's first separator is stored empty
            total = BRANCH_CELL_OVERHEAD * len(seps) + sum(map(len, seps)) - len(seps[0])
        else:
            seps = keys  # type: ignore[assignment]
            kids = None
            total = LEAF_CELL_OVERHEAD * len(seps) + sum(map(len, seps)) + sum(map(len, vals))  # type: ignore[arg-type]
        usable = self.usable
        if total <= usable:  # the common case: one page, no per-cell sizes needed
            pg = self.new_node(seps, vals, kids)
            if branch:
                self.dirty[pg].keys[0] = b""  # type: ignore[index]  # a new node: lists
            return [(lo, pg)]
        target = usable if appending else -(-total // -(-total // usable))
        if branch:
            sizes = [BRANCH_CELL_OVERHEAD + len(k) for k in seps]
        else:
            bounds = _leaf_bounds(seps, vals, usable, target)  # type: ignore[arg-type]
            out = []
            for a, b in zip(bounds, bounds[1:]):
                pg = self.new_node(seps[a:b], vals[a:b], None)  # type: ignore[index]
                out.append((seps[a] if a else lo, pg))
            return out
        bounds = [0]
        acc = 0
        last = len(sizes) - 1
        for i, s in enumerate(sizes):
            if branch and acc == 0:
                s = BRANCH_CELL_OVERHEAD  # a page's first separator is stored empty
            if acc + s > usable:
                bounds.append(i)
                acc = BRANCH_CELL_OVERHEAD if branch else s
            else:
                acc += s
            if acc >= target and i < last:
                bounds.append(i + 1)
                acc = 0
        bounds.append(len(sizes))
        out = []
        for a, b in zip(bounds, bounds[1:]):
            pg = self.new_node(seps[a:b], None, kids[a:b])  # type: ignore[index]
            out.append((seps[a] if a else lo, pg))
            self.dirty[pg].keys[0] = b""  # type: ignore[index]  # a new node: lists
        return out

    def _rebalance(self, entries: list[tuple[bytes, int]], child_level: int) -> None:
        """Merge each new child page that is under a quarter full with a neighbour
        (re-splitting if the pair does not fit one page).  Mutates ``entries``."""
        dirty = self.dirty
        leaf = child_level == 1
        i = 0
        while i < len(entries) and len(entries) > 1:
            pg = entries[i][1]
            node = dirty.get(pg)
            if node is None or node.size() >= self.min_size:
                i += 1
                continue
            a = i - 1 if i > 0 else i
            (sep_a, pg_a), (sep_b, pg_b) = entries[a], entries[a + 1]
            left = self.load(pg_a, leaf)
            right = self.load(pg_b, leaf)
            self.free(pg_a)
            self.free(pg_b)
            if leaf:
                merged = self._pack(
                    [*left.keys, *right.keys],
                    [*left.vals, *right.vals],  # type: ignore[misc]
                    sep_a,
                    appending=False,
                )
            else:
                cells = list(zip(left.keys, left.kids))  # type: ignore[arg-type]
                cells.append((sep_b, right.kids[0]))  # type: ignore[index]
                cells.extend(zip(right.keys[1:], right.kids[1:]))  # type: ignore[index]
                cells[0] = (sep_a, cells[0][1])
                merged = self._pack(cells, None, sep_a, appending=False)
            entries[a : a + 2] = merged
            i = a if len(merged) == 1 else a + len(merged)

    # -- output ------------------------------------------------------------------------
    def encoded_pages(self) -> list[tuple[int, bytes]]:
        """Every page this transaction wrote, encoded: dirty nodes and runs."""
        ps = self.page_size
        out = [(pgno, encode(node, ps)) for pgno, node in self.dirty.items()]
        out.extend(self.runs.items())
        return out


class Builder:
    """Builds a tree bottom-up from items in strictly ascending key order, filling every
    page completely (compaction; bulk loads).  Pages are handed to ``emit`` as soon as they
    are full, so memory stays bounded by one page per level.

    Cost: O(n); no page is written twice.
    """

    def __init__(
        self, page_size: int, txnid: int, alloc: Callable[[int], int],
        emit: Callable[[int, bytes], None],
    ) -> None:  # fmt: skip
        self.page_size = page_size
        self.txnid = txnid
        self.alloc = alloc
        self.emit = emit
        self.usable = page_size - PAGE_HEADER_SIZE
        self.max_cell = max_inline_cell(page_size)
        self.levels: list[tuple[list[bytes], list[int], int]] = []  # branch levels
        self.keys: list[bytes] = []
        self.vals: list[Value] = []
        self.size = 0
        self.count = 0
        self.last: bytes | None = None

    def add(self, key: bytes, value: bytes) -> None:
        """Append one item; raises ``ValueError`` if keys are not strictly ascending."""
        if self.last is not None and key <= self.last:
            raise ValueError("Builder.add: keys must be strictly ascending")
        self.last = key
        if LEAF_CELL_OVERHEAD + len(key) + len(value) > self.max_cell:
            pgno = self.alloc(run_pages(len(value), self.page_size))
            self.emit(pgno, encode_run(PAGE_OVERFLOW, pgno, self.txnid, value, self.page_size))
            val: Value = Ovf(pgno)
        else:
            val = value
        cell = LEAF_CELL_OVERHEAD + len(key) + len(val)
        if self.size + cell > self.usable:
            self._flush_leaf()
        self.keys.append(key)
        self.vals.append(val)
        self.size += cell
        self.count += 1

    def add_all(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        for k, v in items:
            self.add(k, v)

    def _flush_leaf(self) -> None:
        pgno = self.alloc(1)
        self.emit(pgno, encode(Node(self.keys, self.vals, None, pgno, self.txnid), self.page_size))
        self._push(0, self.keys[0], pgno)
        self.keys, self.vals, self.size = [], [], 0

    def _push(self, level: int, sep: bytes, child: int) -> None:
        if level == len(self.levels):
            self.levels.append(([], [], 0))
        keys, kids, size = self.levels[level]
        cell = BRANCH_CELL_OVERHEAD + (len(sep) if keys else 0)
        if keys and size + cell > self.usable:
            self._flush_branch(level)
            keys, kids, size = self.levels[level]
            cell = BRANCH_CELL_OVERHEAD
        keys.append(sep)
        kids.append(child)
        self.levels[level] = (keys, kids, size + cell)

    def _flush_branch(self, level: int) -> None:
        keys, kids, _ = self.levels[level]
        pgno = self.alloc(1)
        node = Node([b"", *keys[1:]], None, kids, pgno, self.txnid)
        self.emit(pgno, encode(node, self.page_size))
        self.levels[level] = ([], [], 0)
        self._push(level + 1, keys[0], pgno)

    def finish(self) -> tuple[int, int, int]:
        """Flush everything; returns (root, depth, entries)."""
        if not self.count:
            return 0, 0, 0
        if self.keys:
            self._flush_leaf()
        level = 0
        while True:
            kids = self.levels[level][1]
            if level == len(self.levels) - 1 and len(kids) == 1:
                return kids[0], level + 1, self.count
            if kids:
                self._flush_branch(level)
            level += 1
