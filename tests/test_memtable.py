"""The memtable (kvmap/memtable.py): version chains that give in-process snapshot isolation.

A key maps to a chain of (commit seq, value or None for a delete, older version).  A reader
at sequence S sees, per key, the newest version with ``seq <= S``, or nothing (then it falls
through to the tree).  ``keep_old=False`` cuts the chain (no reader needs the old version);
``keep_old=True`` keeps it.

The model below keeps, per key, the list of versions the memtable must still hold, so every
check is "memtable == model" for each sequence number.  The last tests drive a real
database: readers in other threads never see anything but one commit's state while a writer
goes on (invariant 6).
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.memtable import MISSING, Memtable

Op = tuple[bytes, bytes | None]


class Model:
    """What a memtable must answer: per key, the versions (seq, value) it still holds."""

    def __init__(self, first_seq: int) -> None:
        self.first_seq = first_seq
        self.versions: dict[bytes, list[tuple[int, bytes | None]]] = {}

    def apply(self, seq: int, ops: list[Op], keep_old: bool) -> None:
        for k, v in ops:
            chain = self.versions.setdefault(k, [])
            if not keep_old:
                del chain[:-1]  # the version being replaced is always kept, one step back
            chain.append((seq, v))

    def get(self, key: bytes, seq: int) -> object:
        for s, v in reversed(self.versions.get(key, [])):
            if s <= seq:
                return v
        return MISSING

    def range(
        self, start: bytes | None, stop: bytes | None, reverse: bool, seq: int
    ) -> list[tuple[bytes, bytes | None]]:
        out = []
        for k in sorted(self.versions, reverse=reverse):
            if (start is None or k >= start) and (stop is None or k < stop):
                v = self.get(k, seq)
                if v is not MISSING:
                    out.append((k, v))
        return out

    def latest(self) -> tuple[list[bytes], list[bytes | None]]:
        keys = sorted(self.versions)
        return keys, [self.versions[k][-1][1] for k in keys]


def _dedup(ops: list[Op]) -> list[Op]:
    """Commits carry unique, sorted keys (a write transaction's buffer)."""
    return sorted(dict(ops).items())


# -- point reads and keep_old ----------------------------------------------------------------


def test_versions_are_visible_per_sequence() -> None:
    m = Memtable(10)
    assert (m.first_seq, m.last_seq, len(m)) == (10, 10, 0)
    m.apply(11, [(b"a", b"1"), (b"b", b"1")], keep_old=True)
    m.apply(12, [(b"a", b"2")], keep_old=True)
    m.apply(13, [(b"a", None), (b"c", b"3")], keep_old=True)
    m.apply(14, [(b"a", b"4")], keep_old=True)
    assert m.last_seq == 14 and len(m) == 3
    assert [m.get(b"a", s) for s in range(10, 16)] == [MISSING, b"1", b"2", None, b"4", b"4"]
    assert [m.get(b"b", s) for s in (10, 11, 14)] == [MISSING, b"1", b"1"]
    assert [m.get(b"c", s) for s in (12, 13)] == [MISSING, b"3"]
    assert m.get(b"zzz", 14) is MISSING


def test_keep_old_false_cuts_the_chain() -> None:
    m = Memtable(0)
    m.apply(1, [(b"a", b"1")], keep_old=False)
    m.apply(2, [(b"a", b"2")], keep_old=False)
    # the replaced version stays one step back, for a reader that raced the commit
    assert m.get(b"a", 1) == b"1"
    m.apply(3, [(b"a", b"3")], keep_old=False)
    # nobody needed commit 1's version any more: a reader at 1 falls through to the tree
    assert m.get(b"a", 1) is MISSING
    assert [m.get(b"a", s) for s in (2, 3)] == [b"2", b"3"]


def test_keep_old_true_keeps_every_older_version() -> None:
    m = Memtable(0)
    m.apply(1, [(b"a", b"1")], keep_old=False)
    m.apply(2, [(b"a", b"2")], keep_old=True)
    m.apply(3, [(b"a", None)], keep_old=True)
    assert [m.get(b"a", s) for s in (0, 1, 2, 3)] == [MISSING, b"1", b"2", None]
    # a later commit without readers drops the chain below the version it replaces
    m.apply(4, [(b"a", b"4")], keep_old=False)
    assert [m.get(b"a", s) for s in (1, 2, 3, 4)] == [MISSING, MISSING, None, b"4"]


def test_keep_old_only_affects_the_keys_of_that_commit() -> None:
    m = Memtable(0)
    m.apply(1, [(b"a", b"1"), (b"b", b"1")], keep_old=False)
    m.apply(2, [(b"a", b"2"), (b"b", b"2")], keep_old=True)
    m.apply(3, [(b"a", b"3")], keep_old=False)
    assert m.get(b"a", 1) is MISSING and m.get(b"a", 2) == b"2"
    assert m.get(b"b", 1) == b"1"  # b's chain was not touched by commit 3


def test_tombstones_are_versions_too() -> None:
    m = Memtable(0)
    m.apply(1, [(b"a", None)], keep_old=False)
    assert m.get(b"a", 0) is MISSING  # before the delete: fall through
    assert m.get(b"a", 1) is None  # deleted: do not fall through to the tree
    assert list(m.range(None, None, False, 1)) == [(b"a", None)]
    assert m.latest() == ([b"a"], [None])


def test_latest_is_sorted_newest_versions_with_tombstones() -> None:
    m = Memtable(0)
    m.apply(1, [(b"b", b"1"), (b"d", b"1")], keep_old=True)
    m.apply(2, [(b"a", b"2"), (b"d", None)], keep_old=True)
    m.apply(3, [(b"c", b"3"), (b"b", b"3")], keep_old=False)
    assert m.latest() == ([b"a", b"b", b"c", b"d"], [b"2", b"3", b"3", None])
    assert Memtable(5).latest() == ([], [])


# -- range against the model -----------------------------------------------------------------

_keys = st.sampled_from([b"", b"a", b"ab", b"b", b"\x00", b"\xff", b"\xff\xff", b"m", b"mm"])
_commit = st.tuples(
    st.lists(st.tuples(_keys, st.one_of(st.none(), st.sampled_from([b"1", b"2", b"3"])))),
    st.booleans(),
)
_bound = st.one_of(st.none(), _keys)


@settings(max_examples=300, deadline=None)
@given(commits=st.lists(_commit, max_size=12), start=_bound, stop=_bound)
def test_memtable_matches_model(
    commits: list[tuple[list[Op], bool]], start: bytes | None, stop: bytes | None
) -> None:
    m, model = Memtable(3), Model(3)
    for i, (ops, keep_old) in enumerate(commits):
        ops = _dedup(ops)
        m.apply(4 + i, ops, keep_old)
        model.apply(4 + i, ops, keep_old)
    last = 3 + len(commits)
    assert m.last_seq == last and len(m) == len(model.versions)
    assert m.latest() == model.latest()
    for seq in range(3, last + 2):
        for k in {k for ops, _ in commits for k, _ in ops}:
            assert m.get(k, seq) == model.get(k, seq)
        for reverse in (False, True):
            got = list(m.range(start, stop, reverse, seq))
            assert got == model.range(start, stop, reverse, seq), (seq, reverse)


def _big(n: int, rng: random.Random) -> tuple[Memtable, Model]:
    """A memtable of ``n`` keys spread over several commits (many range chunks)."""
    m, model = Memtable(0), Model(0)
    keys = [b"k%06d" % i for i in range(n)]
    rng.shuffle(keys)
    seq = 0
    for i in range(0, n, 97):
        seq += 1
        ops = _dedup([(k, b"v%d" % seq) for k in keys[i : i + 97]])
        m.apply(seq, ops, keep_old=True)
        model.apply(seq, ops, keep_old=True)
    return m, model


@pytest.mark.parametrize("reverse", [False, True])
def test_range_bounds_on_a_large_memtable(rng: random.Random, reverse: bool) -> None:
    m, model = _big(3000, rng)
    for start, stop in [
        (None, None),
        (b"k000256", None),
        (None, b"k000256"),
        (b"k000255", b"k000257"),
        (b"k000100", b"k002900"),
        (b"k0005", b"k0006"),
        (b"k002999", b"k003000"),
        (b"z", None),
        (None, b"a"),
        (b"k001000", b"k001000"),
        (b"k002000", b"k001000"),
    ]:
        for seq in (0, 1, 7, m.last_seq):
            got = list(m.range(start, stop, reverse, seq))
            assert got == model.range(start, stop, reverse, seq), (start, stop, seq)


@pytest.mark.parametrize("reverse", [False, True])
def test_range_is_stable_when_commits_land_between_chunks(
    rng: random.Random, reverse: bool
) -> None:
    """Deterministic interleaving: a scan at sequence S is consumed a few keys at a time
    and, between steps, commits add keys (some inside the chunk already copied, some ahead
    of it), rewrite and delete keys; the scan still returns exactly S's view."""
    m, model = _big(2000, rng)
    seq = m.last_seq
    want = model.range(None, None, reverse, seq)
    it = m.range(None, None, reverse, seq)
    got = []
    nxt = seq
    for item in it:
        got.append(item)
        if len(got) % 37 == 0:
            nxt += 1
            ops = _dedup(
                [(b"k%06d" % rng.randrange(2000), None if rng.random() < 0.3 else b"new")
                 for _ in range(20)]
                + [(b"k%06d.%d" % (rng.randrange(2000), nxt), b"ins") for _ in range(20)]
            )  # fmt: skip
            m.apply(nxt, ops, keep_old=True)
            model.apply(nxt, ops, keep_old=True)
    assert got == want
    assert list(m.range(None, None, reverse, nxt)) == model.range(None, None, reverse, nxt)


@pytest.mark.parametrize("reverse", [False, True])
def test_range_stays_correct_while_another_thread_applies(
    rng: random.Random, reverse: bool
) -> None:
    """Real threads: scans at fixed sequence numbers run while a writer thread applies
    commits (keep_old=True: the scans are registered readers)."""
    m, model = _big(1500, rng)
    base = m.last_seq
    wants = {s: model.range(None, None, reverse, s) for s in (1, base // 2, base)}
    stop = threading.Event()
    errors: list[BaseException] = []
    wrng = random.Random(rng.random())

    def writer() -> None:
        seq = base
        try:
            while not stop.is_set() and seq < base + 3000:
                seq += 1
                ops = _dedup(
                    [(b"k%06d" % wrng.randrange(1500), b"w%d" % seq) for _ in range(5)]
                    + [(b"k%06d_%d" % (wrng.randrange(1500), seq), b"x")]
                    + [(b"k%06d" % wrng.randrange(1500), None)]
                )
                m.apply(seq, ops, keep_old=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(6):
            for s, want in wants.items():
                assert list(m.range(None, None, reverse, s)) == want
    finally:
        stop.set()
        t.join()
    assert not errors


# -- a real database: readers see exactly one commit while the writer goes on ---------------


def _run_race(
    db: kvmap.Database,
    write: Callable[[int], None],
    read: Callable[[], str | None],
    n: int,
    idle: int = 300,
) -> list[str]:
    """``write(i)`` for i in 1..n in this thread while two reader threads call ``read()``
    (which returns a description of what was wrong, or None) until the writer is done.
    Between reads a reader idles (``idle`` steps of arithmetic), unregistered, as real
    readers do between requests: commits then see no reader, which is when a race bites."""
    stop = threading.Event()
    problems: list[str] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                sum(range(idle))
                bad = read()
                if bad is not None and len(problems) < 20:
                    problems.append(bad)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more chances to hit a race window
    try:
        for t in threads:
            t.start()
        for i in range(1, n + 1):
            write(i)
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(interval)
    assert not errors, errors
    return problems


def test_get_never_misses_a_key_rewritten_by_autocommits(open_db: Callable) -> None:
    """``b"k"`` exists from the first commit on and is only ever rewritten, so ``db.get``
    must always find it.

    Bug (kept failing on purpose): ``Database._commit`` (db.py, ``keep_old = ...`` under
    the publish lock) decides from the registered readers *before* it publishes the new
    State (``self._state = state.advance(...)`` two lines later).  A reader that registers
    in between reads the old State -- its ``now is state`` re-check passes, nothing was
    published yet -- but the memtable chain was already cut, so it finds only a version
    newer than its snapshot, falls through to the tree, and reports the key missing.  The
    same race hits snapshots (next tests).  Keeping the previous version unconditionally
    (pruning older ones lazily) would close it: the tests pass with ``keep_old`` forced
    True."""
    db = open_db(sync="off", checkpoint_size=1 << 30)
    db.put(b"k", b"0")

    def read() -> str | None:
        v = db.get(b"k")
        return None if v is not None else "db.get(b'k') returned None"

    problems = _run_race(db, lambda i: db.put(b"k", b"%d" % i), read, 30000)
    assert problems == []


def test_snapshot_sees_one_commit_while_autocommits_rewrite(open_db: Callable) -> None:
    """A snapshot taken while the writer rewrites two keys (always to the same value, one
    commit each, a then b) sees a value for both, and a's value is b's or one ahead."""
    db = open_db(sync="off", checkpoint_size=1 << 30)
    db.put(b"a", b"0")
    db.put(b"b", b"0")

    def write(i: int) -> None:
        db.put(b"a", b"%d" % i)
        db.put(b"b", b"%d" % i)

    def read() -> str | None:
        with db.begin() as snap:
            a, b = snap.get(b"a"), snap.get(b"b")
            again = snap.get(b"a"), snap.get(b"b")
        if a is None or b is None:
            return f"missing: a={a!r} b={b!r}"
        if int(a) - int(b) not in (0, 1):
            return f"not one commit's state: a={a!r} b={b!r}"
        if again != (a, b):
            return f"snapshot changed: {(a, b)} then {again}"
        return None

    assert _run_race(db, write, read, 15000) == []


def test_transaction_commits_keep_versions_for_concurrent_readers(open_db: Callable) -> None:
    """The same with write transactions of 200 keys, all set to the commit number: a
    snapshot sees the first ten equal (and present), and a scan of them agrees.  (The same
    race as above, with a wider window: 200 keys are applied before the State is
    published.)"""
    db = open_db(sync="off", checkpoint_size=1 << 30)
    keys = [b"t%03d" % i for i in range(200)]
    with db.begin(write=True) as txn:
        for k in keys:
            txn.put(k, b"0")

    def write(i: int) -> None:
        with db.begin(write=True) as txn:
            for k in keys:
                txn.put(k, b"%d" % i)

    def read() -> str | None:
        with db.begin() as snap:
            vals = [snap.get(k) for k in keys[:10]]
            scanned = [v for _, v in snap.items(stop=keys[10])]
        if len(set(vals)) != 1 or None in vals:
            return f"torn point reads: {vals}"
        if scanned != vals:
            return f"scan {scanned} != point reads {vals}"
        return None

    assert _run_race(db, write, read, 1500, idle=20000) == []


def _chain(db: kvmap.Database, key: bytes) -> int:
    """Versions of ``key`` the active memtable holds."""
    n, e = 0, db._state.mems[0].data[key]  # type: ignore[union-attr]
    while e is not None:
        n, e = n + 1, e[2]
    return n


def test_old_versions_are_dropped_when_no_snapshot_needs_them(open_db: Callable) -> None:
    """Issue 3: "Old versions are dropped when no snapshot needs them" -- rewriting one key
    many times with autocommits and no snapshot open leaves two (the newest and the one it
    replaced, for a reader racing the commit); a snapshot keeps
    what it needs, and later commits (the snapshot closed) cut the chain again."""
    db = open_db(sync="off", checkpoint_size=1 << 30)
    for i in range(200):
        db.put(b"k", b"%d" % i)
    assert _chain(db, b"k") == 2  # the newest and the one it replaced
    snap = db.begin()
    for i in range(5):
        db.put(b"k", b"after%d" % i)
    assert snap.get(b"k") == b"199"
    assert db.get(b"k") == b"after4"
    assert _chain(db, b"k") == 7  # five new versions, then 199 (the snapshot's) and 198
    snap.close()
    db.put(b"k", b"last")
    assert _chain(db, b"k") == 2


def test_transaction_commits_drop_old_versions_too(open_db: Callable) -> None:
    """The same through write transactions (the memtable docstring: "a memtable without
    long-lived snapshots holds at most two versions per key"): the transaction's own snapshot must
    not count as an older reader of the versions its commit replaces."""
    db = open_db(sync="off", checkpoint_size=1 << 30)
    for i in range(50):
        with db.begin(write=True) as txn:
            txn.put(b"t", b"%d" % i)
            txn.put(b"u%d" % i, b"x")
    assert db.get(b"t") == b"49"
    assert _chain(db, b"t") == 2
