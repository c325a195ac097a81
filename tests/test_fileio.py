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
from kvmap.format import DATA_FILE, PAGE_HEADER, PAGE_META, WAL_HEADER_SIZE, WAL_PREFIX
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
        self._op("pwrite", fd, offset, len(data), bytes(data[: PAGE_HEADER.size]))
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

    def allocate(self, fd: int, size: int) -> None:
        self._op("allocate", fd, size)
        super().allocate(fd, size)

    def mmap_log(self, fd: int, length: int) -> mmap.mmap:
        self._op("mmap_log", fd, length)
        return super().mmap_log(fd, length)

    def store(self, m: mmap.mmap, fd: int, offset: int, data: bytes) -> None:
        """A WAL frame stored through the mapping: recorded as a write to the OS."""
        self._op("store", fd, offset, len(data), bytes(data[: PAGE_HEADER.size]))
        super().store(m, fd, offset, data)


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
        assert rec.since(n, "store")
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
                 "size", "rename", "unlink", "fsync_dir", "mmap", "mmap_shared", "allocate",
                 "mmap_log", "store"):  # fmt: skip
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
                      (os, "posix_fallocate"), (mmap, "mmap")):  # fmt: skip
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
        db.put_many((b"%04d" % i, b"x" * 100) for i in range(2000))
        db.checkpoint()  # the tree grows across several segments
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


# -- commit and checkpoint order ------------------------------------------------------------------


def _meta_of(op: tuple[Any, ...]) -> tuple[int, int]:
    """(type, pgno) from the page header recorded with a pwrite."""
    _, ptype, _, _, pgno, _ = PAGE_HEADER.unpack(op[4])
    return ptype, pgno


def _is_wal(name: object) -> bool:
    return isinstance(name, str) and name.startswith(WAL_PREFIX)


def _wal_name(db: kvmap.Database) -> str:
    assert db._wal is not None
    return os.path.basename(db._wal.path)


