"""Misuse and bad input: every row of docs/reliability.md "Misuse and bad input".

Each test makes one mistake a user can make (wrong types, sizes, options, using something
after it is closed or finished, nesting, fork, iterating while writing, ...), asserts the
documented error (class, and for TypeError that the message names the type given) and
behaviour, and then that the database is intact: ``check()`` passes and, where data is
involved, the contents equal a dict model of what was committed.

Behaviour that is wrong (a bug) is asserted as it *should* be, under
``xfail(strict=True, reason="bug: ...")``: the test starts failing (XPASS) once kvmap is
fixed, and the mark is then removed.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kvmap
from kvmap import db as kvdb
from kvmap import txn as kvtxn

OpenDB = Callable[..., kvmap.Database]
Model = dict[bytes, bytes]


def same(db: kvmap.Database, model: Model) -> None:
    """``db`` holds exactly ``model`` and its tree checks."""
    assert list(db.items()) == sorted(model.items())
    assert len(db) == len(model)
    for k, v in model.items():
        assert db[k] == v
    db.check()


@pytest.fixture
def filled(db: kvmap.Database) -> tuple[kvmap.Database, Model]:
    """The tiny-page database holding a few keys (and two overflow values, the first and
    the last key, which a read always fetches from the file), and its model."""
    model = {b"k%02d" % i: b"v%d" % i for i in range(30)}
    model[b"big"] = b"B" * 3000
    model[b"zbig"] = b"Z" * 3000
    db.put_many(model.items())
    return db, model


# -- wrong key and value types ------------------------------------------------------------------

BAD_TYPES = [("str", "k"), ("int", 1), ("NoneType", None), ("float", 1.5), ("list", [1])]


@pytest.mark.parametrize(("tname", "bad"), BAD_TYPES)
def test_wrong_key_type_raises_typeerror_naming_it(
    filled: tuple[kvmap.Database, Model], tname: str, bad: Any
) -> None:
    db, model = filled
    calls: list[Callable[[], object]] = [
        lambda: db.put(bad, b"v"),
        lambda: db.__setitem__(bad, b"v"),
        lambda: db.get(bad),
        lambda: db[bad],
        lambda: bad in db,
        lambda: db.delete(bad),
        lambda: db.__delitem__(bad),
        lambda: db.put_many([(bad, b"v")]),
        lambda: db.put_many([(bad, b"v")], append=True),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=rf"\bnot {tname}$"):
            call()
    with db.begin(write=True) as txn:
        for call in (
            lambda: txn.put(bad, b"v"),
            lambda: txn.get(bad),
            lambda: txn.delete(bad),
            lambda: bad in txn,
        ):
            with pytest.raises(TypeError, match=rf"\bnot {tname}$"):
                call()
        txn.put(b"after", b"the errors")  # the transaction is still usable
    model[b"after"] = b"the errors"
    with db.begin() as snap:
        with pytest.raises(TypeError, match=rf"\bnot {tname}$"):
            snap.get(bad)
    same(db, model)


@pytest.mark.parametrize(("tname", "bad"), BAD_TYPES)
def test_wrong_value_type_raises_typeerror_naming_it(
    filled: tuple[kvmap.Database, Model], tname: str, bad: Any
) -> None:
    db, model = filled
    for call in (
        lambda: db.put(b"k00", bad),
        lambda: db.__setitem__(b"k00", bad),
        lambda: db.put_many([(b"k00", bad)]),
        lambda: db.put_many([(b"zzz", bad)], append=True),
    ):
        with pytest.raises(TypeError, match=rf"^values must be .*\bnot {tname}$"):
            call()
    with db.begin(write=True) as txn:
        with pytest.raises(TypeError, match=rf"\bnot {tname}$"):
            txn.put(b"k00", bad)
    same(db, model)  # nothing was written, k00 keeps its value


@pytest.mark.parametrize("bound", ["start", "stop", "prefix"])
def test_wrong_range_bound_type_raises_typeerror_naming_bound_and_type(
    filled: tuple[kvmap.Database, Model], bound: str
) -> None:
    db, model = filled
    with pytest.raises(TypeError, match=rf"^{bound} must be .*\bnot str$"):
        list(db.items(**{bound: "k"}))
    with pytest.raises(TypeError, match=rf"^{bound} must be .*\bnot int$"):
        list(db.keys(**{bound: 3}))
    same(db, model)


def test_buffer_types_are_accepted_and_stored_as_bytes(db: kvmap.Database) -> None:
    class Sub(bytes):
        pass

    db.put(bytearray(b"ba"), bytearray(b"bytearray"))
    db.put(memoryview(b"mv"), memoryview(b"memoryview"))
    db.put(memoryview(b"xxslicexx")[2:7], memoryview(b"--value--")[2:7])
    db.put(Sub(b"sub"), Sub(b"subclass"))
    # kvmap's own bytes subclass for overflow references is data like any other when a
    # user passes it: stored as its 8 bytes, never followed as a page reference
    ref = kvmap.node.Ovf(2)
    db.put(b"ref", ref)
    db.put_many([(b"ref2", ref)])
    db.put_many([(b"zref", ref)], append=True)
    with db.begin(write=True) as txn:
        txn.put(bytearray(b"t1"), memoryview(b"in txn"))
    model = {b"ba": b"bytearray", b"mv": b"memoryview", b"slice": b"value", b"sub": b"subclass"}
    model |= {b"t1": b"in txn", b"ref": bytes(ref), b"ref2": bytes(ref), b"zref": bytes(ref)}
    db.checkpoint()  # and once they are in the tree
    assert db.get(bytearray(b"ba")) == b"bytearray"
    assert db[memoryview(b"slice")] == b"value"
    for k, v in db.items():
        assert type(k) is bytes and type(v) is bytes
    same(db, model)


def test_key_buffer_mutated_after_put_does_not_change_the_stored_key(db: kvmap.Database) -> None:
    key, value = bytearray(b"key"), bytearray(b"value")
    db.put(key, value)
    key[0:3] = b"XXX"
    value[:] = b"changed"
    with db.begin(write=True) as txn:
        tkey = bytearray(b"txn")
        txn.put(tkey, value)
        tkey[:] = b"zzz"
        value[:] = b"changed again"
    assert db.get(b"XXX") is None and db.get(b"zzz") is None
    same(db, {b"key": b"value", b"txn": b"changed"})


def test_key_buffer_mutated_during_put_many(db: kvmap.Database) -> None:
    """The generator reuses one buffer for every key: each put must have copied it."""

    def items() -> Iterator[tuple[bytearray, bytearray]]:
        buf, val = bytearray(b"k0"), bytearray(b"v0")
        for i in range(5):
            buf[1:] = b"%d" % i
            val[1:] = b"%d" % i
            yield buf, val

    db.put_many(items())
    db.put_many(((bytearray(b"z%d" % i), b"a") for i in range(3)), append=True)
    model = {b"k%d" % i: b"v%d" % i for i in range(5)} | {b"z%d" % i: b"a" for i in range(3)}
    same(db, model)


def test_a_range_bound_buffer_mutated_during_iteration(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    start = bytearray(b"k10")
    it = db.keys(start, b"k20")
    first = next(it)
    start[:] = b"k00"  # the scan copied its bounds
    assert [first, *it] == sorted(k for k in model if b"k10" <= k < b"k20")
    same(db, model)


# -- sizes --------------------------------------------------------------------------------------


def test_empty_key_is_a_normal_key(open_db: OpenDB) -> None:
    db = open_db(checkpoint_size=0)
    model = {b"": b"empty", b"\x00": b"nul", b"a": b"1"}
    for k, v in model.items():
        db.put(k, v)
    for i in range(60):  # a tree deep enough that b"" sits in the leftmost leaf
        db.put(b"x%03d" % i, b"y")
        model[b"x%03d" % i] = b"y"
    assert next(db.keys()) == b"" and db[b""] == b"empty" and b"" in db
    assert list(db.keys(stop=b"\x00")) == [b""]
    db.close()
    db = open_db(checkpoint_size=0)
    same(db, model)
    assert db.delete(b"") is True
    del model[b""]
    same(db, model)


def test_oversized_key_raises_keytoolarge_and_writes_nothing(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    limit = db.max_key_size
    assert limit == kvmap.format.max_key_size(512) == 110
    too_long = b"k" * (limit + 1)
    for call in (
        lambda: db.put(too_long, b"v"),
        lambda: db.put_many([(b"ok", b"v"), (too_long, b"v")]),
        lambda: db.put_many([(b"zz", b"v"), (b"zz" + too_long, b"v")], append=True),
    ):
        with pytest.raises(kvmap.KeyTooLargeError, match=rf"of 11\d bytes .*={limit}$"):
            call()
    assert issubclass(kvmap.KeyTooLargeError, ValueError)
    # reads of an oversized key are not errors: it cannot be there
    assert db.get(too_long) is None and too_long not in db and db.delete(too_long) is False
    # exactly the limit works, with an overflow value too
    db.put(b"m" * limit, b"V" * 5000)
    model[b"m" * limit] = b"V" * 5000
    same(db, model)


def test_oversized_value_raises_valuetoolarge_and_writes_nothing(
    filled: tuple[kvmap.Database, Model], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real limit (2 GiB - 1, a u32 length in the WAL) needs 2 GiB of memory to reach,
    so the check is exercised at a lowered limit."""
    db, model = filled
    assert kvmap.format.MAX_VALUE_SIZE == 2**31 - 1
    for module in (kvtxn, kvdb):  # every module that checks the limit on a write path
        if hasattr(module, "MAX_VALUE_SIZE"):
            monkeypatch.setattr(module, "MAX_VALUE_SIZE", 4000)
    for call in (
        lambda: db.put(b"k01", b"v" * 4001),
        lambda: db.put_many([(b"k01", b"v" * 4001)]),
        lambda: db.put_many([(b"zz", b"v" * 4001)], append=True),
    ):
        with pytest.raises(kvmap.ValueTooLargeError, match="4001 bytes"):
            call()
    assert issubclass(kvmap.ValueTooLargeError, ValueError)
    db.put(b"k01", b"v" * 4000)
    model[b"k01"] = b"v" * 4000
    same(db, model)


