"""kvmap.cursor: range scans over a copy-on-write tree (no sibling pointers), merge of an
overlay, and the range helpers ``prefix_stop``/``bounds``.

Scans run on real tiny-page trees (built bottom-up by Builder and by batches of TreeWriter
updates with deletes) and are compared with a sorted list for every kind of start/stop.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmap import node as nodec
from kvmap.btree import Builder, TreeWriter, read_overflow
from kvmap.cursor import bounds, merge, prefix_stop, scan
from kvmap.fileio import FileSystem
from kvmap.freelist import Freelist
from kvmap.node import Ovf
from kvmap.pager import Pager

PS = 512
ALPHABET = b"\x00\x01ab\xfe\xff"
key_st = st.binary(max_size=5).map(lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b))


def rand_key(rng: random.Random) -> bytes:
    return bytes(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 9)))


class Tree:
    """A tree in a pager, with the sorted (key, value) list it must hold."""

    def __init__(self, pager: Pager, root: int, depth: int, items: list[tuple[bytes, bytes]]):
        self.pager, self.root, self.depth, self.items = pager, root, depth, items
        self.keys = [k for k, _ in items]

    def value(self, stored: Any) -> bytes:
        return read_overflow(self.pager, stored) if isinstance(stored, Ovf) else stored  # type: ignore[no-any-return]

    def expected(self, start: bytes | None, stop: bytes | None, reverse: bool) -> list[bytes]:
        out = [k for k in self.keys if (start is None or k >= start) and (stop is None or k < stop)]
        return out[::-1] if reverse else out


def new_pager(path: str, cache_size: int = 1 << 20, decode: Any = nodec.decode) -> Pager:
    fs = FileSystem()
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    return Pager(fs, fd, PS, decode, cache_size)


def build(pager: Pager, items: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    hwm = [2]
    pages: list[tuple[int, bytes]] = []

    def alloc(n: int) -> int:
        hwm[0] += n
        return hwm[0] - n

    b = Builder(PS, 1, alloc, lambda p, data: pages.append((p, data)))
    b.add_all(items)
    root, depth, n = b.finish()
    assert n == len(items)
    pager.ensure_pages(hwm[0])
    pager.write_all(pages)
    return root, depth


def write_batches(pager: Pager, rng: random.Random, rounds: int) -> Tree:
    fl = Freelist()
    root = depth = 0
    hwm = 2
    model: dict[bytes, bytes] = {}
    for txn in range(1, rounds + 1):
        ops: dict[bytes, bytes | None] = {}
        for _ in range(rng.randrange(1, 80)):
            k = rand_key(rng)
            if model and rng.random() < 0.3:
                k = rng.choice(list(model))
                ops[k] = None
            else:
                ops[k] = bytes([txn % 256]) * rng.choice([0, 1, 5, 30, 90, 400])
        w = TreeWriter(pager, fl, txn, hwm)
        keys = sorted(ops)
        root, depth = w.apply(root, depth, keys, [ops[k] for k in keys])
        fl.add_reusable(w.freed)
        hwm = w.hwm
        pager.ensure_pages(hwm)
        pager.write_all(w.encoded_pages())
        for pg, n in w.dirty.items():
            pager.remember(pg, n)
        for k, v in ops.items():
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
    return Tree(pager, root, depth, sorted(model.items()))


@pytest.fixture(scope="module")
def trees(tmp_path_factory: Any) -> Iterator[list[Tree]]:
    d = tmp_path_factory.mktemp("cursor")
    rng = random.Random(1234)
    out = []
    keys = sorted({rand_key(rng) for _ in range(3000)} | {b""})
    items = [(k, b"v" * rng.choice([0, 3, 20, 60, 300])) for k in keys]
    p = new_pager(os.path.join(d, "built"))
    out.append(Tree(p, *build(p, items), items))
    p = new_pager(os.path.join(d, "written"), cache_size=0)
    out.append(write_batches(p, rng, 120))
    single = [(b"only", b"1")]
    p = new_pager(os.path.join(d, "single"))
    out.append(Tree(p, *build(p, single), single))
    yield out
    for t in out:
        t.pager.close()
        os.close(t.pager.fd)


def test_trees_are_deep(trees: list[Tree]) -> None:
    assert trees[0].depth >= 3 and trees[1].depth >= 3
    assert len(trees[0].keys) > 1000 and len(trees[1].keys) > 300
    assert b"" in trees[0].keys


def bound_st(tree_keys: list[bytes]) -> Any:
    near = st.sampled_from(tree_keys).flatmap(
        lambda k: st.sampled_from([k, k + b"\x00", k[:-1], k + b"\xff"])
    )
    return st.one_of(st.none(), near, key_st)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_scan_matches_a_sorted_list(trees: list[Tree], data: Any) -> None:
    tree = data.draw(st.sampled_from(trees))
    start = data.draw(bound_st(tree.keys))
    stop = data.draw(bound_st(tree.keys))
    reverse = data.draw(st.booleans())
    got = [k for k, _ in scan(tree.pager, tree.root, start, stop, reverse)]
    assert got == tree.expected(start, stop, reverse)


def test_full_scans_and_values(trees: list[Tree]) -> None:
    for tree in trees:
        fwd = [(k, tree.value(v)) for k, v in scan(tree.pager, tree.root, None, None)]
        assert fwd == tree.items
        rev = [(k, tree.value(v)) for k, v in scan(tree.pager, tree.root, None, None, True)]
        assert rev == tree.items[::-1]


def test_scan_at_every_key_boundary(trees: list[Tree]) -> None:
    tree = trees[1]
    keys = tree.keys
    for i in range(0, len(keys), max(1, len(keys) // 150)):
        k = keys[i]
        for reverse in (False, True):
            assert [x for x, _ in scan(tree.pager, tree.root, k, None, reverse)] == tree.expected(
                k, None, reverse
            )
            assert [x for x, _ in scan(tree.pager, tree.root, None, k, reverse)] == tree.expected(
                None, k, reverse
            )
            got = [x for x, _ in scan(tree.pager, tree.root, k, k + b"\x00", reverse)]
            assert got == [k]


def test_empty_ranges(trees: list[Tree]) -> None:
    tree = trees[0]
    for reverse in (False, True):
        assert list(scan(tree.pager, 0, None, None, reverse)) == []
        assert list(scan(tree.pager, tree.root, b"b", b"b", reverse)) == []
        assert list(scan(tree.pager, tree.root, b"b", b"a", reverse)) == []
        assert list(scan(tree.pager, tree.root, b"\xff" * 20, None, reverse)) == []
        assert list(scan(tree.pager, tree.root, None, b"", reverse)) == []
        assert [k for k, _ in scan(tree.pager, tree.root, None, b"\x00", reverse)] == [b""]


def test_positioning_reads_one_page_per_level(tmp_path: Any) -> None:
    calls: list[int] = []

    def counting(buf: bytes, pgno: int) -> Any:
        calls.append(pgno)
        return nodec.decode(buf, pgno)

    pager = new_pager(os.path.join(tmp_path, "d"), decode=counting)
    items = [(b"%06d" % i, b"x" * 20) for i in range(5000)]
    root, depth = build(pager, items)
    assert depth >= 3
    for i in (0, 1, 2499, 4998, 4999):
        k = items[i][0]
        for reverse in (False, True):
            pager.cache.clear()
            calls.clear()
            assert [x for x, _ in scan(pager, root, k, k + b"\x00", reverse)] == [k]
            assert len(calls) == depth, (i, reverse, calls)
            pager.cache.clear()
            calls.clear()
            if reverse:
                it = scan(pager, root, None, k + b"\x00", True)
            else:
                it = scan(pager, root, k, None)
            assert next(it)[0] == k
            assert len(calls) == depth
    # a full scan touches each page once
    pager.cache.clear()
    calls.clear()
    assert sum(1 for _ in scan(pager, root, None, None)) == 5000
    assert len(calls) == len(set(calls))
    pager.close()
    os.close(pager.fd)


# -- merge --------------------------------------------------------------------------------------


@given(
    st.dictionaries(key_st, st.integers(0, 9), max_size=30),
    st.dictionaries(key_st, st.one_of(st.none(), st.integers(10, 19)), max_size=30),
    st.booleans(),
)
def test_merge_matches_a_dict_model(
    base: dict[bytes, int], overlay: dict[bytes, int | None], reverse: bool
) -> None:
    b = sorted(base.items(), reverse=reverse)
    o = sorted(overlay.items(), reverse=reverse)
    model = dict(base)
    for k, v in overlay.items():
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v
    got = list(merge(iter(b), iter(o), reverse))
    assert got == sorted(model.items(), reverse=reverse)


def test_merge_edges() -> None:
    assert list(merge(iter([]), iter([]))) == []
    assert list(merge(iter([(b"a", 1)]), iter([]))) == [(b"a", 1)]
    assert list(merge(iter([]), iter([(b"a", None), (b"b", 2)]))) == [(b"b", 2)]
    assert list(merge(iter([(b"a", 1)]), iter([(b"a", None)]))) == []
    assert list(merge(iter([(b"b", 1), (b"a", 1)]), iter([(b"c", 3), (b"a", 2)]), True)) == [
        (b"c", 3), (b"b", 1), (b"a", 2)
    ]  # fmt: skip


def test_merge_is_lazy() -> None:
    pulled = []

    def base() -> Iterator[tuple[bytes, int]]:
        for i in range(10**9):
            pulled.append(i)
            yield b"%012d" % i, i

    it = merge(base(), iter([(b"000000000001", None)]))
    assert next(it) == (b"%012d" % 0, 0)
    assert next(it) == (b"%012d" % 2, 2)
    assert len(pulled) <= 4


# -- prefix_stop and bounds ---------------------------------------------------------------------


def test_prefix_stop_cases() -> None:
    assert prefix_stop(b"") is None
    assert prefix_stop(b"\xff") is None
    assert prefix_stop(b"\xff\xff\xff") is None
    assert prefix_stop(b"a") == b"b"
    assert prefix_stop(b"ab") == b"ac"
    assert prefix_stop(b"a\xff") == b"b"
    assert prefix_stop(b"a\xff\xff") == b"b"
    assert prefix_stop(b"a\xfe") == b"a\xff"
    assert prefix_stop(b"\x00") == b"\x01"
    assert prefix_stop(b"\x00\xff") == b"\x01"
    assert prefix_stop(b"\xfe\xff") == b"\xff"


@given(key_st, st.lists(key_st, max_size=40))
def test_prefix_stop_is_the_least_upper_bound(prefix: bytes, keys: list[bytes]) -> None:
    stop = prefix_stop(prefix)
    for k in keys + [prefix, prefix + b"\xff\xff", prefix + b"\x00"]:
        if k.startswith(prefix):
            assert stop is None or k < stop
        elif k >= prefix:
            assert stop is not None and k >= stop
    if stop is not None:
        assert not stop.startswith(prefix) and stop > prefix


@given(
    st.one_of(st.none(), key_st),
    st.one_of(st.none(), key_st),
    st.one_of(st.none(), key_st),
    st.lists(key_st, max_size=30),
)
def test_bounds_select_exactly_the_range(
    start: bytes | None, stop: bytes | None, prefix: bytes | None, keys: list[bytes]
) -> None:
    lo, hi = bounds(start, stop, prefix)
    extra = [] if prefix is None else [prefix, prefix + b"\x00", prefix + b"\xff"]
    for k in keys + extra + [b"", b"\xff" * 6]:
        want = (
            (start is None or k >= start)
            and (stop is None or k < stop)
            and (prefix is None or k.startswith(prefix))
        )
        got = (lo is None or k >= lo) and (hi is None or k < hi)
        assert got == want, (k, lo, hi)


def test_bounds_without_prefix_is_identity() -> None:
    assert bounds(None, None, None) == (None, None)
    assert bounds(b"a", b"b", None) == (b"a", b"b")
    assert bounds(b"b", b"a", None) == (b"b", b"a")
    assert bounds(None, None, b"") == (b"", None)
    assert bounds(None, b"q", b"\xff") == (b"\xff", b"q")  # an empty range, start >= stop


# -- through the database ------------------------------------------------------------------------


def test_database_prefix_scans_at_the_edges(db: Any) -> None:
    keys = [b"", b"\x00", b"\x00\xff", b"a", b"a\xff", b"a\xff\x00", b"a\xff\xff", b"b",
            b"\xfe\xff", b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\xff"]  # fmt: skip
    db.put_many((k, b"v" + k) for k in keys)
    db.put_many((b"m%03d" % i, b"x" * 50) for i in range(200))  # make the tree deep
    everything = sorted(list(keys) + [b"m%03d" % i for i in range(200)])
    for prefix in (b"", b"\x00", b"a", b"a\xff", b"a\xff\xff", b"\xff", b"\xff\xff",
                   b"\xff\xff\xff", b"\xff\xff\xff\xff", b"zz", b"m1"):  # fmt: skip
        want = [k for k in everything if k.startswith(prefix)]
        assert list(db.keys(prefix=prefix)) == want, prefix
        assert list(db.keys(prefix=prefix, reverse=True)) == want[::-1], prefix
        for start, stop in ((b"a", None), (None, b"\xff\x00"), (b"\xff", b"\xff\xff")):
            w = [k for k in want if (start is None or k >= start) and (stop is None or k < stop)]
            assert list(db.keys(start, stop, prefix=prefix)) == w
            assert list(db.keys(start, stop, prefix=prefix, reverse=True)) == w[::-1]
    assert [v for _, v in db.items(prefix=b"\xff\xff")] == [b"v\xff\xff", b"v\xff\xff\xff"]
