"""Decoded tree pages (:class:`Node`) and the codecs between them and page bytes.

A leaf or branch page is decoded once into a :class:`Node` of plain Python lists, so a
lookup is a ``bisect`` over ``bytes`` keys; the pager caches decoded nodes (committed pages
never change).  Encoding and decoding follow docs/format.md ("Leaf page", "Branch page",
"Overflow run") exactly; the structs come from :mod:`kvmap.format`.

Cell layout is chosen for decoding speed in Python: all key lengths, then all value lengths
(or child numbers), then the bytes, so a page decodes with one ``unpack_from`` per array and
one slice per key and value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import accumulate

from crc32c import crc32c

from .errors import CorruptionError
from .format import (
    BRANCH_CELL_OVERHEAD,
    CHECKSUM,
    LEAF_CELL_OVERHEAD,
    MAX_PAGE_SIZE,
    OVERFLOW_REF,
    PAGE_BRANCH,
    PAGE_HEADER,
    PAGE_HEADER_SIZE,
    PAGE_LEAF,
    PAGE_TYPE_NAMES,
    RUN_DATA_OFFSET,
    RUN_LENGTH,
    VALUE_OVERFLOW_BIT,
)
from .format import array as _array

_HDR = PAGE_HEADER
_HDR_SIZE = PAGE_HEADER_SIZE
_OVF_INLINE = OVERFLOW_REF.size
_HDR_TAIL = struct.Struct("<" + PAGE_HEADER.format.lstrip("<")[1:])  # the header after its checksum
_ZEROS = memoryview(bytes(MAX_PAGE_SIZE))


class Ovf(bytes):
    """A leaf value stored in an overflow run starting at page :attr:`pgno`.

    It *is* the 8-byte reference the leaf cell holds (a ``bytes`` subclass), so a leaf's
    cell sizes and its encoding need no special case; readers tell it apart from an inline
    value by ``v.__class__ is Ovf``.

    >>> ref = Ovf(7)
    >>> ref.pgno, len(ref)
    (7, 8)
    """

    __slots__ = ()

    def __new__(cls, pgno: int) -> Ovf:
        return super().__new__(cls, OVERFLOW_REF.pack(pgno))

    @classmethod
    def from_ref(cls, ref: bytes) -> Ovf:
        """Wrap the 8 bytes of a reference read from a leaf."""
        return bytes.__new__(cls, ref)

    @property
    def pgno(self) -> int:
        """First page of the run."""
        return int(OVERFLOW_REF.unpack(self)[0])

    def __repr__(self) -> str:
        return f"Ovf({self.pgno})"


Value = bytes  # an inline value, or an Ovf reference


class Node:
    """A decoded leaf (``kids is None``) or branch (``vals is None``) page.

    Leaf: ``keys[i]`` maps to ``vals[i]`` (``bytes`` or :class:`Ovf`), keys ascending.
    Branch: ``kids[i]`` is the child holding keys in ``[keys[i], keys[i+1])``; ``keys[0]`` is
    ``b""`` once decoded (the real lower bound is the parent's separator).
    ``txn`` is the transaction that wrote the page.  A committed node is never mutated: a
    writer copies it (copy-on-write) before changing it.  Decoded nodes hold tuples (the
    cyclic GC untracks a tuple of bytes, and decoded pages are most of the objects a
    reader process keeps: lists would be scanned at every collection); nodes a writer
    builds hold lists.
    """

    __slots__ = ("keys", "vals", "kids", "pgno", "txn")

    def __init__(
        self,
        keys: Sequence[bytes],
        vals: Sequence[Value] | None,
        kids: Sequence[int] | None,
        pgno: int = 0,
        txn: int = 0,
    ) -> None:
        self.keys = keys
        self.vals = vals
        self.kids = kids
        self.pgno = pgno
        self.txn = txn

    @property
    def is_leaf(self) -> bool:
        return self.kids is None

    def size(self) -> int:
        """Encoded size in bytes (header + cells); at most the page size when it fits."""
        if self.kids is None:
            assert self.vals is not None
            return leaf_size(self.keys, self.vals)
        return branch_size(self.keys)

    def __repr__(self) -> str:
        kind = "leaf" if self.kids is None else "branch"
        return f"<Node {kind} pgno={self.pgno} txn={self.txn} n={len(self.keys)}>"


def leaf_size(keys: Sequence[bytes], vals: Sequence[Value]) -> int:
    """Encoded size of a leaf holding ``keys``/``vals``."""
    return _HDR_SIZE + LEAF_CELL_OVERHEAD * len(keys) + sum(map(len, keys)) + sum(map(len, vals))


def branch_size(keys: Sequence[bytes]) -> int:
    """Encoded size of a branch with these separators (``keys[0]`` is stored empty)."""
    n = len(keys)
    return _HDR_SIZE + BRANCH_CELL_OVERHEAD * n + sum(map(len, keys)) - (len(keys[0]) if n else 0)


def verify_checksum(buf: bytes | memoryview, what: str) -> None:
    """Raise :class:`CorruptionError` unless the crc32c in the first 4 bytes matches the rest."""
    (stored,) = CHECKSUM.unpack_from(buf, 0)
    if crc32c(memoryview(buf)[4:]) != stored:
        raise CorruptionError(f"{what}: checksum mismatch")


def seal(page: bytearray) -> bytes:
    """Fill in the checksum of an encoded page (or run) and return it as bytes."""
    CHECKSUM.pack_into(page, 0, crc32c(memoryview(page)[4:]))
    return bytes(page)


# Design note: the layout cache.  Slicing keys and values one by one costs ~0.13 µs each,
# most of a leaf's decode.  Leaves of one database usually repeat a few layouts (fixed-size
# keys and values give one per cell count), so a layout -- the raw cell-length array -- seen
# on two pages gets a compiled ``struct.Struct("<16s16s...100s")`` that unpacks every key
# and value at once (~4x faster), a second one for the keys alone, and the offsets of the
# values (which :func:`peek` uses).  Layouts with an overflow reference are never compiled
# (the slow path makes the Ovf objects).  A layout seen on one page only is remembered
# without a Struct (with that page's number: a page read again must not count twice), so
# databases of varied sizes never pay for compiling; both maps are bounded.
Layout = tuple[struct.Struct, struct.Struct, tuple[int, ...]]
_LAYOUTS: dict[bytes, Layout] = {}
_SEEN: dict[bytes, int] = {}
_MAX_LAYOUTS = 2048


def _learn(layout: bytes, lens: tuple[int, ...], n: int, pgno: int) -> None:
    """Compile ``layout`` (a leaf's cell-length array) once it is read on a second page."""
    first = _SEEN.get(layout)
    if first is None or first == pgno:
        if len(_SEEN) >= 4 * _MAX_LAYOUTS:
            _SEEN.clear()
        _SEEN[layout] = pgno
        return
    if n == 0 or max(lens[n:]) >= VALUE_OVERFLOW_BIT:
        return
    if len(_LAYOUTS) >= _MAX_LAYOUTS:
        _LAYOUTS.clear()
    fmt = "".join(map("{}s".format, lens[:n]))
    voffs = tuple(accumulate(lens[n:], initial=_HDR_SIZE + 4 * n + sum(lens[:n])))
    _LAYOUTS[layout] = (
        struct.Struct("<" + fmt + "".join(map("{}s".format, lens[n:]))),
        struct.Struct("<" + fmt),
        voffs,
    )


class PageSlices:
    """The keys or values of a leaf that :func:`peek` read for one lookup: each is sliced
    from the page copy when asked for (a lookup's ``bisect`` asks for a few keys, then for
    one value).

    >>> vals = PageSlices(b"..abcde", (2, 4, 7))
    >>> len(vals), vals[0], vals[1]
    (2, b'ab', b'cde')
    """

    __slots__ = ("buf", "offs")

    def __init__(self, buf: bytes, offs: tuple[int, ...]) -> None:
        self.buf = buf
        self.offs = offs

    def __len__(self) -> int:
        return len(self.offs) - 1

    def __getitem__(self, i: int) -> bytes:
        offs = self.offs
        if i < 0:
            i += len(offs) - 1
        return self.buf[offs[i] : offs[i + 1]]


def peek(buf: bytes, pgno: int) -> Node | None:
    """Leaf page ``pgno`` read for one lookup: its keys unpacked in one C call when the
    layout is compiled, else left in ``buf`` like its values (:class:`PageSlices`, sliced
    when a ``bisect`` asks).  None for anything else (a branch, overflow values, damage):
    the caller decodes the page with :func:`decode`, which raises on damage.  Verifies the
    checksum (a bad one is damage: None).  Cost: ~0.8 µs for a 4 KiB leaf of 33 cells of a
    compiled layout, under half of :func:`decode`; ~2.5 µs otherwise (the bisect's key
    slices)."""
    _, ptype, _, n, stored_pgno, txn = _HDR.unpack_from(buf, 0)
    if ptype != PAGE_LEAF or stored_pgno != pgno or n == 0:
        return None
    lens_end = _HDR_SIZE + 4 * n
    if lens_end > len(buf):
        return None
    layout = buf[_HDR_SIZE:lens_end]
    found = _LAYOUTS.get(layout)
    if found is not None:
        voffs = found[2]
        if voffs[-1] > len(buf):
            return None
    else:
        lens = _array("H", 2 * n).unpack_from(buf, _HDR_SIZE)
        if max(lens[n:]) >= VALUE_OVERFLOW_BIT:
            return None
        _learn(layout, lens, n, pgno)
        koffs = tuple(accumulate(lens[:n], initial=lens_end))
        voffs = tuple(accumulate(lens[n:], initial=koffs[-1]))
        if voffs[-1] > len(buf):
            return None
    (stored,) = CHECKSUM.unpack_from(buf, 0)
    if crc32c(memoryview(buf)[4:]) != stored:
        return None
    # PageSlices are indexable by position, which is all a lookup needs
    keys = found[1].unpack_from(buf, lens_end) if found is not None else PageSlices(buf, koffs)
    return Node(keys, PageSlices(buf, voffs), None, pgno, txn)  # type: ignore[arg-type]


def decode(buf: bytes, pgno: int) -> Node:
    """Decode a leaf or branch page read from page number ``pgno``.

    Verifies the checksum, the page number, the type and that every cell lies inside the
    page; raises :class:`CorruptionError` naming the page otherwise.  Cost: ~10-20 µs for a
    4 KiB page, done once per page (the pager caches the result).
    """
    page_size = len(buf)
    _, ptype, _, n, stored_pgno, txn = _HDR.unpack_from(buf, 0)
    verify_checksum(buf, f"page {pgno}")
    if stored_pgno != pgno:
        raise CorruptionError(f"page {pgno}: header says it is page {stored_pgno}")
    if ptype == PAGE_LEAF:
        lens_end = _HDR_SIZE + 4 * n
        if lens_end > page_size:
            raise CorruptionError(f"page {pgno}: {n} cells do not fit in a page")
        layout = buf[_HDR_SIZE:lens_end]
        found = _LAYOUTS.get(layout)
        if found is not None:  # a layout seen before: every key and value in one C call
            cells = found[0]
            if lens_end + cells.size > page_size:
                raise CorruptionError(f"page {pgno}: cells run past the end of the page")
            fields = cells.unpack_from(buf, lens_end)
            return Node(fields[:n], fields[n:], None, pgno, txn)
        lens = _array("H", 2 * n).unpack_from(buf, _HDR_SIZE)
        _learn(layout, lens, n, pgno)
        koffs = list(accumulate(lens[:n], initial=lens_end))
        vlens = [(_OVF_INLINE if vl & VALUE_OVERFLOW_BIT else vl) for vl in lens[n:]]
        voffs = list(accumulate(vlens, initial=koffs[-1]))
        if voffs[-1] > page_size:
            raise CorruptionError(f"page {pgno}: cells run past the end of the page")
        keys = tuple(map(buf.__getitem__, map(slice, koffs, koffs[1:])))
        vals: list[Value] = list(map(buf.__getitem__, map(slice, voffs, voffs[1:])))
        raw = lens[n:]
        if n and max(raw) >= VALUE_OVERFLOW_BIT:
            for i, vl in enumerate(raw):
                if vl & VALUE_OVERFLOW_BIT:
                    if vl != VALUE_OVERFLOW_BIT | _OVF_INLINE:
                        raise CorruptionError(f"page {pgno}: bad overflow reference in cell {i}")
                    vals[i] = Ovf.from_ref(vals[i])
        return Node(keys, tuple(vals), None, pgno, txn)
    if ptype == PAGE_BRANCH:
        kids_off = _HDR_SIZE + 2 * n
        lens_end = kids_off + 8 * n
        if n == 0 or lens_end > page_size:
            raise CorruptionError(f"page {pgno}: branch with {n} children")
        klens = _array("H", n).unpack_from(buf, _HDR_SIZE)
        if klens[0]:
            raise CorruptionError(f"page {pgno}: a branch's first key must be stored empty")
        kids = _array("Q", n).unpack_from(buf, kids_off)
        koffs = list(accumulate(klens, initial=lens_end))
        if koffs[-1] > page_size:
            raise CorruptionError(f"page {pgno}: cells run past the end of the page")
        keys = tuple(map(buf.__getitem__, map(slice, koffs, koffs[1:])))
        return Node(keys, None, kids, pgno, txn)
    name = PAGE_TYPE_NAMES.get(ptype, f"unknown type {ptype}")
    raise CorruptionError(f"page {pgno}: expected a leaf or branch page, found {name}")


def encode(node: Node, page_size: int) -> bytes:
    """Encode ``node`` as a page of ``page_size`` bytes, with its checksum.  The node must
    fit (``node.size() <= page_size``)."""
    keys = node.keys
    n = len(keys)
    if node.kids is None:
        vals = node.vals
        assert vals is not None
        vlens = list(map(len, vals))
        if Ovf in set(map(type, vals)):
            for i, v in enumerate(vals):
                if v.__class__ is Ovf:
                    vlens[i] = VALUE_OVERFLOW_BIT | _OVF_INLINE
        parts = [_array("H", n).pack(*map(len, keys)), _array("H", n).pack(*vlens), *keys, *vals]
        ptype = PAGE_LEAF
    else:
        klens = [len(k) for k in keys]
        if n:
            klens[0] = 0
        parts = [_array("H", n).pack(*klens), _array("Q", n).pack(*node.kids), *keys[1:]]
        ptype = PAGE_BRANCH
    body = b"".join(parts)
    pad = page_size - _HDR_SIZE - len(body)
    if pad < 0:
        raise AssertionError(
            f"node of {page_size - pad} bytes does not fit a {page_size}-byte page"
        )
    # The checksum covers everything after itself: chain crc32c over the pieces instead of
    # assembling the page twice.
    tail = _HDR_TAIL.pack(ptype, 0, n, node.pgno, node.txn)
    zeros = _ZEROS[:pad]
    crc = crc32c(zeros, crc32c(body, crc32c(tail)))
    return b"".join((CHECKSUM.pack(crc), tail, body, zeros))


def run_pages(length: int, page_size: int) -> int:
    """Pages needed by a run (overflow or freelist) carrying ``length`` payload bytes.

    >>> run_pages(0, 4096), run_pages(4064, 4096), run_pages(4065, 4096)
    (1, 1, 2)
    """
    return max(1, -(-(RUN_DATA_OFFSET + length) // page_size))


def encode_run(ptype: int, pgno: int, txn: int, payload: bytes, page_size: int) -> bytes:
    """Encode a run (docs/format.md "Overflow run") holding ``payload``."""
    npages = run_pages(len(payload), page_size)
    run = bytearray(npages * page_size)
    _HDR.pack_into(run, 0, 0, ptype, 0, 0, pgno, txn)
    RUN_LENGTH.pack_into(run, _HDR_SIZE, len(payload))
    run[RUN_DATA_OFFSET : RUN_DATA_OFFSET + len(payload)] = payload
    return seal(run)


def run_header(first_page: bytes, pgno: int, ptype: int) -> tuple[int, int]:
    """From the first page of a run, its (txn, payload length).  Checks type and page
    number (not the checksum, which covers the whole run); raises :class:`CorruptionError`."""
    _, stored_type, _, _, stored_pgno, txn = _HDR.unpack_from(first_page, 0)
    if stored_type != ptype or stored_pgno != pgno:
        want = PAGE_TYPE_NAMES[ptype]
        got = PAGE_TYPE_NAMES.get(stored_type, f"type {stored_type}")
        raise CorruptionError(
            f"page {pgno}: expected the start of a {want} run, found {got} page {stored_pgno}"
        )
    (length,) = RUN_LENGTH.unpack_from(first_page, _HDR_SIZE)
    return txn, length


def run_payload(run: bytes, pgno: int, length: int) -> bytes:
    """The verified payload of a whole run read from disk; raises :class:`CorruptionError`."""
    verify_checksum(run, f"run at page {pgno}")
    return run[RUN_DATA_OFFSET : RUN_DATA_OFFSET + length]
