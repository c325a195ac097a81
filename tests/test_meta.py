"""kvmap.meta: meta pages 0 and 1 (invariant 2).

Encode/decode round trips, every single-bit flip detected, impossible fields rejected,
``pick()`` choosing the newest valid meta and falling back, and the same on a real database
file.  A checkpoint writes the meta before it deletes the WAL the meta covers, so a damaged
newest meta page makes open fall back to the previous meta while that WAL is still there (a
crash during the checkpoint) and replay the commits from it; once the WAL is gone, open
raises ``CorruptionError`` rather than silently fall back to older data (issue 3).
"""

from __future__ import annotations

import glob
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvmap
from kvmap.errors import CorruptionError
from kvmap.format import (
    FORMAT_VERSION,
    MAGIC,
    META_BODY,
    META_END,
    META_OFFSET,
    PAGE_HEADER,
    PAGE_META,
)
from kvmap.meta import Meta, decode, peek_page_size, pick
from kvmap.node import seal

PAGE_SIZES = [512 << i for i in range(8)]
U64 = 2**64 - 1


def sample(txnid: int = 7, page_size: int = 512, **kw: int) -> Meta:
    fields = dict(root=5, freelist=9, hwm=20, entries=33, depth=2, wal_seq=4, wal_salt=99)
    fields.update(kw)
    return Meta(txnid, page_size, **fields)  # type: ignore[arg-type]


@st.composite
def metas(draw: Any) -> Meta:
    ps = draw(st.sampled_from(PAGE_SIZES))
    txnid = draw(st.integers(0, U64))
    hwm = draw(st.integers(2, U64))
    empty = draw(st.booleans())
    if empty:
        root, depth, entries = 0, 0, 0
    else:
        root = draw(st.integers(2, hwm - 1)) if hwm > 2 else None
        if root is None:
            root, depth, entries = 0, 0, 0
        else:
            depth = draw(st.integers(1, 2**32 - 1))
            entries = draw(st.integers(1, U64))
    freelist = draw(st.one_of(st.just(0), st.integers(2, hwm - 1))) if hwm > 2 else 0
    return Meta(
        txnid, ps, root, freelist, hwm, entries, depth,
        draw(st.integers(0, U64)), draw(st.integers(0, U64)), draw(st.integers(0, 2**32 - 1)),
    )  # fmt: skip


# -- codec --------------------------------------------------------------------------------------


@given(metas())
def test_round_trip(meta: Meta) -> None:
    page = meta.encode()
    assert len(page) == meta.page_size
    assert decode(page, meta.txnid % 2) == meta
    assert peek_page_size(page) == meta.page_size
    assert page[META_END:] == bytes(meta.page_size - META_END)
    _, ptype, _, _, pgno, txnid = PAGE_HEADER.unpack_from(page)
    assert (ptype, pgno, txnid) == (PAGE_META, meta.txnid % 2, meta.txnid)
    magic, version, ps = META_BODY.unpack_from(page, META_OFFSET)[:3]
    assert (magic, version, ps) == (MAGIC, FORMAT_VERSION, meta.page_size)


@pytest.mark.parametrize("txnid", [0, 1, 6, 7])
def test_every_single_bit_flip_is_detected(txnid: int) -> None:
    page = sample(txnid).encode()
    good = decode(page, txnid % 2)
    for bit in range(len(page) * 8):
        bad = bytearray(page)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptionError, match=f"meta page {txnid % 2}"):
            decode(bytes(bad), txnid % 2)
    assert decode(page, txnid % 2) == good


@given(st.binary(min_size=512, max_size=512))
def test_garbage_raises_corruption_only(buf: bytes) -> None:
    with pytest.raises(CorruptionError):
        decode(buf, 0)


def test_wrong_slot_is_rejected() -> None:
    page = sample(txnid=8).encode()
    with pytest.raises(CorruptionError, match="meta page 1"):
        decode(page, 1)
    # a page claiming to be meta 1 for an even txn: a sealed but impossible meta
    bad = bytearray(page)
    PAGE_HEADER.pack_into(bad, 0, 0, PAGE_META, 0, 0, 1, 8)
    with pytest.raises(CorruptionError, match="belongs in meta page 0"):
        decode(seal(bad), 1)


