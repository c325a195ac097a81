"""The one file layer: every write, sync, truncate, rename and mmap kvmap performs.

Nothing else in kvmap calls ``os.pwrite``, ``os.fsync``, ``os.ftruncate``,
``os.posix_fallocate``, ``os.replace`` or ``mmap.mmap`` directly, nor stores into a writable
mapping; they all go through the :class:`FileSystem` that is *installed*.  Tests install a
subclass that records the operations (to build crash states) or fails the N-th one (fault
injection) with :func:`installed`.  Data-file mappings are read-only: pages reach the file
only through :meth:`FileSystem.pwrite`.  WAL frames reach the file through
:meth:`FileSystem.store` into a writable shared mapping of space allocated beforehand
(:meth:`FileSystem.allocate`), so on a file system that writes in place (ext4, XFS) a full
disk stops a commit at the allocation, with ``ENOSPC``, never at a store.  (A store cannot
report an error: on a copy-on-write file system (btrfs, ZFS), or if the disk fails to read
a WAL page back, the kernel signals SIGBUS instead; see docs/guide/limits.md.)
"""

from __future__ import annotations

import contextlib
import mmap
import mmap as _mmap  # the name mmap is also a method of FileSystem
import os
from collections.abc import Iterator


class FileSystem:
    """Thin, overridable wrappers over the system calls kvmap uses.  Each raises ``OSError``
    exactly as the system call does."""

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        """Open ``path`` with ``os.open`` flags; returns a file descriptor."""
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)

    def close(self, fd: int) -> None:
        """Close a file descriptor."""
        os.close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (looping over short writes)."""
        n = os.pwrite(fd, data, offset)
        if n == len(data):
            return
        view = memoryview(data)[n:]
        offset += n
        while view:
            n = os.pwrite(fd, view, offset)
            if n <= 0:  # pragma: no cover - the kernel reports errors by raising
                raise OSError("short write")
            view = view[n:]
            offset += n

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``."""
        return os.pread(fd, size, offset)

    def fdatasync(self, fd: int) -> None:
        """Make the file's data (and its size) durable."""
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        """Make the file's data and metadata durable."""
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        """Set the file's size (growing leaves a hole that reads as zeros)."""
        os.ftruncate(fd, size)

    def size(self, fd: int) -> int:
        """The file's current size in bytes."""
        return os.fstat(fd).st_size

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` by ``src``."""
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        """Remove a file (a missing one is not an error: the goal is that it is gone)."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def fsync_dir(self, path: str) -> None:
        """Make a directory's entries (a create or rename inside it) durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        """Map ``length`` bytes of the file at ``offset``, read-only."""
        return mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=offset)

    def allocate(self, fd: int, size: int) -> None:
        """Grow the file to ``size`` bytes of allocated, zeroed blocks (not a hole: a store
        through a mapping into a hole that the disk cannot back would be a SIGBUS).  Raises
        ``OSError`` (``ENOSPC`` when the disk is full)."""
        have = self.size(fd)
        if size <= have:
            return
        fallocate = getattr(os, "posix_fallocate", None)
        if fallocate is not None:
            fallocate(fd, have, size - have)
        else:  # pragma: no cover - platforms without posix_fallocate: write the zeros
            self.pwrite(fd, bytes(size - have), have)

    def mmap_log(self, fd: int, length: int) -> _mmap.mmap:
        """Map the first ``length`` bytes of a WAL file read-write and shared: frames are
        stored through it with :meth:`store`, and reach the page cache with no system
        call (``fdatasync`` of the file makes them durable, as for ``pwrite``)."""
        return _mmap.mmap(fd, length, access=_mmap.ACCESS_WRITE)

    def store(self, m: _mmap.mmap, fd: int, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset`` of file ``fd`` through its writable mapping ``m``
        (which must cover it).  A write to the OS like :meth:`pwrite`, with no system call
        and no error to report (see the module docstring for what that leaves)."""
        m[offset : offset + len(data)] = data

    def mmap_shared(self, fd: int, length: int) -> _mmap.mmap:
        """Map the first ``length`` bytes read-write and shared (the lock file only: it is
        shared memory between processes, never data)."""
        return _mmap.mmap(fd, length, access=_mmap.ACCESS_WRITE)


_installed: FileSystem = FileSystem()
_FAILPOINT = os.environ.get("KVMAP_FAILPOINT", "")


def failpoint(name: str) -> None:
    """Crash the process (``os._exit(86)``) if ``KVMAP_FAILPOINT`` names this point.

    Crash tests set the variable in a child process to stop it at an exact step:
    ``wal-mid-frame`` (half a frame written), ``wal-before-sync`` (a frame written, not
    synced), ``ckpt-after-pages`` (tree pages synced, meta not written), ``ckpt-after-meta``
    (meta synced, the WAL files it covers not yet deleted).
    """
    if _FAILPOINT == name:
        os._exit(86)


def fs() -> FileSystem:
    """The :class:`FileSystem` new handles use."""
    return _installed


@contextlib.contextmanager
def installed(filesystem: FileSystem) -> Iterator[FileSystem]:
    """Use ``filesystem`` for every database opened inside the ``with`` block."""
    global _installed
    previous, _installed = _installed, filesystem
    try:
        yield filesystem
    finally:
        _installed = previous