def _record_unlinks(rec: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """kvmap deletes old WAL files with ``os.unlink`` (not part of the file layer): record
    those calls in ``rec`` too, so their order against the layer's operations shows."""
    real = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        rec.ops.append(("unlink", None, os.path.basename(path)))
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


def _assert_wal_made_before_frames(ops: list[tuple[Any, ...]], wal: str) -> None:
    """The WAL file ``wal`` is created, its header written and synced, and the directory
    entry synced, before any frame is written to it."""
    opened = next(i for i, op in enumerate(ops) if op[0] == "open" and op[2].endswith(wal))
    header = next(i for i, op in enumerate(ops) if op[0] == "pwrite" and op[1] == wal)
    assert opened < header and ops[header][2:4] == (0, WAL_HEADER_SIZE), ops[header]
    synced = next(i for i, op in enumerate(ops) if op[0] == "fdatasync" and op[1] == wal)
    assert header < synced
    dir_synced = next(i for i, op in enumerate(ops[synced:], synced) if op[0] == "fsync_dir")
    frames = [i for i, op in enumerate(ops) if op[0] == "store" and op[1] == wal]
    assert all(i > dir_synced and ops[i][2] >= WAL_HEADER_SIZE for i in frames), (wal, ops)


def _assert_wal_durable_before(
    earlier: list[tuple[Any, ...]], ops: list[tuple[Any, ...]], wal: str, meta_i: int, sync: str
) -> None:
    """Every frame of ``wal`` is durable before ``ops[meta_i]`` (the meta write): under
    "full" each commit synced it already (``earlier``); otherwise ``ops`` write what is
    buffered ("off" only) and fdatasync the WAL before the meta."""
    mine = [i for i, op in enumerate(ops) if op[1] == wal]
    if sync == "full":
        assert [op[0] for op in earlier if op[1] == wal][-1] == "fdatasync"
        assert all(ops[i][0] == "fdatasync" for i in mine), ops
        return
    assert mine and ops[mine[-1]][0] == "fdatasync" and mine[-1] < meta_i, ops
    assert ("store" in [ops[i][0] for i in mine]) == (sync == "off"), ops


def _after_growth(ops: list[tuple[Any, ...]], end: int) -> list[tuple[Any, ...]]:
    """``ops`` after the WAL's growth, if they begin with one: when the frames about to be
    stored at ``end`` do not fit its space, the WAL allocates more, covering them, and maps
    it, before the store."""
    if ops and ops[0][0] == "allocate":
        assert [op[0] for op in ops[:3]] == ["allocate", "mmap_log", "store"], ops
        assert ops[0][2] >= end + ops[2][3] and ops[1][2] == ops[0][2]
        return ops[2:]
    return ops


@pytest.mark.parametrize("sync", ["full", "normal", "off"])
def test_commit_order(db_path: str, sync: str) -> None:
    """A commit is one WAL frame: written at the end of the WAL ("off": kept in the process
    until sync()), then fdatasynced under "full"; the data file is not touched."""
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(db_path, page_size=PS, sync=sync)
    try:
        wal = _wal_name(db)
        assert db._wal is not None
        salt = db._wal.salt
        end = WAL_HEADER_SIZE  # where the next frame goes
        frames = 0
        for round_ in range(6):
            start = len(rec.ops)
            seq = db._state.seq + 1
            with db.begin(write=True) as txn:
                for i in range(50):
                    txn.put(b"%d-%03d" % (round_, i), b"v" * 60)
            assert db._state.seq == seq
            ops = [op for op in rec.since(start) if op[0] != "size"]
            assert all(op[1] == wal for op in ops), ops  # nothing but the WAL
            if sync == "off":
                assert ops == []  # buffered in the process
                frames += 1
                continue
            ops = _after_growth(ops, end)
            assert [op[0] for op in ops] == (["store", "fdatasync"] if sync == "full" else
                                             ["store"])  # fmt: skip
            _, _, offset, length, head = ops[0]
            length_field, frame_salt, frame_seq = struct.unpack_from("<QQQ", head)
            assert offset == end and length == length_field
            assert (frame_salt, frame_seq) == (salt, seq)
            end += length
        start = len(rec.ops)
        db.sync()  # every frame reaches the WAL and is made durable
        ops = [op for op in rec.since(start) if op[0] != "size"]
        assert all(op[1] == wal for op in ops), ops
        if sync == "off":
            ops = _after_growth(ops, end)
            assert [op[0] for op in ops] == ["store", "fdatasync"]
            _, _, offset, length, head = ops[0]
            assert offset == end and struct.unpack_from("<QQQ", head)[1:] == (salt, 1)
            assert frames == 6 and os.path.getsize(os.path.join(db_path, wal)) >= end + length
        else:  # "full" synced every frame already
            assert [op[0] for op in ops] == (["fdatasync"] if sync == "normal" else [])
            assert os.path.getsize(os.path.join(db_path, wal)) >= end  # and allocated ahead
        _assert_wal_made_before_frames(rec.ops, wal)
    finally:
        db.close()


@pytest.mark.parametrize("sync", ["full", "normal", "off"])
def test_checkpoint_order(db_path: str, sync: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint: the old WAL made durable; a new WAL created and synced; data pages,
    fdatasync, meta page ``txnid % 2`` (recording the commit sequence it covers), fdatasync;
    then the old WAL deleted and the directory synced."""
    rec = Recorder()
    _record_unlinks(rec, monkeypatch)
    with fileio.installed(rec):
        db = kvmap.open(db_path, page_size=PS, sync=sync)
    try:
        for round_ in range(6):
            with db.begin(write=True) as txn:
                for i in range(50):
                    txn.put(b"%d-%03d" % (round_, i), b"v" * 60)
                for i in range(0, 50 * round_, 3):  # rewrites and deletes free pages
                    txn.delete(b"%d-%03d" % (i // 50, i % 50))
            old_wal = _wal_name(db)
            seq = db._state.seq
            txnid = db._state.meta.txnid + 1
            start = len(rec.ops)
            db.checkpoint()
            ops = [op for op in rec.since(start) if op[0] != "size"]
            names = [op[0] for op in ops]
            new_wal = _wal_name(db)
            assert new_wal == f"{WAL_PREFIX}{seq:016x}" != old_wal

            # the data file: pages, fdatasync, meta, fdatasync
            data = [i for i, op in enumerate(ops) if op[1] == DATA_FILE]
            metas = [i for i in data if ops[i][0] == "pwrite" and ops[i][2] < 2 * PS]
            assert len(metas) == 1, "exactly one meta write"
            meta_i = metas[0]
            meta_op = ops[meta_i]
            assert meta_op[2] == (txnid % 2) * PS and meta_op[3] == PS
            assert _meta_of(meta_op) == (PAGE_META, txnid % 2)
            page_writes = [i for i in data if ops[i][0] == "pwrite" and i != meta_i]
            assert page_writes and max(page_writes) < meta_i, "pages before the meta page"
            page_sync = [i for i in data if ops[i][0] == "fdatasync" and i > max(page_writes)]
            assert page_sync and page_sync[0] < meta_i, "fdatasync between pages and meta"
            meta_sync = [i for i in data if ops[i][0] == "fdatasync" and i > meta_i]
            assert meta_sync, "fdatasync after the meta page"
            meta_sync_i = meta_sync[0]
            assert not [i for i in data if ops[i][0] == "pwrite" and i > meta_i]

            # the meta covers every commit so far, names a high-water mark covering every
            # page written, and the file was grown to cover it first (invariant 7)
            meta = decode_meta(db._state.pager.page(txnid % 2), txnid % 2)
            assert meta.txnid == txnid and meta.wal_seq == seq
            for i in page_writes:
                assert ops[i][2] + ops[i][3] <= meta.hwm * PS
            assert os.path.getsize(os.path.join(db_path, DATA_FILE)) >= meta.hwm * PS
            for i in data:
                if ops[i][0] == "truncate":
                    assert i < meta_i and ops[i][2] == segment_end(ops[i][2], PS)

            # the old WAL is durable before the meta page is written (a torn meta falls back
            # to the previous one plus this WAL); under "off" its frames are written first
            _assert_wal_durable_before(rec.ops[:start], ops, old_wal, meta_i, sync)

            # the new WAL is created and synced before it takes frames, then its first
            # space allocated and mapped; nothing else is written to it during the checkpoint
            _assert_wal_made_before_frames(ops, new_wal)
            assert [names[i] for i, op in enumerate(ops) if op[1] == new_wal] == [
                "pwrite", "fdatasync", "allocate", "mmap_log"]  # fmt: skip

            # then the old WAL is deleted and the directory synced
            unlinks = [i for i, op in enumerate(ops) if op[0] == "unlink"]
            assert [ops[i][2] for i in unlinks] == [old_wal]
            assert unlinks[0] > meta_sync_i
            assert "fsync_dir" in names[unlinks[0] + 1 :]
            assert not os.path.exists(os.path.join(db_path, old_wal))

            # the next commit's frame goes to the new WAL, after its header
            start = len(rec.ops)
            db.put(b"next%d" % round_, b"x")
            db.sync()
            frames = [op for op in rec.since(start, "pwrite", "store")]
            assert [(op[0], op[1], op[2]) for op in frames] == [
                ("store", new_wal, WAL_HEADER_SIZE)]  # fmt: skip
        _assert_wal_made_before_frames(rec.ops, _wal_name(db))
    finally:
        db.close()


def test_growth_is_made_durable_before_the_meta_refers_to_it(db_path: str) -> None:
    rec = Recorder()
    with fileio.installed(rec):
        # checkpoint_size=0: every commit is folded into the tree at once
        db = kvmap.open(db_path, page_size=PS, sync="full", checkpoint_size=0)
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


def test_close_makes_every_commit_durable(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() checkpoints: whatever the sync mode left undone (frames buffered under "off",
    not synced under "normal") is written and synced to the WAL before the meta page; the
    tree then holds the commit (pages, fdatasync, meta, fdatasync) and the WAL is reset."""
    for sync in ("normal", "off", "full"):
        rec = Recorder()
        _record_unlinks(rec, monkeypatch)
        path = f"{db_path}-{sync}"
        with fileio.installed(rec):
            db = kvmap.open(path, page_size=PS, sync=sync)
        db.put(b"k", b"v")
        wal = _wal_name(db)
        start = len(rec.ops)
        db.close()
        ops = rec.since(start)
        names = [op[0] for op in ops]
        meta_i = next(i for i, op in enumerate(ops)
                      if op[0] == "pwrite" and op[1] == DATA_FILE and op[2] < 2 * PS)  # fmt: skip
        _assert_wal_durable_before(rec.ops[:start], ops, wal, meta_i, sync)
        data_syncs = [i for i, op in enumerate(ops) if op[0] == "fdatasync" and op[1] == DATA_FILE]
        assert data_syncs and data_syncs[0] < meta_i < data_syncs[-1], sync
        unlink = names.index("unlink")
        assert ops[unlink][2] == wal and unlink > data_syncs[-1], sync
        with kvmap.open(path, readonly=True) as again:
            assert again._state.meta.wal_seq == 1 and again[b"k"] == b"v"


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
    """With ``checkpoint_size=0`` a commit is its WAL frame and then a checkpoint folding it
    into the tree (which reuses freed pages and grows the file): fail each operation."""
    template = os.path.join(tmp_path, "template")
    before = _template(template)
    after = _expected_after(before)

    # a clean run tells how many operations the commit performs
    clean = os.path.join(tmp_path, "clean")
    shutil.copytree(template, clean)
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(clean, sync=sync, checkpoint_size=0)
    start = len(rec.ops)
    with db.begin(write=True) as txn:
        _batch(txn)
    commit_ops = rec.since(start)
    db.close()
    kinds = {op[0] for op in commit_ops}
    assert {"store", "pwrite", "truncate", "mmap"} <= kinds
    # the first write is the WAL frame: the commit happened once it reached the OS
    frame_write = next(i for i, op in enumerate(commit_ops) if op[0] in ("pwrite", "store"))
    assert commit_ops[frame_write][0] == "store"
    assert _is_wal(commit_ops[frame_write][1]), commit_ops[frame_write]
    assert commit_ops[frame_write][2] >= WAL_HEADER_SIZE
    assert not [op for op in commit_ops[:frame_write] if op[1] == DATA_FILE]
    assert any(op[1] == DATA_FILE and op[0] == "pwrite" and op[2] < 2 * PS for op in commit_ops)

    for k in range(len(commit_ops)):
        path = os.path.join(tmp_path, f"f{k}")
        shutil.copytree(template, path)
        rec = Recorder()
        with fileio.installed(rec):
            db = kvmap.open(path, sync=sync, checkpoint_size=0)
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
            if k <= frame_write:
                assert got == before, f"failing op {k} {commit_ops[k][0]} lost the old state"
            else:  # the frame reached the OS: the commit may have happened, whole
                assert got in (before, after), k
            again.check()
            again.put(b"later", b"ok")
            again.check()
        shutil.rmtree(path)


@pytest.mark.parametrize("sync", ["full", "normal", "off"])
def test_failing_each_operation_of_a_checkpoint(tmp_path: Any, sync: str) -> None:
    """A commit acknowledged under "full" or "normal" is in the WAL: a checkpoint failing at
    any operation loses nothing (at worst it is a crash of the process).  Under "off" the
    commit was never made durable, so either state is whole and acceptable."""
    template = os.path.join(tmp_path, "template")
    before = _template(template)
    after = _expected_after(before)

    clean = os.path.join(tmp_path, "clean")
    shutil.copytree(template, clean)
    rec = Recorder()
    with fileio.installed(rec):
        db = kvmap.open(clean, sync=sync)
    with db.begin(write=True) as txn:
        _batch(txn)
    start = len(rec.ops)
    db.checkpoint()
    ckpt_ops = rec.since(start)
    db.close()
    assert {"pwrite", "fdatasync", "truncate", "mmap", "fsync_dir"} <= {op[0] for op in ckpt_ops}

    for k in range(len(ckpt_ops)):
        path = os.path.join(tmp_path, f"c{k}")
        shutil.copytree(template, path)
        rec = Recorder()
        with fileio.installed(rec):
            db = kvmap.open(path, sync=sync)
        with db.begin(write=True) as txn:
            _batch(txn)
        rec.arm(k)
        with pytest.raises(kvmap.FatalError) as info:
            db.checkpoint()
        assert isinstance(info.value.__cause__, OSError), k
        rec.arm(None)
        _assert_unusable(db)
        db.close()
        with kvmap.open(path) as again:
            got = contents(again)
            if sync == "off":
                assert got in (before, after), k
            else:
                assert got == after, f"failing op {k} {ckpt_ops[k][0]} lost a commit"
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
            except kvmap.FatalError as exc:  # an I/O failure in open or close
                assert isinstance(exc.__cause__, OSError), exc
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
        db = kvmap.open(db_path, page_size=PS, checkpoint_size=0)  # a meta write per commit
    try:
        start = len(rec.ops)
        db.put(b"k", b"v")
        metas = [op for op in rec.since(start, "pwrite") if op[1] == DATA_FILE and op[2] < 2 * PS]
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
