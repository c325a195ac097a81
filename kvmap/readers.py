"""The lock file: the writer's lock, what the writer published, and the reader table.

Every process that opens a database maps ``kvmap.lock`` read-write (shared memory).  The
header (docs/format.md "Lock file") holds what the writer last published: its commit
sequence, the tree's txn id and the WAL file it appends to.  Each open handle owns one
64-byte slot of the reader table, where it records the oldest tree txn id its readers hold,
so a writer in any process can tell which freed pages are safe to reuse (invariant 4).

Design note: why readers need no lock, and how slots stay honest.  A reader that wants a
newer state reads the header (one ``unpack_from`` on the mapping: no system call), builds
its state from the data file and the WAL, writes the tree txn id it is about to read into
its slot, and then checks that the header still names that tree; if a checkpoint moved the
tree meanwhile it starts over.  A writer reuses pages only after a checkpoint scanned the
slots, and pages freed by a checkpoint are never part of the tree a reader registers after
that scan; so either the writer saw the reader's slot, or the reader sees the newer tree
and retries.  This is LMDB's reader-table protocol.

A slot is owned by whoever holds an OFD write lock (``F_OFD_SETLK``) on its 64 bytes: the
kernel releases it when the owning process dies, however it dies, so a writer treats a slot
whose lock it could take as stale and ignores (and clears) it; pid reuse cannot fool it.
OFD locks belong to the open file description, not the process, so two handles in one
process own different slots, and closing some other descriptor does not drop them.

The writer's lock is a ``flock`` on the whole lock file, held by a writable handle for its
life; readers never take it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
import time
from typing import NamedTuple

from .errors import CorruptionError, ReadersFullError
from .fileio import FileSystem
from .format import (
    FORMAT_VERSION,
    LOCK_HEADER,
    LOCK_HEADER_SIZE,
    LOCK_MAGIC,
    LOCK_SLOT,
    LOCK_SLOT_SIZE,
)

_FLOCK = struct.Struct("hhqqi4x")  # Linux struct flock: type, whence, start, len, pid
_PUBLISHED = struct.Struct("<QQQI")  # seq, txnid, wal_start, writer_pid at offset 16
_SLOT_TXN = struct.Struct("<QQ")  # txnid, seq at slot offset 16


class Published(NamedTuple):
    """What the writer last published in the lock file header."""

    seq: int
    txnid: int
    wal_start: int


class ReaderInfo(NamedTuple):
    """One live reader slot, as ``Database.readers()`` reports it."""

    slot: int
    pid: int
    txnid: int
    seq: int


def _lock_range(fd: int, start: int, length: int, kind: int) -> bool:
    """Take (or with F_UNLCK release) an OFD lock on a byte range without waiting; False if
    another open file description holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))
    except (BlockingIOError, PermissionError):
        return False
    return True


def _range_is_locked(fd: int, start: int, length: int) -> bool:
    """Whether some other open file description holds a lock on the byte range."""
    got = fcntl.fcntl(
        fd,
        fcntl.F_OFD_GETLK,
        _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0),
    )
    return bool(_FLOCK.unpack(got)[0] != fcntl.F_UNLCK)


MAX_SLOTS = 65536  # the largest max_readers; a larger count in a header is damage


def _valid_header(magic: bytes, version: int, nslots: int) -> bool:
    return magic == LOCK_MAGIC and version == FORMAT_VERSION and 1 <= nslots <= MAX_SLOTS


