"""kvmap.db: the Database handle.  The mapping protocol, autocommit get/put/delete, scans,
accepted key and value types, sizes, page sizes, reopen, compact, stats, check, and threads.

Every test that writes is checked at teardown by the ``db``/``open_db`` fixtures.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import kvmap

OpenDB = Callable[..., kvmap.Database]
PAGE_SIZES = [512 << i for i in range(8)]  # 512 .. 65536


def data_size(db: kvmap.Database) -> int:
    return os.path.getsize(os.path.join(db.path, "kvmap.data"))


def expected_range(
    model: dict[bytes, bytes],
    start: bytes | None = None,
    stop: bytes | None = None,
    prefix: bytes | None = None,
    reverse: bool = False,
) -> list[tuple[bytes, bytes]]:
    out = [
        (k, model[k])
        for k in sorted(model)
        if (start is None or k >= start)
        and (stop is None or k < stop)
        and (prefix is None or k.startswith(prefix))
    ]
    return out[::-1] if reverse else out


def pattern(n: int, salt: int = 0) -> bytes:
    """``n`` bytes whose period (251, a prime) never lines up with a page boundary."""
    block = bytes((i + salt) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


# -- the mapping protocol --------------------------------------------------------------------


def test_mapping_protocol(db: kvmap.Database) -> None:
    assert len(db) == 0
    assert b"a" not in db
    db[b"a"] = b"1"
    db[b"b"] = b"2"
    assert db[b"a"] == b"1"
    assert db[b"b"] == b"2"
    assert b"a" in db and b"c" not in db
    assert len(db) == 2
    db[b"a"] = b"one"  # replace
    assert db[b"a"] == b"one"
    assert len(db) == 2
    del db[b"a"]
    assert b"a" not in db
    assert len(db) == 1
    with pytest.raises(KeyError) as info:
        db[b"a"]
    assert info.value.args == (b"a",)
    with pytest.raises(KeyError) as info:
        del db[b"a"]
    assert info.value.args == (b"a",)
    assert len(db) == 1
    assert list(db) == [b"b"]


def test_get_put_delete_autocommit(db: kvmap.Database) -> None:
    assert db.get(b"k") is None
    assert db.get(b"k", b"dflt") == b"dflt"
    sentinel = object()
    assert db.get(b"k", sentinel) is sentinel
    assert db.put(b"k", b"v") is None
    assert db.get(b"k") == b"v"
    assert db.delete(b"k") is True
    assert db.delete(b"k") is False
    assert db.get(b"k") is None
    # each autocommit is visible to a fresh snapshot immediately
    db.put(b"x", b"y")
    with db.begin() as snap:
        assert snap.get(b"x") == b"y"


def test_autocommit_is_durable_across_reopen(open_db: OpenDB) -> None:
    db = open_db()
    db.put(b"a", b"1")
    db[b"b"] = b"2"
    db.put(b"c", b"3")
    db.delete(b"c")
    db.close()
    db = open_db()
    assert dict(db.items()) == {b"a": b"1", b"b": b"2"}


def test_iteration_is_in_key_order(db: kvmap.Database, rng: random.Random) -> None:
    keys = {rng.randbytes(rng.randrange(0, 12)) for _ in range(600)}
    order = list(keys)
    rng.shuffle(order)
    for chunk in range(0, len(order), 50):
        with db.begin(write=True) as txn:
            for k in order[chunk : chunk + 50]:
                txn.put(k, k[::-1])
    assert list(db) == sorted(keys)
    assert list(iter(db)) == sorted(keys)
    assert len(db) == len(keys)


def test_put_many(db: kvmap.Database, rng: random.Random) -> None:
    items = [(b"k%04d" % i, b"v%d" % i) for i in range(500)]
    rng.shuffle(items)
    before = db.stats()["commit_seq"]
    db.put_many(items)
    assert db.stats()["commit_seq"] == before + 1  # one commit
    assert list(db.items()) == sorted(items)
    # a generator works too, and later pairs win over earlier ones
    db.put_many((k, b"again") for k in [b"k0000", b"k0000", b"new"])
    assert db[b"k0000"] == b"again"
    assert db[b"new"] == b"again"
    assert len(db) == 501


def test_put_many_is_atomic_on_bad_item(db: kvmap.Database) -> None:
    db.put(b"keep", b"1")
    with pytest.raises(TypeError, match="str"):
        db.put_many([(b"a", b"1"), (b"b", "two")])  # type: ignore[list-item]
    assert list(db.items()) == [(b"keep", b"1")]


# -- scans -----------------------------------------------------------------------------------


def _scan_model(rng: random.Random) -> dict[bytes, bytes]:
    alphabet = [b"", b"a", b"ab", b"b", b"\x00", b"\xff", b"user:", b"user;", b"z\xff"]
    model: dict[bytes, bytes] = {}
    for _ in range(700):
        k = rng.choice(alphabet) + rng.randbytes(rng.randrange(0, 4))
        model[k] = rng.randbytes(rng.choice([0, 1, 10, 60, 300]))
    model[b""] = b"empty key"
    model[b"\xff\xff"] = b"ff"
    return model


SCAN_BOUNDS: list[dict[str, bytes | None]] = [
    {},
    {"start": b"a"},
    {"stop": b"b"},
    {"start": b"a", "stop": b"b"},
    {"start": b"ab", "stop": b"ab"},  # empty range
    {"start": b"b", "stop": b"a"},  # inverted range: empty
    {"start": b""},
    {"stop": b""},  # nothing is below the empty key
    {"prefix": b""},
    {"prefix": b"a"},
    {"prefix": b"user:"},
    {"prefix": b"\xff"},
    {"prefix": b"\xff\xff"},
    {"prefix": b"z\xff"},
    {"prefix": b"nothing-here"},
    {"prefix": b"a", "start": b"ab"},
    {"prefix": b"a", "stop": b"ab"},
    {"prefix": b"a", "start": b"0", "stop": b"zz"},
    {"prefix": b"ab", "start": b"b"},  # start beyond the prefix: empty
]


@pytest.mark.parametrize("reverse", [False, True])
def test_db_scans_match_model(db: kvmap.Database, rng: random.Random, reverse: bool) -> None:
    model = _scan_model(rng)
    db.put_many(model.items())
    db.checkpoint()  # the model is in the tree; then rewrite and delete some keys in the WAL
    with db.begin(write=True) as txn:
        for k in rng.sample(sorted(model), len(model) // 4):
            if rng.random() < 0.5:
                txn.delete(k)
                del model[k]
            else:
                model[k] = b"new" + k
                txn.put(k, model[k])
        for _ in range(len(model) // 8):
            k = rng.randbytes(rng.randrange(1, 4))
            model[k] = b"added"
            txn.put(k, b"added")
    assert db.stats()["memtable_keys"] > 0 and db.stats()["entries"] == len(model)
    for kw in SCAN_BOUNDS:
        want = expected_range(model, reverse=reverse, **kw)
        assert list(db.items(**kw, reverse=reverse)) == want, kw
        assert list(db.keys(**kw, reverse=reverse)) == [k for k, _ in want], kw
        assert list(db.values(**kw, reverse=reverse)) == [v for _, v in want], kw
    # positional start and stop
    assert list(db.items(b"a", b"b")) == expected_range(model, b"a", b"b")
    # random bounds
    keys = sorted(model)
    for _ in range(100):
        start = rng.choice([None, rng.choice(keys), rng.randbytes(2)])
        stop = rng.choice([None, rng.choice(keys), rng.randbytes(2)])
        prefix = rng.choice([None, rng.choice(keys)[:2]])
        want = expected_range(model, start, stop, prefix, reverse)
        assert list(db.items(start, stop, prefix=prefix, reverse=reverse)) == want


def test_scan_bounds_accept_buffers(db: kvmap.Database) -> None:
    db.put_many((b"k%d" % i, b"") for i in range(10))
    want = [b"k3", b"k4", b"k5"]
    assert list(db.keys(bytearray(b"k3"), memoryview(b"k6"))) == want
    assert list(db.keys(prefix=bytearray(b"k1"))) == [b"k1"]
    assert list(db.keys(prefix=memoryview(b"k9"))) == [b"k9"]


def test_scan_is_lazy_and_sees_one_snapshot(db: kvmap.Database) -> None:
    db.put_many((b"%03d" % i, b"old") for i in range(300))
    it = db.items()
    first = next(it)
    assert first == (b"000", b"old")
    db.put_many((b"%03d" % i, b"new") for i in range(300))
    db.put(b"999", b"added later")
    rest = list(it)
    assert len(rest) == 299
    assert all(v == b"old" for _, v in rest)
    assert list(db.values()).count(b"new") == 300


def test_abandoned_scan_does_not_pin_pages_forever(open_db: OpenDB) -> None:
    db = open_db(checkpoint_size=0)  # every commit rewrites the tree, freeing pages
    db.put_many((b"%04d" % i, b"x" * 40) for i in range(400))
    it = db.items()
    next(it)
    del it  # the generator closes its snapshot
    for _ in range(5):
        db.put_many((b"%04d" % i, b"y" * 40) for i in range(400))
    assert db.stats()["free_pages"] > 0
    size = data_size(db)
    for _ in range(10):
        db.put_many((b"%04d" % i, b"z" * 40) for i in range(400))
    assert data_size(db) == size  # rewrites reuse freed pages instead of growing


# -- accepted types --------------------------------------------------------------------------


def test_keys_and_values_accept_buffers(db: kvmap.Database) -> None:
    db[bytearray(b"ba")] = bytearray(b"bytearray value")
    db.put(memoryview(b"mv"), memoryview(b"memoryview value"))
    db.put(b"slice", memoryview(b"xxSLICEyy")[2:7])
    assert db[b"ba"] == b"bytearray value"
    assert db[bytearray(b"ba")] == b"bytearray value"
    assert db.get(memoryview(b"mv")) == b"memoryview value"
    assert db[b"slice"] == b"SLICE"
    assert memoryview(b"mv") in db
    assert type(db[b"ba"]) is bytes
    assert all(type(k) is bytes and type(v) is bytes for k, v in db.items())
    assert db.delete(bytearray(b"ba")) is True
    del db[memoryview(b"mv")]
    assert list(db) == [b"slice"]


def test_mutating_a_buffer_after_put_does_not_change_the_stored_value(
    db: kvmap.Database,
) -> None:
    key = bytearray(b"key")
    value = bytearray(b"value")
    db.put(key, value)
    value[:] = b"CHANGED"
    key[:] = b"KEY"
    assert db[b"key"] == b"value"
    assert b"KEY" not in db
    # inside a transaction, before the commit, too
    buf = bytearray(b"before")
    view = memoryview(buf)
    with db.begin(write=True) as txn:
        txn.put(b"t", buf)
        txn.put(b"m", view)
        buf[:] = b"AFTER!"
        assert txn[b"t"] == b"before"
        assert txn[b"m"] == b"before"
    assert db[b"t"] == b"before"
    assert db[b"m"] == b"before"


BAD = [("str", "text"), ("int", 5), ("NoneType", None), ("list", [1]), ("float", 1.5)]


@pytest.mark.parametrize(("tname", "bad"), BAD)
def test_bad_key_types_raise_type_error_naming_the_type(
    db: kvmap.Database, tname: str, bad: object
) -> None:
    db.put(b"present", b"1")
    calls: list[Callable[[], object]] = [
        lambda: db.put(bad, b"v"),  # type: ignore[arg-type]
        lambda: db.get(bad),  # type: ignore[arg-type]
        lambda: db[bad],  # type: ignore[index]
        lambda: db.__setitem__(bad, b"v"),  # type: ignore[arg-type]
        lambda: db.__delitem__(bad),  # type: ignore[arg-type]
        lambda: db.delete(bad),  # type: ignore[arg-type]
        lambda: bad in db,
        lambda: db.put_many([(bad, b"v")]),  # type: ignore[list-item]
    ]
    for call in calls:
        with pytest.raises(TypeError, match=rf"\b{tname}\b"):
            call()
    assert list(db.items()) == [(b"present", b"1")]


@pytest.mark.parametrize(("tname", "bad"), BAD)
def test_bad_value_types_raise_type_error_naming_the_type(
    db: kvmap.Database, tname: str, bad: object
) -> None:
    for call in (
        lambda: db.put(b"k", bad),  # type: ignore[arg-type]
        lambda: db.__setitem__(b"k", bad),  # type: ignore[arg-type]
        lambda: db.put_many([(b"k", bad)]),  # type: ignore[list-item]
    ):
        with pytest.raises(TypeError, match=rf"\b{tname}\b"):
            call()
    assert len(db) == 0


@pytest.mark.parametrize(("tname", "bad"), [b for b in BAD if b[1] is not None])
@pytest.mark.parametrize("method", ["items", "keys", "values"])
@pytest.mark.parametrize("bound", ["start", "stop", "prefix"])
def test_bad_bound_types_raise_type_error(
    db: kvmap.Database, tname: str, bad: object, method: str, bound: str
) -> None:
    db.put(b"k", b"v")
    with pytest.raises(TypeError, match=rf"{bound}.*\b{tname}\b"):
        list(getattr(db, method)(**{bound: bad}))
    with db.begin() as snap, pytest.raises(TypeError, match=rf"\b{tname}\b"):
        list(getattr(snap, method)(**{bound: bad}))


# -- sizes -----------------------------------------------------------------------------------


def test_empty_key_and_empty_value(open_db: OpenDB) -> None:
    db = open_db()
    db[b""] = b""
    db[b"e"] = b""
    db[b"\x00"] = b"zero"
    assert db[b""] == b""
    assert b"" in db
    assert db.get(b"") == b""  # not the default
    assert db.get(b"e", b"dflt") == b""
    assert list(db.items()) == [(b"", b""), (b"\x00", b"zero"), (b"e", b"")]
    assert list(db.items(stop=b"\x00")) == [(b"", b"")]
    db.close()
    db = open_db()
    assert db[b""] == b""
    assert db[b"e"] == b""
    del db[b""]
    assert b"" not in db
    assert len(db) == 2


def test_value_sizes_across_the_inline_overflow_boundary(open_db: OpenDB) -> None:
    """Every value size from 0 to 700 bytes at 512-byte pages (inline, at the limit, and in
    overflow runs of one and two pages), then every value replaced by one on the other side
    of the limit."""
    db = open_db()
    first = {b"s%03d" % n: pattern(n, n) for n in range(701)}
    db.put_many(first.items())
    assert dict(db.items()) == first
    db.check()
    second = {k: pattern(700 - len(v), 3) for k, v in first.items()}
    db.put_many(second.items())
    assert dict(db.items()) == second
    db.close()
    db = open_db()
    assert dict(db.items()) == second


def test_delete_while_iterating_the_database(db: kvmap.Database) -> None:
    db.put_many((b"%03d" % i, b"v") for i in range(200))
    seen = []
    for k in db:  # the scan keeps its snapshot; each delete commits
        seen.append(k)
        if int(k) % 10:
            del db[k]
    assert seen == [b"%03d" % i for i in range(200)]
    assert list(db) == [b"%03d" % i for i in range(0, 200, 10)]


@pytest.mark.parametrize("page_size", [512, 4096])
def test_large_values(open_db: OpenDB, page_size: int) -> None:
    db = open_db(page_size=page_size)
    sizes = [page_size - 1, page_size, page_size + 1, 3 * page_size, 1 << 20]
    values = {b"v%d" % n: pattern(n, n) for n in sizes}
    db.put_many(values.items())
    db[b"small"] = b"s"
    for k, v in values.items():
        assert db[k] == v
    # replacing and deleting overflow values frees their runs
    db[b"v%d" % (1 << 20)] = pattern(1 << 20, 7)
    del db[b"v%d" % (3 * page_size)]
    db.check()
    db.close()
    db = open_db(page_size=page_size)
    assert db[b"v%d" % (1 << 20)] == pattern(1 << 20, 7)
    assert db[b"v%d" % page_size] == values[b"v%d" % page_size]
    assert b"v%d" % (3 * page_size) not in db
    assert len(db) == len(sizes)


def test_64mib_value(open_db: OpenDB) -> None:
    size = 64 << 20
    db = open_db(page_size=4096)
    value = pattern(size)
    db.put(b"huge", value)
    db[b"after"] = b"a"
    got = db[b"huge"]
    assert len(got) == size and got == value
    del got
    db.close()
    db = open_db()
    got = db[b"huge"]
    assert got == value
    del got, value
    assert db[b"after"] == b"a"
    del db[b"huge"]
    assert list(db) == [b"after"]


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_max_key_size(open_db: OpenDB, page_size: int) -> None:
    db = open_db(page_size=page_size, checkpoint_size=0)  # the keys go into tree pages
    n = db.max_key_size
    assert n >= 100
    if page_size >= 4096:
        assert n >= 1000
    big = b"k" * n
    db.put(big, b"inline")
    db.put(b"j" * n, pattern(3 * page_size))  # max key with an overflow value
    with db.begin(write=True) as txn:  # many max-size keys: splits and branch separators
        for i in range(40):
            txn.put(b"%03d" % i + b"m" * (n - 3), b"%d" % i)
    assert db[big] == b"inline"
    assert db[b"j" * n] == pattern(3 * page_size)
    assert len(db) == 42
    with pytest.raises(kvmap.KeyTooLargeError, match=str(n + 1)):
        db.put(b"k" * (n + 1), b"v")
    with pytest.raises(kvmap.KeyTooLargeError):
        db[bytearray(n + 1)] = b"v"
    assert len(db) == 42
    assert db.get(b"k" * (n + 1)) is None  # reading a too-long key just misses


def test_max_key_size_at_default_page_size(open_db: OpenDB) -> None:
    db = open_db(page_size=4096)
    assert db.page_size == 4096
    assert db.max_key_size >= 1000


def test_default_page_size_is_4096(db_path: str) -> None:
    with kvmap.open(db_path) as db:
        assert db.page_size == 4096
        assert db.stats()["page_size"] == 4096


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_every_page_size_works(open_db: OpenDB, page_size: int, rng: random.Random) -> None:
    db = open_db(page_size=page_size)
    assert db.page_size == page_size
    model: dict[bytes, bytes] = {}
    for _ in range(4):
        with db.begin(write=True) as txn:
            for _ in range(300):
                k = b"key:%06d" % rng.randrange(2000)
                v = rng.randbytes(rng.choice([0, 5, 100, page_size // 3, 2 * page_size]))
                txn.put(k, v)
                model[k] = v
            for k in rng.sample(sorted(model), 50):
                txn.delete(k)
                del model[k]
    assert list(db.items()) == sorted(model.items())
    db.check()
    db.close()
    # an existing database keeps its own page size, whatever the open asks for
    other = 4096 if page_size != 4096 else 512
    db = open_db(page_size=other)
    assert db.page_size == page_size
    assert db.stats()["page_size"] == page_size
    assert list(db.items()) == sorted(model.items())


def test_small_database_stays_small(db_path: str) -> None:
    with kvmap.open(db_path) as db:
        for i in range(10):
            db[b"%d" % i] = b"v"
        db.checkpoint()  # the keys are in the tree
        assert db.stats()["file_size"] <= 256 * 1024


# -- many keys, many segments, reopen -------------------------------------------------------


def test_many_keys_across_segments_then_reopen(open_db: OpenDB, rng: random.Random) -> None:
    db = open_db(checkpoint_size=0)  # every commit grows the tree under the early snapshot
    model: dict[bytes, bytes] = {}
    early = db.begin()  # a snapshot of the empty database, held across all the growth
    segments_before = db.stats()["segments"]
    keys = [b"%08d" % i for i in range(30000)]
    rng.shuffle(keys)
    for chunk in range(0, len(keys), 3000):
        with db.begin(write=True) as txn:
            for k in keys[chunk : chunk + 3000]:
                v = rng.randbytes(rng.randrange(0, 80))
                txn.put(k, v)
                model[k] = v
            for k in rng.sample(sorted(model), 300):
                txn.delete(k)
                del model[k]
    # an aborted transaction and a failed one leave no trace
    with db.begin(write=True) as txn:
        txn.put(b"aborted", b"x")
        txn.delete(keys[0])
        txn.abort()
    with pytest.raises(RuntimeError), db.begin(write=True) as txn:
        txn.put(b"failed", b"x")
        raise RuntimeError("roll back")
    stats = db.stats()
    assert stats["segments"] >= segments_before + 3
    assert stats["entries"] == len(model)
    assert list(early.items()) == []  # the early snapshot still sees the empty tree
    early.close()
    assert list(db.items()) == sorted(model.items())
    db.check()
    db.close()
    db = open_db()
    assert len(db) == len(model)
    assert list(db.items()) == sorted(model.items())
    for k in rng.sample(sorted(model), 500):
        assert db[k] == model[k]
    assert b"aborted" not in db and b"failed" not in db


def test_reopen_after_mixed_work(open_db: OpenDB, rng: random.Random) -> None:
    model: dict[bytes, bytes] = {}
    for _round in range(4):
        db = open_db()
        assert dict(db.items()) == model
        for _ in range(30):
            k = b"%d" % rng.randrange(100)
            if rng.random() < 0.3:
                db.delete(k)
                model.pop(k, None)
            else:
                v = rng.randbytes(rng.choice([1, 50, 700]))
                db[k] = v
                model[k] = v
        db.close()


# -- maintenance -----------------------------------------------------------------------------


def test_stats(db: kvmap.Database) -> None:
    empty = db.stats()
    for key in ("entries", "depth", "pages", "file_size", "free_pages"):
        assert key in empty
    assert empty["entries"] == 0
    assert empty["depth"] == 0
    db.put_many((b"%05d" % i, b"v" * 30) for i in range(3000))
    db.put(b"big", pattern(5000))
    pending = db.stats()  # the commits are in the WAL and the memtable, not the tree yet
    assert pending["entries"] == 3001 and pending["memtable_keys"] == 3001
    db.checkpoint()  # the page counts below describe the tree: fold the WAL into it
    stats = db.stats()
    assert stats["memtable_keys"] == 0
    assert stats["entries"] == 3001 == len(db)
    assert stats["depth"] >= 3  # 512-byte pages: a deep tree
    assert stats["file_size"] == data_size(db)
    pages = stats["pages"]
    assert pages["leaf"] > 0 and pages["branch"] > 0 and pages["overflow"] >= 10
    assert stats["free_pages"] == pages["free"] >= 0
    assert stats["file_size"] >= sum(pages.values()) * 512
    assert isinstance(stats["free_pages"], int)
    with db.begin(write=True) as txn:
        for i in range(0, 3000, 2):
            del txn[b"%05d" % i]
    db.checkpoint()
    after = db.stats()
    assert after["entries"] == 1501
    assert after["free_pages"] > stats["free_pages"]


def test_check_passes_and_counts_pages(db: kvmap.Database) -> None:
    assert isinstance(db.check(), dict)
    db.put_many((b"%05d" % i, b"v" * 20) for i in range(2000))
    db.checkpoint()  # check() verifies the tree: fold the WAL into it
    counts = db.check()
    assert counts["leaf"] > 1 and counts["branch"] >= 1
    assert counts == db.stats()["pages"]


def test_compact_shrinks_file_and_keeps_contents(open_db: OpenDB, rng: random.Random) -> None:
    db = open_db(checkpoint_size=0)  # the deletes reach the tree: the file holds freed pages
    model = {b"%06d" % i: rng.randbytes(rng.choice([10, 90, 1500])) for i in range(8000)}
    db.put_many(model.items())
    keep = set(rng.sample(sorted(model), 400))
    with db.begin(write=True) as txn:
        for k in list(model):
            if k not in keep:
                txn.delete(k)
                del model[k]
    before = data_size(db)
    saved = db.compact()
    after = data_size(db)
    assert after < before / 4
    assert saved == before - after
    assert list(db.items()) == sorted(model.items())
    db.check()
    # the compacted database takes writes, and a reopen sees them
    db[b"after-compact"] = b"1"
    del db[sorted(model)[0]]
    model[b"after-compact"] = b"1"
    del model[sorted(model)[0]]
    db.close()
    db = open_db()
    assert data_size(db) <= after * 2
    assert list(db.items()) == sorted(model.items())
    assert db.compact() >= 0  # compacting a dense file is harmless
    assert list(db.items()) == sorted(model.items())


def test_compact_with_open_snapshot(db: kvmap.Database) -> None:
    db.put_many((b"%05d" % i, b"x" * 50) for i in range(2000))
    with db.begin() as snap:
        with db.begin(write=True) as txn:
            for i in range(1900):
                txn.delete(b"%05d" % i)
        db.compact()
        assert len(snap) == 2000
        assert sum(1 for _ in snap.items()) == 2000
        assert snap[b"00000"] == b"x" * 50
    assert len(db) == 100
    assert list(db) == [b"%05d" % i for i in range(1900, 2000)]


def test_compact_empty_database(db: kvmap.Database) -> None:
    db.put(b"a", b"1")
    del db[b"a"]
    db.compact()
    assert len(db) == 0 and list(db) == []
    db[b"b"] = b"2"
    assert list(db.items()) == [(b"b", b"2")]


def test_sync_checkpoint_flush(open_db: OpenDB) -> None:
    for mode in ("full", "normal", "off"):
        db = open_db(sync=mode)
        db[mode.encode()] = b"1"
        db.sync()
        db.checkpoint()
        db.flush()
        db.close()
    db = open_db()
    assert list(db) == [b"full", b"normal", b"off"]


def test_context_manager_and_repr(db_path: str) -> None:
    with kvmap.open(db_path, page_size=512) as db:
        db[b"a"] = b"1"
        assert db_path in repr(db)
    assert "closed" in repr(db)
    db.close()  # idempotent
    with kvmap.open(db_path) as db:
        assert db[b"a"] == b"1"


def test_pathlike(tmp_path: os.PathLike[str]) -> None:
    import pathlib

    path = pathlib.Path(tmp_path) / "nested" / "db"
    with kvmap.open(path) as db:
        db[b"a"] = b"1"
    assert (path / "kvmap.data").exists()
    with kvmap.open(path, readonly=True) as db:
        assert db[b"a"] == b"1"


# -- threads ---------------------------------------------------------------------------------


def test_readers_and_a_writer_in_threads(open_db: OpenDB) -> None:
    """Each commit writes the same counter to ``a`` and ``b`` and to a block of keys; readers
    verify that every view is one commit: ``a == b`` in a snapshot, a scan shows one version,
    and versions never go backwards.  (``sync="off"``: fsyncs would only slow the writer.)
    A small ``checkpoint_size`` folds the WAL into the tree every few commits, so readers
    read the memtable, frozen memtables and a changing tree."""
    db = open_db(sync="off", checkpoint_size=128 * 1024)
    nblock = 60
    db.put_many([(b"a", b"0"), (b"b", b"0")] + [(b"blk%03d" % i, b"0") for i in range(nblock)])
    first_txnid = db.stats()["txnid"]
    stop = threading.Event()
    errors: list[BaseException] = []
    commits = 400

    def writer() -> None:
        try:
            for n in range(1, commits + 1):
                v = b"%d" % n
                with db.begin(write=True) as txn:
                    txn.put(b"a", v)
                    # in between, a large value so some commits allocate overflow pages
                    txn.put(b"pad", pattern(700 if n % 3 else 3000, n))
                    for i in range(nblock):
                        txn.put(b"blk%03d" % i, v * (1 + n % 4))
                    txn.put(b"b", v)
                if n % 10 == 0:
                    db.put(b"solo", v)  # autocommit too
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader(kind: int) -> None:
        last = 0
        try:
            while not stop.is_set():
                if kind == 0:  # point reads: monotonic
                    n = int(db.get(b"a"))
                    assert n >= last
                    last = n
                    assert int(db[b"b"]) >= n  # b is read later: never older
                elif kind == 1:  # a snapshot: a == b and the block agrees
                    with db.begin() as snap:
                        a = snap[b"a"]
                        vals = set(snap.values(prefix=b"blk"))
                        assert snap[b"b"] == a
                        assert vals == {a * (1 + int(a) % 4)} or a == b"0"
                        assert int(a) >= last
                        last = int(a)
                else:  # a whole-database scan through db.items()
                    view = dict(db.items())
                    assert view[b"a"] == view[b"b"]
                    n = int(view[b"a"])
                    want = b"%d" % n * (1 + n % 4) if n else b"0"
                    assert {view[b"blk%03d" % i] for i in range(nblock)} == {want}
                    if n:
                        assert view[b"pad"] == pattern(700 if n % 3 else 3000, n)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, args=(i % 3,)) for i in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    assert db[b"a"] == db[b"b"] == b"%d" % commits
    assert db.stats()["txnid"] >= first_txnid + 4  # checkpoints ran while readers read
    db.check()


def test_many_writer_threads_serialize(db: kvmap.Database) -> None:
    """Concurrent autocommit increments through write transactions lose no update."""
    errors: list[BaseException] = []

    def bump(tid: int) -> None:
        try:
            for _ in range(25):
                with db.begin(write=True) as txn:
                    n = int(txn.get(b"counter", b"0"))
                    txn.put(b"counter", b"%d" % (n + 1))
                db.put(b"t%d" % tid, b"x")
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert db[b"counter"] == b"100"
    assert len(db) == 5


def test_iteration_helpers_cover_all_pairs(db: kvmap.Database) -> None:
    db.put_many((bytes([a, b]), bytes([b, a])) for a, b in itertools.product(range(20), repeat=2))
    assert list(db.keys()) == sorted(bytes([a, b]) for a in range(20) for b in range(20))
    assert list(db.values()) == [k[::-1] for k in db.keys()]
    assert list(db.items()) == list(zip(db.keys(), db.values(), strict=True))


@pytest.fixture
def fast_thread_switches() -> Iterator[None]:
    """Switch threads every 10 µs instead of 5 ms, so races show up within seconds."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_readers_and_writer_with_a_small_page_cache(
    open_db: OpenDB, fast_thread_switches: None
) -> None:
    """``cache_size=0`` keeps the decoded-page cache at its minimum, so every thread evicts
    from it all the time; neither the readers nor the writer may see an error, and the
    writer's handle must stay usable."""
    db = open_db(sync="off", cache_size=0, checkpoint_size=0)  # every commit rewrites the tree
    db.put_many((b"%05d" % i, b"v" * (i % 900)) for i in range(3000))
    stop = threading.Event()
    errors: list[BaseException] = []
    commits = [0]

    def reader(kind: int) -> None:
        try:
            while not stop.is_set():
                if kind == 0:
                    for i in range(0, 3000, 7):
                        assert db.get(b"%05d" % i) is not None
                else:
                    assert sum(1 for _ in db.items()) == 3000
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    def writer() -> None:
        try:
            while not stop.is_set():
                commits[0] += 1
                n = commits[0]
                db.put_many((b"%05d" % i, b"w%d" % n * (i % 300)) for i in range(0, 3000, 13))
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, args=(i % 2,)) for i in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    stop.wait(4.0)
    stop.set()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    assert commits[0] > 5
    db.check()


