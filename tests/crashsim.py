"""A crash-state simulator for kvmap: simulated power loss, after ALICE (OSDI 2014) and
bbolt's power-failure tests.

How it works
============

1. **Record.**  A workload runs on a real database through :class:`RecordingFS`, a
   :class:`kvmap.fileio.FileSystem` that performs every operation for real *and* appends
   each mutating one to a trace: ``create`` (an ``open`` with ``O_CREAT`` that made a new
   file), ``write`` (``pwrite``, or a WAL frame's store through its mapping, with its
   bytes), ``truncate`` (also an ``O_TRUNC`` open of an existing file, and the allocation
   of WAL space), ``fsync``/``fdatasync``, ``rename``, ``unlink`` and ``fsync_dir``.
   Files are tracked as *inodes*, not names: a descriptor keeps writing to the same inode
   after a rename (``compact()`` does exactly that), and an unlinked or replaced file
   keeps its contents in case the directory operation is reverted.  The directory's files
   before the workload are the *initial snapshot* (taken to be durable).  Stores through
   the lock file's shared mapping bypass the file layer: the recorder reads the mapped
   file back before each op and records any change as a (never synced) write.
   :class:`Driver` runs the workload and keeps the model: the contents after every commit
   ``k``, when commit ``k`` was *issued* (ops recorded before it began) and when the API
   *promised* that commits up to ``k`` were durable against power loss (a ``sync="full"``
   commit returned, or ``sync()``, ``checkpoint()``, ``compact()``, ``close()`` or a bulk
   load returned) or against a crash of the process (a ``sync="normal"`` commit returned).

2. **Crash.**  :class:`Sweep` replays the trace op by op.  After ``c`` ops (the *crash
   point*: power was lost right after op ``c - 1``) it knows, per inode, the contents with
   every op applied (``full``), the contents as of its last ``fsync``/``fdatasync``
   (``durable``) and the writes and truncates since (``pending``); and for the directory,
   the names with every op applied, as of the last ``fsync_dir``, and the directory ops
   since.  A *crash state* is a directory the disk may hold after that power loss:

   ``prefix``
       every op up to ``c`` reached the disk, in order (ALICE's prefix states).  This is
       also exactly what a crash of the *process* leaves (every system call made reached
       the page cache), so prefix states are held to the ``sync="normal"`` promise too.
   ``drop``
       per file, any subset of the pending writes and truncates reached the disk (in
       program order); the rest is lost.  The directory ops since the last ``fsync_dir``
       persisted up to a random point (journalled file systems commit them in order).
   ``reorder``
       like ``drop``, but the persisted pending writes of a file landed in a random order
       (an older write to the same bytes may win over a newer one).
   ``torn``
       pending writes are split at 512-byte (sector) or 4 KiB (page) boundaries of the
       file and each piece persisted or not on its own.
   ``grow-zero`` / ``grow-garbage``
       the file sizes of every pending write and truncate persisted (metadata) but the
       data of some writes did not: the region the file grew by reads as zeros, or as
       garbage (random bytes, or stale bytes copied from elsewhere in the files, as
       reused disk blocks would hold; ext4 ``data=writeback`` can do this).  Garbage is
       put in regions grown by ``ftruncate`` too, which is harsher than any real file
       system (a hole reads as zeros).
   ``dir``
       the file data is complete, but any subset of the creates, renames and unlinks not
       yet covered by an ``fsync_dir`` is reverted.
   ``exhaustive``
       for tiny workloads: at every crash point, every subset of the pending units (write
       pieces of 512 bytes, truncates, directory ops), persisted in program order, each
       with the sizes those ops leave and with every pending size change persisted
       (zeros).  Any 4 KiB tearing is one of these subsets; reordering only matters for
       overlapping writes, which kvmap issues only to the lock file.
   ``recovery``
       a crash *during recovery*: the recovery of a crash state is itself recorded and its
       own prefix and ``drop``/``torn`` states are recovered again; they must give exactly
       what the first recovery gave.

   Nothing that an ``fsync``/``fdatasync`` (file data and size) or ``fsync_dir`` (names)
   covered is ever lost or altered, so every state here is one a POSIX file system may
   legitimately leave behind.  Strictly POSIX: an ``fsync`` of a file does not make its
   name durable (ext4 happens to, in practice); a 512-byte aligned sector is written
   whole or not at all.  The lock file is shared memory, never synced: its states come
   from the same rules.

3. **Recover and check.**  :class:`Checker` writes each state into a fresh directory and
   opens it readonly, then writable (recovery), then writable again after a probe commit.
   The contents must equal the model after some commit ``k`` with ``k_durable <= k <=
   k_issued`` (``k_durable``: the newest commit the API promised durable at or before the
   crash point; ``k_issued``: the newest commit begun before it), readonly and writable
   opens must agree, and ``check()`` must pass.  Any exception (``CorruptionError``
   included) is a failure: every state is consistent with fsync semantics, so the design
   must survive each one.

Every random choice comes from a :class:`random.Random` seeded with a string naming the
workload seed, crash point, kind and sample, so a failure message names everything needed
to rebuild the state (see :meth:`Checker.describe`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kvmap
from kvmap import fileio

Model = dict[bytes, bytes]
TxnOps = list[tuple[bytes, bytes | None]]

FILE_OPS = ("write", "truncate")
SYNC_OPS = ("fsync", "fdatasync")
DIR_OPS = ("create", "rename", "unlink")
SECTOR = 512
BLOCK = 4096

#: The crash-state kinds, in the order the summary lists them.
KINDS = (
    "prefix",
    "drop",
    "reorder",
    "torn",
    "grow-zero",
    "grow-garbage",
    "dir",
    "exhaustive",
    "recovery",
)


# -- recording -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One mutating operation of the trace.  ``inode`` names the file for ``write``,
    ``truncate``, ``fsync``, ``fdatasync`` and ``create``; ``name`` (and ``dst`` for a
    rename) the directory entries for ``create``, ``rename`` and ``unlink``."""

    kind: str
    inode: int = -1
    name: str = ""
    dst: str = ""
    offset: int = 0
    data: bytes = b""
    size: int = 0

    def describe(self, names: Mapping[int, str]) -> str:
        """A one-line description for failure messages."""
        who = names.get(self.inode, f"inode{self.inode}")
        if self.kind == "write":
            return f"write {who} [{self.offset}, {self.offset + len(self.data)})"
        if self.kind == "truncate":
            return f"truncate {who} to {self.size}"
        if self.kind in SYNC_OPS:
            return f"{self.kind} {who}"
        if self.kind == "create":
            return f"create {self.name} (inode{self.inode})"
        if self.kind == "rename":
            return f"rename {self.name} -> {self.dst}"
        if self.kind == "unlink":
            return f"unlink {self.name}"
        return self.kind