class LockFile:
    """One handle's view of the lock file: the header, its own slot, the writer lock."""

    __slots__ = ("fs", "fd", "map", "nslots", "slot", "token", "path", "pid")

    def __init__(self, fs: FileSystem, path: str, nslots: int, readonly_fs: bool) -> None:
        """Open (creating and sizing if needed) and map the lock file.  Raises ``OSError``
        when it cannot be opened read-write (the caller decides on a fallback) and
        :class:`CorruptionError` for a lock file that is not kvmap's."""
        self.fs = fs
        self.path = path
        self.slot = -1
        self.token = 0
        self.pid = os.getpid()
        flags = os.O_RDWR if readonly_fs else os.O_RDWR | os.O_CREAT
        self.fd = fs.open(path, flags)
        try:
            size = fs.size(self.fd)
            head = fs.pread(self.fd, LOCK_HEADER.size, 0)
            if size < LOCK_HEADER_SIZE or head[:8] == bytes(8):
                # New, or a crash while it was being made (the magic is written first, so
                # zeros mean nothing was published): header, then the table.
                head = LOCK_HEADER.pack(LOCK_MAGIC, FORMAT_VERSION, nslots, 0, 0, 0, 0)
                fs.pwrite(self.fd, head, 0)
                fs.truncate(self.fd, LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * nslots)
                size = LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * nslots
            magic, version, stored, *_ = LOCK_HEADER.unpack(head)
            if not _valid_header(magic, version, stored):
                head = self._repair(nslots, readonly_fs)
                magic, version, stored, *_ = LOCK_HEADER.unpack(head)
                size = fs.size(self.fd)
            if size < LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * stored:
                fs.truncate(self.fd, LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * stored)
                size = LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * stored
            self.nslots = stored
            self.map = fs.mmap_shared(self.fd, LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * stored)
        except BaseException:
            fs.close(self.fd)
            raise

    def _repair(self, nslots: int, readonly_fs: bool) -> bytes:
        """Remake a lock file whose header is not kvmap's; returns the header.

        Nothing is recovered from the lock file (docs/format.md), and a power loss may leave
        anything in it: its writes are never synced, so the size can survive without the
        header (ext4 ``data=writeback``).  It is remade only when provably unused: this
        handle takes the writer ``flock`` (no writer) and no other open file description
        holds a byte-range lock on it (no reader slot).  A live process with a damaged lock
        file, or a read-only file system, raises :class:`CorruptionError`.  Two handles
        repairing at once: the one that waits finds the header remade and uses it.
        """
        fs, fd = self.fs, self.fd
        if readonly_fs:
            raise CorruptionError(f"{self.path}: not a kvmap lock file (read-only file system)")
        for _ in range(100):  # another handle may be repairing it right now
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.005)
        else:
            raise CorruptionError(f"{self.path}: not a kvmap lock file, and it is in use")
        try:
            head = fs.pread(fd, LOCK_HEADER.size, 0)
            if len(head) == LOCK_HEADER.size and _valid_header(*LOCK_HEADER.unpack(head)[:3]):
                return head  # the other handle remade it
            if _range_is_locked(fd, 0, 0):
                raise CorruptionError(f"{self.path}: not a kvmap lock file, and it is in use")
            head = LOCK_HEADER.pack(LOCK_MAGIC, FORMAT_VERSION, nslots, 0, 0, 0, 0)
            fs.truncate(fd, 0)  # every slot back to zeros
            fs.pwrite(fd, head, 0)
            fs.truncate(fd, LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * nslots)
            return head
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    # -- the writer lock -------------------------------------------------------------------
    def try_lock_writer(self) -> bool:
        """Take the writer lock without waiting; False if another handle holds it."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    # -- the header --------------------------------------------------------------------------
    def published(self) -> Published:
        """What the writer last published.  Cost: one ``unpack_from`` (no system call)."""
        seq, txnid, wal_start, _ = _PUBLISHED.unpack_from(self.map, 16)
        return Published(seq, txnid, wal_start)

    def published_raw(self) -> bytes:
        """The published fields as raw bytes: a cheap "did anything move?" check."""
        return self.map[16:40]

    def publish(self, seq: int, txnid: int, wal_start: int) -> None:
        """The writer announces a new commit sequence, tree and WAL file.  (``self.pid``,
        not ``os.getpid()``, a system call per commit: after fork() the child's handles are
        disowned and never publish.)"""
        _PUBLISHED.pack_into(self.map, 16, seq, txnid, wal_start, self.pid)

    # -- this handle's slot ----------------------------------------------------------------
    def claim(self) -> None:
        """Own a free (or stale) slot.  Raises :class:`ReadersFullError` if none is free."""
        for i in range(self.nslots):
            off = LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * i
            if _lock_range(self.fd, off, LOCK_SLOT_SIZE, fcntl.F_WRLCK):
                self.slot = i
                self.token = secrets.randbits(63) | 1
                LOCK_SLOT.pack_into(self.map, off, os.getpid(), 0, self.token, 0, 0)
                return
        raise ReadersFullError(
            f"{self.path}: all {self.nslots} reader slots are in use by live handles"
        )

    def hold(self, txnid: int, seq: int) -> None:
        """Record the oldest tree txn id (and its sequence) this handle's readers hold; 0
        when none.  Cost: one ``pack_into``."""
        if self.slot >= 0:
            _SLOT_TXN.pack_into(self.map, LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * self.slot + 16,
                                txnid, seq)  # fmt: skip

    def readers(self, clear_stale: bool = False) -> list[ReaderInfo]:
        """Every slot of a live handle other than this one that holds a tree.  A slot
        whose owner died (its lock is free) is skipped, and zeroed if ``clear_stale``."""
        out = []
        m = self.map
        for i in range(self.nslots):
            if i == self.slot:
                continue
            off = LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * i
            pid, _, token, txnid, seq = LOCK_SLOT.unpack_from(m, off)
            if not token:
                continue
            if not _range_is_locked(self.fd, off, LOCK_SLOT_SIZE):
                if clear_stale and _lock_range(self.fd, off, LOCK_SLOT_SIZE, fcntl.F_WRLCK):
                    m[off : off + LOCK_SLOT_SIZE] = bytes(LOCK_SLOT_SIZE)
                    _lock_range(self.fd, off, LOCK_SLOT_SIZE, fcntl.F_UNLCK)
                continue
            out.append(ReaderInfo(i, pid, txnid, seq))
        return out

    def oldest_txnid(self, limit: int) -> int:
        """The oldest tree txn id any other live handle's readers hold, capped at
        ``limit``; stale slots are cleared on the way.  Cost: one ``fcntl`` per used slot."""
        held = [r.txnid for r in self.readers(clear_stale=True) if r.txnid]
        return min([limit, *held])

    def release(self) -> None:
        """Give up the slot and close (the writer lock goes with the descriptor)."""
        if self.slot >= 0 and self.pid == os.getpid():
            off = LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * self.slot
            try:
                self.map[off : off + LOCK_SLOT_SIZE] = bytes(LOCK_SLOT_SIZE)
            except ValueError:
                pass
        self.slot = -1
        try:
            self.map.close()
        except (BufferError, ValueError):
            pass
        self.fs.close(self.fd)