def test_close_while_other_threads_read(db_path: str) -> None:
    """Closing a database under running readers: each reader stops with
    DatabaseClosedError or TxnClosedError (documented for use after close), never with an
    internal error, and never with a CorruptionError about an intact file."""
    unexpected: list[BaseException] = []
    for _trial in range(6):
        db = kvmap.open(db_path, page_size=512, sync="off", cache_size=0)
        if len(db) == 0:
            db.put_many((b"%05d" % i, b"v" * (i % 900)) for i in range(3000))
        running = threading.Barrier(5)

        def reader(
            kind: int, db: kvmap.Database = db, running: threading.Barrier = running
        ) -> None:
            running.wait()
            try:
                while True:
                    if kind == 0:
                        for i in range(0, 3000, 7):
                            db.get(b"%05d" % i)
                    else:
                        for _ in db.items():
                            pass
            except (kvmap.DatabaseClosedError, kvmap.TxnClosedError):
                return
            except BaseException as exc:
                unexpected.append(exc)

        threads = [threading.Thread(target=reader, args=(i % 2,)) for i in range(4)]
        for t in threads:
            t.start()
        running.wait()
        time.sleep(0.05)
        db.close()
        for t in threads:
            t.join(30)
    with kvmap.open(db_path) as db:
        db.check()
        assert len(db) == 3000
    assert not unexpected, [repr(e) for e in unexpected[:5]]