def snapshot_dir(directory: str) -> dict[str, bytes]:
    """The regular files of ``directory`` (the initial snapshot of a recording)."""
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[name] = f.read()
    return out


def changed_span(old: bytes, new: bytes) -> tuple[int, int] | None:
    """The byte range ``[start, end)`` of ``new`` that differs from ``old`` (in 64-byte
    steps), or None."""
    n = min(len(old), len(new))
    if old[:n] == new[:n]:
        return (n, len(new)) if len(new) > n else None
    steps = range(0, n, 64)
    first = next(i for i in steps if old[i : i + 64] != new[i : i + 64])
    last = next(i for i in reversed(steps) if old[i : i + 64] != new[i : i + 64]) + 64
    return first, len(new) if len(new) > n else min(last, n)


class RecordingFS(fileio.FileSystem):
    """Performs every operation for real and records the mutating ones on files of one
    directory (see the module docstring).  The files present when it is made are the
    initial snapshot: inodes ``0 .. n-1`` in name order (:class:`Sweep` numbers them the
    same way).  Operations on paths outside the directory are performed, not recorded.

    Stores through a shared mapping (the lock file's header and reader slots) do not go
    through the file layer: before each operation the mapped files are read back and any
    change is recorded as a write (one that is never synced, like the real thing)."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.dir = os.path.realpath(directory)
        self.initial = snapshot_dir(directory)
        self.ops: list[Op] = []
        self.names: dict[str, int] = {name: i for i, name in enumerate(self.initial)}
        self.inode_names: dict[int, str] = {i: name for name, i in self.names.items()}
        self._next_inode = len(self.initial)
        self._fds: dict[int, int] = {}
        self._mutex = threading.RLock()
        # files mapped shared (the lock file): inode -> (path, contents last seen)
        self._shared: dict[int, tuple[str, bytes]] = {}

    # -- bookkeeping ---------------------------------------------------------------------------
    def _name(self, path: str) -> str | None:
        """The entry name of ``path`` if it lies in the recorded directory."""
        parent, name = os.path.split(os.path.abspath(path))
        if os.path.realpath(parent) != self.dir:
            return None
        return name

    def observe_shared(self) -> None:
        """Record the stores made through shared mappings since the last look."""
        for inode, (path, seen) in list(self._shared.items()):
            try:
                with open(path, "rb") as f:
                    now = f.read()
            except FileNotFoundError:
                continue
            span = changed_span(seen, now)
            if span is not None:
                start, end = span
                self.ops.append(Op("write", inode, offset=start, data=now[start:end]))
            self._shared[inode] = (path, now)

    def _forget_shared(self, inode: int) -> None:
        """After a recorded op on a shared-mapped file: what is on disk now is known."""
        if inode in self._shared:
            path = self._shared[inode][0]
            with open(path, "rb") as f:
                self._shared[inode] = (path, f.read())

    def _mutate(self, fd: int, perform: Callable[[], Any], op: Callable[[int], Op]) -> None:
        """Perform an operation on ``fd`` and record ``op(inode)`` if the file is ours."""
        with self._mutex:
            inode = self._fds.get(fd)
            if inode is None:
                perform()
                return
            self.observe_shared()
            perform()
            self.ops.append(op(inode))
            self._forget_shared(inode)

    # -- the operations ------------------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        name = self._name(path)
        if name is None:
            return super().open(path, flags, mode)
        with self._mutex:
            existed = name in self.names
            if existed != os.path.exists(path):  # the trace no longer mirrors the disk
                raise RuntimeError(f"crashsim: {path} was made or removed behind the trace")
            self.observe_shared()
            fd = super().open(path, flags, mode)
            if not existed:
                if not flags & os.O_CREAT:  # pragma: no cover - open() raised already
                    raise RuntimeError(f"crashsim: {path} opened without O_CREAT")
                inode = self._next_inode
                self._next_inode += 1
                self.names[name] = inode
                self.inode_names[inode] = name
                self.ops.append(Op("create", inode, name=name))
            else:
                inode = self.names[name]
                if flags & os.O_TRUNC:
                    self.ops.append(Op("truncate", inode, size=0))
                    self._forget_shared(inode)
            self._fds[fd] = inode
            return fd

    def close(self, fd: int) -> None:
        with self._mutex:
            self._fds.pop(fd, None)
        super().close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        data = bytes(data)
        self._mutate(
            fd,
            lambda: super(RecordingFS, self).pwrite(fd, data, offset),
            lambda inode: Op("write", inode, offset=offset, data=data),
        )

    def truncate(self, fd: int, size: int) -> None:
        self._mutate(
            fd,
            lambda: super(RecordingFS, self).truncate(fd, size),
            lambda inode: Op("truncate", inode, size=size),
        )

    def allocate(self, fd: int, size: int) -> None:
        """WAL space: recorded as the size change it is (the new bytes read as zeros)."""
        if size <= self.size(fd):
            return
        self._mutate(
            fd,
            lambda: super(RecordingFS, self).allocate(fd, size),
            lambda inode: Op("truncate", inode, size=size),
        )

    def store(self, m: Any, fd: int, offset: int, data: bytes) -> None:
        """A WAL frame stored through the writable mapping: a write to the OS, like
        ``pwrite`` (and synced by the file's ``fdatasync`` like one)."""
        data = bytes(data)
        self._mutate(
            fd,
            lambda: super(RecordingFS, self).store(m, fd, offset, data),
            lambda inode: Op("write", inode, offset=offset, data=data),
        )

    def fsync(self, fd: int) -> None:
        self._mutate(
            fd, lambda: super(RecordingFS, self).fsync(fd), lambda inode: Op("fsync", inode)
        )

    def fdatasync(self, fd: int) -> None:
        self._mutate(
            fd, lambda: super(RecordingFS, self).fdatasync(fd), lambda inode: Op("fdatasync", inode)
        )

    def rename(self, src: str, dst: str) -> None:
        with self._mutex:
            a, b = self._name(src), self._name(dst)
            if a is None or b is None:
                if a is not None or b is not None:
                    raise RuntimeError(f"crashsim: rename across directories: {src} -> {dst}")
                super().rename(src, dst)
                return
            self.observe_shared()
            super().rename(src, dst)
            inode = self.names.pop(a)
            self.names[b] = inode
            self.inode_names[inode] = b
            self.ops.append(Op("rename", inode, name=a, dst=b))

    def unlink(self, path: str) -> None:
        with self._mutex:
            name = self._name(path)
            if name is None or name not in self.names:
                super().unlink(path)
                return
            self.observe_shared()
            super().unlink(path)
            inode = self.names.pop(name)
            self.ops.append(Op("unlink", inode, name=name))

    def fsync_dir(self, path: str) -> None:
        with self._mutex:
            if os.path.realpath(path) != self.dir:
                super().fsync_dir(path)
                return
            self.observe_shared()
            super().fsync_dir(path)
            self.ops.append(Op("fsync_dir"))

    def mmap_shared(self, fd: int, length: int) -> Any:
        with self._mutex:
            m = super().mmap_shared(fd, length)
            inode = self._fds.get(fd)
            if inode is not None and inode not in self._shared:
                path = os.path.join(self.dir, self.inode_names[inode])
                with open(path, "rb") as f:
                    self._shared[inode] = (path, f.read())
            return m


@dataclass
class Recording:
    """A trace and its model.  ``models[k]`` is the contents after commit ``k`` (0: before
    the workload); ``issued[k]`` the number of ops recorded before commit ``k`` began;
    ``promises`` lists ``(ops recorded, k)``: from that point on, commits ``<= k`` must
    survive a power loss; ``process_promises`` likewise for a crash of the process (the
    ``sync="normal"`` promise), which leaves exactly a prefix state."""

    name: str
    seed: int
    initial: dict[str, bytes]
    ops: list[Op]
    inode_names: dict[int, str]
    models: list[Model]
    issued: list[int]
    promises: list[tuple[int, int]]
    page_size: int
    process_promises: list[tuple[int, int]] = field(default_factory=list)

    def bounds(self, point: int, process: bool = False) -> tuple[int, int]:
        """``(k_durable, k_issued)`` for a power loss after ``point`` ops (``process``: for
        a crash of the process, whose durable bound may be higher)."""
        kd = 0
        for n, k in self.promises + (self.process_promises if process else []):
            if n <= point:
                kd = max(kd, k)
        ki = 0
        for k in range(1, len(self.issued)):
            if self.issued[k] < point:
                ki = k
        # a commit that wrote nothing (e.g. nothing changed) is promised without an op
        return kd, max(ki, kd)

    def count(self, kind: str) -> int:
        """How many ops of ``kind`` the trace holds."""
        return sum(1 for op in self.ops if op.kind == kind)


class Driver:
    """Runs a workload on a real database through a :class:`RecordingFS` and keeps the
    model (see :class:`Recording`).  Every write goes through :meth:`txn` (or the helpers
    built on it) so the model and the promises stay exact."""

    def __init__(
        self,
        name: str,
        seed: int,
        directory: str,
        *,
        initial: Model | None = None,
        page_size: int = 512,
        **options: Any,
    ) -> None:
        self.name = name
        self.seed = seed
        self.directory = directory
        self.page_size = page_size
        self.options: dict[str, Any] = dict(options, page_size=page_size)
        self.fs = RecordingFS(directory)
        self.models: list[Model] = [dict(initial or {})]
        self.issued: list[int] = [0]
        self.promises: list[tuple[int, int]] = []
        self.process_promises: list[tuple[int, int]] = []
        self.db: kvmap.Database | None = None

    @staticmethod
    def prepare(directory: str, items: Iterable[tuple[bytes, bytes]], **options: Any) -> Model:
        """Make a database outside the recording (it becomes the initial snapshot)."""
        model = dict(items)
        with kvmap.open(directory, **options) as db:
            db.put_many(sorted(model.items()), append=True)
        return model

    # -- the handle ----------------------------------------------------------------------
    def open(self, **overrides: Any) -> kvmap.Database:
        """Open the database through the recording file system."""
        assert self.db is None
        with fileio.installed(self.fs):
            self.db = kvmap.open(self.directory, **{**self.options, **overrides})
        return self.db

    def _db(self) -> kvmap.Database:
        assert self.db is not None, "open() first"
        return self.db

    @property
    def model(self) -> Model:
        """The contents after the newest commit."""
        return self.models[-1]

    @property
    def ops_count(self) -> int:
        return len(self.fs.ops)

    def _promise_all(self, mode: str = "full") -> None:
        """Every commit so far is durable from here on: against power loss (``full``),
        or only against a crash of the process (``normal``); ``off`` promises nothing."""
        point = (self.ops_count, len(self.models) - 1)
        if mode in ("full", "normal"):
            self.process_promises.append(point)
        if mode == "full":
            self.promises.append(point)

    # -- commits -------------------------------------------------------------------------
    def txn(self, ops: TxnOps, sync: str | None = None) -> None:
        """One write transaction; under ``sync="full"`` (the handle's or ``sync``) it is
        durable once it returns."""
        db = self._db()
        self.issued.append(self.ops_count)
        with db.begin(write=True, sync=sync) as t:
            for k, v in ops:
                if v is None:
                    t.delete(k)
                else:
                    t.put(k, v)
        model = dict(self.model)
        for k, v in ops:
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        self.models.append(model)
        self._promise_all(sync or db.sync_mode)

    def put(self, key: bytes, value: bytes) -> None:
        """An autocommit ``db.put`` (one commit)."""
        db = self._db()
        self.issued.append(self.ops_count)
        db.put(key, value)
        self.models.append({**self.model, key: value})
        self._promise_all(db.sync_mode)

    def delete(self, key: bytes) -> None:
        """An autocommit ``db.delete`` (one commit, or none if the key is missing)."""
        db = self._db()
        self.issued.append(self.ops_count)
        db.delete(key)
        model = dict(self.model)
        model.pop(key, None)
        self.models.append(model)
        self._promise_all(db.sync_mode)

    def put_many(self, items: Sequence[tuple[bytes, bytes]], append: bool = False) -> None:
        """``db.put_many``; with ``append=True`` a bulk load folded straight into the tree,
        durable in every sync mode once it returns."""
        db = self._db()
        self.issued.append(self.ops_count)
        db.put_many(items, append=append)
        self.models.append({**self.model, **dict(items)})
        self._promise_all("full" if append else db.sync_mode)

    # -- durability points ---------------------------------------------------------------
    def sync(self) -> None:
        self._db().sync()
        self._promise_all()

    def checkpoint(self) -> None:
        self._db().checkpoint()
        self._promise_all()

    def compact(self) -> None:
        self._db().compact()
        self._promise_all()

    def close(self) -> None:
        db, self.db = self._db(), None
        db.close()
        self._promise_all()

    def reopen(self, **overrides: Any) -> kvmap.Database:
        self.close()
        return self.open(**overrides)

    def recording(self) -> Recording:
        """The trace and the model (the handle must be closed or abandoned)."""
        with self.fs._mutex:
            self.fs.observe_shared()
        return Recording(
            self.name,
            self.seed,
            dict(self.fs.initial),
            list(self.fs.ops),
            dict(self.fs.inode_names),
            self.models,
            self.issued,
            self.promises,
            self.page_size,
            self.process_promises,
        )

    def abandon(self) -> None:
        """Drop the handle without closing it: the crash happens with the database open,
        so the trace ends without the final checkpoint (the files stay as they are)."""
        db, self.db = self._db(), None
        db._state = None  # like test_durability: no final checkpoint, just release files
        db._closed = True
        if db._wal is not None:
            db._wal.close()
        db._release_files()


# -- crash states ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    """A write or truncate not yet covered by an fsync of its file: its index in the
    trace and the operation (a piece of a torn write keeps the whole write's index)."""

    index: int
    op: Op


@dataclass
class Point:
    """What :class:`Sweep` knows after ``c`` ops; enough to build any crash state there.
    Contents are immutable ``bytes`` shared with the sweep."""

    c: int
    full: dict[int, bytes]
    durable: dict[int, bytes]
    pending: dict[int, list[Pending]]
    names: dict[str, int]
    names_durable: dict[str, int]
    pending_dir: list[Pending]

    def prefix(self) -> dict[str, bytes]:
        """Every op up to here reached the disk."""
        return {name: self.full[inode] for name, inode in self.names.items()}


class Sweep:
    """Replays a trace op by op (see the module docstring): :meth:`points` yields the
    :class:`Point` after ``0, 1, ..., len(ops)`` ops."""

    def __init__(self, initial: Mapping[str, bytes], ops: Sequence[Op]) -> None:
        self.ops = ops
        self.full: dict[int, bytearray] = {}
        self.durable: dict[int, bytes] = {}
        self.pending: dict[int, list[Pending]] = {}
        self.names: dict[str, int] = {}
        for inode, (name, data) in enumerate(sorted(initial.items())):
            self.full[inode] = bytearray(data)
            self.durable[inode] = bytes(data)
            self.pending[inode] = []
            self.names[name] = inode
        self.names_durable = dict(self.names)
        self.pending_dir: list[Pending] = []
        self._frozen: dict[int, bytes] = {}  # bytes(full[inode]), while unchanged

    def _full_bytes(self, inode: int) -> bytes:
        got = self._frozen.get(inode)
        if got is None:
            got = self._frozen[inode] = bytes(self.full[inode])
        return got

    def _point(self, c: int) -> Point:
        return Point(
            c,
            {inode: self._full_bytes(inode) for inode in self.full},
            dict(self.durable),
            {inode: list(p) for inode, p in self.pending.items() if p},
            dict(self.names),
            dict(self.names_durable),
            list(self.pending_dir),
        )

    def points(self) -> Iterator[Point]:
        yield self._point(0)
        for c, op in enumerate(self.ops, 1):
            self._apply(c - 1, op)
            yield self._point(c)

    def _apply(self, index: int, op: Op) -> None:
        kind = op.kind
        if kind in FILE_OPS:
            apply_file_op(self.full[op.inode], op, zeros)
            self._frozen.pop(op.inode, None)
            self.pending[op.inode].append(Pending(index, op))
        elif kind in SYNC_OPS:
            # fsync and fdatasync make the data and the size durable (fdatasync syncs the
            # size because reading the data back needs it); not the file's name.
            self.durable[op.inode] = self._full_bytes(op.inode)
            self.pending[op.inode] = []
        elif kind == "create":
            self.full[op.inode] = bytearray()
            self.durable[op.inode] = b""
            self.pending[op.inode] = []
            self.names[op.name] = op.inode
            self.pending_dir.append(Pending(index, op))
        elif kind == "rename":
            self.names[op.dst] = self.names.pop(op.name)
            self.pending_dir.append(Pending(index, op))
        elif kind == "unlink":
            del self.names[op.name]
            self.pending_dir.append(Pending(index, op))
        elif kind == "fsync_dir":
            self.names_durable = dict(self.names)
            self.pending_dir = []
        else:  # pragma: no cover
            raise ValueError(f"unknown op {kind}")


Gap = Callable[[int, int], bytes]  # (offset, length) -> the bytes a grown region reads as


def zeros(offset: int, length: int) -> bytes:
    """A grown region that reads as zeros (a hole, or data that never arrived)."""
    return bytes(length)


def apply_file_op(buf: bytearray, op: Op, gap: Gap) -> None:
    """Apply a write or truncate to ``buf``; a region the file grows by without data
    written to it reads as ``gap`` gives."""
    if op.kind == "write":
        if op.offset > len(buf):
            buf += gap(len(buf), op.offset - len(buf))
        buf[op.offset : op.offset + len(op.data)] = op.data
    elif op.size < len(buf):
        del buf[op.size :]
    elif op.size > len(buf):
        buf += gap(len(buf), op.size - len(buf))


def pieces(p: Pending, grain: int) -> list[Pending]:
    """A pending write split at multiples of ``grain`` bytes of the file (what may tear);
    other ops stay whole."""
    op = p.op
    if op.kind != "write":
        return [p]
    out = []
    start, end = op.offset, op.offset + len(op.data)
    while start < end:
        stop = min(end, (start // grain + 1) * grain)
        data = op.data[start - op.offset : stop - op.offset]
        out.append(Pending(p.index, Op("write", op.inode, offset=start, data=data)))
        start = stop
    return out


@dataclass
class CrashState:
    """One crash state: the files of the directory, and how it was made."""

    kind: str
    point: int
    files: dict[str, bytes]
    note: str

    def digest(self, skip: str = "") -> bytes:
        """Identifies the files (``skip``: but that one)."""
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(self.files):
            if name == skip:
                continue
            h.update(name.encode() + b"\0%d\0" % len(self.files[name]))
            h.update(self.files[name])
        return h.digest()


def build(
    point: Point,
    chosen: Mapping[int, Sequence[Pending]],
    dir_ops: Sequence[Pending],
    gap: Gap = zeros,
    grow: bool = False,
    zeroed: Iterable[int] = (),
) -> dict[str, bytes]:
    """The directory after a crash at ``point`` in which, of the pending work, exactly the
    file ops in ``chosen`` (per inode, applied in the given order) and the directory ops in
    ``dir_ops`` (in order) reached the disk.  With ``grow``, every file's size as of all its
    pending ops persisted too (the region read as ``gap`` gives, or as zeros for the inodes
    in ``zeroed``)."""
    contents: dict[int, bytes] = dict(point.durable)
    zeroed = set(zeroed)
    for inode in point.pending:
        buf = bytearray(point.durable[inode])
        fill = zeros if inode in zeroed else gap
        for p in chosen.get(inode, ()):
            apply_file_op(buf, p.op, fill)
        want = len(point.full[inode])
        if grow and len(buf) < want:
            buf += fill(len(buf), want - len(buf))
        contents[inode] = bytes(buf)
    names = dict(point.names_durable)
    for p in dir_ops:
        op = p.op
        if op.kind == "create":
            names[op.name] = op.inode
        elif op.kind == "rename":
            if names.get(op.name) == op.inode:  # a rename of a file whose create was lost
                names[op.dst] = names.pop(op.name)  # is not one: skip it
        elif op.kind == "unlink":
            if names.get(op.name) == op.inode:
                del names[op.name]
    return {name: contents[inode] for name, inode in names.items()}


class StateMaker:
    """Builds the sampled crash states of one :class:`Point` (see the module docstring for
    the kinds).  ``inode_names`` names files in notes."""

    def __init__(
        self,
        recording_name: str,
        seed: int,
        inode_names: Mapping[int, str],
        no_garbage: Iterable[str] = (),
    ) -> None:
        self.tag = f"{recording_name}:{seed}"
        self.inode_names = inode_names
        # files whose grown regions read as zeros even in grow-garbage states
        self.zeroed = {i for i, name in inode_names.items() if name in set(no_garbage)}

    def rng(self, point: Point, kind: str, sample: int) -> random.Random:
        """The generator of one sampled state (string seeds are stable across runs)."""
        return random.Random(f"{self.tag}:{point.c}:{kind}:{sample}")

    def _who(self, inode: int) -> str:
        return self.inode_names.get(inode, f"inode{inode}")

    def _subset(self, rng: random.Random, items: Sequence[Pending]) -> list[Pending]:
        keep = rng.choice((0.25, 0.5, 0.75))
        return [p for p in items if rng.random() < keep]

    def _dir_prefix(self, rng: random.Random, point: Point) -> list[Pending]:
        return point.pending_dir[: rng.randint(0, len(point.pending_dir))]

    def _note(
        self,
        point: Point,
        chosen: Mapping[int, Sequence[Pending]],
        dir_ops: Sequence[Pending],
        extra: str = "",
    ) -> str:
        parts = []
        for inode, pend in sorted(point.pending.items()):
            got = [p.index for p in chosen.get(inode, ())]
            lost = sorted({p.index for p in pend} - set(got))
            parts.append(f"{self._who(inode)}: persisted ops {got or '-'}, lost {lost or '-'}")
        if point.pending_dir:
            kept = [p.index for p in dir_ops]
            lost = sorted({p.index for p in point.pending_dir} - set(kept))
            parts.append(f"dir: persisted ops {kept or '-'}, reverted {lost or '-'}")
        if extra:
            parts.append(extra)
        return "; ".join(parts)

    def make(self, point: Point, kind: str, sample: int, stale: bytes) -> CrashState | None:
        """A ``kind`` state at ``point``, or None where the kind does not apply.  ``stale``
        is a pool of old file bytes for stale garbage."""
        rng = self.rng(point, kind, sample)
        if kind == "dir":
            if not point.pending_dir:
                return None
            chosen = dict(point.pending.items())  # every file op persisted
            if rng.random() < 0.5:
                dir_ops = self._subset(rng, point.pending_dir)
            else:
                dir_ops = self._dir_prefix(rng, point)
            return CrashState(
                kind, point.c, build(point, chosen, dir_ops), self._note(point, chosen, dir_ops)
            )
        if not point.pending:
            return None
        dir_ops = self._dir_prefix(rng, point)
        if kind == "drop":
            chosen = {i: self._subset(rng, pend) for i, pend in point.pending.items()}
            return CrashState(
                kind, point.c, build(point, chosen, dir_ops), self._note(point, chosen, dir_ops)
            )
        if kind == "reorder":
            chosen = {}
            shuffled = False
            for inode, pend in point.pending.items():
                sub = self._subset(rng, pend) if rng.random() < 0.5 else list(pend)
                order = rng.sample(sub, len(sub))
                shuffled |= order != sub
                chosen[inode] = order
            if not shuffled:
                return None
            return CrashState(
                kind,
                point.c,
                build(point, chosen, dir_ops),
                self._note(point, chosen, dir_ops, "order shuffled"),
            )
        if kind == "torn":
            grain = rng.choice((SECTOR, BLOCK))
            chosen = {}
            torn = []
            for inode, pend in point.pending.items():
                keep = []
                for p in pend:
                    parts = pieces(p, grain)
                    got = [q for q in parts if rng.random() < 0.5]
                    if 0 < len(got) < len(parts):
                        torn.append(f"op {p.index}: {len(got)}/{len(parts)} pieces")
                    keep.extend(got)
                chosen[inode] = keep
            if not torn:
                return None
            extra = f"torn at {grain} bytes: " + ", ".join(torn)
            return CrashState(
                kind,
                point.c,
                build(point, chosen, dir_ops),
                self._note(point, chosen, dir_ops, extra),
            )
        if kind in ("grow-zero", "grow-garbage"):
            if not any(len(point.full[i]) > len(point.durable[i]) for i in point.pending):
                return None
            chosen = {i: self._subset(rng, pend) for i, pend in point.pending.items()}
            gap: Gap = zeros
            extra = "sizes persisted, lost data reads as zeros"
            if kind == "grow-garbage":
                if rng.random() < 0.5 or len(stale) < 64:
                    gap = lambda _off, n: rng.randbytes(n)  # noqa: E731
                    extra = "sizes persisted, lost data reads as random bytes"
                else:
                    # stale disk blocks: bytes that were elsewhere in the files
                    def gap(_off: int, n: int) -> bytes:
                        out = bytearray()
                        while len(out) < n:
                            at = rng.randrange(0, len(stale) // SECTOR or 1) * SECTOR
                            out += stale[at : at + min(n - len(out), BLOCK)]
                        return bytes(out[:n])

                    extra = "sizes persisted, lost data reads as stale file blocks"
            files = build(point, chosen, dir_ops, gap, grow=True, zeroed=self.zeroed)
            return CrashState(kind, point.c, files, self._note(point, chosen, dir_ops, extra))
        raise ValueError(kind)  # pragma: no cover

    def exhaustive(self, point: Point, limit: int) -> Iterator[CrashState]:
        """Every subset of the pending units at ``point`` (writes cut into 512-byte pieces,
        truncates, directory ops), persisted in program order, each with the file sizes the
        persisted ops leave and with the sizes of all pending ops persisted (the lost data
        reading as zeros); ``limit`` caps the subsets (the caller checks :meth:`units`)."""
        units = self.units(point)
        for mask in range(min(1 << len(units), limit)):
            chosen: dict[int, list[Pending]] = collections.defaultdict(list)
            dir_ops = []
            for bit, (inode, p) in enumerate(units):
                if mask >> bit & 1:
                    if inode < 0:
                        dir_ops.append(p)
                    else:
                        chosen[inode].append(p)
            for grow in (False, True):
                files = build(point, chosen, dir_ops, grow=grow)
                note = f"subset {mask:#x}" + (", sizes persisted" if grow else "")
                yield CrashState(
                    "exhaustive", point.c, files, self._note(point, chosen, dir_ops, note)
                )

    @staticmethod
    def units(point: Point) -> list[tuple[int, Pending]]:
        """The independent pending units at ``point`` (inode -1: a directory op)."""
        out: list[tuple[int, Pending]] = []
        for inode, pend in sorted(point.pending.items()):
            for p in pend:
                out.extend((inode, q) for q in pieces(p, SECTOR))
        out.extend((-1, p) for p in point.pending_dir)
        return out


# -- recovering and checking -----------------------------------------------------------------


class CrashFailure(AssertionError):
    """A crash state kvmap did not survive."""


@dataclass
class Stats:
    """Crash states checked, per kind, and failures (the summary)."""

    states: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates: int = 0  # states met again: only compared again, not recovered
    data_states: set[bytes] = field(default_factory=set)  # distinct without the lock file
    failures: list[str] = field(default_factory=list)
    recordings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def total(self) -> int:
        return sum(self.states.values())

    def merge(self, other: Stats) -> None:
        self.states.update(other.states)
        self.duplicates += other.duplicates
        self.data_states |= other.data_states
        self.failures.extend(other.failures)
        self.recordings.extend(other.recordings)
        self.seconds += other.seconds

    def table(self) -> str:
        lines = [
            f"crash states checked: {self.total()} ({len(self.data_states)} distinct in the "
            f"data and WAL files; and {self.duplicates} repeats compared again)"
        ]
        for kind in KINDS:
            if self.states[kind]:
                lines.append(f"  {kind:<13} {self.states[kind]:6d}")
        lines.append(f"  recordings: {len(self.recordings)}; {self.seconds:.1f} s")
        return "\n".join(lines)


def materialize(files: Mapping[str, bytes], directory: str) -> None:
    """Write a crash state into a fresh ``directory``."""
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def _contents(db: kvmap.Database) -> Model:
    got = dict(db.items())
    if len(db) != len(got):
        raise CrashFailure(f"len(db) is {len(db)} but iteration gives {len(got)} keys")
    db.check()
    return got


PROBE = b"\xffcrashsim-probe"


class Checker:
    """Recovers crash states of one recording and compares them with its model."""

    def __init__(
        self,
        recording: Recording,
        workdir: str,
        stats: Stats,
        max_failures: int = 5,
        no_garbage: Iterable[str] = (),
        keep_dir: str | None = None,
    ) -> None:
        """``workdir``: where states are materialised and recovered; ``keep_dir``: where
        the files of failed states are kept (default: ``workdir``); ``no_garbage``: file
        names whose grown regions read as zeros in grow-garbage states."""
        self.rec = recording
        self.workdir = workdir
        self.keep_dir = keep_dir or workdir
        self.stats = stats
        self.max_failures = max_failures
        self.no_garbage = tuple(no_garbage)
        # state digest -> digest of what it recovered to (None: recovery failed)
        self.seen: dict[bytes, bytes | None] = {}
        self.tag = f"{recording.name}:{recording.seed}".encode()
        self._digests: dict[int, bytes] = {}
        self.maker = StateMaker(
            recording.name, recording.seed, recording.inode_names, self.no_garbage
        )

    # -- describing a state ----------------------------------------------------------------
    def describe(self, state: CrashState) -> str:
        """Everything needed to rebuild ``state``: recording, seed, point, choices."""
        ops = self.rec.ops
        last = ops[state.point - 1].describe(self.rec.inode_names) if state.point else "-"
        return (
            f"recording {self.rec.name!r} (KVMAP_SEED={self.rec.seed}), {state.kind} state "
            f"after {state.point}/{len(ops)} ops (last: #{state.point - 1} {last}); "
            f"{state.note or 'no pending work'}; files: "
            + ", ".join(f"{n}={len(d)}B" for n, d in sorted(state.files.items()))
        )

    # -- recovery ------------------------------------------------------------------------------
    def recover(self, files: Mapping[str, bytes]) -> tuple[Model, Model | None]:
        """Open the state readonly, then writable (recovery), then commit a probe and
        reopen.  Returns (writable contents, readonly contents or None if there was no
        database).  Raises whatever kvmap raises, or :class:`CrashFailure`."""
        path = os.path.join(self.workdir, "state")
        materialize(files, path)
        ps = self.rec.page_size
        ro: Model | None = None
        if "kvmap.data" in files:
            with kvmap.open(path, readonly=True) as db:
                ro = _contents(db)
            # "A readonly handle replays the WAL into its memory and changes no file"
            # (it may create the lock file: shared memory, not data)
            now = {n: d for n, d in snapshot_dir(path).items() if n != "kvmap.lock"}
            if now != {n: d for n, d in files.items() if n != "kvmap.lock"}:
                raise CrashFailure(f"a readonly open changed the files: {sorted(now)}")
        else:  # the database was never durably created
            try:
                kvmap.open(path, readonly=True).close()
            except FileNotFoundError:
                pass
            else:
                raise CrashFailure("a readonly open found a database without kvmap.data")
        with kvmap.open(path, page_size=ps) as db:
            got = _contents(db)
        # a writable open deletes the WAL files it recovered; close leaves one, empty
        wals = sorted(n for n in os.listdir(path) if n.startswith("kvmap.wal."))
        if len(wals) != 1:
            raise CrashFailure(f"after recovery and close, WAL files {wals}")
        if ro is not None and ro != got:
            raise CrashFailure(
                f"readonly open saw {len(ro)} keys, writable open {len(got)}: "
                f"differ in {_diff(ro, got)}"
            )
        # The recovered database must take a commit and recover again to the same contents
        # (leftover torn tails and stale files must not break the next open).
        with kvmap.open(path, page_size=ps) as db:
            again = _contents(db)
            if again != got:
                raise CrashFailure(f"a second recovery differs in {_diff(got, again)}")
            db.put(PROBE, b"1")
        with kvmap.open(path, readonly=True) as db:
            after = _contents(db)
        if after != {**got, PROBE: b"1"}:
            raise CrashFailure(f"after a probe commit, differs in {_diff(got, after)}")
        return got, ro

    def check(self, state: CrashState) -> Model | None:
        """Recover ``state`` and compare it with the model's commits in ``bounds(point)``
        (``k_durable .. k_issued``).  Returns the recovered contents, or None for a
        failure (recorded; :class:`CrashFailure` is raised once ``max_failures`` were
        collected) or a state whose files were recovered before: then only the
        comparison is repeated, against this point's bounds."""
        # a prefix state is also what a crash of the process leaves: the stronger bound
        kd, ki = self.rec.bounds(state.point, process=state.kind == "prefix")
        expect = range(kd, ki + 1)
        digest = state.digest()
        if digest in self.seen:
            self.stats.duplicates += 1
            cached = self.seen[digest]
            if cached is None or any(cached == self._model_digest(k) for k in expect):
                return None  # failed before (reported once), or matches here too
        else:
            self.stats.states[state.kind] += 1
            # identify the states that differ only in the lock file (shared memory)
            self.stats.data_states.add(state.digest(skip="kvmap.lock") + self.tag)
        try:
            got, _ = self.recover(state.files)
        except Exception as exc:  # noqa: BLE001 - every exception is a finding
            self.seen[digest] = None
            self._fail(state, f"recovery raised {type(exc).__name__}: {exc}")
            return None
        self.seen[digest] = content_digest(got)
        if not any(got == self.rec.models[k] for k in expect):
            k = min(expect, key=lambda k: len(_diff(self.rec.models[k], got, limit=None)))
            self._fail(
                state,
                f"recovered {len(got)} keys, not the contents of commit {kd}..{ki}; closest "
                f"commit {k} differs in {_diff(self.rec.models[k], got)}",
            )
            return None
        return got

    def _model_digest(self, k: int) -> bytes:
        got = self._digests.get(k)
        if got is None:
            got = self._digests[k] = content_digest(self.rec.models[k])
        return got

    def _fail(self, state: CrashState, what: str) -> None:
        keep = os.path.join(self.keep_dir, f"failed-{next(_failure_ids)}")
        materialize(state.files, keep)
        msg = f"{what}\n    {self.describe(state)}\n    state kept in {keep}"
        self.stats.failures.append(msg)
        if len(self.stats.failures) >= self.max_failures:
            raise CrashFailure(_failure_report(self.stats.failures))

    # -- the sweeps ----------------------------------------------------------------------------
    def sweep(
        self,
        kinds: Mapping[str, int],
        samples: int,
        recovery_every: int = 0,
        exhaustive_limit: int = 0,
    ) -> None:
        """Check the prefix state of every crash point, ``samples * kinds[kind]`` states of
        each kind per point, every state (``exhaustive_limit``: at most that many per
        point) and, for every ``recovery_every``-th state recovered, the crash states of its
        own recovery."""
        t0 = time.perf_counter()
        stale = b"".join(self.rec.initial.values()) + b"".join(
            op.data for op in self.rec.ops[:200] if op.kind == "write"
        )
        done = 0
        for point in Sweep(self.rec.initial, self.rec.ops).points():
            states = [CrashState("prefix", point.c, point.prefix(), "")]
            for kind, weight in kinds.items():
                for j in range(samples * weight):
                    s = self.maker.make(point, kind, j, stale)
                    if s is not None:
                        states.append(s)
            if exhaustive_limit:
                states.extend(self.maker.exhaustive(point, exhaustive_limit))
            for s in states:
                got = self.check(s)
                if got is None:
                    continue
                done += 1
                if recovery_every and done % recovery_every == 0:
                    self.recovery_sweep(s, got)
        self.stats.recordings.append(self.rec.name)
        self.stats.seconds += time.perf_counter() - t0

    def recovery_sweep(self, state: CrashState, got: Model, samples: int = 1) -> None:
        """Record the recovery of ``state`` and check the crash states of that recovery:
        each must recover to exactly ``got`` (the state's files are on disk: durable)."""
        path = os.path.join(self.workdir, "nested")
        materialize(state.files, path)
        fs = RecordingFS(path)
        with fileio.installed(fs):
            kvmap.open(path, page_size=self.rec.page_size).close()
        if not fs.ops:
            return
        # the model of the recovery: one state, durable from the start
        nested = Recording(
            f"{self.rec.name}/recovery-of[{self.describe(state)}]",
            self.rec.seed,
            fs.initial,
            fs.ops,
            fs.inode_names,
            [got],
            [0],
            [(0, 0)],
            self.rec.page_size,
        )
        inner = Checker(
            nested, self.workdir, self.stats, self.max_failures, self.no_garbage, self.keep_dir
        )
        inner.seen = self.seen
        for point in Sweep(nested.initial, nested.ops).points():
            cands = [CrashState("prefix", point.c, point.prefix(), "")]
            for kind in ("drop", "torn"):
                for j in range(samples):
                    s = inner.maker.make(point, kind, j, b"")
                    if s is not None:
                        cands.append(s)
            for s in cands:
                s.kind = "recovery"
                inner.check(s)


def content_digest(model: Model) -> bytes:
    """A digest of a database's contents (the cache of recovered states keeps these)."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(model):
        h.update(b"%d:%d:" % (len(k), len(model[k])) + k + model[k])
    return h.digest()


def _diff(a: Model, b: Model, limit: int | None = 6) -> list[bytes]:
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return keys if limit is None else keys[:limit]


def _failure_report(failures: Sequence[str]) -> str:
    return f"{len(failures)} crash state(s) not survived:\n" + "\n".join(
        f"  {i + 1}. {f}" for i, f in enumerate(failures)
    )


def assert_no_failures(stats: Stats) -> None:
    """Raise :class:`CrashFailure` listing every failure collected."""
    if stats.failures:
        raise CrashFailure(_failure_report(stats.failures))


@contextlib.contextmanager
def scratch_dir(fallback: str) -> Iterator[str]:
    """A scratch directory for materialised states: on tmpfs (``/dev/shm``) when there is
    one, since recovery fsyncs every state (``KVMAP_CRASH_DIR`` overrides it), else
    ``fallback``.  Removed afterwards (keep failed states elsewhere: ``keep_dir``)."""
    base = os.environ.get("KVMAP_CRASH_DIR") or (
        "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else ""
    )
    if not base:
        yield fallback
        return
    path = os.path.join(base, f"kvmap-crashsim-{os.getpid()}-{next(_scratch_ids)}")
    os.makedirs(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_scratch_ids = itertools.count()
_failure_ids = itertools.count(1)
