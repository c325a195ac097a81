"""kvmap.segments: the data file mapped as read-only segments that are never remapped.

Covers the growth schedule, that growth maps only new ranges and never touches (closes,
resizes, remaps) an old mapping, that views survive growth, stitched reads across segment
boundaries, and that reads beyond the mapped size raise CorruptionError (never SIGBUS).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvmap
from kvmap import fileio
from kvmap.errors import CorruptionError
from kvmap.fileio import FileSystem
from kvmap.segments import SEGMENT_CAP, Segments, first_segment, segment_end
from kvmap.wal import FIRST_ALLOCATION

PAGE_SIZES = [512 << i for i in range(8)]


def boundaries(page_size: int, upto: int) -> list[int]:
    """Segment boundaries, computed independently: sizes double from the first, capped."""
    out = []
    size = first_segment(page_size)
    end = 0
    while end < upto:
        end += size
        out.append(end)
        size = min(2 * size, SEGMENT_CAP)
    return out


class MapLog(FileSystem):
    def __init__(self) -> None:
        self.maps: list[tuple[int, int, mmap.mmap]] = []

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        m = super().mmap(fd, length, offset)
        self.maps.append((offset, length, m))
        return m


@pytest.fixture
def datafile(tmp_path: Any) -> Iterator[tuple[MapLog, int]]:
    fs = MapLog()
    fd = fs.open(os.path.join(tmp_path, "data"), os.O_RDWR | os.O_CREAT)
    yield fs, fd
    fs.close(fd)


def grow(fs: FileSystem, fd: int, seg: Segments, size: int) -> None:
    fs.truncate(fd, size)
    seg.map_to(size)


def page_bytes(pgno: int, ps: int) -> bytes:
    stamp = b"%08d" % pgno
    return (stamp * (ps // len(stamp) + 1))[:ps]


# -- schedule ---------------------------------------------------------------------------------


def test_first_segment() -> None:
    assert first_segment(512) == first_segment(4096) == 64 * 1024
    assert first_segment(8192) == 128 * 1024
    assert first_segment(65536) == 1024 * 1024
    for ps in PAGE_SIZES:
        assert first_segment(ps) % ps == 0
        assert first_segment(ps) % mmap.ALLOCATIONGRANULARITY == 0


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_segment_end_doubles_then_caps(ps: int) -> None:
    ends = boundaries(ps, 5 * SEGMENT_CAP)
    sizes = [b - a for a, b in zip([0, *ends], ends)]
    assert sizes[0] == first_segment(ps)
    for a, b in zip(sizes, sizes[1:]):
        assert b == min(2 * a, SEGMENT_CAP)
    assert sizes[-1] == sizes[-2] == SEGMENT_CAP
    for e in ends:
        assert segment_end(e, ps) == e
        assert segment_end(e - 1, ps) == e
        assert segment_end(e + 1, ps) > e
        assert e % ps == 0 and e % mmap.ALLOCATIONGRANULARITY == 0


@given(st.sampled_from(PAGE_SIZES), st.integers(min_value=0, max_value=50 * SEGMENT_CAP))
def test_segment_end_is_the_smallest_boundary_above(ps: int, n: int) -> None:
    e = segment_end(n, ps)
    ends = boundaries(ps, max(n, 1))
    assert e >= n
    assert e in ends
    assert all(b < n for b in ends if b < e)


def test_small_database_stays_small(db_path: str) -> None:
    with kvmap.open(db_path) as db:  # default page size
        for i in range(20):
            db[b"key%d" % i] = b"value"
    # close() checkpointed: the tree holds the keys, the WAL is just its header (in the
    # space allocated for its first frames)
    sizes = {name: os.path.getsize(os.path.join(db_path, name)) for name in os.listdir(db_path)}
    assert sizes["kvmap.data"] <= 64 * 1024, sizes
    # the lock file is a fixed 8 KiB of shared memory (header and 126 reader slots)
    assert sizes.pop("kvmap.lock") == 128 + 64 * 126, sizes
    assert sum(sizes.values()) <= 64 * 1024 + FIRST_ALLOCATION, sizes


# -- growth -------------------------------------------------------------------------------------


def test_growth_maps_only_new_ranges(datafile: tuple[MapLog, int]) -> None:
    fs, fd = datafile
    ps = 512
    seg = Segments(fs, fd, ps)
    assert seg.count == 0 and seg.mapped == 0
    ends = boundaries(ps, 4 * 1024 * 1024)
    for n, end in enumerate(ends, 1):
        before = list(seg._maps)
        grow(fs, fd, seg, end)
        assert seg.count == n and seg.mapped == end
        assert seg._maps[: n - 1] == before  # the very same objects
        assert all(not m.closed for m in before)
        offset, length, _ = fs.maps[-1]
        assert offset == (ends[n - 2] if n > 1 else 0) and offset + length == end
    assert len(fs.maps) == len(ends)  # nothing mapped twice
    seg.map_to(ends[-1])  # no-op when already mapped
    assert len(fs.maps) == len(ends)
    seg.close()


def test_views_survive_many_growths(datafile: tuple[MapLog, int]) -> None:
    fs, fd = datafile
    ps = 4096
    seg = Segments(fs, fd, ps)
    ends = boundaries(ps, 8 * 1024 * 1024)
    views: dict[int, memoryview] = {}
    copies: dict[int, bytes] = {}
    prev = 0
    for end in ends:
        fs.truncate(fd, end)
        pgnos = [prev // ps, (prev + end) // 2 // ps, end // ps - 1]
        for p in pgnos:
            fs.pwrite(fd, page_bytes(p, ps), p * ps)
        seg.map_to(end)
        for p in pgnos:
            views[p] = seg.view(p)
            copies[p] = seg.page(p)
            assert copies[p] == page_bytes(p, ps)
        # every view taken so far still reads its page
        for p, v in views.items():
            assert v.readonly
            assert len(v) == ps
            assert bytes(v) == page_bytes(p, ps), p
        prev = end
    assert seg.count == len(ends) >= 5
    # views stay readable even after close (the mapping outlives the Segments)
    seg.close()
    assert seg.closed
    for p, v in views.items():
        assert bytes(v) == copies[p]
    for v in views.values():
        v.release()


def test_database_grown_across_many_segments_while_views_are_held(
    open_db: Any,
) -> None:
    db = open_db(sync="off", checkpoint_size=0)  # every commit grows the tree
    db.put_many((b"k%04d" % i, b"v%04d" % i) for i in range(300))
    snap = db.begin()  # pages reachable from it are never reused
    segs = db._state.pager.segments
    start_count = segs.count
    hwm = db._state.meta.hwm
    views = {p: segs.view(p) for p in range(2, hwm)}
    copies = {p: bytes(v) for p, v in views.items()}
    for i in range(40):
        with db.begin(write=True) as txn:
            txn.put(b"big%02d" % i, bytes([i]) * 60_000)
            for j in range(i, 300, 7):
                txn.put(b"k%04d" % j, b"new%d" % i)
    assert segs is db._state.pager.segments
    assert segs.count >= start_count + 4, segs.count
    for p, v in views.items():
        assert bytes(v) == copies[p], f"page {p} changed under a held view"
    assert dict(snap.items()) == {b"k%04d" % i: b"v%04d" % i for i in range(300)}
    snap.close()
    for v in views.values():
        v.release()
    assert db[b"big39"] == bytes([39]) * 60_000


# -- reads ---------------------------------------------------------------------------------------


def test_reads_beyond_the_mapping_raise(datafile: tuple[MapLog, int]) -> None:
    fs, fd = datafile
    ps = 512
    seg = Segments(fs, fd, ps)
    with pytest.raises(CorruptionError):
        seg.page(0)
    with pytest.raises(CorruptionError):
        seg.view(0)
    with pytest.raises(CorruptionError):
        seg.read(0, 1)
    grow(fs, fd, seg, 64 * 1024)
    last = 64 * 1024 // ps - 1
    assert seg.page(last) == bytes(ps)
    for bad in (last + 1, last + 1000, 10**12, -1):
        with pytest.raises(CorruptionError, match=f"page {bad}"):
            seg.page(bad)
        with pytest.raises(CorruptionError, match=f"page {bad}"):
            seg.view(bad)
    for off, size in ((64 * 1024 - 10, 11), (64 * 1024, 1), (10**12, 1), (-1, 2), (0, -1),
                      (0, 64 * 1024 + 1)):  # fmt: skip
        with pytest.raises(CorruptionError):
            seg.read(off, size)
    assert seg.read(64 * 1024 - 10, 10) == bytes(10)
    assert seg.read(0, 64 * 1024) == bytes(64 * 1024)


def test_reads_never_touch_bytes_beyond_the_file(tmp_path: Any) -> None:
    """The file is shorter than a whole segment: only what exists is mapped, and pages past
    the end raise instead of faulting."""
    fs = FileSystem()
    fd = fs.open(os.path.join(tmp_path, "data"), os.O_RDWR | os.O_CREAT)
    try:
        fs.truncate(fd, 10 * 512)
        seg = Segments(fs, fd, 512)
        seg.map_to(10 * 512)
        assert seg.mapped == 10 * 512
        assert seg.page(9) == bytes(512)
        with pytest.raises(CorruptionError):
            seg.page(10)
        with pytest.raises(CorruptionError):
            seg.read(9 * 512, 513)
        seg.close()
    finally:
        fs.close(fd)


@pytest.mark.parametrize("ps", [512, 4096])
def test_read_stitches_across_boundaries(datafile: tuple[MapLog, int], ps: int) -> None:
    fs, fd = datafile
    seg = Segments(fs, fd, ps)
    ends = boundaries(ps, 1024 * 1024)[:4]
    fs.truncate(fd, ends[-1])
    pattern = bytes(i * 7 % 251 for i in range(ends[-1]))
    fs.pwrite(fd, pattern, 0)
    for end in ends:
        seg.map_to(end)
    assert seg.count == 4
    for b in ends[:-1]:
        for off, size in ((b - 1, 2), (b - 700, 1400), (b - ps, 2 * ps), (b, ps), (b - 1, 1)):
            assert seg.read(off, size) == pattern[off : off + size]
    # one read spanning three segments
    off = ends[0] - 5
    size = ends[2] - off + 5
    assert seg.read(off, size) == pattern[off : off + size]
    assert seg.read(0, ends[-1]) == pattern
    assert seg.read(17, 0) == b""
    # page() and view() agree with read()
    for p in (0, ends[0] // ps - 1, ends[0] // ps, ends[2] // ps - 1):
        assert seg.page(p) == pattern[p * ps : (p + 1) * ps] == bytes(seg.view(p))
    seg.close()


def test_map_to_a_size_that_is_not_a_boundary_then_grow(datafile: tuple[MapLog, int]) -> None:
    """A file whose size is not a segment boundary (the pager maps ``size - size % page``)
    gets a shorter last piece; growing from there must keep working."""
    fs, fd = datafile
    ps = 512
    seg = Segments(fs, fd, ps)
    fs.truncate(fd, 64 * 1024 + 3 * ps)
    seg.map_to(64 * 1024 + 3 * ps)
    assert seg.mapped == 64 * 1024 + 3 * ps
    assert seg.page(64 * 1024 // ps + 2) == bytes(ps)
    fs.truncate(fd, segment_end(64 * 1024 + 4 * ps, ps))
    fs.pwrite(fd, b"\x01" * ps, 200 * ps)
    seg.map_to(segment_end(64 * 1024 + 4 * ps, ps))
    assert seg.mapped == 192 * 1024
    assert seg.page(200) == b"\x01" * ps
    seg.close()


def test_empty_reads(datafile: tuple[MapLog, int]) -> None:
    """A zero-byte read is inside any mapping, even an empty one: it returns b"" (or raises
    CorruptionError), never another exception."""
    fs, fd = datafile
    seg = Segments(fs, fd, 512)
    try:
        assert seg.read(0, 0) == b""
    except CorruptionError:
        pass
    grow(fs, fd, seg, 64 * 1024)
    assert seg.read(0, 0) == seg.read(64 * 1024, 0) == b""
    seg.close()


def test_close_with_views_held_does_not_raise(datafile: tuple[MapLog, int]) -> None:
    fs, fd = datafile
    seg = Segments(fs, fd, 512)
    grow(fs, fd, seg, 64 * 1024)
    fs.pwrite(fd, b"abc", 512)
    v = seg.view(1)
    seg.close()
    assert bytes(v[:3]) == b"abc"
    v.release()
    seg.close()  # idempotent


def test_database_maps_through_the_installed_layer(db_path: str) -> None:
    log = MapLog()
    with fileio.installed(log):
        db = kvmap.open(db_path, page_size=512, sync="off")
    try:
        db.put(b"v", b"x" * 500_000)
        db.checkpoint()  # the value reaches the tree: the file grows across segments
        segs = db._state.pager.segments
        assert segs.count >= 3
        assert [(o, n) for o, n, _ in log.maps] == [
            (s, e - s) for s, e in zip(segs._starts, segs._ends)
        ]
        assert segs.mapped == os.path.getsize(os.path.join(db_path, "kvmap.data"))
        assert db[b"v"] == b"x" * 500_000
    finally:
        db.close()
