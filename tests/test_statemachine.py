"""A hypothesis state machine that drives a real kvmap database against a plain dict model.

Pages are 512 bytes (the smallest), so splits, merges, overflow runs and page reuse happen
after a handful of operations.  The machine covers autocommit puts and deletes, the mapping
protocol, write transactions that commit or abort (``abort()``, an exception in ``with``),
reads inside a write transaction seeing its own writes, read snapshots held across later
writes, compaction and reopening, range/prefix/reverse scans, and ``check()``.

A failure prints the shortest sequence of steps hypothesis found; replay it by pasting the
steps into a script (every step is a plain kvmap call).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import kvmap
from kvmap.format import max_key_size

PAGE_SIZE = 512
MAX_KEY = max_key_size(PAGE_SIZE)
MAX_SNAPSHOTS = 4
CHECK_EVERY = 8  # steps between two db.check() calls

# -- strategies ------------------------------------------------------------------------------
# A tiny alphabet (with the extremes 0x00 and 0xff) keeps collisions, shared prefixes and
# lexicographic neighbours frequent.
_ALPHABET = b"ab\x00\xff"
_short_keys = st.lists(st.sampled_from(b"ab"), max_size=3).map(bytes)
_medium_keys = st.lists(st.sampled_from(_ALPHABET), max_size=40).map(bytes)
_max_keys = st.tuples(st.lists(st.sampled_from(_ALPHABET), max_size=3), st.sampled_from(b"ab")).map(
    lambda t: bytes(t[0]) + bytes([t[1]]) * (MAX_KEY - len(t[0]))
)
keys = st.one_of(_short_keys, _medium_keys, _max_keys)
bounds = st.none() | st.one_of(_short_keys, _medium_keys)
prefixes = st.none() | st.lists(st.sampled_from(_ALPHABET), max_size=3).map(bytes)


def _big_value(t: tuple[int, int]) -> bytes:
    seed, size = t
    # position-dependent content: a misplaced or stale overflow page shows up as a mismatch
    return bytes((seed + i * 7 + (i >> 8)) & 0xFF for i in range(size))


values = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=300),
    st.tuples(st.integers(0, 255), st.integers(1000, 9000)).map(_big_value),
)
# bytes-like wrappers the API accepts for keys and values
wrappers = st.sampled_from([bytes, bytearray, memoryview])


def expected_items(
    model: dict[bytes, bytes],
    start: bytes | None,
    stop: bytes | None,
    prefix: bytes | None,
    reverse: bool,
) -> list[tuple[bytes, bytes]]:
    """What ``items(start, stop, prefix=prefix, reverse=reverse)`` must yield."""
    out = sorted(
        (k, v)
        for k, v in model.items()
        if (start is None or k >= start)
        and (stop is None or k < stop)
        and (prefix is None or k.startswith(prefix))
    )
    if reverse:
        out.reverse()
    return out


def assert_view(
    view: Any,
    model: dict[bytes, bytes],
    probe: list[bytes],
    start: bytes | None,
    stop: bytes | None,
    prefix: bytes | None,
    reverse: bool,
    what: str,
) -> None:
    """``view`` (a database, snapshot or write txn) holds exactly ``model``: point reads of
    the keys in ``probe``, ``len``, and items/keys/values over one range."""
    for k in probe:
        want = model.get(k)
        assert view.get(k) == want, f"{what}.get({k!r})"
        assert (k in view) == (want is not None), f"{k!r} in {what}"
    assert len(view) == len(model), f"len({what})"
    exp = expected_items(model, start, stop, prefix, reverse)
    kw = {"prefix": prefix, "reverse": reverse}
    args = f"({start!r}, {stop!r}, prefix={prefix!r}, reverse={reverse})"
    assert list(view.items(start, stop, **kw)) == exp, f"{what}.items{args}"
    assert list(view.keys(start, stop, **kw)) == [k for k, _ in exp], f"{what}.keys{args}"
    assert list(view.values(start, stop, **kw)) == [v for _, v in exp], f"{what}.values{args}"


class Abort(Exception):
    """Raised inside ``with db.begin(write=True)`` to make it abort."""


# -- the machine -----------------------------------------------------------------------------
class KVMapMachine(RuleBasedStateMachine):
    sync = "off"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="kvmap-sm-")
        self.path = os.path.join(self.tmp, "db")
        self.options: dict[str, Any] = {"page_size": PAGE_SIZE, "sync": self.sync}
        self.model: dict[bytes, bytes] = {}
        # open read snapshots, each with a frozen copy of the model it must keep seeing
        self.snaps: list[tuple[kvmap.Snapshot, dict[bytes, bytes]]] = []
        self.steps = 0
        self.db_open = False

    @initialize(checkpoint_size=st.sampled_from([None, None, 0, 2048, 65536]))
    def open_db(self, checkpoint_size: int | None) -> None:
        """Open the database; a small ``checkpoint_size`` folds the WAL into the tree every
        commit (0) or every few commits, the default (None) almost never."""
        if checkpoint_size is not None:
            self.options["checkpoint_size"] = checkpoint_size
        self.db = kvmap.open(self.path, **self.options)
        self.db_open = True
        assert self.db.max_key_size == MAX_KEY

    def teardown(self) -> None:
        """Always: verify and close the snapshots, ``check()``, close, and reopen to see
        exactly the committed contents."""
        try:
            if not self.db_open:  # a step failed in reopen(); that failure is the report
                return
            self._verify_snapshots()
            for snap, _ in self.snaps:
                snap.close()
            self.snaps.clear()
            self.db.check()
            self.db.close()
            with kvmap.open(self.path, **self.options) as db:
                assert list(db.items()) == sorted(self.model.items())
                db.check()
        finally:
            if hasattr(self, "db"):
                self.db.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _verify_snapshots(self) -> None:
        for i, (snap, frozen) in enumerate(self.snaps):
            assert len(snap) == len(frozen), f"len(snaps[{i}])"
            assert list(snap.items()) == sorted(frozen.items()), f"snaps[{i}].items()"

    def _probe(self, key: bytes, *models: dict[bytes, bytes]) -> list[bytes]:
        """Keys worth reading: ``key``, a few keys of each model (present keys), and their
        neighbours (likely missing)."""
        out = [key, key + b"\x00", key[:-1]]
        for m in models:
            ks = sorted(m)
            if ks:
                for k in (ks[0], ks[-1], ks[len(ks) // 2]):
                    out.extend((k, k + b"\x00", k[:-1]))
        return out

    # -- autocommit writes ---------------------------------------------------------------
    @rule(key=keys, value=values, wrap=wrappers, how=st.sampled_from(["put", "setitem"]))
    def put(self, key: bytes, value: bytes, wrap: Any, how: str) -> None:
        if how == "put":
            self.db.put(wrap(key), wrap(value))
        else:
            self.db[wrap(key)] = wrap(value)
        self.model[key] = value
        assert self.db.get(key) == value

    @rule(key=keys, how=st.sampled_from(["delete", "delitem"]))
    def delete(self, key: bytes, how: str) -> None:
        present = key in self.model
        if how == "delete":
            assert self.db.delete(key) is present
        elif present:
            del self.db[key]
        else:
            with pytest.raises(KeyError):
                del self.db[key]
        self.model.pop(key, None)
        assert key not in self.db

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_present(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)), label="key")
        assert self.db.delete(key) is True
        del self.model[key]
        assert self.db.get(key) is None

    @rule(key=_max_keys, value=values)
    def put_max_key(self, key: bytes, value: bytes) -> None:
        assert len(key) == MAX_KEY
        self.db.put(key, value)
        self.model[key] = value
        with pytest.raises(kvmap.KeyTooLargeError):
            self.db.put(key + b"a", value)
        assert self.db.get(key + b"a") is None
        assert self.db[key] == value

    @rule(
        seed=st.integers(0, 2**32 - 1),
        n=st.integers(1, 150),
        big=st.booleans(),
        how=st.sampled_from(["put_many", "txn"]),
    )
    def bulk_put(self, seed: int, n: int, big: bool, how: str) -> None:
        """Many keys in one commit: deep trees and many splits at once."""
        r = random.Random(seed)
        batch = []
        for _ in range(n):
            k = bytes(r.choice(_ALPHABET) for _ in range(r.randrange(1, 12)))
            size = r.choice([0, 5, 30, 100, 250, 2000 if big else 60])
            batch.append((k, r.randbytes(size)))
        if how == "put_many":
            self.db.put_many(batch)
        else:
            with self.db.begin(write=True) as txn:
                for k, v in batch:
                    txn[k] = v
        self.model.update(batch)
        assert len(self.db) == len(self.model)

    @rule(start=bounds, stop=bounds, prefix=prefixes)
    def delete_range(self, start: bytes | None, stop: bytes | None, prefix: bytes | None) -> None:
        """Delete every key of a range in one commit: many merges at once."""
        doomed = [k for k, _ in expected_items(self.model, start, stop, prefix, False)]
        with self.db.begin(write=True) as txn:
            for k in txn.keys(start, stop, prefix=prefix):
                del txn[k]  # deleting while iterating the txn is allowed
        for k in doomed:
            del self.model[k]
        assert list(self.db.keys(start, stop, prefix=prefix)) == []
        assert len(self.db) == len(self.model)

    # -- point reads ---------------------------------------------------------------------
    @rule(key=keys)
    def get(self, key: bytes) -> None:
        want = self.model.get(key)
        assert self.db.get(key) == want
        assert self.db.get(key, b"<default>") == (b"<default>" if want is None else want)
        assert (key in self.db) == (want is not None)
        if want is None:
            with pytest.raises(KeyError):
                self.db[key]
        else:
            assert self.db[key] == want

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def get_present(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)), label="key")
        assert self.db[key] == self.model[key]
        assert self.db.get(bytearray(key)) == self.model[key]
        assert memoryview(key) in self.db

    @rule()
    def length(self) -> None:
        assert len(self.db) == len(self.model)
        assert self.db.stats()["entries"] == len(self.model)

    # -- scans ---------------------------------------------------------------------------
    @rule(start=bounds, stop=bounds, prefix=prefixes, reverse=st.booleans())
    def scan(
        self, start: bytes | None, stop: bytes | None, prefix: bytes | None, reverse: bool
    ) -> None:
        assert_view(self.db, self.model, [], start, stop, prefix, reverse, "db")

    @rule()
    def iterate_all(self) -> None:
        assert list(self.db) == sorted(self.model)

    @rule(key=keys, value=values, reverse=st.booleans())
    def scan_across_write(self, key: bytes, value: bytes, reverse: bool) -> None:
        """``db.items()`` takes its snapshot at the first ``next()``: a write made while the
        iteration is under way is not seen by it."""
        exp = expected_items(self.model, None, None, None, reverse)
        it = self.db.items(reverse=reverse)
        first = next(it, None)  # the snapshot is taken here
        self.db.put(key, value)
        got = [] if first is None else [first, *it]
        assert got == exp
        self.model[key] = value

    # -- write transactions --------------------------------------------------------------
    @rule(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("put"), keys, values),
                st.tuples(st.just("delete"), keys, st.none()),
                st.tuples(st.just("delete_present"), st.integers(0, 1 << 16), st.none()),
            ),
            min_size=1,
            max_size=12,
        ),
        end=st.sampled_from(["commit", "with", "abort", "raise", "abort_in_with"]),
        txn_sync=st.sampled_from([None, None, None, "off", "normal", "full"]),
        start=bounds,
        stop=bounds,
        prefix=prefixes,
        reverse=st.booleans(),
    )
    def transaction(
        self,
        ops: list[tuple[str, Any, bytes | None]],
        end: str,
        txn_sync: str | None,
        start: bytes | None,
        stop: bytes | None,
        prefix: bytes | None,
        reverse: bool,
    ) -> None:
        local = dict(self.model)
        committed = self.model

        def body(txn: kvmap.WriteTxn) -> None:
            for op, k, v in ops:
                if op == "delete_present":
                    if not local:
                        continue
                    k = sorted(local)[k % len(local)]
                    op = "delete"
                if op == "put":
                    assert v is not None
                    txn.put(k, v)
                    local[k] = v
                    assert txn.get(k) == v
                else:
                    assert txn.delete(k) is (k in local)
                    local.pop(k, None)
                    assert txn.get(k) is None
                    assert k not in txn
                # uncommitted writes are invisible outside the transaction
                assert self.db.get(k) == committed.get(k)
            probe = self._probe(b"a", local, committed)
            probe += [k for _, k, _ in ops if isinstance(k, bytes)]
            assert_view(txn, local, probe, start, stop, prefix, reverse, "txn")
            assert len(self.db) == len(committed)
            # a read snapshot taken by the writing thread sees the last commit only
            with self.db.begin() as snap:
                assert len(snap) == len(committed)
                assert list(snap.items(start, stop, prefix=prefix, reverse=reverse)) == (
                    expected_items(committed, start, stop, prefix, reverse)
                )

        if end in ("with", "raise", "abort_in_with"):
            with pytest.raises(Abort) if end == "raise" else contextlib.nullcontext():
                with self.db.begin(write=True, sync=txn_sync) as txn:
                    body(txn)
                    if end == "raise":
                        raise Abort
                    if end == "abort_in_with":
                        txn.abort()
        else:
            txn = self.db.begin(write=True, sync=txn_sync)
            try:
                body(txn)
            except BaseException:
                txn.abort()
                raise
            if end == "commit":
                txn.commit()
            else:
                txn.abort()
        if end in ("commit", "with"):
            self.model = local
        # the transaction is finished: using it raises, and the writer slot is free again
        with pytest.raises(kvmap.TxnClosedError):
            txn.get(b"a")
        with pytest.raises(kvmap.TxnClosedError):
            txn.put(b"a", b"b")
        assert_view(
            self.db, self.model, self._probe(b"", self.model, local), start, stop, prefix,
            reverse, "db",
        )  # fmt: skip

    # -- read snapshots held across writes -----------------------------------------------
    @precondition(lambda self: len(self.snaps) < MAX_SNAPSHOTS)
    @rule()
    def open_snapshot(self) -> None:
        snap = self.db.begin()
        self.snaps.append((snap, dict(self.model)))
        assert len(snap) == len(self.model)

    @precondition(lambda self: self.snaps)
    @rule(
        data=st.data(),
        key=keys,
        start=bounds,
        stop=bounds,
        prefix=prefixes,
        reverse=st.booleans(),
    )
    def check_snapshot(
        self,
        data: st.DataObject,
        key: bytes,
        start: bytes | None,
        stop: bytes | None,
        prefix: bytes | None,
        reverse: bool,
    ) -> None:
        i = data.draw(st.integers(0, len(self.snaps) - 1), label="snapshot")
        snap, frozen = self.snaps[i]
        probe = self._probe(key, frozen, self.model)
        assert_view(snap, frozen, probe, start, stop, prefix, reverse, f"snaps[{i}]")
        for k in probe:
            if k in frozen:
                assert snap[k] == frozen[k]
            else:
                with pytest.raises(KeyError):
                    snap[k]

    @precondition(lambda self: self.snaps)
    @rule(data=st.data(), how=st.sampled_from(["close", "with", "abort"]))
    def close_snapshot(self, data: st.DataObject, how: str) -> None:
        i = data.draw(st.integers(0, len(self.snaps) - 1), label="snapshot")
        snap, frozen = self.snaps[i]
        assert list(snap.items(reverse=True)) == sorted(frozen.items(), reverse=True)
        del self.snaps[i]
        if how == "with":
            with snap:
                assert list(snap.keys()) == sorted(frozen)
        elif how == "abort":
            snap.abort()
        else:
            snap.close()
        with pytest.raises(kvmap.TxnClosedError):
            snap.get(b"a")
        with pytest.raises(kvmap.TxnClosedError):
            len(snap)

    # -- maintenance ---------------------------------------------------------------------
    @rule()
    def compact(self) -> None:
        saved = self.db.compact()
        assert isinstance(saved, int)
        assert len(self.db) == len(self.model)
        assert list(self.db.items()) == sorted(self.model.items())
        self.db.check()
        # snapshots taken before the compaction keep reading the old (unlinked) file
        self._verify_snapshots()

    @rule()
    def checkpoint(self) -> None:
        self.db.checkpoint()
        assert len(self.db) == len(self.model)
        assert list(self.db.items(reverse=True)) == sorted(self.model.items(), reverse=True)
        self._verify_snapshots()

    @rule(close_snapshots_first=st.booleans(), sync_first=st.booleans())
    def reopen(self, close_snapshots_first: bool, sync_first: bool) -> None:
        self._verify_snapshots()
        if close_snapshots_first:
            for snap, _ in self.snaps:
                snap.close()
            self.snaps.clear()
        if sync_first:
            self.db.sync()
        self.db_open = False
        self.db.close()
        for snap, _ in self.snaps:
            with pytest.raises(kvmap.TxnClosedError):
                snap.get(b"a")
            with pytest.raises(kvmap.TxnClosedError):
                list(snap.items())
        self.snaps.clear()
        with pytest.raises(kvmap.DatabaseClosedError):
            self.db.get(b"a")
        self.db = kvmap.open(self.path, **self.options)
        self.db_open = True
        assert len(self.db) == len(self.model)
        assert list(self.db.items()) == sorted(self.model.items())
        assert list(self.db.items(reverse=True)) == sorted(self.model.items(), reverse=True)

    @rule()
    def readonly_handle(self) -> None:
        """A second, readonly handle opened now sees exactly the committed contents once
        they reached the file (under sync="off" commits sit in the writer's buffer until
        ``flush()``: other handles cannot see them before that)."""
        self.db.flush()
        with kvmap.open(self.path, readonly=True) as ro:
            assert len(ro) == len(self.model)
            assert list(ro.items()) == sorted(self.model.items())
            ro.check()

    @invariant()
    def periodic_check(self) -> None:
        """Every few steps: ``check()`` the database and re-read every held snapshot in
        full (so snapshots are verified even in runs where ``check_snapshot`` is rare)."""
        self.steps += 1
        if self.steps % CHECK_EVERY == 0:
            self.db.check()
            self._verify_snapshots()


class KVMapFullSyncMachine(KVMapMachine):
    """The same machine under ``sync="full"`` (every commit fsyncs the WAL)."""

    sync = "full"


def _settings(max_examples: int, steps: int) -> settings:
    return settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_statemachine() -> None:
    run_state_machine_as_test(KVMapMachine, settings=_settings(400, 50))


def test_statemachine_sync_full() -> None:
    run_state_machine_as_test(KVMapFullSyncMachine, settings=_settings(40, 30))


@pytest.mark.slow
def test_statemachine_slow() -> None:
    run_state_machine_as_test(KVMapMachine, settings=_settings(2000, 100))


@pytest.mark.slow
def test_statemachine_sync_full_slow() -> None:
    run_state_machine_as_test(KVMapFullSyncMachine, settings=_settings(200, 60))
