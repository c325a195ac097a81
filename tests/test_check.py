"""kvmap.check: ``db.check()`` proves invariant 3 and catches damage on disk.

A real database file is damaged in one place (a byte of a leaf, a branch, an overflow run,
the freelist run; an edited page that makes another unreachable, used twice, out of order,
out of bounds; a meta that lies; a truncated file) and ``check()`` or open must raise
``kvmap.CorruptionError`` naming the page, never another exception, and reads must never
return a wrong value.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

import pytest

import kvmap
from kvmap.check import check as check_tree
from kvmap.check import read_freelist
from kvmap.format import DATA_FILE, PAGE_FREELIST, PAGE_OVERFLOW
from kvmap.freelist import Freelist
from kvmap.meta import Meta
from kvmap.node import Node, Ovf, decode, encode, encode_run, run_header, run_pages, run_payload

PS = 512


@dataclass
class Layout:
    """Where everything of a closed database lives."""

    meta: Meta
    model: dict[bytes, bytes]
    leaves: list[tuple[int, Node]] = field(default_factory=list)
    branches: list[tuple[int, Node, int]] = field(default_factory=list)  # (pgno, node, depth)
    runs: list[tuple[int, int, bytes]] = field(default_factory=list)  # (pgno, npages, key)
    freelist_run: tuple[int, int] = (0, 0)
    free: list[int] = field(default_factory=list)
    subtree: dict[int, set[int]] = field(default_factory=dict)  # pages under each tree page

    def used(self) -> set[int]:
        pages = {p for p, _ in self.leaves} | {p for p, _, _ in self.branches}
        for p, n, _ in self.runs:
            pages.update(range(p, p + n))
        p, n = self.freelist_run
        pages.update(range(p, p + n))
        return pages


def layout(path: str) -> Layout:
    db = kvmap.open(path, readonly=True)
    try:
        state = db._state
        assert state is not None
        meta, pager = state.meta, state.pager
        lay = Layout(meta, dict(db.items()))

        def rec(pgno: int, depth: int) -> set[int]:
            node = decode(pager.page(pgno), pgno)
            under = {pgno}
            if node.kids is None:
                lay.leaves.append((pgno, node))
                for k, v in zip(node.keys, node.vals):  # type: ignore[arg-type]
                    if isinstance(v, Ovf):
                        _, length = run_header(pager.page(v.pgno), v.pgno, PAGE_OVERFLOW)
                        n = run_pages(length, PS)
                        lay.runs.append((v.pgno, n, k))
                        under.update(range(v.pgno, v.pgno + n))
            else:
                lay.branches.append((pgno, node, depth))
                for kid in node.kids:
                    under |= rec(kid, depth + 1)
            lay.subtree[pgno] = under
            return under

        if meta.root:
            rec(meta.root, 1)
        if meta.freelist:
            _, length = run_header(pager.page(meta.freelist), meta.freelist, PAGE_FREELIST)
            lay.freelist_run = (meta.freelist, run_pages(length, PS))
        # a readonly handle does not load the freelist (it never allocates): read the run
        lay.free = sorted(read_freelist(pager, meta)[0].pages())
        return lay
    finally:
        db.close()


def make_db(path: str) -> None:
    rng = random.Random(7)
    # checkpoint_size=0: every commit folds into the tree, so the file holds freed pages
    # (pending and reusable) and a freelist run, as the damage tests need
    with kvmap.open(path, page_size=PS, checkpoint_size=0) as db:
        db.put_many((b"key%05d" % i, b"v%d" % i * rng.randrange(1, 12)) for i in range(1500))
        db.put_many((b"big%d" % i, bytes([65 + i]) * (2000 + 700 * i)) for i in range(6))
        with db.begin(write=True) as txn:
            for i in range(0, 1500, 4):
                txn.delete(b"key%05d" % i)
        db.put(b"key00001", b"updated")
        db.check()


@pytest.fixture(scope="module")
def template(tmp_path_factory: Any) -> str:
    path = os.path.join(tmp_path_factory.mktemp("check"), "db")
    make_db(path)
    return path


@pytest.fixture
def path(template: str, tmp_path: Any) -> str:
    p = os.path.join(tmp_path, "db")
    shutil.copytree(template, p)
    return p


@pytest.fixture
def lay(path: str) -> Layout:
    return layout(path)


def data_file(path: str) -> str:
    return os.path.join(path, DATA_FILE)


def read_page(path: str, pgno: int, n: int = 1) -> bytes:
    with open(data_file(path), "rb") as f:
        f.seek(pgno * PS)
        return f.read(n * PS)


def write_at(path: str, offset: int, data: bytes) -> None:
    with open(data_file(path), "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip(path: str, offset: int, mask: int = 0x04) -> None:
    with open(data_file(path), "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def rewrite_meta(path: str, meta: Meta) -> None:
    write_at(path, (meta.txnid % 2) * PS, meta.encode())


def names(pgno: int) -> str:
    return rf"page {pgno}\b"


def check_raises(path: str, pattern: str) -> str:
    """Open (must work) and ``check()`` must raise CorruptionError matching ``pattern``."""
    with kvmap.open(path) as db:
        with pytest.raises(kvmap.CorruptionError) as info:
            db.check()
    msg = str(info.value)
    assert re.search(pattern, msg), msg
    return msg


def reads_are_right_or_raise(path: str, model: dict[bytes, bytes]) -> int:
    """Every read returns the right value or raises CorruptionError.  Returns how many
    raised."""
    raised = 0
    try:
        db = kvmap.open(path, readonly=True)
    except kvmap.CorruptionError:
        return -1
    try:
        for k, v in model.items():
            try:
                got = db.get(k)
            except kvmap.CorruptionError:
                raised += 1
                continue
            assert got == v, k
        try:
            assert dict(db.items()) == model
        except kvmap.CorruptionError:
            raised += 1
    finally:
        db.close()
    return raised


# -- a healthy database ---------------------------------------------------------------------------


def test_template_shape(lay: Layout) -> None:
    assert lay.meta.depth >= 3
    assert len(lay.runs) == 6 and all(n >= 4 for _, n, _ in lay.runs)
    assert lay.freelist_run[0] and lay.free


def test_counts_account_for_every_page(path: str, lay: Layout) -> None:
    with kvmap.open(path) as db:
        counts = db.check()
        stats = db.stats()
    assert counts["leaf"] == len(lay.leaves)
    assert counts["branch"] == len(lay.branches)
    assert counts["overflow"] == sum(n for _, n, _ in lay.runs)
    assert counts["freelist"] == lay.freelist_run[1]
    assert counts["free"] == len(lay.free)
    total = sum(counts[k] for k in ("meta", "branch", "leaf", "overflow", "freelist", "free"))
    assert total == lay.meta.hwm
    assert stats["pages"] == counts and stats["entries"] == len(lay.model)
    assert len(lay.used()) + len(lay.free) + 2 == lay.meta.hwm


def test_an_empty_database_checks(db: Any) -> None:
    counts = db.check()
    assert counts["leaf"] == counts["branch"] == counts["free"] == 0


# -- damaged bytes ------------------------------------------------------------------------------


def test_flipped_byte_in_a_leaf(path: str, lay: Layout) -> None:
    pgno, node = lay.leaves[len(lay.leaves) // 2]
    for off in (0, 8, 40, PS - 1):
        flip(path, pgno * PS + off)
        check_raises(path, names(pgno))
        with kvmap.open(path) as db:
            with pytest.raises(kvmap.CorruptionError, match=names(pgno)):
                db.get(node.keys[0])
            with pytest.raises(kvmap.CorruptionError, match=names(pgno)):
                list(db.items())
            assert db.get(lay.leaves[0][1].keys[0]) is not None  # other leaves still read
        flip(path, pgno * PS + off)
    with kvmap.open(path) as db:
        db.check()


def test_flipped_byte_in_a_branch(path: str, lay: Layout) -> None:
    pgno, node, depth = next(b for b in lay.branches if b[2] == 2)
    flip(path, pgno * PS + 30)
    check_raises(path, names(pgno))
    leaf_under = min(lay.subtree[pgno] & {p for p, _ in lay.leaves})
    key = dict(lay.leaves)[leaf_under].keys[0]
    with kvmap.open(path) as db, pytest.raises(kvmap.CorruptionError, match=names(pgno)):
        db.get(key)


def test_flipped_byte_in_the_root(path: str, lay: Layout) -> None:
    root = lay.meta.root
    flip(path, root * PS + PS - 3)
    check_raises(path, names(root))
    with kvmap.open(path) as db:
        with pytest.raises(kvmap.CorruptionError, match=names(root)):
            db.get(b"key00001")
        with pytest.raises(kvmap.CorruptionError):
            db.put(b"x", b"y")  # a commit must read the root too


@pytest.mark.parametrize("where", ["header", "length", "first", "middle", "last"])
def test_flipped_byte_in_an_overflow_run(path: str, lay: Layout, where: str) -> None:
    first, n, key = max(lay.runs, key=lambda r: r[1])
    off = {"header": 10, "length": 25, "first": 100, "middle": (n // 2) * PS + 7,
           "last": n * PS - 1}[where]  # fmt: skip
    flip(path, first * PS + off, 0x01)
    check_raises(path, names(first))
    with kvmap.open(path) as db:
        with pytest.raises(kvmap.CorruptionError, match=names(first)):
            db.get(key)
        with pytest.raises(kvmap.CorruptionError, match=names(first)):
            dict(db.items())
        assert key in list(db.keys())  # keys alone do not read the run
    assert reads_are_right_or_raise(path, lay.model) >= 1


def test_flipped_byte_in_the_freelist_run(path: str, lay: Layout) -> None:
    fl, n = lay.freelist_run
    for off in (5, 30, 40, n * PS - 1):
        flip(path, fl * PS + off)
        with pytest.raises(kvmap.CorruptionError, match=names(fl)):
            kvmap.open(path)
        # a readonly handle does not load the freelist (it never allocates); its check() reads it
        with kvmap.open(path, readonly=True) as db:
            with pytest.raises(kvmap.CorruptionError, match=names(fl)):
                db.check()
        flip(path, fl * PS + off)
    with kvmap.open(path) as db:
        db.check()


def test_zeroed_pages(path: str, lay: Layout) -> None:
    for pgno in (lay.leaves[3][0], lay.branches[-1][0], lay.runs[0][0]):
        saved = read_page(path, pgno)
        write_at(path, pgno * PS, bytes(PS))
        check_raises(path, names(pgno))
        write_at(path, pgno * PS, saved)


def test_check_reads_the_file_not_the_cache(path: str, lay: Layout) -> None:
    pgno, node = lay.leaves[5]
    with kvmap.open(path) as db:
        assert dict(db.items()) == lay.model  # every page decoded and cached
        flip(path, pgno * PS + 60)
        with pytest.raises(kvmap.CorruptionError, match=names(pgno)):
            db.check()
        with pytest.raises(kvmap.CorruptionError, match=names(pgno)):
            db.stats()
    flip(path, pgno * PS + 60)


def test_random_damage_is_always_detected(path: str, lay: Layout, rng: random.Random) -> None:
    """Flip random bytes of pages the database uses: check() must raise CorruptionError, and
    reads must return the right value or raise CorruptionError, never anything else."""
    used = sorted(lay.used())
    pristine = read_page(path, 0, lay.meta.hwm)
    for _ in range(60):
        pgno = rng.choice(used)
        off = pgno * PS + rng.randrange(PS)
        flip(path, off, 1 << rng.randrange(8))
        try:
            db = kvmap.open(path)
        except kvmap.CorruptionError as exc:
            assert pgno == lay.freelist_run[0] or pgno in range(*_span(lay.freelist_run)), exc
        else:
            try:
                with pytest.raises(kvmap.CorruptionError):
                    db.check()
            finally:
                db.close()
        reads_are_right_or_raise(path, lay.model)
        write_at(path, 0, pristine)


def _span(run: tuple[int, int]) -> tuple[int, int]:
    return run[0], run[0] + run[1]


def test_damage_in_free_pages_is_harmless(path: str, lay: Layout) -> None:
    for pgno in lay.free[:10]:
        flip(path, pgno * PS + 100)
    with kvmap.open(path) as db:
        db.check()
        assert dict(db.items()) == lay.model


# -- edited pages (valid checksums, wrong structure) ----------------------------------------------


def reseal(path: str, node: Node) -> None:
    write_at(path, node.pgno * PS, encode(node, PS))


def test_page_dropped_from_the_freelist_is_reported_unreachable(path: str, lay: Layout) -> None:
    fl, n = lay.freelist_run
    with kvmap.open(path, readonly=True) as db:
        freelist = read_freelist(db._state.pager, db._state.meta)[0]
    victim = sorted(freelist.free)[len(freelist.free) // 2] if freelist.free else None
    if victim is None:
        t = next(iter(freelist.pending))
        victim = freelist.pending[t].pop()
    else:
        freelist.free.remove(victim)
    raw = read_page(path, fl)
    txn, _ = run_header(raw, fl, PAGE_FREELIST)
    run = encode_run(PAGE_FREELIST, fl, txn, freelist.encode(), PS)
    assert len(run) <= n * PS
    write_at(path, fl * PS, run)
    check_raises(path, rf"neither reachable nor free, first page {victim}\b")


def test_subtree_cut_from_a_branch_is_reported_unreachable(path: str, lay: Layout) -> None:
    pgno, node, depth = next(b for b in lay.branches if b[2] == 2)
    cut = node.kids[-1]
    lost = lay.subtree[cut]
    lost_keys = sum(len(n.keys) for p, n in lay.leaves if p in lost)
    node = Node(node.keys[:-1], None, node.kids[:-1], pgno, node.txn)
    reseal(path, node)
    check_raises(path, rf"meta counts {len(lay.model)} entries, the tree holds")
    rewrite_meta(path, lay.meta._replace(entries=lay.meta.entries - lost_keys))
    check_raises(path, rf"neither reachable nor free, first page {min(lost)}\b")


def test_page_used_twice(path: str, lay: Layout) -> None:
    pgno, node, _ = next(b for b in lay.branches if b[2] == 2 and len(b[1].kids) >= 3)
    kids = list(node.kids)
    kids[0] = kids[1]  # child 1 is walked first (in its own bounds), then found again
    reseal(path, Node(node.keys, None, kids, pgno, node.txn))
    check_raises(path, rf"page {kids[1]} is used twice")


def test_cycle_to_the_root(path: str, lay: Layout) -> None:
    pgno, node, _ = next(b for b in lay.branches if b[2] == 2)
    kids = list(node.kids)
    kids[0] = lay.meta.root
    reseal(path, Node(node.keys, None, kids, pgno, node.txn))
    check_raises(path, names(lay.meta.root))


@pytest.mark.parametrize("kid", [0, 1, "hwm", "huge"])
def test_child_outside_the_file(path: str, lay: Layout, kid: Any) -> None:
    pgno, node, _ = lay.branches[-1]
    target = {"hwm": lay.meta.hwm, "huge": 2**63}.get(kid, kid)
    kids = list(node.kids)
    kids[-1] = target
    reseal(path, Node(node.keys, None, kids, pgno, node.txn))
    check_raises(path, names(target))


def test_keys_out_of_order_in_a_leaf(path: str, lay: Layout) -> None:
    pgno, node = lay.leaves[4]
    keys = list(node.keys)
    keys[1], keys[2] = keys[2], keys[1]
    reseal(path, Node(keys, node.vals, None, pgno, node.txn))
    check_raises(path, rf"page {pgno}: keys out of order")


def test_duplicate_key_in_a_leaf(path: str, lay: Layout) -> None:
    pgno, node = lay.leaves[4]
    keys = list(node.keys)
    keys[2] = keys[1]
    reseal(path, Node(keys, node.vals, None, pgno, node.txn))
    check_raises(path, rf"page {pgno}: keys out of order")


def test_key_below_its_parent_bound(path: str, lay: Layout) -> None:
    parent, pnode, _ = next(b for b in lay.branches if b[2] == lay.meta.depth - 1)
    pgno = pnode.kids[1]
    node = dict(lay.leaves)[pgno]
    keys = list(node.keys)
    keys[0] = pnode.keys[1][:-1]  # sorts below the separator that leads here
    reseal(path, Node(keys, node.vals, None, pgno, node.txn))
    check_raises(path, rf"page {pgno}: key .* below its parent's bound")


def test_key_above_its_parent_bound(path: str, lay: Layout) -> None:
    parent, pnode, _ = next(b for b in lay.branches if b[2] == lay.meta.depth - 1)
    pgno = pnode.kids[0]
    node = dict(lay.leaves)[pgno]
    keys = list(node.keys)
    keys[-1] = pnode.keys[1]  # equal to the next child's lower bound
    reseal(path, Node(keys, node.vals, None, pgno, node.txn))
    check_raises(path, rf"page {pgno}: key .* not below its parent's bound")


def test_page_from_the_future(path: str, lay: Layout) -> None:
    pgno, node = lay.leaves[7]
    reseal(path, Node(node.keys, node.vals, None, pgno, lay.meta.txnid + 5))
    check_raises(path, rf"page {pgno}: written by txn")


def test_empty_leaf(path: str, lay: Layout) -> None:
    # a leaf emptied in place, with the meta's count adjusted: still not a valid tree
    pgno, node = lay.leaves[7]
    reseal(path, Node([], [], None, pgno, node.txn))
    rewrite_meta(path, lay.meta._replace(entries=lay.meta.entries - len(node.keys)))
    check_raises(path, names(pgno))


def test_leaf_where_a_branch_belongs(path: str, lay: Layout) -> None:
    pgno, node, _ = next(b for b in lay.branches if b[2] == 2)
    leafno, leaf = lay.leaves[0]
    reseal(path, Node(leaf.keys[:1], leaf.vals[:1], None, pgno, node.txn))  # type: ignore[index]
    check_raises(path, names(pgno))


@pytest.mark.parametrize("target", ["leaf", "hwm", "meta"])
def test_bad_overflow_reference(path: str, lay: Layout, target: str) -> None:
    first, n, key = lay.runs[0]
    pgno, node = next((p, nd) for p, nd in lay.leaves if key in nd.keys)
    ref = {"leaf": lay.leaves[0][0], "hwm": lay.meta.hwm + 2, "meta": 0}[target]
    vals = [Ovf(ref) if k == key else v for k, v in zip(node.keys, node.vals)]  # type: ignore[arg-type]
    reseal(path, Node(node.keys, vals, None, pgno, node.txn))
    check_raises(path, names(ref))
    with kvmap.open(path) as db, pytest.raises(kvmap.CorruptionError, match=names(ref)):
        db.get(key)


def test_two_leaves_sharing_an_overflow_run(path: str, lay: Layout) -> None:
    a, kb = lay.runs[0][0], lay.runs[1][2]
    pgno, node = next((p, nd) for p, nd in lay.leaves if kb in nd.keys)
    vals = [Ovf(a) if k == kb else v for k, v in zip(node.keys, node.vals)]  # type: ignore[arg-type]
    reseal(path, Node(node.keys, vals, None, pgno, node.txn))
    check_raises(path, rf"page {a} is used twice")


# -- meta pages that lie ---------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [1, -1])
def test_wrong_depth_in_the_meta(path: str, lay: Layout, delta: int) -> None:
    rewrite_meta(path, lay.meta._replace(depth=lay.meta.depth + delta))
    msg = check_raises(path, r"page \d+: a (leaf|branch) at depth")
    assert ("leaf" in msg) == (delta == 1)


def test_wrong_entry_count_in_the_meta(path: str, lay: Layout) -> None:
    rewrite_meta(path, lay.meta._replace(entries=lay.meta.entries + 1))
    n = len(lay.model)
    check_raises(path, rf"meta counts {n + 1} entries, the tree holds {n}")


def test_high_water_mark_too_high_leaks_pages(path: str, lay: Layout) -> None:
    rewrite_meta(path, lay.meta._replace(hwm=lay.meta.hwm + 3))
    check_raises(path, rf"3 page\(s\) neither reachable nor free, first page {lay.meta.hwm}\b")


def test_high_water_mark_too_low(path: str, lay: Layout) -> None:
    top = max(lay.used())
    rewrite_meta(path, lay.meta._replace(hwm=top))
    try:
        kvmap.open(path).close()
    except kvmap.CorruptionError:
        return  # the freelist run already names a page beyond it
    check_raises(path, names(top))


def test_freelist_run_past_the_high_water_mark(path: str, lay: Layout) -> None:
    fl, n = lay.freelist_run
    with kvmap.open(path, readonly=True) as db:
        freelist = read_freelist(db._state.pager, db._state.meta)[0]
    freelist.add_reusable(list(range(lay.meta.hwm, lay.meta.hwm + 3)))  # impossible pages
    txn, _ = run_header(read_page(path, fl), fl, PAGE_FREELIST)
    run = encode_run(PAGE_FREELIST, fl, txn, freelist.encode(), PS)
    if len(run) > n * PS:
        pytest.skip("the edited freelist no longer fits its run")
    write_at(path, fl * PS, run)
    with pytest.raises(kvmap.CorruptionError, match="freelist"):
        kvmap.open(path)


# -- truncated files -----------------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["hwm-1", "half", "meta-only", "partial-page"])
def test_truncated_file(path: str, lay: Layout, cut: str) -> None:
    hwm = lay.meta.hwm
    size = {"hwm-1": (hwm - 1) * PS, "half": hwm * PS // 2, "meta-only": 2 * PS,
            "partial-page": hwm * PS - 100}[cut]  # fmt: skip
    os.truncate(data_file(path), size)
    with pytest.raises(kvmap.CorruptionError, match=r"data file is \d+ bytes"):
        kvmap.open(path)
    with pytest.raises(kvmap.CorruptionError):
        kvmap.open(path, readonly=True)


def test_truncated_to_nothing(path: str) -> None:
    os.truncate(data_file(path), 0)
    with pytest.raises(kvmap.CorruptionError):
        kvmap.open(path)


@pytest.mark.parametrize("length", [10 * 2**20, 2**63, "past-hwm"])
def test_overflow_run_running_past_the_file(path: str, lay: Layout, length: Any) -> None:
    """A forged run header whose length runs past the high-water mark or past the mapped
    file: reads raise CorruptionError (never a fault beyond the mapping)."""
    page = lay.free[-1]
    if length == "past-hwm":
        length = (lay.meta.hwm - page + 2) * PS
    header = encode_run(PAGE_OVERFLOW, page, lay.meta.txnid, b"", PS)[:24]
    write_at(path, page * PS, header + length.to_bytes(8, "little"))
    _, _, key = lay.runs[0]
    pgno, node = next((p, nd) for p, nd in lay.leaves if key in nd.keys)
    vals = [Ovf(page) if k == key else v for k, v in zip(node.keys, node.vals)]  # type: ignore[arg-type]
    reseal(path, Node(node.keys, vals, None, pgno, node.txn))
    check_raises(path, rf"{names(page)}|overflow run .* page {lay.meta.hwm} is outside")
    with kvmap.open(path, readonly=True) as db:
        with pytest.raises(kvmap.CorruptionError):
            db.get(key)
        with pytest.raises(kvmap.CorruptionError):
            dict(db.items())


# -- the checker on its own ------------------------------------------------------------------------


def test_check_function_on_a_pager(path: str, lay: Layout) -> None:
    with kvmap.open(path, readonly=True) as db:
        state = db._state
        counts = check_tree(state.pager, state.meta)
        assert counts["leaf"] == len(lay.leaves)
        with pytest.raises(kvmap.CorruptionError, match="meta counts"):
            check_tree(state.pager, state.meta._replace(entries=0, root=state.meta.root))
        fl, n = lay.freelist_run
        run = state.pager.read(fl * PS, n * PS)
        _, length = run_header(run[:PS], fl, PAGE_FREELIST)
        fl_pages = Freelist.decode(run_payload(run, fl, length), state.meta.hwm).pages()
        assert sorted(fl_pages) == lay.free
