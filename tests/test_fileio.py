"""kvmap.fileio: the one file layer.

Covers the wrappers themselves, ``installed()``, that every write/sync/truncate/rename/mmap
kvmap performs goes through the installed layer, the commit order it sees (pages, sync, meta,
sync), and fault injection: failing each operation of a commit leaves the handle unusable
(``kvmap.FatalError``) and the database recoverable to a whole commit.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import struct
from typing import Any

import pytest

import kvmap
from kvmap import fileio
from kvmap.fileio import FileSystem
from kvmap.format import DATA_FILE, PAGE_HEADER
from kvmap.meta import decode as decode_meta
from kvmap.segments import segment_end

PS = 512


class Recorder(FileSystem):
    """Records every operation as ``(name, path, *details)`` and can fail the N-th one
    (counted from :meth:`arm`) with ``EIO`` before performing it."""

    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []
        self.paths: dict[int, str] = {}
        self.fail_index: int | None = None
        self.maps: list[mmap.mmap] = []

    def arm(self, k: int | None) -> None:
        self.fail_index = None if k is None else len(self.ops) + k

    def _op(self, name: str, fd: int | None, *details: Any) -> None:
        path = self.paths.get(fd, "?") if fd is not None else None
        idx = len(self.ops)
        self.ops.append((name, path, *details))
        if self.fail_index is not None and idx == self.fail_index:
            raise OSError(errno.EIO, f"injected failure of {name}")

    def since(self, start: int, *names: str) -> list[tuple[Any, ...]]:
        return [op for op in self.ops[start:] if not names or op[0] in names]

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        self._op("open", None, path)
        fd = super().open(path, flags, mode)
        self.paths[fd] = os.path.basename(path)
        return fd

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self._op("pwrite", fd, offset, len(data), bytes(data[:PAGE_HEADER.size]))
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        self._op("fdatasync", fd)
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self._op("fsync", fd)
        super().fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        self._op("truncate", fd, size)
        super().truncate(fd, size)

    def size(self, fd: int) -> int:
        self._op("size", fd)
        return super().size(fd)

    def rename(self, src: str, dst: str) -> None:
        self._op("rename", None, os.path.basename(src), os.path.basename(dst))
        super().rename(src, dst)

    def fsync_dir(self, path: str) -> None:
        self._op("fsync_dir", None, path)
        super().fsync_dir(path)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        self._op("mmap", fd, offset, length)
        m = super().mmap(fd, length, offset)
        self.maps.append(m)
        return m


def contents(db: kvmap.Database) -> dict[bytes, bytes]:
    return dict(db.items())


# -- the wrappers ----------------------------------------------------------------------------


def test_wrappers_on_a_real_file(tmp_path: Any) -> None:
    fs = FileSystem()
    path = os.path.join(tmp_path, "f")
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert fs.size(fd) == 0
        fs.truncate(fd, 8192)
        assert fs.size(fd) == 8192
        assert fs.pread(fd, 16, 100) == bytes(16)  # a hole reads as zeros
        fs.pwrite(fd, b"hello", 4096)
        fs.pwrite(fd, memoryview(b"xxworld")[2:], 4101)
        assert fs.pread(fd, 10, 4096) == b"helloworld"
        assert fs.pread(fd, 100, 8190) == bytes(2)  # short read at EOF
        fs.fdatasync(fd)
        fs.fsync(fd)
        m = fs.mmap(fd, 4096, 4096)
        assert m[:10] == b"helloworld"
        with pytest.raises(TypeError):
            m[0:1] = b"X"  # mappings are read-only
        fs.pwrite(fd, b"J", 4096)
        assert m[:1] == b"J"  # a shared mapping sees pwrite
        m.close()
        fs.truncate(fd, 10)
        assert fs.size(fd) == 10
    finally:
        fs.close(fd)
    with pytest.raises(OSError):
        fs.close(fd)
    fs.rename(path, path + "2")
    assert not os.path.exists(path) and os.path.exists(path + "2")
    fs.fsync_dir(os.fspath(tmp_path))
    with pytest.raises(FileNotFoundError):
        fs.open(os.path.join(tmp_path, "missing"), os.O_RDONLY)


def test_open_sets_close_on_exec(tmp_path: Any) -> None:
    fs = FileSystem()
    fd = fs.open(os.path.join(tmp_path, "f"), os.O_RDWR | os.O_CREAT)
    try:
        assert not os.get_inheritable(fd)
    finally:
        fs.close(fd)


def test_pwrite_loops_over_short_writes(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    calls = []

    def short(fd: int, data: Any, offset: int) -> int:
        calls.append(offset)
        return real(fd, bytes(data[:7]), offset)

    fs = FileSystem()
    fd = fs.open(os.path.join(tmp_path, "f"), os.O_RDWR | os.O_CREAT)
    try:
        payload = bytes(range(256)) * 3
        monkeypatch.setattr(os, "pwrite", short)
        fs.pwrite(fd, payload, 1000)
        monkeypatch.undo()
        assert fs.pread(fd, len(payload), 1000) == payload
        assert len(calls) == -(-len(payload) // 7)
        assert calls == list(range(1000, 1000 + len(payload), 7))
    finally:
        fs.close(fd)


def test_pwrite_raises_oserror_on_bad_fd() -> None:
    with pytest.raises(OSError):
        FileSystem().pwrite(10**6, b"x", 0)


def test_installed_swaps_and_restores() -> None:
    default = fileio.fs()
    assert isinstance(default, FileSystem)
    a, b = Recorder(), Recorder()
    with fileio.installed(a) as got:
        assert got is a and fileio.fs() is a
        with fileio.installed(b):
            assert fileio.fs() is b
        assert fileio.fs() is a
    assert fileio.fs() is default
    with pytest.raises(RuntimeError), fileio.installed(a):
        assert fileio.fs() is a
        raise RuntimeError("boom")
    assert fileio.fs() is default


def test_handle_keeps_the_layer_it_was_opened_with(db_path: str) -> None:
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(db_path, page_size=PS)
    try:
        n = len(rec.ops)
        db.put(b"k", b"v")  # after the with block: still through rec
        assert rec.since(n, "pwrite")
        other = Recorder()
        with fileio.installed(other):
            db.put(b"k2", b"v2")
        assert not other.ops
        db.check()
    finally:
        db.close()


# -- everything goes through the layer ---------------------------------------------------------


def test_nothing_bypasses_the_file_layer(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch the raw system calls so that they fail unless called from inside the installed
    FileSystem, then run a workload touching every write path."""
    inside = [0]

    class Guard(FileSystem):
        pass

    for name in ("open", "close", "pwrite", "pread", "fdatasync", "fsync", "truncate",
                 "size", "rename", "fsync_dir", "mmap"):  # fmt: skip
        base = getattr(FileSystem, name)

        def wrapped(self: Any, *args: Any, _base: Any = base) -> Any:
            inside[0] += 1
            try:
                return _base(self, *args)
            finally:
                inside[0] -= 1

        setattr(Guard, name, wrapped)

    def guarded(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not inside[0]:
                raise AssertionError(f"{name} called outside the file layer")
            return real(*args, **kwargs)

        return call

    for mod, name in ((os, "pwrite"), (os, "write"), (os, "ftruncate"), (os, "truncate"),
                      (os, "fsync"), (os, "fdatasync"), (os, "replace"), (os, "rename"),
                      (mmap, "mmap")):  # fmt: skip
        monkeypatch.setattr(mod, name, guarded(name, getattr(mod, name)))

    with fileio.installed(Guard()):
        db = kvmap.open(db_path, page_size=PS, sync="normal")
        db.put_many((b"%05d" % i, b"v" * (i % 300)) for i in range(400))
        with db.begin(write=True) as txn:
            for i in range(0, 400, 2):
                txn.delete(b"%05d" % i)
        db[b"big"] = b"B" * 200_000  # grows the file across segments
        db.sync()
        db.compact()
        db.put(b"after", b"compact")
        db.check()
        db.close()
        ro = kvmap.open(db_path, readonly=True)
        assert ro[b"after"] == b"compact" and len(ro[b"big"]) == 200_000
        ro.close()
    monkeypatch.undo()
    with kvmap.open(db_path) as db:
        assert len(db) == 202
        db.check()


def test_mappings_are_read_only(db_path: str) -> None:
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(db_path, page_size=PS)
    try:
        db.put_many((b"%04d" % i, b"x" * 100) for i in range(2000))  # several segments
        assert len(rec.maps) >= 2
        for m in rec.maps:
            with pytest.raises(TypeError):
                m[0:1] = b"X"
        # mmap calls cover [0, mapped) exactly once each, in order, never re-mapping a range
        offsets = [(op[2], op[3]) for op in rec.ops if op[0] == "mmap"]
        pos = 0
        for off, length in offsets:
            assert off == pos and length > 0
            pos += length
        assert pos == db._state.pager.segments.mapped
    finally:
        db.close()


# -- commit order --------------------------------------------------------------------------------


def _meta_of(op: tuple[Any, ...]) -> tuple[int, int]:
    """(type, pgno) from the page header recorded with a pwrite."""
    _, ptype, _, _, pgno, _ = PAGE_HEADER.unpack(op[4])
    return ptype, pgno


@pytest.mark.parametrize("sync", ["full", "normal", "off"])
def test_commit_order(db_path: str, sync: str) -> None:
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(db_path, page_size=PS, sync=sync)
    try:
        for round_ in range(6):
            start = len(rec.ops)
            txnid = db._state.meta.txnid + 1
            with db.begin(write=True) as txn:
                for i in range(50):
                    txn.put(b"%d-%03d" % (round_, i), b"v" * 60)
            ops = [op for op in rec.since(start) if op[1] == DATA_FILE and op[0] != "size"]
            names = [op[0] for op in ops]
            meta_i = max(i for i, op in enumerate(ops) if op[0] == "pwrite" and op[2] < 2 * PS)
            meta_op = ops[meta_i]
            # exactly one meta write, to page txnid % 2, one page long, and it is the last write
            assert meta_op[2] == (txnid % 2) * PS and meta_op[3] == PS
            assert [op for op in ops if op[0] == "pwrite" and op[2] < 2 * PS] == [meta_op]
            assert "pwrite" not in names[meta_i + 1 :]
            page_writes = [op for op in ops[:meta_i] if op[0] == "pwrite"]
            assert page_writes, "a commit writes new pages before the meta page"
            syncs_before = names[:meta_i].count("fdatasync")
            syncs_after = names[meta_i + 1 :].count("fdatasync")
            if sync == "off":
                assert syncs_before == syncs_after == 0
            else:
                # every page write comes before one fdatasync that precedes the meta write
                last_page_write = max(i for i, op in enumerate(ops[:meta_i]) if op[0] == "pwrite")
                assert "fdatasync" in names[last_page_write + 1 : meta_i]
                assert syncs_after == (1 if sync == "full" else 0)
            # the meta page names a high-water mark covering every page written, and the file
            # was grown to cover it before the meta was written (invariant 7)
            meta = decode_meta(
                db._state.pager.page(txnid % 2), txnid % 2
            )  # what is in the file now
            assert meta.txnid == txnid
            for op in page_writes:
                assert op[2] + op[3] <= meta.hwm * PS
            assert os.path.getsize(os.path.join(db_path, DATA_FILE)) >= meta.hwm * PS
            truncs = [i for i, op in enumerate(ops) if op[0] == "truncate"]
            for i in truncs:
                assert i < meta_i and ops[i][2] == segment_end(ops[i][2], PS)
    finally:
        db.close()


def test_growth_is_made_durable_before_the_meta_refers_to_it(db_path: str) -> None:
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(db_path, page_size=PS, sync="full")
    try:
        grew = 0
        for i in range(24):
            start = len(rec.ops)
            db.put(b"big%02d" % i, bytes([i]) * 30_000)
            ops = [op for op in rec.since(start) if op[1] == DATA_FILE]
            names = [op[0] for op in ops]
            if "truncate" in names:
                grew += 1
                t = names.index("truncate")
                meta_i = max(i for i, op in enumerate(ops) if op[0] == "pwrite" and op[2] < 2 * PS)
                assert "fdatasync" in names[t:meta_i], names
                assert "mmap" in names[t:meta_i], names
        assert grew >= 3
        assert all(db[b"big%02d" % i] == bytes([i]) * 30_000 for i in range(24))
    finally:
        db.close()


def test_close_syncs_unless_full(db_path: str) -> None:
    for sync, expect in (("normal", True), ("off", True), ("full", False)):
        rec = Recorder()
        path = f"{db_path}-{sync}"
        with fileio.installed(rec):
            db = kvmap.open(path, page_size=PS, sync=sync)
        db.put(b"k", b"v")
        start = len(rec.ops)
        db.close()
        synced = any(op[0] == "fdatasync" and op[1] == DATA_FILE for op in rec.since(start))
        assert synced == expect, sync


def test_readonly_handle_never_writes(db_path: str) -> None:
    with kvmap.open(db_path, page_size=PS) as db:
        db.put_many((b"%03d" % i, b"v") for i in range(300))
    rec = Recorder()
    with fileio.installed(rec):
        ro = kvmap.open(db_path, readonly=True)
    try:
        assert len(list(ro.items())) == 300
        ro.check()
        with pytest.raises(kvmap.ReadOnlyError):
            ro.put(b"x", b"y")
        ro.sync()
    finally:
        ro.close()
    names = {op[0] for op in rec.ops}
    assert not names & {"pwrite", "truncate", "fdatasync", "fsync", "rename"}


# -- fault injection -----------------------------------------------------------------------------


def _template(path: str) -> dict[bytes, bytes]:
    """A database with freed (pending and reusable) pages, so a commit both reuses pages and
    grows the file.  Returns its contents."""
    with kvmap.open(path, page_size=PS) as db:
        db.put_many((b"%04d" % i, b"a" * 80) for i in range(300))
        with db.begin(write=True) as txn:
            for i in range(0, 300, 3):
                txn.delete(b"%04d" % i)
        db.put_many((b"%04d" % i, b"b" * 80) for i in range(0, 300, 7))
        db.check()
        return contents(db)


def _batch(txn: kvmap.WriteTxn) -> None:
    for i in range(0, 300, 2):
        txn.put(b"%04d" % i, b"c" * 90)
    for i in range(1, 300, 10):
        txn.delete(b"%04d" % i)
    txn.put(b"large", b"L" * 200_000)  # an overflow run that grows the file by a segment


def _expected_after(before: dict[bytes, bytes]) -> dict[bytes, bytes]:
    after = dict(before)
    for i in range(0, 300, 2):
        after[b"%04d" % i] = b"c" * 90
    for i in range(1, 300, 10):
        after.pop(b"%04d" % i, None)
    after[b"large"] = b"L" * 200_000
    return after


def _assert_unusable(db: kvmap.Database) -> None:
    uses = (lambda: db.get(b"0001"), lambda: db.put(b"x", b"y"), lambda: len(db),
            lambda: db.begin(), lambda: list(db.items()), db.check, db.sync)  # fmt: skip
    for use in uses:
        with pytest.raises(kvmap.FatalError):
            use()


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_failing_each_operation_of_a_commit(tmp_path: Any, sync: str) -> None:
    template = os.path.join(tmp_path, "template")
    before = _template(template)
    after = _expected_after(before)

    # a clean run tells how many operations the commit performs
    clean = os.path.join(tmp_path, "clean")
    shutil.copytree(template, clean)
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(clean, sync=sync)
    start = len(rec.ops)
    with db.begin(write=True) as txn:
        _batch(txn)
    commit_ops = rec.since(start)
    db.close()
    kinds = {op[0] for op in commit_ops}
    assert {"pwrite", "truncate", "mmap"} <= kinds
    meta_write = max(
        i for i, op in enumerate(commit_ops) if op[0] == "pwrite" and op[2] < 2 * PS
    )

    for k in range(len(commit_ops)):
        path = os.path.join(tmp_path, f"f{k}")
        shutil.copytree(template, path)
        rec = Recorder()
        with fileio.installed(rec):
            db = kvmap.open(path, sync=sync)
        rec.arm(k)
        with pytest.raises(kvmap.FatalError) as info:
            with db.begin(write=True) as txn:
                _batch(txn)
        assert isinstance(info.value.__cause__, OSError), k
        rec.arm(None)
        # the handle refuses all further use, with FatalError
        _assert_unusable(db)
        db.close()
        db.close()
        with kvmap.open(path) as again:
            got = contents(again)
            if k <= meta_write:
                assert got == before, f"failing op {k} {commit_ops[k][0]} lost the old state"
            else:  # the meta write reached the OS: the commit may have happened, whole
                assert got in (before, after), k
            again.check()
            again.put(b"later", b"ok")
            again.check()
        shutil.rmtree(path)


def test_failed_sync_makes_handle_unusable(db_path: str) -> None:
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(db_path, page_size=PS, sync="off")
    db.put(b"a", b"1")
    rec.arm(0)
    with pytest.raises(kvmap.FatalError) as info:
        db.sync()
    assert isinstance(info.value.__cause__, OSError)
    rec.arm(None)
    with pytest.raises(kvmap.FatalError):
        db.get(b"a")
    db.close()
    with kvmap.open(db_path) as again:
        again.check()


def test_failing_each_operation_of_create(tmp_path: Any) -> None:
    rec = Recorder()
    probe = os.path.join(tmp_path, "probe")
    with fileio.installed(rec):
        kvmap.open(probe, page_size=PS).close()
    n = len(rec.ops)
    assert any(op[0] == "rename" for op in rec.ops)
    for k in range(n):
        path = os.path.join(tmp_path, f"c{k}")
        rec = Recorder()
        rec.arm(k)
        with fileio.installed(rec):
            try:
                kvmap.open(path, page_size=PS).close()
            except OSError:
                pass
        # never a half-made database: either no data file, or a valid empty one
        with kvmap.open(path, page_size=PS) as db:
            assert len(db) == 0
            db.check()
            db.put(b"k", b"v")
        with kvmap.open(path) as db:
            assert db[b"k"] == b"v"


def test_meta_write_is_a_whole_valid_page(db_path: str) -> None:
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(db_path, page_size=PS)
    try:
        start = len(rec.ops)
        db.put(b"k", b"v")
        metas = [op for op in rec.since(start, "pwrite") if op[2] < 2 * PS]
        assert len(metas) == 1
        raw = db._state.pager.page(metas[0][2] // PS)
        m = decode_meta(raw, metas[0][2] // PS)
        assert m.entries == 1 and m.txnid == db._state.meta.txnid
        (stored,) = struct.unpack_from("<I", raw)
        assert stored != 0
    finally:
        db.close()


def test_failing_each_operation_of_compact(tmp_path: Any) -> None:
    """A compaction that fails leaves either a usable handle whose later commits survive a
    reopen, or an unusable one (FatalError).  Never a handle that acknowledges commits into a
    file that is no longer the database."""
    template = os.path.join(tmp_path, "template")
    with kvmap.open(template, page_size=PS) as db:
        db.put_many((b"%04d" % i, b"v" * 50) for i in range(500))
        with db.begin(write=True) as txn:
            for i in range(0, 500, 2):
                txn.delete(b"%04d" % i)
        before = contents(db)

    probe = os.path.join(tmp_path, "probe")
    shutil.copytree(template, probe)
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(probe)
    start = len(rec.ops)
    db.compact()
    n = len(rec.ops) - start
    db.close()
    assert n >= 5

    for k in range(n):
        path = os.path.join(tmp_path, f"k{k}")
        shutil.copytree(template, path)
        rec = Recorder()
        with fileio.installed(rec):
            db = kvmap.open(path)
        rec.arm(k)
        try:
            db.compact()
        except (OSError, kvmap.Error):
            pass
        rec.arm(None)
        try:
            db.put(b"after", b"compact")
        except kvmap.FatalError:
            acknowledged = False
        else:
            acknowledged = True
            assert contents(db) == {**before, b"after": b"compact"}
        db.close()
        with kvmap.open(path) as again:
            want = {**before, b"after": b"compact"} if acknowledged else before
            assert contents(again) == want, f"failing op {k} of compact lost a commit"
            again.check()
