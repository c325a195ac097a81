"""kvmap.btree: lookups, TreeWriter.apply (batched copy-on-write) and Builder (bottom-up).

Most tests drive the tree directly on a tiny-page pager and verify it from the file after
every batch: structure (strict key order, parent bounds, all leaves at one depth), contents
against a dict model, and exact page accounting (every page below the high-water mark is a
tree page, an overflow page, or free, exactly once).  Database-level tests check the same
through ``db.stats()``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmap
from kvmap import node as nodec
from kvmap.btree import MISSING, Builder, TreeWriter, lookup, read_overflow
from kvmap.check import check as check_tree
from kvmap.cursor import scan
from kvmap.errors import CorruptionError
from kvmap.fileio import FileSystem
from kvmap.format import PAGE_OVERFLOW, max_inline_cell, max_key_size
from kvmap.freelist import Freelist
from kvmap.meta import Meta
from kvmap.node import Ovf, run_header, run_pages
from kvmap.pager import Pager

PS = 512
MAXK = max_key_size(PS)
MIN_SIZE = PS // 4


class Store:
    """A tree on a tiny-page file driven through TreeWriter, with no readers (freed pages are
    reusable at once) unless ``keep_old`` holds them back like a snapshot would."""

    def __init__(self, path: str, cache_size: int = 1 << 20) -> None:
        self.fs = FileSystem()
        self.fd = self.fs.open(path, os.O_RDWR | os.O_CREAT)
        self.pager = Pager(self.fs, self.fd, PS, nodec.decode, cache_size)
        self.freelist = Freelist()
        self.root = self.depth = 0
        self.hwm = 2
        self.txnid = 0
        self.entries = 0
        self.last: TreeWriter | None = None

    def close(self) -> None:
        self.pager.close()
        self.fs.close(self.fd)

    def apply(self, ops: dict[bytes, bytes | None], keep_old: bool = False) -> TreeWriter:
        self.txnid += 1
        w = TreeWriter(self.pager, self.freelist, self.txnid, self.hwm)
        keys = sorted(ops)
        self.root, self.depth = w.apply(self.root, self.depth, keys, [ops[k] for k in keys])
        if keep_old:
            self.freelist.add_pending(self.txnid, w.freed)
        else:
            self.freelist.add_reusable(w.freed)
        self.hwm = w.hwm
        self.entries += w.delta
        self.pager.ensure_pages(self.hwm)
        self.pager.write_all(w.encoded_pages())
        for pg, n in w.dirty.items():
            self.pager.remember(pg, n)
        self.last = w
        return w

    def get(self, key: bytes) -> Any:
        v = lookup(self.pager, self.root, key)
        return read_overflow(self.pager, v) if isinstance(v, Ovf) else v

    def verify(self, model: dict[bytes, bytes], root: int | None = None) -> dict[str, int]:
        """Walk the tree from the file (not the cache); assert structure, contents and exact
        page accounting.  Returns page counts."""
        root = self.root if root is None else root
        items, tree_pages, ovf_pages, sizes = walk(self.pager, root, self.depth)
        assert items == sorted(model.items())
        assert self.entries == len(model)
        used = tree_pages + ovf_pages + self.freelist.pages()
        assert len(used) == len(set(used)), "a page is used twice"
        assert sorted(used) == list(range(2, self.hwm)), "pages leaked or out of range"
        for k in list(model)[:50]:
            assert self.get(k) == model[k]
        for k in (b"\xff" * 3 + b"missing", b"missing"):
            if k not in model:
                assert lookup(self.pager, root, k) is MISSING
        return {"tree": len(tree_pages), "overflow": len(ovf_pages), "sizes": sizes}  # type: ignore[dict-item]


Walked = tuple[list[tuple[bytes, bytes]], list[int], list[int], list[tuple[int, int, bool]]]


def walk(pager: Pager, root: int, depth: int) -> Walked:
    items: list[tuple[bytes, bytes]] = []
    tree: list[int] = []
    ovf: list[int] = []
    sizes: list[tuple[int, int, bool]] = []  # (level, size, is_leaf)
    if not root:
        assert depth == 0
        return items, tree, ovf, sizes

    def rec(pgno: int, level: int, lo: bytes | None, hi: bytes | None) -> None:
        n = nodec.decode(pager.page(pgno), pgno)
        tree.append(pgno)
        sizes.append((level, n.size(), n.is_leaf))
        assert n.size() <= PS
        if level == depth:
            assert n.is_leaf, f"page {pgno}: a branch at leaf depth"
            assert n.keys, f"page {pgno}: empty leaf"
            keys = n.keys
        else:
            assert not n.is_leaf, f"page {pgno}: a leaf at depth {level} of {depth}"
            assert n.keys[0] == b""
            keys = n.keys[1:]
        assert all(a < b for a, b in zip(keys, keys[1:])), f"page {pgno}: keys out of order"
        if keys:
            assert lo is None or keys[0] >= lo, f"page {pgno}: below its bound"
            assert hi is None or keys[-1] < hi, f"page {pgno}: above its bound"
        if n.is_leaf:
            for k, v in zip(n.keys, n.vals):  # type: ignore[arg-type]
                if isinstance(v, Ovf):
                    _, length = run_header(pager.page(v.pgno), v.pgno, PAGE_OVERFLOW)
                    ovf.extend(range(v.pgno, v.pgno + run_pages(length, PS)))
                    v = read_overflow(pager, v)
                    assert 4 + len(k) + len(v) > max_inline_cell(PS), "needless overflow"
                else:
                    assert 4 + len(k) + len(v) <= max_inline_cell(PS)
                items.append((k, v))
        else:
            assert n.kids
            for i, kid in enumerate(n.kids):
                rec(kid, level + 1, lo if i == 0 else n.keys[i],
                    n.keys[i + 1] if i + 1 < len(n.kids) else hi)  # fmt: skip

    rec(root, 1, None, None)
    return items, tree, ovf, sizes


@pytest.fixture
def store(tmp_path: Any) -> Any:
    s = Store(os.path.join(tmp_path, "data"))
    yield s
    s.close()


def rand_value(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 8, 30, 80, 118, 119, 120, 200, 1000, 3000])
    return bytes([rng.randrange(256)]) * n


def rand_key(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.05:
        return b""
    if r < 0.1:
        return bytes([rng.randrange(256)]) * MAXK
    return b"%d" % rng.randrange(3000) + bytes([rng.randrange(256)]) * rng.randrange(0, 12)


def apply_model(model: dict[bytes, bytes], ops: dict[bytes, bytes | None]) -> None:
    for k, v in ops.items():
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v


# -- lookups ------------------------------------------------------------------------------------


def test_lookup_on_an_empty_tree(store: Store) -> None:
    assert lookup(store.pager, 0, b"x") is MISSING
    store.verify({})


def test_apply_with_no_ops_changes_nothing(store: Store) -> None:
    store.apply({b"a": b"1"})
    root = store.root
    w = store.apply({})
    assert store.root == root and not w.dirty and not w.freed and not w.runs


def test_deleting_missing_keys_changes_nothing(store: Store) -> None:
    assert store.apply({b"a": None}).dirty == {}
    assert store.root == 0 and store.depth == 0
    model = {b"%04d" % i: b"v" * 20 for i in range(300)}
    store.apply(dict(model))  # type: ignore[arg-type]
    root, hwm = store.root, store.hwm
    w = store.apply({b"zzz": None, b"": None, b"0000x": None})
    assert (store.root, store.hwm) == (root, hwm)
    assert not w.dirty and not w.freed and w.delta == 0
    store.verify(model)


# -- random batches against a dict model ----------------------------------------------------------


def test_random_batches_match_a_dict_model(store: Store, rng: random.Random) -> None:
    model: dict[bytes, bytes] = {}
    max_depth = 0
    for rnd in range(120):
        ops: dict[bytes, bytes | None] = {}
        for _ in range(rng.choice([1, 2, 10, 60, 200])):
            if model and rng.random() < (0.2 if rnd < 60 else 0.6):
                ops[rng.choice(list(model))] = None
            else:
                ops[rand_key(rng)] = rand_value(rng)
        before = len(model)
        w = store.apply(ops)
        apply_model(model, ops)
        assert w.delta == len(model) - before
        store.verify(model)
        max_depth = max(max_depth, store.depth)
    assert max_depth >= 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.binary(max_size=6),
            st.one_of(st.none(), st.binary(max_size=10).map(lambda b: b * 25)),
            max_size=40,
        ),
        max_size=8,
    )
)
def test_batches_hypothesis(
    tmp_path_factory: Any, batches: list[dict[bytes, bytes | None]]
) -> None:
    s = Store(os.path.join(tmp_path_factory.mktemp("h"), "data"))
    try:
        model: dict[bytes, bytes] = {}
        for ops in batches:
            s.apply(ops)
            apply_model(model, ops)
            s.verify(model)
    finally:
        s.close()


# -- shape -------------------------------------------------------------------------------------


def test_depth_grows_and_shrinks_to_an_empty_tree(store: Store, rng: random.Random) -> None:
    model: dict[bytes, bytes] = {}
    depths = []
    for b in range(30):
        ops: dict[bytes, bytes | None] = {b"%06d" % (b * 100 + i): b"v" * 40 for i in range(100)}
        store.apply(ops)
        apply_model(model, ops)
        depths.append(store.depth)
    assert depths == sorted(depths) and depths[-1] >= 3
    store.verify(model)
    keys = list(model)
    rng.shuffle(keys)
    while keys:
        batch, keys = keys[:150], keys[150:]
        d = store.depth
        store.apply(dict.fromkeys(batch))
        for k in batch:
            del model[k]
        assert store.depth <= d
        store.verify(model)
    assert (store.root, store.depth, store.entries) == (0, 0, 0)
    assert sorted(store.freelist.free) == list(range(2, store.hwm))


def test_root_leaf_then_split(store: Store) -> None:
    store.apply({b"a": b"1"})
    assert store.depth == 1
    model = {b"a": b"1"}
    i = 0
    while store.depth == 1:
        i += 1
        store.apply({b"k%03d" % i: b"x" * 30})
        model[b"k%03d" % i] = b"x" * 30
    assert store.depth == 2
    store.verify(model)
    node = store.pager.node(store.root)
    assert len(node.kids) == 2


def test_a_single_update_copies_one_path(store: Store) -> None:
    model = {b"%05d" % i: b"v" * 30 for i in range(3000)}
    store.apply(dict(model))  # type: ignore[arg-type]
    assert store.depth >= 3
    for k in (b"00000", b"01500", b"02999"):
        w = store.apply({k: b"w" * 30})
        model[k] = b"w" * 30
        assert len(w.dirty) == store.depth  # one new page per level
        assert len(w.freed) == store.depth  # and the old path freed
        store.verify(model)


def test_copy_on_write_keeps_the_old_tree_intact(store: Store, rng: random.Random) -> None:
    model = {b"%05d" % i: b"a" * 25 for i in range(1500)}
    model[b"big"] = b"B" * 5000
    store.apply(dict(model))  # type: ignore[arg-type]
    old_root, old_depth, old = store.root, store.depth, dict(model)
    ops: dict[bytes, bytes | None] = {}
    for k in rng.sample(sorted(model), 600):
        ops[k] = None if rng.random() < 0.5 else b"c" * rng.choice([5, 300])
    ops[b"big"] = b"N" * 6000
    for i in range(300):
        ops[b"new%03d" % i] = b"n"
    store.apply(ops, keep_old=True)  # freed pages stay pending, like under a snapshot
    apply_model(model, ops)
    items = [(k, read_overflow(store.pager, v) if isinstance(v, Ovf) else v)
             for k, v in scan(store.pager, old_root, None, None)]  # fmt: skip
    assert items == sorted(old.items())
    assert walk(store.pager, old_root, old_depth)[0] == sorted(old.items())
    store.freelist.release(None)
    store.verify(model)


def test_bulk_append_fills_pages(store: Store) -> None:
    model = {b"%06d" % i: b"v" * 20 for i in range(4000)}
    store.apply(dict(model))  # type: ignore[arg-type]
    sizes = store.verify(model)["sizes"]
    leaves = [s for _, s, leaf in sizes if leaf]
    cell = 4 + 6 + 20
    assert sum(1 for s in leaves if s + cell <= PS) <= 2  # only the last can take another cell


def test_sequential_appends_in_many_batches(store: Store) -> None:
    model: dict[bytes, bytes] = {}
    for b in range(60):
        ops: dict[bytes, bytes | None] = {b"%06d" % (b * 37 + i): b"v" * 20 for i in range(37)}
        store.apply(ops)
        apply_model(model, ops)
    counts = store.verify(model)
    usable_bytes = len(model) * (4 + 6 + 20)
    assert counts["tree"] <= 2 * usable_bytes // (PS - 24) + 10


def test_underfull_pages_merge_after_mass_deletes(store: Store, rng: random.Random) -> None:
    model = {b"%05d" % i: bytes([i % 256]) * rng.randrange(5, 60) for i in range(4000)}
    store.apply(dict(model))  # type: ignore[arg-type]
    keys = sorted(model)
    rng.shuffle(keys)
    doomed = keys[: int(len(keys) * 0.95)]
    for i in range(0, len(doomed), 200):
        batch = doomed[i : i + 200]
        store.apply(dict.fromkeys(batch))
        for k in batch:
            del model[k]
    counts = store.verify(model)
    sizes = counts["sizes"]
    leaves = [s for _, s, leaf in sizes if leaf]
    small = [s for s in leaves if s < MIN_SIZE]
    assert len(small) <= 1, small
    live = sum(4 + len(k) + len(v) for k, v in model.items())
    assert len(leaves) <= live // (MIN_SIZE - 24) + 1


def test_wrong_depth_raises_corruption(store: Store) -> None:
    store.apply({b"%04d" % i: b"v" * 30 for i in range(500)})
    assert store.depth >= 2
    w = TreeWriter(store.pager, store.freelist, 99, store.hwm)
    with pytest.raises(CorruptionError, match="needs a leaf"):
        w.apply(store.root, store.depth - 1, [b"0001"], [b"x"])
    w = TreeWriter(store.pager, store.freelist, 99, store.hwm)
    with pytest.raises(CorruptionError, match="needs a branch"):
        w.apply(store.root, store.depth + 1, [b"0001"], [b"x"])


# -- overflow values ---------------------------------------------------------------------------


def test_overflow_threshold(store: Store) -> None:
    cell = max_inline_cell(PS)
    model = {b"k": b"x" * (cell - 5), b"l": b"y" * (cell - 4)}
    store.apply(dict(model))  # type: ignore[arg-type]
    leaf = store.pager.node(store.root)
    assert leaf.vals[0] == model[b"k"]
    assert isinstance(leaf.vals[1], Ovf)
    store.verify(model)


def test_replaced_and_deleted_overflow_values_free_their_runs(store: Store) -> None:
    model = {b"a": b"A" * 3000, b"b": b"B" * 10_000, b"c": b"c"}
    store.apply(dict(model))  # type: ignore[arg-type]
    assert store.verify(model)["overflow"] == run_pages(3000, PS) + run_pages(10_000, PS)
    hwms = []
    for i in range(20):
        ops: dict[bytes, bytes | None] = {b"b": bytes([i]) * 10_000, b"a": b"small%d" % i}
        if i % 2:
            ops[b"a"] = bytes([i]) * 2000
        store.apply(ops)
        apply_model(model, ops)
        store.verify(model)
        hwms.append(store.hwm)
    assert hwms[-1] == hwms[5]  # freed runs are reused: the file stops growing
    store.apply({b"a": None, b"b": None})
    del model[b"a"], model[b"b"]
    assert store.verify(model)["overflow"] == 0


def test_max_size_keys_with_overflow_values(store: Store, rng: random.Random) -> None:
    model: dict[bytes, bytes] = {}
    for r in range(6):
        ops: dict[bytes, bytes | None] = {}
        for _ in range(60):
            k = (b"%03d" % rng.randrange(400)) * (MAXK // 3) + b"k" * (MAXK % 3)
            assert len(k) == MAXK
            ops[k] = bytes([r]) * rng.choice([1, 200, 700])
        if model:
            for k in rng.sample(sorted(model), min(20, len(model))):
                ops[k] = None
        store.apply(ops)
        apply_model(model, ops)
        store.verify(model)
    assert store.depth >= 3


# -- Builder ---------------------------------------------------------------------------------------


def build(store: Store, items: list[tuple[bytes, bytes]]) -> Builder:
    pages: list[tuple[int, bytes]] = []

    def alloc(n: int) -> int:
        store.hwm += n
        return store.hwm - n

    b = Builder(PS, 1, alloc, lambda p, data: pages.append((p, data)))
    b.add_all(items)
    store.root, store.depth, store.entries = b.finish()
    store.txnid = 1
    store.pager.ensure_pages(store.hwm)
    store.pager.write_all(pages)
    assert sorted(p for p, _ in pages) == [p for p, _ in pages]  # emitted in page order
    return b


def test_builder_empty_and_single(store: Store) -> None:
    b = Builder(PS, 1, lambda n: 2, lambda p, d: None)
    assert b.finish() == (0, 0, 0)
    build(store, [(b"", b"")])
    assert store.depth == 1 and store.entries == 1
    store.verify({b"": b""})


def test_builder_rejects_unordered_keys() -> None:
    b = Builder(PS, 1, lambda n: 2, lambda p, d: None)
    b.add(b"b", b"1")
    with pytest.raises(ValueError, match="ascending"):
        b.add(b"b", b"2")
    with pytest.raises(ValueError, match="ascending"):
        b.add(b"a", b"2")


@pytest.mark.parametrize("n", [2, 17, 100, 1000, 5000])
def test_builder_makes_a_valid_dense_tree(store: Store, rng: random.Random, n: int) -> None:
    keys = sorted({rand_key(rng) for _ in range(n)})
    model = {k: rand_value(rng) for k in keys}
    build(store, sorted(model.items()))
    counts = store.verify(model)
    assert not store.freelist.pages()
    meta = Meta(1, PS, store.root, 0, store.hwm, len(model), store.depth)
    got = check_tree(store.pager, meta)
    assert got["leaf"] + got["branch"] == counts["tree"]
    assert got["overflow"] == counts["overflow"]
    # every leaf but the last is full: the next key's cell would not have fitted
    leaves = [s for _, s, leaf in counts["sizes"] if leaf]
    assert all(s > PS - max_inline_cell(PS) for s in leaves[:-1])


def test_builder_with_max_size_keys_and_overflow_values(store: Store) -> None:
    model = {bytes([i]) * MAXK: bytes([i]) * (300 + i) for i in range(1, 200)}
    build(store, sorted(model.items()))
    store.verify(model)
    assert store.depth >= 4


def test_writer_updates_a_built_tree(store: Store, rng: random.Random) -> None:
    model = {b"%05d" % i: b"v" * rng.randrange(0, 90) for i in range(3000)}
    build(store, sorted(model.items()))
    for _ in range(15):
        ops: dict[bytes, bytes | None] = {}
        for _ in range(150):
            k = b"%05d" % rng.randrange(3500)
            ops[k] = None if rng.random() < 0.5 else rand_value(rng)
        store.apply(ops)
        apply_model(model, ops)
        store.verify(model)


# -- through the database ------------------------------------------------------------------------


def test_database_mass_delete_merges_pages(open_db: Any, rng: random.Random) -> None:
    db = open_db(checkpoint_size=0)  # every commit folds into the tree
    model = {b"%05d" % i: b"v" * rng.randrange(10, 60) for i in range(3000)}
    db.put_many(model.items())
    before = db.stats()["pages"]
    keys = sorted(model)
    rng.shuffle(keys)
    for i in range(0, 2850, 300):
        with db.begin(write=True) as txn:
            for k in keys[i : min(i + 300, 2850)]:
                txn.delete(k)
                del model[k]
    st_ = db.stats()
    after = st_["pages"]
    live = sum(4 + len(k) + len(v) for k, v in model.items())
    assert after["leaf"] <= live // (MIN_SIZE - 24) + 1 < before["leaf"] // 4
    assert st_["entries"] == len(model) == 150
    assert st_["free_pages"] > before["leaf"] // 2
    assert dict(db.items()) == model


def test_database_overwriting_a_large_value_stops_growing(open_db: Any, db_path: str) -> None:
    db = open_db(sync="full", checkpoint_size=0)  # every commit rewrites the tree
    sizes = []
    for i in range(40):
        db.put(b"large", bytes([i]) * 50_000)
        db.put(b"small%d" % (i % 5), b"s" * 40)
        sizes.append((os.path.getsize(os.path.join(db_path, "kvmap.data")),
                      db._state.meta.hwm))  # fmt: skip
    assert sizes[-1] == sizes[20], sizes
    st_ = db.stats()
    assert st_["pages"]["overflow"] == run_pages(50_000, PS)
    assert db[b"large"] == bytes([39]) * 50_000
    db.delete(b"large")
    db.put(b"x", b"y")
    assert db.stats()["pages"]["overflow"] == 0


def test_database_max_key_size(open_db: Any) -> None:
    db = open_db(checkpoint_size=0)
    assert db.max_key_size == MAXK
    k = b"\xfe" * MAXK
    db[k] = b"v" * 5000
    db[b"\x00" * MAXK] = b""
    assert db[k] == b"v" * 5000
    with pytest.raises(kvmap.KeyTooLargeError):
        db[k + b"k"] = b"v"
    db.put_many((bytes([i]) * MAXK, bytes([i]) * 900) for i in range(1, 120))
    assert len(db) == 121
    assert db.stats()["depth"] >= 3


def test_database_compact_builds_a_valid_smaller_tree(open_db: Any, rng: random.Random) -> None:
    db = open_db(checkpoint_size=0)  # the deletes reach the tree, leaving free pages
    model = {b"%05d" % i: rand_value(rng) for i in range(2000)}
    db.put_many(model.items())
    with db.begin(write=True) as txn:
        for k in rng.sample(sorted(model), 1500):
            txn.delete(k)
            del model[k]
    before = db.stats()
    saved = db.compact()
    after = db.stats()
    assert saved >= 0 and after["file_size"] <= before["file_size"]
    assert after["free_pages"] == 0
    assert after["high_water_mark"] < before["high_water_mark"]
    assert after["pages"]["leaf"] <= before["pages"]["leaf"]
    assert dict(db.items()) == model
    db.put_many((b"after%d" % i, b"x" * i) for i in range(300))
    model.update((b"after%d" % i, b"x" * i) for i in range(300))
    assert dict(db.items()) == model


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
def test_database_other_page_sizes(open_db: Any, rng: random.Random, page_size: int) -> None:
    db = open_db(page_size=page_size, sync="off", checkpoint_size=0)
    mk = db.max_key_size
    assert mk == max_key_size(page_size)
    model: dict[bytes, bytes] = {}
    for _ in range(25):
        with db.begin(write=True) as txn:
            for _ in range(rng.randrange(1, 300)):
                if rng.random() < 0.05:
                    k = bytes([rng.randrange(256)]) * mk
                else:
                    k = b"%06d" % rng.randrange(5000)
                if rng.random() < 0.35:
                    if k in model:
                        txn.delete(k)
                        del model[k]
                else:
                    n = rng.choice([0, 10, 200, page_size // 4, page_size, 3 * page_size])
                    model[k] = bytes([rng.randrange(256)]) * n
                    txn.put(k, model[k])
    db.check()
    assert dict(db.items()) == model
    assert db.stats()["depth"] >= 2


def _leaf_bounds_by_cell(sizes: list[int], usable: int, target: int) -> list[int]:
    """The per-cell loop that btree._leaf_bounds replaced, as a reference."""
    bounds, acc, last = [0], 0, len(sizes) - 1
    for i, s in enumerate(sizes):
        if acc + s > usable:
            bounds.append(i)
            acc = s
        else:
            acc += s
        if acc >= target and i < last:
            bounds.append(i + 1)
            acc = 0
    bounds.append(len(sizes))
    return bounds


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(st.tuples(st.integers(1, 40), st.integers(0, 200)), min_size=1, max_size=200),
        # one cell size throughout: the fixed-size fast path
        st.builds(
            lambda cell, n: [cell] * n,
            st.tuples(st.integers(1, 40), st.integers(0, 200)),
            st.integers(1, 200),
        ),
    ),  # fmt: skip
    st.integers(0, 400),
    st.booleans(),
)
def test_leaf_bounds_match_the_per_cell_loop(
    cells: list[tuple[int, int]], slack: int, appending: bool
) -> None:
    from kvmap.btree import _leaf_bounds
    from kvmap.format import LEAF_CELL_OVERHEAD

    keys = [b"k" * k for k, _ in cells]
    vals = [b"v" * v for _, v in cells]
    sizes = [LEAF_CELL_OVERHEAD + k + v for k, v in cells]
    usable = max(sizes) + slack
    total = sum(sizes)
    target = usable if appending else -(-total // -(-total // usable))
    got = _leaf_bounds(keys, vals, usable, target)
    assert got == _leaf_bounds_by_cell(sizes, usable, target)
    for a, b in zip(got, got[1:]):
        assert a < b and sum(sizes[a:b]) <= usable
