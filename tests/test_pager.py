"""kvmap.pager: page reads through the mappings, coalesced writes, file growth, and the
bounded decoded-page cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import kvmap
from kvmap import node as nodec
from kvmap.errors import CorruptionError, DatabaseClosedError
from kvmap.fileio import FileSystem
from kvmap.format import PAGE_OVERFLOW
from kvmap.node import Node, encode, encode_run
from kvmap.pager import Pager
from kvmap.segments import first_segment, segment_end

PS = 512


class WriteLog(FileSystem):
    def __init__(self) -> None:
        self.writes: list[tuple[int, int]] = []
        self.truncates: list[int] = []

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self.writes.append((offset, len(data)))
        super().pwrite(fd, data, offset)

    def truncate(self, fd: int, size: int) -> None:
        self.truncates.append(size)
        super().truncate(fd, size)


class CountingDecode:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, buf: bytes, pgno: int) -> Node:
        self.calls.append(pgno)
        return nodec.decode(buf, pgno)


@pytest.fixture
def made(tmp_path: Any) -> Iterator[tuple[Pager, WriteLog, CountingDecode]]:
    fs = WriteLog()
    fd = fs.open(os.path.join(tmp_path, "data"), os.O_RDWR | os.O_CREAT)
    dec = CountingDecode()
    pager = Pager(fs, fd, PS, dec, cache_size=0)
    yield pager, fs, dec
    pager.close()
    fs.close(fd)


def leaf(pgno: int, txn: int = 1) -> bytes:
    return encode(Node([b"key%d" % pgno], [b"val%d" % pgno], None, pgno, txn), PS)


def fill(pager: Pager, n: int) -> None:
    pager.ensure_pages(n)
    pager.write_all([(p, leaf(p)) for p in range(2, n)])


# -- growth and raw I/O -------------------------------------------------------------------------


def test_ensure_pages_grows_to_segment_boundaries(made: Any) -> None:
    pager, fs, _ = made
    assert pager.ensure_pages(1) is True
    assert pager.file_size() == first_segment(PS) == pager.segments.mapped
    assert pager.ensure_pages(first_segment(PS) // PS) is False  # already covered
    assert pager.ensure_pages(first_segment(PS) // PS + 1) is True
    assert pager.file_size() == segment_end(first_segment(PS) + 1, PS)
    assert fs.truncates == [first_segment(PS), segment_end(first_segment(PS) + 1, PS)]
    assert pager.segments.count == 2
    big = 5000
    pager.ensure_pages(big)
    assert pager.file_size() == segment_end(big * PS, PS) == pager.segments.mapped


def test_ensure_pages_uses_an_already_large_file(made: Any) -> None:
    pager, fs, _ = made
    fs.truncate(pager.fd, 256 * 1024)
    fs.truncates.clear()
    assert pager.ensure_pages(10) is True
    assert fs.truncates == []  # nothing to extend
    assert pager.segments.mapped == 256 * 1024


def test_write_and_read(made: Any) -> None:
    pager, _, dec = made
    fill(pager, 40)
    for p in range(2, 40):
        assert pager.page(p) == leaf(p)
        n = pager.node(p)
        assert list(n.keys) == [b"key%d" % p] and list(n.vals) == [b"val%d" % p] and n.pgno == p
    run = encode_run(PAGE_OVERFLOW, 40, 1, b"r" * 2000, PS)
    pager.ensure_pages(40 + len(run) // PS)
    pager.write(40, run)
    assert pager.read(40 * PS, len(run)) == run
    assert dec.calls == list(range(2, 40))


def test_write_all_sorts_and_coalesces_neighbours(made: Any) -> None:
    pager, fs, _ = made
    pager.ensure_pages(100)
    run = encode_run(PAGE_OVERFLOW, 11, 1, b"r" * 700, PS)  # 2 pages
    assert len(run) == 2 * PS
    pages = [(13, leaf(13)), (6, leaf(6)), (11, run), (5, leaf(5)), (10, leaf(10)),
             (7, leaf(7)), (40, leaf(40))]  # fmt: skip
    fs.writes.clear()
    pager.write_all(pages)
    assert fs.writes == [(5 * PS, 3 * PS), (10 * PS, 4 * PS), (40 * PS, PS)]
    for p in (5, 6, 7, 10, 13, 40):
        assert pager.page(p) == leaf(p)
    assert pager.read(11 * PS, 2 * PS) == run


def test_write_all_caps_a_coalesced_write(made: Any) -> None:
    pager, fs, _ = made
    pager.ensure_pages(700)
    fs.writes.clear()
    pager.write_all([(p, leaf(p)) for p in range(2, 602)])
    assert [n // PS for _, n in fs.writes] == [256, 256, 88]
    assert all(pager.page(p) == leaf(p) for p in range(2, 602))


def test_reads_beyond_the_file_raise(made: Any) -> None:
    pager, _, _ = made
    fill(pager, 10)
    last = pager.segments.mapped // PS - 1
    pager.page(last)
    with pytest.raises(CorruptionError, match=f"page {last + 1}"):
        pager.page(last + 1)
    with pytest.raises(CorruptionError, match=f"page {last + 1}"):
        pager.node(last + 1)
    with pytest.raises(CorruptionError):
        pager.read(last * PS, 2 * PS)


def test_node_raises_for_a_damaged_page_and_does_not_cache_it(made: Any) -> None:
    pager, fs, dec = made
    fill(pager, 10)
    bad = bytearray(leaf(5))
    bad[100] ^= 1
    pager.write(5, bytes(bad))
    for _ in range(2):
        with pytest.raises(CorruptionError, match="page 5: checksum"):
            pager.node(5)
    assert 5 not in pager.cache
    assert dec.calls == [5, 5]


# -- check_covers -------------------------------------------------------------------------------


def test_check_covers_a_truncated_file(made: Any) -> None:
    pager, fs, _ = made
    fs.truncate(pager.fd, 20 * PS)
    with pytest.raises(CorruptionError, match=r"data file is 10240 bytes.*\(21 pages\)"):
        pager.check_covers(21)
    assert pager.segments.mapped == 0
    pager.check_covers(20)
    assert pager.segments.mapped == 20 * PS
    pager.check_covers(5)  # already covered
    with pytest.raises(CorruptionError):
        pager.page(20)


def test_check_covers_maps_whole_pages_only(made: Any) -> None:
    pager, fs, _ = made
    fs.truncate(pager.fd, 20 * PS + 100)
    pager.check_covers(20)
    assert pager.segments.mapped == 20 * PS
    with pytest.raises(CorruptionError):
        pager.read(20 * PS, 1)


def test_open_refuses_a_file_shorter_than_its_meta_says(db_path: str) -> None:
    with kvmap.open(db_path, page_size=PS) as db:
        db.put_many((b"%04d" % i, b"v" * 40) for i in range(500))
        hwm = db._state.meta.hwm
    os.truncate(os.path.join(db_path, "kvmap.data"), (hwm - 1) * PS)
    with pytest.raises(CorruptionError, match="data file is"):
        kvmap.open(db_path)
    with pytest.raises(CorruptionError):
        kvmap.open(db_path, readonly=True)


def test_growth_after_opening_a_file_trimmed_to_its_high_water_mark(db_path: str) -> None:
    """Pages past the high-water mark are unused: a file trimmed to them (or to any whole
    number of pages covering the meta) is valid, and the database must keep growing."""
    with kvmap.open(db_path, page_size=PS) as db:
        db.put_many((b"%04d" % i, b"v") for i in range(20))
        hwm = db._state.meta.hwm
    os.truncate(os.path.join(db_path, "kvmap.data"), (hwm + 1) * PS)
    with kvmap.open(db_path) as db:
        assert len(db) == 20
        db.put_many((b"x%04d" % i, b"w" * 50) for i in range(2000))
        assert len(db) == 2020
        db.check()


# -- the cache ----------------------------------------------------------------------------------


def test_cache_hit_decodes_once(made: Any) -> None:
    pager, _, dec = made
    fill(pager, 20)
    first = pager.node(7)
    assert pager.node(7) is first
    assert dec.calls.count(7) == 1


def test_cache_is_bounded_and_eviction_keeps_working(made: Any) -> None:
    pager, _, dec = made
    assert pager.max_cached == 64  # the floor
    fill(pager, 600)
    for _ in range(3):
        for p in range(2, 600):
            n = pager.node(p)
            assert list(n.keys) == [b"key%d" % p], p
            assert len(pager.cache) <= pager.max_cached
    assert len(dec.calls) > 598  # evicted pages were decoded again
    assert len(pager.cache) >= pager.max_cached * 3 // 4 - 1


def test_max_cached_follows_cache_size(tmp_path: Any) -> None:
    fs = FileSystem()
    fd = fs.open(os.path.join(tmp_path, "d"), os.O_RDWR | os.O_CREAT)
    try:
        assert Pager(fs, fd, 4096, nodec.decode, 0).max_cached == 64
        assert Pager(fs, fd, 4096, nodec.decode, 64 * 2**20).max_cached == 8192
        assert Pager(fs, fd, 512, nodec.decode, 512 * 1000).max_cached == 500
    finally:
        fs.close(fd)


def test_remember_replaces_and_is_bounded(made: Any) -> None:
    pager, _, dec = made
    fill(pager, 10)
    pager.node(5)
    new = Node([b"replaced"], [b"x"], None, 5, 9)
    pager.remember(5, new)
    assert pager.node(5) is new
    for p in range(1000, 1300):
        pager.remember(p, Node([], [], None, p, 1))
        assert len(pager.cache) <= pager.max_cached
    assert dec.calls == [5]


def test_database_cache_is_bounded(open_db: Any) -> None:
    db = open_db(cache_size=0)
    model = {b"%05d" % i: b"v%d" % i * 10 for i in range(3000)}
    db.put_many(model.items())
    pager = db._state.pager
    assert len(pager.cache) <= pager.max_cached == 64
    for _ in range(2):
        for k, v in model.items():
            assert db[k] == v
            assert len(pager.cache) <= 64
    assert list(db.items()) == sorted(model.items())
    assert db.stats()["cached_pages"] <= 64


def test_visit_peeks_past_a_full_cache_and_never_evicts(tmp_path: Any) -> None:
    """The lookup path caches leaves until the cache is full; then it reads each leaf it
    misses for that lookup only, so the cache stops changing and nothing is decoded."""
    fs = FileSystem()
    fd = fs.open(os.path.join(tmp_path, "d"), os.O_RDWR | os.O_CREAT)
    dec = CountingDecode()
    pager = Pager(fs, fd, PS, dec, 0, nodec.peek)
    try:
        pager.ensure_pages(600)
        pages = [(p, encode(Node([b"k%05d" % p], [b"v%07d" % p], None, p, 1), PS))
                 for p in range(2, 600)]  # fmt: skip
        pager.write_all(pages)
        for _ in range(2):
            for p in range(2, 600):
                node = pager.visit(p)
                assert (list(node.keys), node.vals[0]) == ([b"k%05d" % p], b"v%07d" % p)
        cached = dict(pager.cache)
        calls = len(dec.calls)
        assert len(cached) == pager.max_cached == 64
        for p in range(2, 600):
            assert pager.visit(p).vals[0] == b"v%07d" % p
        assert pager.cache == cached and len(dec.calls) == calls
        pager.forget()
        assert pager.cache == {}
    finally:
        pager.close()
        fs.close(fd)


def test_visit_raises_for_a_damaged_leaf_past_a_full_cache(tmp_path: Any) -> None:
    fs = FileSystem()
    path = os.path.join(tmp_path, "d")
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    pager = Pager(fs, fd, PS, nodec.decode, 0, nodec.peek)
    try:
        pager.ensure_pages(200)
        pager.write_all([(p, encode(Node([b"k%05d" % p], [b"v" * 30], None, p, 1), PS))
                         for p in range(2, 200)])  # fmt: skip
        for p in range(2, 150):
            pager.visit(p)
        assert len(pager.cache) == pager.max_cached
        fs.pwrite(fd, b"\xff", 170 * PS + 100)  # a bit flip in a page never visited
        with pytest.raises(CorruptionError, match="page 170"):
            pager.visit(170)
        assert 170 not in pager.cache
        # a page peeked (and verified) before, damaged since: still an error, never the
        # damaged bytes (a peek reads the mapping again, so it verifies again)
        assert pager.visit(180).vals[0] == b"v" * 30
        fs.pwrite(fd, b"X" * 30, 181 * PS - 30)  # the value, at the end of the page
        with pytest.raises(CorruptionError, match="page 180"):
            pager.visit(180)
    finally:
        pager.close()
        fs.close(fd)


def test_database_gets_past_a_full_cache_follow_page_reuse(db_path: str) -> None:
    """Checkpoints free and reuse pages; a reader's cached pages must never outlive the
    page contents they came from, and its peeks read what the pages hold now."""
    with kvmap.open(db_path, page_size=512, cache_size=0) as db, \
            kvmap.open(db_path, readonly=True, cache_size=0) as ro:  # fmt: skip
        model: dict[bytes, bytes] = {}
        for rnd in range(6):
            with db.begin(write=True) as txn:
                for i in range(0, 1500, rnd + 1):
                    model[b"%05d" % i] = v = b"r%d-%d" % (rnd, i) * 3
                    txn.put(b"%05d" % i, v)
            db.checkpoint()
            for k, v in model.items():
                assert db.get(k) == v
                assert ro.get(k) == v
            for handle in (db, ro):
                pager = handle._state.pager  # type: ignore[union-attr]
                assert len(pager.cache) <= pager.max_cached
        db.check()


def test_close_drops_cache_and_mappings(made: Any) -> None:
    pager, _, _ = made
    fill(pager, 10)
    pager.node(3)
    pager.close()
    assert pager.cache == {} and pager.segments.closed
    with pytest.raises(DatabaseClosedError):
        pager.page(3)
