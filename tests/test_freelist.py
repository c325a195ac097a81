"""kvmap.freelist: reusable and pending pages (invariant 4), and the persisted freelist run.

Unit tests of :class:`Freelist` against a set model, its codec (round trip, truncation,
garbage), and database-level tests: pages a snapshot can reach are never reused, pages come
back once nobody can reach them, and the freelist run is accounted exactly (invariant 3).
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmap.errors import CorruptionError
from kvmap.format import FREELIST_HEAD
from kvmap.freelist import Freelist


def make(free: list[int] = (), pending: dict[int, list[int]] | None = None) -> Freelist:  # type: ignore[assignment]
    fl = Freelist()
    fl.add_reusable(list(free))
    for t, pages in (pending or {}).items():
        fl.add_pending(t, list(pages))
    return fl


# -- allocation ---------------------------------------------------------------------------------


def test_single_pages_lowest_first() -> None:
    fl = make([9, 3, 7, 2, 30])
    assert fl.free == [30, 9, 7, 3, 2]  # descending
    assert [fl.allocate() for _ in range(5)] == [2, 3, 7, 9, 30]
    assert fl.allocate() is None
    assert fl.allocate(3) is None
    assert len(fl) == 0


def test_contiguous_runs() -> None:
    fl = make([2, 3, 5, 6, 7, 9, 10, 11, 12])
    assert fl.allocate(3) == 5
    assert sorted(fl.free) == [2, 3, 9, 10, 11, 12]
    assert fl.allocate(4) == 9
    assert fl.allocate(3) is None
    assert sorted(fl.free) == [2, 3]  # a failed allocation takes nothing
    assert fl.allocate(2) == 2
    assert fl.free == []


def test_pending_pages_are_not_allocated() -> None:
    fl = make([], {5: [2, 3, 4]})
    assert fl.allocate() is None
    assert fl.allocate(2) is None
    assert len(fl) == 3
    assert sorted(fl.pages()) == [2, 3, 4]


@settings(max_examples=300)
@given(
    st.sets(st.integers(2, 120), max_size=60),
    st.lists(st.integers(1, 6), min_size=1, max_size=20),
)
def test_allocate_matches_a_set_model(free: set[int], requests: list[int]) -> None:
    fl = make(sorted(free))
    model = set(free)
    for n in requests:
        starts = [p for p in sorted(model) if all(p + i in model for i in range(n))]
        got = fl.allocate(n)
        if not starts:
            assert got is None
        else:
            assert got == starts[0]
            model -= set(range(got, got + n))
        assert sorted(fl.free, reverse=True) == fl.free
        assert set(fl.free) == model and len(fl.free) == len(model)


# -- release ------------------------------------------------------------------------------------


def test_release_only_groups_no_snapshot_can_reach() -> None:
    fl = make([50], {3: [10, 11], 5: [12], 7: [13, 14, 15]})
    assert fl.release(2) == 0  # a snapshot of txn 2 may read pages freed by 3, 5, 7
    assert sorted(fl.pending) == [3, 5, 7]
    assert fl.release(5) == 3  # groups 3 and 5: freed at or before the oldest snapshot
    assert sorted(fl.pending) == [7]
    assert fl.free == [50, 12, 11, 10]
    assert fl.allocate() == 10
    assert fl.release(6) == 0
    assert fl.release(None) == 3  # nobody reads: everything
    assert fl.pending == {}
    assert fl.free == [50, 15, 14, 13, 12, 11]
    assert len(fl) == 6


def test_add_pending_merges_groups_and_ignores_empty() -> None:
    fl = Freelist()
    fl.add_pending(4, [])
    assert fl.pending == {}
    fl.add_pending(4, [8])
    fl.add_pending(4, [9])
    assert fl.pending == {4: [8, 9]}
    fl.add_reusable([])
    assert fl.free == []


def test_copy_is_independent() -> None:
    fl = make([2, 3], {4: [5]})
    cp = fl.copy()
    cp.allocate()
    cp.add_pending(4, [6])
    cp.release(None)
    assert fl.free == [3, 2] and fl.pending == {4: [5]}


# -- codec --------------------------------------------------------------------------------------

freelists = st.builds(
    make,
    st.sets(st.integers(2, 2**40), max_size=80).map(sorted),
    st.dictionaries(
        st.integers(0, 2**64 - 1),
        st.sets(st.integers(2, 2**40), min_size=1, max_size=20).map(sorted),
        max_size=8,
    ),
)


@given(freelists)
def test_round_trip(fl: Freelist) -> None:
    payload = fl.encode()
    assert len(payload) == fl.encoded_size()
    back = Freelist.decode(payload, 2**40 + 1)
    assert back.free == fl.free
    assert {t: sorted(g) for t, g in back.pending.items()} == {
        t: sorted(g) for t, g in fl.pending.items()
    }
    assert back.encode() == payload


def test_layout() -> None:
    fl = make([7, 3], {9: [11, 10], 2: [20]})
    payload = fl.encode()
    assert FREELIST_HEAD.unpack_from(payload) == (2, 2)
    q = struct.unpack_from(f"<{len(payload) // 8}Q", payload)
    assert list(q) == [2, 2, 3, 7, 2, 1, 20, 9, 2, 10, 11]


@given(freelists)
def test_every_truncation_raises(fl: Freelist) -> None:
    payload = fl.encode()
    for cut in range(len(payload)):
        with pytest.raises(CorruptionError, match="freelist"):
            Freelist.decode(payload[:cut], 2**41)


def test_pages_outside_the_file_are_rejected() -> None:
    for free, pending in (([1], {}), ([0], {}), ([100], {}), ([], {3: [2, 100]}), ([], {3: [1]})):
        payload = make(free, pending).encode()
        with pytest.raises(CorruptionError, match="outside"):
            Freelist.decode(payload, 100)
    assert Freelist.decode(make([99], {3: [2]}).encode(), 100).pages() == [99, 2]


@given(st.binary(max_size=600))
def test_garbage_raises_corruption_only(payload: bytes) -> None:
    try:
        fl = Freelist.decode(payload, 1000)
    except CorruptionError:
        return
    assert all(2 <= p < 1000 for p in fl.pages())


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=64))
def test_huge_counts_raise_corruption(nfree: int, ngroups: int, rest: bytes) -> None:
    payload = FREELIST_HEAD.pack(nfree, ngroups) + rest
    try:
        Freelist.decode(payload, 2**64 - 1)
    except CorruptionError:
        pass


# -- in a database ------------------------------------------------------------------------------


def test_pages_a_snapshot_reaches_are_not_reused(open_db: Any) -> None:
    db = open_db(cache_size=0, checkpoint_size=0)  # every commit rewrites the tree
    db.put_many((b"%04d" % i, b"old" * 20) for i in range(300))
    snap = db.begin()
    hwms = []
    for r in range(30):
        with db.begin(write=True) as txn:
            for i in range(r % 3, 300, 3):
                txn.put(b"%04d" % i, b"r%02d" % r * 20)
        hwms.append(db._state.meta.hwm)
    # the snapshot still sees every old value (no page it can reach was overwritten)
    assert dict(snap.items()) == {b"%04d" % i: b"old" * 20 for i in range(300)}
    assert all(snap[b"%04d" % i] == b"old" * 20 for i in range(0, 300, 17))
    snap.close()
    # once it is gone, freed pages come back and the file stops growing
    for r in range(30, 60):
        with db.begin(write=True) as txn:
            for i in range(r % 3, 300, 3):
                txn.put(b"%04d" % i, b"r%02d" % r * 20)
        hwms.append(db._state.meta.hwm)
    assert hwms[-1] == hwms[-10], hwms
    assert db.stats()["free_pages"] > 0


def test_pending_groups_survive_reopen(open_db: Any, db_path: str) -> None:
    db = open_db(checkpoint_size=0)  # every commit rewrites the tree
    db.put_many((b"%04d" % i, b"v" * 50) for i in range(200))
    with db.begin(write=True) as txn:
        for i in range(0, 200, 2):
            txn.delete(b"%04d" % i)
    pending = {t: sorted(g) for t, g in db._state.freelist.pending.items()}
    free = list(db._state.freelist.free)
    assert pending
    db.close()
    again = open_db()
    fl = again._state.freelist
    assert {t: sorted(g) for t, g in fl.pending.items()} == pending
    assert fl.free == free
    assert again.stats()["free_pages"] == len(fl)


def test_deleting_everything_frees_every_page(open_db: Any) -> None:
    db = open_db(checkpoint_size=0)  # every commit rewrites the tree
    db.put_many((b"%04d" % i, b"x" * (i % 200)) for i in range(500))
    db.put(b"big", b"B" * 20_000)
    with db.begin(write=True) as txn:
        for k in list(txn.keys()):
            txn.delete(k)
    db.put(b"nudge", b"1")  # releases the pending groups
    db.delete(b"nudge")
    st_ = db.stats()
    assert st_["entries"] == 0 and st_["depth"] == 0
    pages = st_["pages"]
    assert pages["leaf"] == pages["branch"] == pages["overflow"] == 0
    assert st_["free_pages"] + pages["freelist"] + 2 == st_["high_water_mark"]


def test_freelist_run_pages_are_all_accounted(open_db: Any) -> None:
    """Deleting keys one commit at a time makes the freelist run grow and shrink across a
    page boundary; every page must stay reachable or free (invariant 3)."""
    db = open_db(checkpoint_size=0)  # every commit rewrites the tree
    db.put_many((b"%04d" % i, b"x" * 100) for i in range(400))
    for i in range(300):
        db.delete(b"%04d" % i)
        db.check()


def test_random_workload_keeps_pages_accounted(open_db: Any, rng: random.Random) -> None:
    db = open_db(checkpoint_size=0)  # every commit rewrites the tree
    model: dict[bytes, bytes] = {}
    for _ in range(150):
        with db.begin(write=True) as txn:
            for _ in range(rng.randrange(1, 40)):
                k = b"%05d" % rng.randrange(2000)
                if rng.random() < 0.45:
                    if k in model:
                        txn.delete(k)
                        del model[k]
                else:
                    v = bytes([rng.randrange(256)]) * rng.choice([1, 10, 40, 200])
                    txn.put(k, v)
                    model[k] = v
        db.check()
    assert dict(db.items()) == model