def test_large_values_work_on_tiny_pages(db: kvmap.Database) -> None:
    model = {b"a": b"\x01" * (1 << 20), b"b": b"", b"c": bytes(range(256)) * 40}
    for k, v in model.items():
        db.put(k, v)
    db.checkpoint()
    same(db, model)


# -- writes where writes are refused --------------------------------------------------------


def test_writes_in_a_read_snapshot_raise_readonlyerror(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    with db.begin() as snap:
        for call in (
            lambda: snap.put(b"k00", b"x"),
            lambda: snap.__setitem__(b"k00", b"x"),
            lambda: snap.delete(b"k00"),
            lambda: snap.__delitem__(b"k00"),
            lambda: snap.put_many([(b"k00", b"x")]),
        ):
            with pytest.raises(kvmap.ReadOnlyError, match="read snapshot"):
                call()
        assert snap[b"k00"] == b"v0"  # still usable
    same(db, model)


def test_writes_on_a_readonly_handle_raise_readonlyerror(
    filled: tuple[kvmap.Database, Model], open_db: OpenDB
) -> None:
    db, model = filled
    ro = open_db(readonly=True)
    for call in (
        lambda: ro.put(b"k00", b"x"),
        lambda: ro.__setitem__(b"k00", b"x"),
        lambda: ro.delete(b"k00"),
        lambda: ro.delete(b"missing"),
        lambda: ro.__delitem__(b"k00"),
        lambda: ro.put_many([(b"k00", b"x")]),
        lambda: ro.begin(write=True),
        lambda: ro.compact(),
    ):
        with pytest.raises(kvmap.ReadOnlyError, match="readonly"):
            call()
    ro.checkpoint()  # documented no-ops on a readonly handle
    ro.sync()
    same(ro, model)
    same(db, model)


# -- use after close, finished transactions -----------------------------------------------------


def _closed_db_calls(db: kvmap.Database) -> list[Callable[[], object]]:
    return [
        lambda: db.get(b"k00"),
        lambda: db[b"k00"],
        lambda: b"k00" in db,
        lambda: len(db),
        lambda: db.put(b"k00", b"x"),
        lambda: db.__setitem__(b"k00", b"x"),
        lambda: db.delete(b"k00"),
        lambda: db.put_many([(b"a", b"b")]),
        lambda: list(db.items()),
        lambda: list(db.keys()),
        lambda: list(db.values()),
        lambda: list(db),
        lambda: db.begin(),
        lambda: db.begin(write=True),
        lambda: db.checkpoint(),
        lambda: db.sync(),
        lambda: db.flush(),
        lambda: db.check(),
        lambda: db.stats(),
        lambda: db.compact(),
        lambda: db.readers(),
        lambda: db.__enter__(),
    ]


def test_database_use_after_close_raises_databaseclosederror(
    filled: tuple[kvmap.Database, Model], open_db: OpenDB
) -> None:
    db, model = filled
    lazy = db.items()  # an iterator made before close, first used after
    db.close()
    for call in _closed_db_calls(db):
        with pytest.raises(kvmap.DatabaseClosedError, match="closed"):
            call()
    with pytest.raises(kvmap.DatabaseClosedError):
        next(lazy)
    assert "closed" in repr(db)
    db.close()  # closing twice is a no-op
    same(open_db(), model)


def test_readonly_handle_use_after_close(
    filled: tuple[kvmap.Database, Model], open_db: OpenDB
) -> None:
    db, model = filled
    ro = open_db(readonly=True)
    ro.close()
    for call in _closed_db_calls(ro)[:4]:
        with pytest.raises(kvmap.DatabaseClosedError):
            call()
    ro.close()
    same(db, model)


def test_snapshot_use_after_close_raises_txnclosederror(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    snap = db.begin()
    snap.close()
    for call in (
        lambda: snap.get(b"k00"),
        lambda: snap[b"k00"],
        lambda: b"k00" in snap,
        lambda: len(snap),
        lambda: list(snap.items()),
        lambda: list(snap.keys()),
        lambda: list(snap.values()),
        lambda: list(snap),
        lambda: snap.__enter__(),
        lambda: snap.put(b"a", b"b"),
    ):
        with pytest.raises(kvmap.TxnClosedError, match="finished"):
            call()
    snap.close()  # idempotent, and so are commit/abort on a read snapshot
    snap.commit()
    snap.abort()
    assert "finished" in repr(snap)
    same(db, model)


def test_snapshot_use_after_its_database_closed(
    filled: tuple[kvmap.Database, Model], open_db: OpenDB
) -> None:
    db, model = filled
    snap = db.begin()
    db.close()
    with pytest.raises(kvmap.TxnClosedError, match="database .* was closed"):
        snap.get(b"k00")
    with pytest.raises(kvmap.TxnClosedError):
        list(snap.items())
    snap.close()
    same(open_db(), model)


def _finished_txn_calls(txn: kvmap.Snapshot) -> list[Callable[[], object]]:
    return [
        lambda: txn.put(b"x", b"y"),
        lambda: txn.delete(b"k00"),
        lambda: txn.get(b"k00"),
        lambda: len(txn),
        lambda: list(txn.items()),
        lambda: txn.commit(),
        lambda: txn.put_many([(b"x", b"y")]),
    ]


def test_finished_write_transaction_raises_txnclosederror(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    for finish in ("commit", "abort", "close", "with"):
        txn = db.begin(write=True)
        txn.put(b"t-" + finish.encode(), b"1")
        if finish == "with":
            with txn:
                pass
        else:
            getattr(txn, finish)()
        if finish in ("commit", "with"):
            model[b"t-" + finish.encode()] = b"1"
        for call in _finished_txn_calls(txn):
            with pytest.raises(kvmap.TxnClosedError, match="finished"):
                call()
        txn.abort()  # idempotent
        txn.close()
        with db.begin(write=True) as again:  # the write lock was released
            again.get(b"k00")
    same(db, model)


def test_write_transaction_after_its_database_closed(
    filled: tuple[kvmap.Database, Model], open_db: OpenDB
) -> None:
    """close() in the thread that holds the write transaction closes anyway; the
    transaction's writes were never committed and are gone."""
    db, model = filled
    txn = db.begin(write=True)
    txn.put(b"uncommitted", b"x")
    db.close()
    with pytest.raises(kvmap.TxnClosedError, match="closed"):
        txn.put(b"more", b"x")
    with pytest.raises(kvmap.TxnClosedError):
        txn.commit()
    txn.abort()
    same(open_db(), model)


def test_abandoned_write_transaction_releases_the_lock(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    txn = db.begin(write=True)
    txn.put(b"dropped", b"x")
    del txn
    gc.collect()
    db.put(b"next", b"1")  # would be NestedWriteError or a deadlock if still held
    model[b"next"] = b"1"
    same(db, model)


def test_exception_in_write_block_aborts_and_propagates(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    with pytest.raises(KeyError, match="boom"):
        with db.begin(write=True) as txn:
            txn.put(b"k00", b"overwritten")
            txn.delete(b"k01")
            raise KeyError("boom")
    same(db, model)


def test_iterator_of_a_closed_snapshot_raises_txnclosederror_before_its_first_item(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    snap = db.begin()
    it = snap.items()
    snap.close()
    with pytest.raises(kvmap.TxnClosedError):
        next(it)
    same(db, model)


def _iterate_past_close(open_db: OpenDB, write: bool) -> tuple[list[tuple[bytes, bytes]], Model]:
    """Start iterating a snapshot (or write transaction), finish it, rewrite every key in
    four commits, each checkpointed (freed pages get reused), then resume the iterator."""
    db = open_db(checkpoint_size=0, sync="off")
    model = {b"k%04d" % i: b"old%d" % i for i in range(120)}
    db.put_many(model.items())
    txn = db.begin(write=write)
    it = txn.items()
    first = next(it)
    if write:
        txn.commit()
    else:
        txn.close()
    for _ in range(4):  # four commits, each folded into the tree at once
        with db.begin(write=True) as rewrite:
            for k in model:
                rewrite.put(k, b"new")
    rest: list[tuple[bytes, bytes]] = []
    try:
        rest = [first, *it]
    finally:
        same(db, dict.fromkeys(model, b"new"))
    return rest, model


def test_iterator_resumed_after_its_snapshot_closed(open_db: OpenDB) -> None:
    with pytest.raises(kvmap.TxnClosedError):
        rest, model = _iterate_past_close(open_db, write=False)
        # what a correct kvmap could also do: finish the iteration of the old snapshot
        assert rest == sorted(model.items())
        raise kvmap.TxnClosedError("(iterated the snapshot correctly)")


def test_iterator_resumed_after_its_write_transaction_committed(open_db: OpenDB) -> None:
    with pytest.raises(kvmap.TxnClosedError):
        rest, model = _iterate_past_close(open_db, write=True)
        assert rest == sorted(model.items())
        raise kvmap.TxnClosedError("(iterated the transaction correctly)")


def _resume_after_db_close(open_db: OpenDB) -> tuple[Iterator[tuple[bytes, bytes]], Model]:
    """A snapshot iterator of a tree-resident database (checkpoint after every commit),
    started, then its database closed and rewritten by another handle."""
    db = open_db(checkpoint_size=0, sync="off")
    model = {b"k%04d" % i: b"old%d" % i for i in range(120)}
    db.put_many(model.items())
    snap = db.begin()
    it = snap.items()
    first = next(it)
    db.close()
    writer = open_db(checkpoint_size=0, sync="off")
    for _ in range(4):
        with writer.begin(write=True) as rewrite:
            for k in model:
                rewrite.put(k, b"new")
    same(writer, dict.fromkeys(model, b"new"))
    return itertools.chain([first], it), model


def test_iterator_of_a_snapshot_whose_database_closed_raises_txnclosederror(
    open_db: OpenDB,
) -> None:
    it, _ = _resume_after_db_close(open_db)
    with pytest.raises(kvmap.TxnClosedError):
        list(it)


# -- nesting, threads, several handles, fork ---------------------------------------------------


def test_nested_write_in_the_same_thread_raises_nestedwriteerror(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    with db.begin(write=True) as txn:
        txn.put(b"outer", b"1")
        for call in (
            lambda: db.begin(write=True),
            lambda: db.put(b"inner", b"x"),
            lambda: db.__setitem__(b"inner", b"x"),
            lambda: db.delete(b"k00"),
            lambda: db.__delitem__(b"k00"),
            lambda: db.put_many([(b"inner", b"x")]),
            lambda: db.compact(),
        ):
            with pytest.raises(kvmap.NestedWriteError, match="already holds"):
                call()
        # reads, snapshots, checkpoints and check() are fine meanwhile
        assert db.get(b"outer") is None and txn.get(b"outer") == b"1"
        with db.begin() as snap:
            assert snap.get(b"k00") == b"v0"
        db.checkpoint()
        db.check()
        txn.put(b"outer2", b"2")
    model |= {b"outer": b"1", b"outer2": b"2"}
    same(db, model)


def test_write_transaction_in_another_thread_waits(filled: tuple[kvmap.Database, Model]) -> None:
    db, model = filled
    txn = db.begin(write=True)
    txn.put(b"first", b"1")
    done = threading.Event()

    def other() -> None:
        db.put(b"second", b"2")
        done.set()

    t = threading.Thread(target=other)
    t.start()
    assert not done.wait(0.3)  # blocked behind the open transaction
    txn.commit()
    t.join(10)
    assert done.is_set()
    model |= {b"first": b"1", b"second": b"2"}
    same(db, model)


def test_same_database_opened_twice_in_one_process(db_path: str, open_db: OpenDB) -> None:
    """A writer and any number of readonly handles in one process: they work together."""
    w = open_db(sync="normal")
    r1 = open_db(readonly=True)
    r2 = open_db(readonly=True)
    model: Model = {}
    for i in range(50):
        w.put(b"k%02d" % i, b"v%d" % i)
        model[b"k%02d" % i] = b"v%d" % i
        if i % 10 == 0:
            w.checkpoint()
    snap = r1.begin()
    w.delete(b"k00")
    frozen = dict(model)
    del model[b"k00"]
    same(r1, model)
    same(r2, model)
    assert dict(snap.items()) == frozen  # a reader's snapshot keeps its commit
    snap.close()
    # A second *writable* handle is refused while the first is open (documented: one
    # writable handle per database at a time, across processes and within one).
    with pytest.raises(kvmap.DatabaseLockedError, match="open for writing"):
        kvmap.open(db_path, lock_timeout=0.05)
    w.close()
    w2 = open_db()
    w2.put(b"again", b"1")
    model[b"again"] = b"1"
    same(w2, model)
    same(r1, model)
    r2.close()
    r1.close()


def test_use_after_fork_is_refused_in_the_child(
    filled: tuple[kvmap.Database, Model], db_path: str
) -> None:
    db, model = filled
    ro = kvmap.open(db_path, readonly=True)
    snap = db.begin()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what each call raised, then leave without cleanup
        out: dict[str, str] = {}
        for name, call in (
            ("get", lambda: db.get(b"k00")),
            ("put", lambda: db.put(b"child", b"x")),
            ("begin", lambda: db.begin()),
            ("readonly get", lambda: ro.get(b"k00")),
            ("snapshot get", lambda: snap.get(b"k00")),
            ("close", lambda: [h.close() for h in (db, ro, snap)]),
            ("reopen readonly", lambda: kvmap.open(db_path, readonly=True).get(b"k00")),
        ):
            try:
                out[name] = "ok " + repr(call())
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                out[name] = f"{type(exc).__name__}: {exc}"
        os.write(wfd, json.dumps(out).encode())
        os._exit(0)
    os.close(wfd)
    raw = b""
    while chunk := os.read(rfd, 65536):
        raw += chunk
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = json.loads(raw)
    for name in ("get", "put", "begin", "readonly get"):
        assert got[name].startswith("DatabaseClosedError: ") and "fork" in got[name], got
    assert got["snapshot get"].startswith("TxnClosedError: "), got
    assert got["close"] == "ok [None, None, None]", got  # closing in the child: no-op
    assert got["reopen readonly"] == "ok b'v0'", got
    # the parent's handles are untouched
    assert snap.get(b"k00") == b"v0"
    snap.close()
    db.put(b"parent", b"1")
    model[b"parent"] = b"1"
    same(db, model)
    same(ro, model)
    ro.close()


# -- opening --------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"readonly": True}, {"create": False}])
def test_opening_a_missing_database_without_create(
    tmp_path: os.PathLike[str], options: dict[str, bool]
) -> None:
    path = os.path.join(os.fspath(tmp_path), "missing")
    with pytest.raises(FileNotFoundError, match="no kvmap database"):
        kvmap.open(path, **options)
    assert not os.path.exists(path)  # nothing was created


BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"page_size": 1000}, ValueError, "power of two"),
    ({"page_size": 256}, ValueError, "power of two"),
    ({"page_size": 131072}, ValueError, "power of two"),
    ({"page_size": 0}, ValueError, "power of two"),
    ({"page_size": -4096}, ValueError, "power of two"),
    ({"page_size": 4096.0}, TypeError, "not float"),
    ({"page_size": "4096"}, TypeError, "not str"),
    ({"page_size": True}, TypeError, "not bool"),
    ({"sync": "bogus"}, ValueError, "'bogus'"),
    ({"sync": "FULL"}, ValueError, "'FULL'"),
    ({"sync": None}, TypeError, "not NoneType"),
    ({"cache_size": -1}, ValueError, ">= 0"),
    ({"cache_size": 1.5}, TypeError, "not float"),
    ({"checkpoint_size": -1}, ValueError, ">= 0"),
    ({"checkpoint_size": "1"}, TypeError, "not str"),
    ({"max_readers": 0}, ValueError, r"\[1, 65536\]"),
    ({"max_readers": 65537}, ValueError, r"\[1, 65536\]"),
    ({"max_readers": 2.0}, TypeError, "not float"),
    ({"lock_timeout": "1"}, TypeError, "not str"),
    ({"create": 1}, TypeError, "not int"),
    ({"readonly": "yes"}, TypeError, "not str"),
    ({"bogus": 1}, TypeError, "unexpected keyword argument 'bogus'"),
    ({"pagesize": 4096}, TypeError, "unexpected keyword argument 'pagesize'"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS)
def test_bad_options_are_refused_before_anything_is_created(
    tmp_path: os.PathLike[str], options: dict[str, Any], error: type[Exception], message: str
) -> None:
    path = os.path.join(os.fspath(tmp_path), "db")
    with pytest.raises(error, match=message):
        kvmap.open(path, **options)
    assert not os.path.exists(path)


def test_options_passed_positionally_are_refused(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "db")
    with pytest.raises(TypeError, match="positional argument"):
        kvmap.open(path, True)  # type: ignore[misc]
    assert not os.path.exists(path)


def test_zero_cache_size_is_allowed(open_db: OpenDB) -> None:
    db = open_db(cache_size=0)
    model = {b"k%03d" % i: b"v" * 40 for i in range(200)}
    db.put_many(model.items())
    db.checkpoint()
    same(db, model)


@pytest.mark.parametrize(("path", "tname"), [(None, "NoneType"), (3, "int"), (b"db", "bytes")])
def test_bad_path_type(path: Any, tname: str) -> None:
    with pytest.raises(TypeError, match=rf"not {tname}$"):
        kvmap.open(path)


def _a_file(tmp_path: os.PathLike[str]) -> str:
    path = os.path.join(os.fspath(tmp_path), "file")
    with open(path, "wb") as f:
        f.write(b"not a directory")
    return path


def test_path_that_is_a_file_is_refused_and_left_alone(tmp_path: os.PathLike[str]) -> None:
    path = _a_file(tmp_path)
    for options in ({}, {"readonly": True}, {"create": False}):
        with pytest.raises((OSError, kvmap.Error)):
            kvmap.open(path, **options)
    with open(path, "rb") as f:
        assert f.read() == b"not a directory"  # untouched
    assert os.listdir(os.fspath(tmp_path)) == ["file"]


def test_path_that_is_a_file_raises_the_oserror(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(NotADirectoryError, match="a kvmap database is a directory"):
        kvmap.open(_a_file(tmp_path))


def test_bad_options_on_an_open_database(filled: tuple[kvmap.Database, Model]) -> None:
    db, model = filled
    with pytest.raises(ValueError, match="'bogus'"):
        db.begin(write=True, sync="bogus")
    db.put(b"after", b"1")  # the failed begin() left no lock behind
    model[b"after"] = b"1"
    same(db, model)


def test_begin_sync_of_the_wrong_type_raises_typeerror(db: kvmap.Database) -> None:
    with pytest.raises(TypeError, match="not int"):
        db.begin(write=True, sync=1)  # type: ignore[arg-type]


def test_begin_read_snapshot_with_a_bogus_sync_is_refused(db: kvmap.Database) -> None:
    with pytest.raises(ValueError, match="'bogus'"):
        db.begin(sync="bogus").close()


def test_existing_database_keeps_its_page_size(db_path: str, open_db: OpenDB) -> None:
    db = open_db(page_size=512)
    db.put(b"a", b"1")
    db.close()
    db = open_db(page_size=8192)  # ignored: the database was created with 512
    assert db.page_size == 512 and db.max_key_size == 110
    same(db, {b"a": b"1"})


def test_negative_lock_timeout_means_do_not_wait(db_path: str, open_db: OpenDB) -> None:
    db = open_db()
    with pytest.raises(kvmap.DatabaseLockedError):
        kvmap.open(db_path, lock_timeout=-1)
    db.check()


def test_nan_lock_timeout_is_refused(db_path: str, open_db: OpenDB) -> None:
    db = open_db()
    result: list[object] = []

    def second_open() -> None:
        try:
            result.append(kvmap.open(db_path, lock_timeout=math.nan))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            result.append(exc)

    t = threading.Thread(target=second_open, daemon=True)
    t.start()
    t.join(1.0)
    hung = t.is_alive()
    db.close()  # lets a hung open through
    t.join(10)
    for r in result:
        if isinstance(r, kvmap.Database):
            r.close()
    assert not hung, "open(lock_timeout=nan) of a locked database never returned"
    assert isinstance(result[0], ValueError)


# -- iterating while writing ---------------------------------------------------------------------


def test_iterating_the_database_while_writing_it(open_db: OpenDB) -> None:
    """db.items() reads one snapshot, taken at its first next(): writes made during the
    iteration (with a checkpoint after each, so freed pages are reused) do not show."""
    db = open_db(checkpoint_size=512, sync="off")
    model = {b"k%03d" % i: b"v" for i in range(100)}
    db.put_many(model.items())
    seen = []
    for k, v in db.items():
        seen.append((k, v))
        db.delete(k)
        db.put(k + b"+", b"new")
    assert seen == sorted(model.items())
    same(db, {k + b"+": b"new" for k in model})


def test_iterating_a_write_transaction_while_writing_it(
    filled: tuple[kvmap.Database, Model],
) -> None:
    """Inside a write transaction the scan merges the transaction's buffer as it stood when
    the scan started (keys) with values read as it goes: no error, no key twice, and the
    commit holds every write."""
    db, model = filled
    with db.begin(write=True) as txn:
        txn.put(b"k05", b"before")
        seen = []
        for k in txn.keys():
            seen.append(k)
            txn.put(k + b"+", b"added")
            txn.put(b"k29", b"changed")
        assert seen == sorted({*model, b"k05"})  # no key twice, no added key
    model |= {k + b"+": b"added" for k in seen} | {b"k05": b"before", b"k29": b"changed"}
    same(db, model)


def test_reverse_takes_the_truth_value_of_any_object(
    filled: tuple[kvmap.Database, Model],
) -> None:
    db, model = filled
    assert list(db.keys(reverse="yes")) == sorted(model, reverse=True)  # type: ignore[arg-type]
    assert list(db.keys(reverse=0)) == sorted(model)
    same(db, model)


# -- deleting missing keys, closing twice ----------------------------------------------------


def test_deleting_a_missing_key(filled: tuple[kvmap.Database, Model]) -> None:
    db, model = filled
    seq = db.stats()["commit_seq"]
    assert db.delete(b"missing") is False
    assert db.stats()["commit_seq"] == seq  # a delete of a missing key commits nothing
    with pytest.raises(KeyError) as info:
        del db[b"missing"]
    assert info.value.args == (b"missing",)
    with db.begin(write=True) as txn:
        assert txn.delete(b"missing") is False
        with pytest.raises(KeyError):
            del txn[b"missing"]
        assert txn.delete(b"k00") is True
        assert txn.delete(b"k00") is False  # already deleted in this transaction
    del model[b"k00"]
    with pytest.raises(KeyError):
        db[b"missing"]
    assert db.get(b"missing", b"default") == b"default"
    same(db, model)


def test_closing_twice_everything(filled: tuple[kvmap.Database, Model], open_db: OpenDB) -> None:
    db, model = filled
    snap = db.begin()
    snap.close()
    snap.close()
    txn = db.begin(write=True)
    txn.abort()
    txn.abort()
    txn.close()
    with db:
        pass  # __exit__ closes
    db.close()
    db.close()
    same(open_db(), model)


# -- put_many misuse ------------------------------------------------------------------------


def test_put_many_append_out_of_order(filled: tuple[kvmap.Database, Model]) -> None:
    db, model = filled
    with pytest.raises(kvmap.OrderError, match="not greater"):
        db.put_many([(b"zz1", b"1"), (b"zz0", b"0")], append=True)
    with pytest.raises(kvmap.OrderError):
        db.put_many([(b"a", b"1")], append=True)  # below existing keys
    assert issubclass(kvmap.OrderError, ValueError)
    same(db, model)  # db.put_many is one transaction: aborted whole
    with db.begin(write=True) as txn:
        with pytest.raises(kvmap.OrderError):
            txn.put_many([(b"zz1", b"1"), (b"zz2", b"2"), (b"zz0", b"0")], append=True)
        # documented: the items before the offending one stay in the transaction
    model |= {b"zz1": b"1", b"zz2": b"2"}
    same(db, model)


@pytest.mark.parametrize(
    ("items", "error", "message"),
    [
        (None, TypeError, "NoneType"),
        (5, TypeError, "int"),
        ([b"ab"], TypeError, "not int"),  # a bytes item unpacks into two ints
        ([(b"a",)], ValueError, "not enough values"),
        ([(b"a", b"b", b"c")], ValueError, "too many values"),
    ],
)
def test_put_many_with_items_that_are_not_pairs(
    filled: tuple[kvmap.Database, Model], items: Any, error: type[Exception], message: str
) -> None:
    db, model = filled
    with pytest.raises(error, match=message):
        db.put_many([(b"first", b"ok"), *items] if isinstance(items, list) else items)
    same(db, model)  # the transaction was aborted: not even the first pair