def _resealed(meta: Meta, **body: Any) -> bytes:
    """``meta`` encoded, with body fields overwritten and the checksum fixed."""
    page = bytearray(meta.encode())
    names = ["magic", "version", "page_size", "root", "freelist", "hwm", "entries", "depth",
             "flags", "wal_seq", "wal_salt"]  # fmt: skip
    values = list(META_BODY.unpack_from(page, META_OFFSET))
    for k, v in body.items():
        values[names.index(k)] = v
    META_BODY.pack_into(page, META_OFFSET, *values)
    return seal(page)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(magic=b"NOTKVMAP"), "bad magic"),
        (dict(version=FORMAT_VERSION + 1), "format version"),
        (dict(page_size=1024), "page size"),
        (dict(hwm=1), "inconsistent"),
        (dict(root=20), "inconsistent"),  # root == hwm
        (dict(root=1), "inconsistent"),
        (dict(freelist=25), "inconsistent"),
        (dict(freelist=1), "inconsistent"),
        (dict(root=0), "inconsistent"),  # depth 2 with no root
        (dict(depth=0), "inconsistent"),  # a root with depth 0
        (dict(entries=0), "inconsistent"),  # a root with no entries
    ],
)
def test_impossible_fields_are_rejected(fields: dict[str, Any], message: str) -> None:
    page = _resealed(sample(txnid=7), **fields)
    with pytest.raises(CorruptionError, match=message):
        decode(page, 1)


def test_wrong_page_type_is_rejected() -> None:
    page = bytearray(sample(txnid=3).encode())
    PAGE_HEADER.pack_into(page, 0, 0, PAGE_META + 1, 0, 0, 1, 3)
    with pytest.raises(CorruptionError, match="type"):
        decode(seal(page), 1)


def test_peek_page_size() -> None:
    for ps in PAGE_SIZES:
        assert peek_page_size(sample(page_size=ps).encode()) == ps
    assert peek_page_size(b"") is None
    assert peek_page_size(bytes(4096)) is None
    assert peek_page_size(sample().encode()[: META_END - 1]) is None
    assert peek_page_size(_resealed(sample(), page_size=1000)) is None
    assert peek_page_size(_resealed(sample(), magic=b"XXXXXXXX")) is None


# -- pick ---------------------------------------------------------------------------------------


def test_pick_prefers_the_higher_txn() -> None:
    m6, m7 = sample(6, root=3), sample(7, root=4)
    assert pick(m6.encode(), m7.encode()) == (m7, m6)
    m8 = sample(8, root=5)
    assert pick(m8.encode(), m7.encode()) == (m8, m7)


def test_pick_falls_back_when_the_newest_is_corrupt() -> None:
    m6, m7 = sample(6), sample(7)
    bad7 = bytearray(m7.encode())
    bad7[50] ^= 0x10
    assert pick(m6.encode(), bytes(bad7)) == (m6, None)
    bad6 = bytearray(m6.encode())
    bad6[0] ^= 1
    assert pick(bytes(bad6), m7.encode()) == (m7, None)
    torn = m7.encode()[:48] + bytes(464)  # a torn write
    assert pick(m6.encode(), torn) == (m6, None)


