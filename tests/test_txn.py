"""kvmap.txn: read snapshots and the write transaction.

Commit and abort (explicit and by ``with``), reads of one's own writes, snapshot isolation
(including scans and page reuse), many snapshots per thread, the one-writer rule within a
thread and across threads, and the errors for finished transactions and closed databases.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable

import pytest

import kvmap

OpenDB = Callable[..., kvmap.Database]


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


def fill(db: kvmap.Database, n: int, value: bytes = b"v") -> dict[bytes, bytes]:
    model = {b"%05d" % i: value + b"%d" % i for i in range(n)}
    db.put_many(model.items())
    return model


# -- commit and abort ------------------------------------------------------------------------


def test_with_commits_on_success(db: kvmap.Database) -> None:
    with db.begin(write=True) as txn:
        assert isinstance(txn, kvmap.WriteTxn)
        assert txn.write is True
        txn.put(b"a", b"1")
        txn[b"b"] = b"2"
        assert b"a" not in db  # invisible until the commit
    assert db[b"a"] == b"1" and db[b"b"] == b"2"


def test_with_aborts_on_exception(db: kvmap.Database) -> None:
    db.put(b"keep", b"old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.begin(write=True) as txn:
        txn.put(b"keep", b"new")
        txn.put(b"other", b"x")
        txn.delete(b"keep")
        raise Boom
    assert list(db.items()) == [(b"keep", b"old")]
    # the write slot is free again
    with db.begin(write=True) as txn:
        txn.put(b"after", b"1")
    assert db[b"after"] == b"1"


def test_keyboard_interrupt_aborts_too(db: kvmap.Database) -> None:
    with pytest.raises(KeyboardInterrupt), db.begin(write=True) as txn:
        txn.put(b"a", b"1")
        raise KeyboardInterrupt
    assert len(db) == 0
    db.put(b"b", b"2")  # not left holding the write slot


def test_explicit_commit_and_abort(db: kvmap.Database) -> None:
    txn = db.begin(write=True)
    txn.put(b"a", b"1")
    txn.commit()
    assert db[b"a"] == b"1"
    txn = db.begin(write=True)
    txn.put(b"a", b"2")
    txn.put(b"b", b"2")
    txn.abort()
    assert list(db.items()) == [(b"a", b"1")]
    txn.abort()  # idempotent
    txn.close()
    # commit() or abort() inside a with block: the exit does nothing more
    with db.begin(write=True) as txn:
        txn.put(b"c", b"3")
        txn.commit()
    with db.begin(write=True) as txn:
        txn.put(b"d", b"4")
        txn.abort()
    assert list(db) == [b"a", b"c"]


def test_empty_commit_is_fine(db: kvmap.Database) -> None:
    with db.begin(write=True):
        pass
    with db.begin(write=True) as txn:
        assert txn.delete(b"missing") is False
    assert len(db) == 0


def test_abandoned_write_txn_releases_the_slot(db: kvmap.Database) -> None:
    txn = db.begin(write=True)
    txn.put(b"lost", b"1")
    del txn
    gc.collect()
    db.put(b"a", b"1")  # would raise NestedWriteError if the slot were still held
    assert list(db) == [b"a"]


# -- reads see own writes --------------------------------------------------------------------


def test_reads_see_own_writes(db: kvmap.Database) -> None:
    fill(db, 10)
    with db.begin(write=True) as txn:
        assert len(txn) == 10
        txn.put(b"00003", b"changed")
        txn.put(b"new", b"n")
        assert txn.delete(b"00004") is True
        assert txn.delete(b"00004") is False
        assert txn.delete(b"never") is False
        assert txn.get(b"00003") == b"changed"
        assert txn[b"new"] == b"n"
        assert b"00004" not in txn
        assert txn.get(b"00004", b"gone") == b"gone"
        with pytest.raises(KeyError):
            txn[b"00004"]
        with pytest.raises(KeyError):
            del txn[b"00004"]
        assert len(txn) == 10
        # put then delete a key that was never committed; delete then put one that was
        txn.put(b"tmp", b"t")
        assert len(txn) == 11
        assert txn.delete(b"tmp") is True
        assert txn.delete(b"00005") is True
        txn.put(b"00005", b"back")
        assert len(txn) == 10
        keys = list(txn.keys())
        assert keys == sorted([b"%05d" % i for i in range(10) if i != 4] + [b"new"])
        assert txn[b"00005"] == b"back"
        # a snapshot opened now sees only the last commit
        with db.begin() as snap:
            assert snap[b"00003"] == b"v3" and b"new" not in snap and len(snap) == 10
    assert len(db) == 10
    assert db[b"00003"] == b"changed" and db[b"00005"] == b"back"
    assert b"tmp" not in db and b"00004" not in db
    db.check()


@pytest.mark.parametrize("reverse", [False, True])
def test_write_txn_scans_merge_buffered_writes(
    db: kvmap.Database, rng: random.Random, reverse: bool
) -> None:
    model = {b"%03d" % i: b"c%d" % i for i in range(0, 400, 2)}
    db.put_many(model.items())
    with db.begin(write=True) as txn:
        for _ in range(300):
            k = b"%03d" % rng.randrange(420)
            if rng.random() < 0.4:
                assert txn.delete(k) == (k in model)
                model.pop(k, None)
            else:
                v = rng.randbytes(rng.choice([0, 3, 200]))
                txn.put(k, v)
                model[k] = v
        assert len(txn) == len(model)
        cases: list[dict[str, bytes | None]] = [
            {},
            {"start": b"1"},
            {"stop": b"2"},
            {"start": b"05", "stop": b"31"},
            {"prefix": b"1"},
            {"prefix": b"41"},
            {"prefix": b"9"},
            {"prefix": b"2", "start": b"25", "stop": b"27"},
        ]
        for kw in cases:
            want = expected_range(model, reverse=reverse, **kw)
            assert list(txn.items(**kw, reverse=reverse)) == want, kw
            assert list(txn.keys(**kw, reverse=reverse)) == [k for k, _ in want], kw
            assert list(txn.values(**kw, reverse=reverse)) == [v for _, v in want], kw
    assert list(db.items()) == sorted(model.items())


def test_writes_during_iteration_of_a_write_txn(db: kvmap.Database) -> None:
    model = fill(db, 200)
    with db.begin(write=True) as txn:
        txn.put(b"00000x", b"buffered")
        seen = []
        for k in txn.keys():
            seen.append(k)
            txn.delete(k)
            txn.put(b"z" + k, b"moved")
        assert seen == sorted(list(model) + [b"00000x"])
        assert len(txn) == 201
    assert list(db) == sorted(b"z" + k for k in seen)


# -- snapshots ------------------------------------------------------------------------------


def test_snapshot_never_sees_later_commits(db: kvmap.Database) -> None:
    model = fill(db, 300)
    big = bytes(range(256)) * 20  # an overflow value
    db.put(b"big", big)
    model[b"big"] = big
    snap = db.begin()
    assert isinstance(snap, kvmap.Snapshot) and not isinstance(snap, kvmap.WriteTxn)
    assert snap.write is False
    with db.begin(write=True) as txn:
        for i in range(0, 300, 3):
            txn.delete(b"%05d" % i)
        for i in range(1, 300, 3):
            txn.put(b"%05d" % i, b"NEW")
        txn.put(b"added", b"x")
        txn.put(b"big", b"small now")
    db.put(b"another", b"y")
    del db[b"00002"]
    assert len(snap) == len(model) == 301
    assert snap[b"00000"] == b"v0"
    assert snap[b"00001"] == b"v1"
    assert snap.get(b"00002") == b"v2"
    assert snap[b"big"] == big
    assert b"added" not in snap and b"another" not in snap
    assert list(snap.items()) == sorted(model.items())
    assert list(snap.keys(b"00010", b"00020")) == [b"%05d" % i for i in range(10, 20)]
    assert list(snap.values(prefix=b"0000", reverse=True)) == [b"v%d" % i for i in range(9, -1, -1)]
    assert db[b"00001"] == b"NEW" and b"00000" not in db and db[b"big"] == b"small now"
    snap.close()


def test_snapshot_survives_page_reuse(db: kvmap.Database) -> None:
    """Pages the snapshot can reach are never reused while it lives (invariant 4), however
    many commits rewrite and free the tree around it."""
    model = {b"%04d" % i: bytes([i % 256]) * (10 + i % 700) for i in range(600)}
    db.put_many(model.items())
    with db.begin() as snap:
        for round_ in range(12):
            with db.begin(write=True) as txn:
                for i in range(600):
                    if (i + round_) % 4 == 0:
                        txn.delete(b"%04d" % i)
                    else:
                        txn.put(b"%04d" % i, b"r%d" % round_ * (1 + i % 300))
            assert snap.get(b"0005") == model[b"0005"]
        assert list(snap.items()) == sorted(model.items())
        assert list(snap.items(reverse=True)) == sorted(model.items(), reverse=True)
        assert len(snap) == 600
    db.check()
    # with the snapshot gone, the pages it pinned become reusable: the file stops growing
    db.put_many((b"%04d" % i, b"final") for i in range(600))
    size = db.stats()["file_size"]
    for _ in range(6):
        db.put_many((b"%04d" % i, b"again") for i in range(600))
    assert db.stats()["file_size"] == size


def test_snapshot_scans_are_isolated(db: kvmap.Database) -> None:
    model = fill(db, 100)
    with db.begin() as snap:
        it = snap.items(prefix=b"000")
        assert next(it) == (b"00000", b"v0")
        db.put_many((b"%05d" % i, b"later") for i in range(100))
        db.put(b"00000a", b"inserted")
        rest = list(it)
        assert rest == expected_range(model, prefix=b"000")[1:]
        assert list(snap.keys(reverse=True)) == sorted(model, reverse=True)


def test_many_snapshots_while_writing_in_one_thread(db: kvmap.Database) -> None:
    views: list[tuple[kvmap.Snapshot, dict[bytes, bytes]]] = []
    model: dict[bytes, bytes] = {}
    for step in range(8):
        snap = db.begin()
        views.append((snap, dict(model)))
        with db.begin(write=True) as txn:
            # snapshots opened while this thread holds the write txn see the last commit
            inner = db.begin()
            views.append((inner, dict(model)))
            for i in range(step * 20, step * 20 + 40):
                txn.put(b"%04d" % i, b"s%d" % step)
                model[b"%04d" % i] = b"s%d" % step
            if step % 2:
                k = sorted(model)[0]
                txn.delete(k)
                del model[k]
            assert db.get(b"%04d" % (step * 20 + 39)) is None  # db reads the last commit
    for snap, want in views:
        assert dict(snap.items()) == want
        assert len(snap) == len(want)
        snap.close()
    assert dict(db.items()) == model


def test_snapshot_repr(db: kvmap.Database) -> None:
    with db.begin() as snap:
        assert "finished" not in repr(snap)
        assert db.path in repr(snap)
    assert "finished" in repr(snap)


def test_snapshot_commit_and_abort_just_close(db: kvmap.Database) -> None:
    for end in ("commit", "abort", "close"):
        snap = db.begin()
        getattr(snap, end)()
        with pytest.raises(kvmap.TxnClosedError):
            snap.get(b"a")
        getattr(snap, end)()  # idempotent


def test_unclosed_snapshot_is_released_when_collected(db: kvmap.Database) -> None:
    fill(db, 300)
    snap = db.begin()
    db.put_many((b"%05d" % i, b"w") for i in range(300))
    del snap
    gc.collect()
    db.put_many((b"%05d" % i, b"x") for i in range(300))
    size = db.stats()["file_size"]
    for _ in range(4):
        db.put_many((b"%05d" % i, b"y") for i in range(300))
    assert db.stats()["file_size"] == size


# -- errors of finished transactions ---------------------------------------------------------


def _all_uses(txn: kvmap.Snapshot) -> list[Callable[[], object]]:
    return [
        lambda: txn.get(b"a"),
        lambda: txn[b"a"],
        lambda: b"a" in txn,
        lambda: len(txn),
        lambda: list(txn.items()),
        lambda: list(txn.keys()),
        lambda: list(txn.values()),
        lambda: list(txn),
        lambda: txn.put(b"a", b"1"),
        lambda: txn.delete(b"a"),
        lambda: txn.put_many([(b"a", b"1")]),
        lambda: txn.__setitem__(b"a", b"1"),
        lambda: txn.__enter__(),
    ]


@pytest.mark.parametrize("end", ["commit", "abort", "with", "with-raise"])
def test_use_after_end_raises_txn_closed(db: kvmap.Database, end: str) -> None:
    db.put(b"a", b"0")
    if end in ("commit", "abort"):
        txn = db.begin(write=True)
        txn.put(b"a", b"1")
        getattr(txn, end)()
    elif end == "with":
        with db.begin(write=True) as txn:
            txn.put(b"a", b"1")
    else:
        with pytest.raises(ValueError), db.begin(write=True) as txn:
            raise ValueError
    for use in _all_uses(txn):
        with pytest.raises(kvmap.TxnClosedError, match="finished"):
            use()
    with pytest.raises(kvmap.TxnClosedError):
        txn.commit()
    txn.abort()  # harmless
    db.put(b"b", b"2")  # the write slot was released


def test_use_of_closed_snapshot_raises_txn_closed(db: kvmap.Database) -> None:
    db.put(b"a", b"0")
    with db.begin() as snap:
        it = snap.items()
    for use in _all_uses(snap):
        with pytest.raises(kvmap.TxnClosedError):
            use()
    with pytest.raises(kvmap.TxnClosedError):
        next(it)


def test_iterator_of_finished_txn_raises(db: kvmap.Database) -> None:
    fill(db, 50)
    txn = db.begin(write=True)
    txn.put(b"x", b"y")
    it = txn.keys()
    txn.abort()
    with pytest.raises(kvmap.TxnClosedError):
        next(it)


def test_writes_in_read_snapshot_raise_read_only(db: kvmap.Database) -> None:
    db.put(b"a", b"1")
    with db.begin() as snap:
        for call in (
            lambda: snap.put(b"a", b"2"),
            lambda: snap.delete(b"a"),
            lambda: snap.put_many([(b"a", b"2")]),
            lambda: snap.__setitem__(b"a", b"2"),
            lambda: snap.__delitem__(b"a"),
        ):
            with pytest.raises(kvmap.ReadOnlyError, match="read snapshot"):
                call()
        assert snap[b"a"] == b"1"
    assert db[b"a"] == b"1"


# -- one writer ------------------------------------------------------------------------------


def test_nested_write_in_same_thread_raises(db: kvmap.Database) -> None:
    db.put(b"k", b"0")
    with db.begin(write=True) as txn:
        txn.put(b"a", b"1")
        for call in (
            lambda: db.begin(write=True),
            lambda: db.put(b"b", b"2"),
            lambda: db.__setitem__(b"b", b"2"),
            lambda: db.delete(b"k"),
            lambda: db.__delitem__(b"k"),
            lambda: db.put_many([(b"b", b"2")]),
        ):
            with pytest.raises(kvmap.NestedWriteError, match="already holds"):
                call()
        # the outer transaction is unharmed
        txn.put(b"c", b"3")
    assert list(db.items()) == [(b"a", b"1"), (b"c", b"3"), (b"k", b"0")]


def test_compact_inside_write_txn_raises_nested(db: kvmap.Database) -> None:
    with db.begin(write=True) as txn:
        txn.put(b"a", b"1")
        with pytest.raises(kvmap.NestedWriteError):
            db.compact()
    assert db[b"a"] == b"1"


def test_second_thread_waits_for_the_writer(db: kvmap.Database) -> None:
    db.put(b"n", b"0")
    about_to_begin = threading.Event()
    began = threading.Event()
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def second() -> None:
        try:
            about_to_begin.set()
            with db.begin(write=True) as txn:
                began.set()
                seen.append(txn[b"n"])
                txn.put(b"n", b"2")
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
            began.set()

    with db.begin(write=True) as txn:
        txn.put(b"n", b"1")
        t = threading.Thread(target=second)
        t.start()
        assert about_to_begin.wait(5)
        # the second thread is blocked in begin(write=True) while we hold the transaction
        assert not began.wait(0.3)
        # and reads (db.get, snapshots) do not block on the writer
        assert db[b"n"] == b"0"
    assert began.wait(5)
    t.join(5)
    assert not t.is_alive()
    assert not errors, errors
    assert seen == [b"1"]  # it began after our commit and saw it
    assert db[b"n"] == b"2"


def test_autocommit_put_from_another_thread_waits(db: kvmap.Database) -> None:
    done = threading.Event()

    def other() -> None:
        db.put(b"other", b"x")
        done.set()

    with db.begin(write=True) as txn:
        txn.put(b"mine", b"1")
        t = threading.Thread(target=other)
        t.start()
        assert not done.wait(0.3)
        assert b"other" not in db
    assert done.wait(5)
    t.join(5)
    assert list(db) == [b"mine", b"other"]


def test_second_thread_waits_for_aborted_writer_too(db: kvmap.Database) -> None:
    began = threading.Event()
    seen: list[object] = []

    def second() -> None:
        with db.begin(write=True) as txn:
            began.set()
            seen.append(txn.get(b"x"))

    txn = db.begin(write=True)
    txn.put(b"x", b"aborted")
    t = threading.Thread(target=second)
    t.start()
    assert not began.wait(0.2)
    txn.abort()
    assert began.wait(5)
    t.join(5)
    assert seen == [None]


def test_close_from_another_thread_waits_for_the_writer(open_db: OpenDB) -> None:
    db = open_db()
    closed = threading.Event()

    def closer() -> None:
        db.close()
        closed.set()

    with db.begin(write=True) as txn:
        txn.put(b"a", b"1")
        t = threading.Thread(target=closer)
        t.start()
        assert not closed.wait(0.3)
    assert closed.wait(5)
    t.join(5)
    db = open_db()
    assert db[b"a"] == b"1"


# -- closed databases ------------------------------------------------------------------------


def test_use_after_close(open_db: OpenDB) -> None:
    db = open_db()
    db.put(b"a", b"1")
    snap = db.begin()
    it = db.items()
    db.close()
    db.close()  # idempotent
    for call in (
        lambda: db.get(b"a"),
        lambda: db[b"a"],
        lambda: b"a" in db,
        lambda: len(db),
        lambda: db.put(b"b", b"2"),
        lambda: db.__setitem__(b"b", b"2"),
        lambda: db.delete(b"a"),
        lambda: db.__delitem__(b"a"),
        lambda: db.put_many([(b"b", b"2")]),
        lambda: db.begin(),
        lambda: db.begin(write=True),
        lambda: list(db.items()),
        lambda: list(db.keys()),
        lambda: list(db.values()),
        lambda: list(db),
        lambda: next(it),
        lambda: db.stats(),
        lambda: db.check(),
        lambda: db.compact(),
        lambda: db.sync(),
        lambda: db.__enter__(),
    ):
        with pytest.raises(kvmap.DatabaseClosedError, match="closed"):
            call()
    with pytest.raises(kvmap.TxnClosedError, match="closed"):
        snap.get(b"a")
    with pytest.raises(kvmap.TxnClosedError):
        list(snap.items())
    snap.close()


def test_write_txn_after_close_raises_txn_closed(open_db: OpenDB) -> None:
    db = open_db()
    txn = db.begin(write=True)
    txn.put(b"a", b"1")
    db.close()  # the thread holding the write txn may close: the txn is abandoned
    with pytest.raises(kvmap.TxnClosedError):
        txn.put(b"b", b"2")
    with pytest.raises(kvmap.TxnClosedError):
        txn.commit()
    txn.abort()
    db = open_db()
    assert len(db) == 0  # nothing was committed


# -- readonly handles ------------------------------------------------------------------------


def test_readonly_refuses_writes(open_db: OpenDB) -> None:
    db = open_db()
    db.put(b"a", b"1")
    db.close()
    ro = open_db(readonly=True)
    assert ro.readonly is True
    assert ro[b"a"] == b"1"
    assert list(ro.items()) == [(b"a", b"1")]
    with ro.begin() as snap:
        assert snap[b"a"] == b"1"
    for call in (
        lambda: ro.put(b"b", b"2"),
        lambda: ro.__setitem__(b"b", b"2"),
        lambda: ro.delete(b"a"),
        lambda: ro.__delitem__(b"a"),
        lambda: ro.put_many([(b"b", b"2")]),
        lambda: ro.begin(write=True),
        lambda: ro.compact(),
    ):
        with pytest.raises(kvmap.ReadOnlyError, match="readonly"):
            call()
    assert ro.check()
    assert ro.stats()["entries"] == 1
    ro.close()


def test_readonly_handle_beside_a_writer(open_db: OpenDB) -> None:
    db = open_db()
    db.put(b"a", b"1")
    ro = open_db(readonly=True)  # readers take no writer lock
    assert ro[b"a"] == b"1"
    db.put(b"b", b"2")  # the writer still works
    assert db[b"b"] == b"2"


def test_begin_bad_sync(db: kvmap.Database) -> None:
    with pytest.raises(ValueError, match="bogus"):
        db.begin(write=True, sync="bogus")
    db.put(b"a", b"1")  # the failed begin did not take the write slot


@pytest.mark.parametrize("mode", ["full", "normal", "off"])
def test_begin_with_sync_override(open_db: OpenDB, mode: str) -> None:
    db = open_db()
    with db.begin(write=True, sync=mode) as txn:
        txn.put(b"m", mode.encode())
    db.close()
    db = open_db()
    assert db[b"m"] == mode.encode()


def test_waiting_writer_sees_no_stale_state(db: kvmap.Database) -> None:
    """Threads queueing for the write slot each read-modify-write one counter: no update is
    lost, and every transaction sees the one before it."""
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def work() -> None:
        try:
            start.wait()
            for _ in range(15):
                with db.begin(write=True) as txn:
                    n = int(txn.get(b"c", b"0"))
                    time.sleep(0.0005)
                    txn.put(b"c", b"%d" % (n + 1))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert db[b"c"] == b"45"


def test_random_snapshots_and_commits(db: kvmap.Database, rng: random.Random) -> None:
    """Snapshots opened and closed at random between commits that rewrite, grow and shrink
    values (some overflowing a page): every snapshot keeps its view, and every commit leaves
    a database that checks (pages are reused only once no snapshot can reach them)."""
    model: dict[bytes, bytes] = {}
    live: list[tuple[kvmap.Snapshot, dict[bytes, bytes]]] = []
    for step in range(250):
        r = rng.random()
        if r < 0.25:
            live.append((db.begin(), dict(model)))
        elif r < 0.5 and live:
            snap, want = live.pop(rng.randrange(len(live)))
            assert dict(snap.items()) == want, step
            snap.close()
        else:
            with db.begin(write=True) as txn:
                for _ in range(rng.randrange(1, 12)):
                    k = b"k%02d" % rng.randrange(40)
                    if rng.random() < 0.25:
                        txn.delete(k)
                        model.pop(k, None)
                    else:
                        v = rng.randbytes(rng.choice([0, 10, 100, 700, 3000]))
                        txn.put(k, v)
                        model[k] = v
            db.check()
            assert dict(db.items()) == model
    for snap, want in live:
        assert dict(snap.items()) == want
        snap.close()