def test_close_releases_every_file(db_path: str) -> None:
    """After close() (and once the snapshots that pinned an old file are gone) the process
    holds no descriptor or mapping of the database's files."""
    if not os.path.isdir("/proc/self/fd"):  # pragma: no cover
        pytest.skip("needs /proc/self/fd")
    import gc

    def open_files() -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(os.path.realpath(db_path)):
                found.append(target)
        return found

    db = kvmap.open(db_path, page_size=512)
    db.put_many((b"%04d" % i, b"v" * 50) for i in range(2000))
    snap = db.begin()
    db.compact()  # the snapshot keeps the old (now unlinked) file open
    assert len(snap) == 2000
    snap.close()
    del snap
    ro = kvmap.open(db_path, readonly=True)
    assert len(ro) == 2000
    ro.close()
    db.compact()
    db.close()
    del db, ro
    gc.collect()
    assert open_files() == []


def test_compact_under_concurrent_readers(open_db: OpenDB, fast_thread_switches: None) -> None:
    """Readers in other threads keep getting correct answers while the database is rewritten
    and compacted under them (the old file stays mapped until they let go)."""
    db = open_db(sync="off")
    db.put_many((b"%05d" % i, b"v" * (i % 900)) for i in range(3000))
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader(kind: int) -> None:
        try:
            while not stop.is_set():
                if kind == 0:
                    for i in range(0, 3000, 7):
                        v = db.get(b"%05d" % i)
                        assert v is not None and len(v) == i % 900
                else:
                    assert sum(1 for _ in db.items()) == 3000
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, args=(i % 2,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for round_ in range(12):
            if stop.is_set():
                break
            with db.begin(write=True) as txn:
                for i in range(round_ % 5, 3000, 5):
                    txn.put(b"%05d" % i, b"w" * (i % 900))
            db.compact()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    if errors:
        raise errors[0]
    db.check()


def test_stats_of_a_readonly_handle_counts_the_wal_on_disk(db_path: str) -> None:
    """A readonly handle has no WAL writer of its own; its ``wal_size`` is what the log
    files on disk hold up to the end of their frames (here: a writer's commits not yet
    checkpointed), the same count as the writer's."""
    with kvmap.open(db_path, sync="normal", checkpoint_size=1 << 30) as db:
        for i in range(50):
            db[b"k%d" % i] = b"v" * 20
        with kvmap.open(db_path, readonly=True) as ro:
            st = ro.stats()
            assert st["wal_size"] == db.stats()["wal_size"] > 64 + 50 * 20  # header, frames
            assert st["entries"] == 50