@given(metas(), st.integers(0, 2**63), st.booleans(), st.booleans(), st.integers(0, 4095))
def test_pick_property(meta: Meta, step: int, bad_new: bool, bad_old: bool, bit: int) -> None:
    """Two consecutive metas, either possibly damaged: pick() returns the newest valid one."""
    ps = meta.page_size
    old = meta._replace(txnid=meta.txnid - 1) if meta.txnid else meta._replace(txnid=1)
    new, old = (meta, old) if meta.txnid else (old, meta)
    pages = {new.txnid % 2: new.encode(), old.txnid % 2: old.encode()}
    for m, bad in ((new, bad_new), (old, bad_old)):
        if bad:
            page = bytearray(pages[m.txnid % 2])
            page[(bit // 8) % ps] ^= 1 << (bit % 8)
            pages[m.txnid % 2] = bytes(page)
    if bad_new and bad_old:
        with pytest.raises(CorruptionError):
            pick(pages[0], pages[1])
        return
    got, other = pick(pages[0], pages[1])
    if not bad_new:
        assert got == new and other == (None if bad_old else old)
    else:
        assert got == old and other is None


def test_pick_raises_when_both_are_corrupt() -> None:
    with pytest.raises(CorruptionError) as info:
        pick(bytes(512), b"\xff" * 512)
    msg = str(info.value)
    assert "no valid meta page" in msg and "meta page 0" in msg and "meta page 1" in msg


# -- on disk ------------------------------------------------------------------------------------


def _commit(db: kvmap.Database, c: int, model: dict[bytes, bytes]) -> None:
    with db.begin(write=True) as txn:
        for i in range(c * 10, c * 10 + 40):
            txn.put(b"%04d" % i, b"c%d" % c)
            model[b"%04d" % i] = b"c%d" % c


def _make(path: str, commits: int) -> list[dict[bytes, bytes]]:
    """A database with ``commits`` commits, each checkpointed into the tree on its own (so
    meta N-1 holds the state before the last commit); returns the contents after each."""
    states = []
    model: dict[bytes, bytes] = {}
    with kvmap.open(path, page_size=512, checkpoint_size=0) as db:
        for c in range(commits):
            _commit(db, c, model)
            states.append(dict(model))
    return states


def _wals(path: str) -> dict[str, bytes]:
    out = {}
    for name in glob.glob(os.path.join(path, "kvmap.wal.*")):
        with open(name, "rb") as f:
            out[name] = f.read()
    return out


def _make_with_wal(path: str, commits: int) -> tuple[list[dict[bytes, bytes]], dict[str, bytes]]:
    """Like :func:`_make`, but the last commit reaches the tree through a checkpoint that
    crashed after writing its meta page, before deleting the WAL holding that commit: the
    WAL file is put back.  Returns the states and the restored WAL files."""
    states = _make(path, commits - 1)
    model = dict(states[-1])
    with kvmap.open(path) as db:  # the default checkpoint_size: the commit stays in the WAL
        _commit(db, commits - 1, model)
        states.append(dict(model))
        saved = _wals(path)
        assert any(len(data) > 64 for data in saved.values())  # the frame is in there
    # close() checkpointed: a new meta covers the commit and the old WAL was deleted
    assert set(_wals(path)) != set(saved)
    for name, data in saved.items():
        with open(name, "wb") as f:
            f.write(data)
    return states, saved


def _txnid(path: str) -> int:
    with kvmap.open(path, readonly=True) as db:
        return db._state.meta.txnid  # type: ignore[no-any-return,union-attr]


def _metas(path: str) -> list[Meta]:
    with open(os.path.join(path, "kvmap.data"), "rb") as f:
        raw = f.read(1024)
    return [decode(raw[:512], 0), decode(raw[512:], 1)]


def _poke(path: str, offset: int, data: bytes) -> None:
    with open(os.path.join(path, "kvmap.data"), "r+b") as f:
        f.seek(offset)
        f.write(data)


def _xor(path: str, offset: int, mask: int) -> None:
    with open(os.path.join(path, "kvmap.data"), "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def test_open_falls_back_to_the_previous_commit(db_path: str) -> None:
    states, _ = _make_with_wal(db_path, 5)
    newest = _txnid(db_path)
    _xor(db_path, (newest % 2) * 512 + 60, 0x01)  # one bit of the newest meta (its hwm)
    with kvmap.open(db_path, readonly=True) as db:
        assert db._state.meta.txnid == newest - 1
        assert db._state.meta.entries == len(states[-2])  # the tree before the last commit
        assert dict(db.items()) == states[-1]  # and the WAL replays the last commit
        assert len(db) == len(states[-1])
        db.check()
    with kvmap.open(db_path) as db:  # recovery folds the WAL: rewrites the damaged meta page
        assert db._state.meta.txnid == newest
        assert sorted(m.txnid for m in _metas(db_path)) == [newest - 1, newest]  # both valid
        assert dict(db.items()) == states[-1]
        db.check()
        db.put(b"after", b"fallback")
        db.check()
    with kvmap.open(db_path) as db:
        assert db._state.meta.txnid == newest + 1
        assert db[b"after"] == b"fallback"
        assert len(db) == len(states[-1]) + 1
        db.check()


def test_damaged_newest_meta_after_its_wal_was_deleted_raises(db_path: str) -> None:
    """The older meta lacks commits only the deleted WAL held: never fall back silently."""
    _make(db_path, 5)
    newest = _txnid(db_path)
    _xor(db_path, (newest % 2) * 512 + 60, 0x01)
    for readonly in (True, False):
        with pytest.raises(CorruptionError, match="missing"):
            kvmap.open(db_path, readonly=readonly)


def test_a_damaged_older_meta_is_ignored(db_path: str) -> None:
    states = _make(db_path, 3)
    newest = _txnid(db_path)
    _poke(db_path, ((newest - 1) % 2) * 512, b"\xde\xad\xbe\xef" * 16)
    with kvmap.open(db_path) as db:
        assert dict(db.items()) == states[-1]
        db.check()


def test_both_metas_damaged_raises_on_open(db_path: str) -> None:
    _make(db_path, 2)
    _xor(db_path, 100, 0x80)
    _xor(db_path, 512 + 100, 0x80)
    with pytest.raises(CorruptionError, match="meta"):
        kvmap.open(db_path)
    with pytest.raises(CorruptionError):
        kvmap.open(db_path, readonly=True)


def test_every_damaged_byte_of_the_newest_meta_falls_back(db_path: str, tmp_path: Any) -> None:
    states, wals = _make_with_wal(db_path, 4)
    newest = _txnid(db_path)
    base = (newest % 2) * 512
    data = os.path.join(db_path, "kvmap.data")
    with open(data, "rb") as f:
        pristine = f.read()
    for off in list(range(0, 112)) + [300, 511]:
        with open(data, "r+b") as f:
            f.seek(base + off)
            f.write(bytes([pristine[base + off] ^ 0xFF]))
        with kvmap.open(db_path, readonly=True) as db:  # the WAL is still there
            assert db._state.meta.txnid == newest - 1, off
            assert db._state.meta.entries == len(states[-2]), off
            assert dict(db.items()) == states[-1], off
        for name in wals:  # as after a completed checkpoint: the WAL is gone
            os.rename(name, name + ".away")
        with pytest.raises(CorruptionError, match="missing"):
            kvmap.open(db_path, readonly=True)
        for name in wals:
            os.rename(name + ".away", name)
        with open(data, "r+b") as f:
            f.write(pristine)


@pytest.mark.parametrize("other", [1024, 4096])
def test_meta0_with_a_different_valid_page_size_falls_back_to_meta1(
    db_path: str, other: int
) -> None:
    """One corrupted byte in meta 0's page-size field (512 -> another power of two) must not
    make the database unopenable: meta 1 is intact (invariant 2)."""
    states = _make(db_path, 3)
    if _txnid(db_path) % 2 == 0:  # make meta 1 the newest
        with kvmap.open(db_path) as db:
            db.put(b"odd", b"1")
            states.append(dict(db.items()))
    assert _txnid(db_path) % 2 == 1
    _poke(db_path, 36, other.to_bytes(4, "little"))
    with kvmap.open(db_path) as db:
        assert db.page_size == 512
        assert dict(db.items()) == states[-1]
        db.check()


def test_meta0_zeroed_opens_from_meta1(tmp_path: Any) -> None:
    for ps in (512, 4096, 16384):
        path = os.path.join(tmp_path, f"db{ps}")
        with kvmap.open(path, page_size=ps, checkpoint_size=0) as db:
            db.put(b"a", b"1")  # txn 2 -> meta 0
            db.put(b"b", b"2")  # txn 3 -> meta 1
            assert db._state.meta.txnid == 3
        _poke(path, 0, bytes(ps))
        with kvmap.open(path) as db:
            assert db.page_size == ps
            assert dict(db.items()) == {b"a": b"1", b"b": b"2"}
            db.check()


def test_transaction_n_writes_meta_n_mod_2(db_path: str) -> None:
    with kvmap.open(db_path, page_size=512, checkpoint_size=0) as db:  # a txn per commit
        pager = db._state.pager
        for i in range(6):
            db.put(b"k%d" % i, b"v")
            meta = db._state.meta
            assert decode(pager.page(meta.txnid % 2), meta.txnid % 2) == meta
            other = decode(pager.page(1 - meta.txnid % 2), 1 - meta.txnid % 2)
            assert other.txnid == meta.txnid - 1
            assert other.entries == meta.entries - 1
