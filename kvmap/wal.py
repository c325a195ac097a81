"""The write-ahead log: committed transactions as checksummed frames appended to a file.

A committed write transaction becomes one frame (docs/format.md "WAL frame") holding its
puts and deletes; the tree is not touched until a checkpoint folds the log into it.

Invariant 5 (design.md): a frame counts only if its length, salt and crc32c all check, and
its sequence number follows the previous frame's; replay stops at the first frame that does
not.  A torn tail (a crash mid-append) is therefore ignored; the next writable open folds
the valid frames into the tree and deletes the file.  The salt is random per WAL file, so
stale bytes of another file or an older generation never pass as frames.

WAL files are named after the commit sequence they continue from
(``kvmap.wal.<16 hex digits>``).  A checkpoint starts a new file, folds the older ones into
the tree, and deletes them once the meta page that covers them is durable.

Sync modes (design.md "Durability modes"), applied by :meth:`WalWriter.append`:
``full`` writes and ``fdatasync``\\s before the commit returns; ``normal`` writes the frame
to the OS (it survives a crash of the process); ``off`` keeps frames in a process buffer,
written when it fills, on ``sync()``, checkpoint and close.

Design note: frames are stored through a mapping, not written.  A ``pwrite`` per commit
(~0.6 µs, plus ~0.3 µs of Python around it) was a quarter of a one-put commit.  The writer
instead allocates the file ahead of the frames (zeroed blocks from ``posix_fallocate``,
16 KiB at first, doubling up to 8 MiB at a time) and maps it shared and writable, so
"writing a frame to the OS" is a ``memcpy`` into the page cache: a crash of the process
loses nothing stored, and ``fdatasync`` makes the stores durable as it does written data
(the page cache is the same).  A store cannot report an error: a full disk would be a
SIGBUS.  So the space is allocated blocks, not a hole from ``ftruncate``: on ext4 or XFS the
disk space is claimed, and ``ENOSPC`` raised, by the allocation, before any store (on a
copy-on-write file system it is not: see docs/guide/limits.md).  The file ends in zeros
past the last frame, which replay reads as the end of the log (a frame's length is never
0); a follower reads the log in chunks and stops at the commit the writer published, not
at the end of the file.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
from collections.abc import Iterator

from crc32c import crc32c

from .errors import CorruptionError
from .fileio import _FAILPOINT, FileSystem, failpoint
from .format import (
    CHECKSUM,
    FORMAT_VERSION,
    WAL_FRAME_HEAD,
    WAL_HEADER,
    WAL_HEADER_SIZE,
    WAL_MAGIC,
    WAL_OP,
    WAL_OP_DELETE,
    WAL_OP_PUT,
    WAL_PREFIX,
)

Op = tuple[bytes, bytes | None]
_HEAD = WAL_FRAME_HEAD
_HEAD_SIZE = WAL_FRAME_HEAD.size
_OP = WAL_OP
_OP_SIZE = WAL_OP.size
OFF_BUFFER = 1 << 20  # sync="off" writes its buffer when it passes this many bytes
_LENGTH = struct.Struct(WAL_FRAME_HEAD.format[:2])  # a frame's first field, its length
FIRST_ALLOCATION = 16 << 10  # a new WAL's allocated (and mapped) size...
MAX_GROWTH = 8 << 20  # ...doubled as frames fill it, by at most this much at a time


def wal_name(start_seq: int) -> str:
    """File name of the WAL continuing from ``start_seq``.

    >>> wal_name(255)
    'kvmap.wal.00000000000000ff'
    """
    return f"{WAL_PREFIX}{start_seq:016x}"


def list_wals(directory: str) -> list[tuple[int, str]]:
    """(start sequence, path) of every WAL file in ``directory``, oldest first."""
    out = []
    for name in os.listdir(directory):
        digits = name[len(WAL_PREFIX) :]
        if name.startswith(WAL_PREFIX) and len(digits) == 16 and digits == digits.lower():
            try:
                start = int(digits, 16)
            except ValueError:
                continue
            if wal_name(start) == name:  # exactly what wal_name() writes, nothing else
                out.append((start, os.path.join(directory, name)))
    out.sort()
    return out


def encode_header(salt: int, start_seq: int) -> bytes:
    """The WAL header bytes, checksum included, padded to ``WAL_HEADER_SIZE``."""
    head = WAL_HEADER.pack(WAL_MAGIC, FORMAT_VERSION, 0, salt, start_seq, 0)
    crc = crc32c(head[: WAL_HEADER.size - 4])
    head = head[:-4] + CHECKSUM.pack(crc)
    return head + bytes(WAL_HEADER_SIZE - len(head))


def decode_header(buf: bytes, name: str = "WAL") -> tuple[int, int]:
    """(salt, start_seq) from a WAL header; raises :class:`CorruptionError`."""
    if len(buf) < WAL_HEADER.size:
        raise CorruptionError(f"{name}: header truncated")
    magic, version, _flags, salt, start_seq, crc = WAL_HEADER.unpack_from(buf, 0)
    if crc32c(buf[: WAL_HEADER.size - 4]) != crc:
        raise CorruptionError(f"{name}: header checksum mismatch")
    if magic != WAL_MAGIC:
        raise CorruptionError(f"{name}: not a kvmap WAL (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptionError(f"{name}: format version {version}, expected {FORMAT_VERSION}")
    return salt, start_seq


def encode_frame(salt: int, seq: int, ops: list[Op]) -> bytes:
    """One frame holding ``ops`` (value None deletes) as commit ``seq``.

    >>> frame = encode_frame(7, 1, [(b"k", b"v"), (b"gone", None)])
    >>> [(seq, ops) for seq, ops, _ in scan_frames(frame, 0, 7, 0)]
    [(1, [(b'k', b'v'), (b'gone', None)])]
    """
    parts: list[bytes] = [b""]
    add = parts.append
    pack = _OP.pack
    for k, v in ops:
        if v is None:
            add(pack(WAL_OP_DELETE, len(k), 0))
            add(k)
        else:
            add(pack(WAL_OP_PUT, len(k), len(v)))
            add(k)
            add(v)
    size = _HEAD_SIZE + 4 + sum(map(len, parts))
    parts[0] = _HEAD.pack(size, salt, seq, len(ops), 0)
    body = b"".join(parts)
    return body + CHECKSUM.pack(crc32c(body))


_HEAD_OP = struct.Struct(WAL_FRAME_HEAD.format + WAL_OP.format[1:])  # head + one op


def encode_put_frame(salt: int, seq: int, key: bytes, value: bytes) -> bytes:
    """``encode_frame(salt, seq, [(key, value)])``, the fast path of a one-put commit (one
    ``pack`` instead of a loop).

    >>> encode_put_frame(7, 3, b"k", b"v") == encode_frame(7, 3, [(b"k", b"v")])
    True
    """
    body = (
        _HEAD_OP.pack(
            _HEAD_SIZE + _OP_SIZE + 4 + len(key) + len(value),
            salt,
            seq,
            1,
            0,
            WAL_OP_PUT,
            len(key),
            len(value),
        )  # fmt: skip
        + key
        + value
    )
    return body + CHECKSUM.pack(crc32c(body))


def scan_frames(
    buf: bytes | memoryview, offset: int, salt: int, last_seq: int, max_key: int = 0xFFFF
) -> Iterator[tuple[int, list[Op], int]]:
    """Yield (seq, ops, end offset) for each valid frame in ``buf`` from ``offset``, whose
    sequence numbers continue from ``last_seq``; stop silently at the first frame that is
    truncated, has another salt, a wrong checksum, a sequence gap or malformed operations,
    a key longer than ``max_key`` included (no commit can hold one: it would not fit the
    tree's pages) (invariant 5).  Never raises for bad bytes."""
    n = len(buf)
    view = memoryview(buf)
    while offset + _HEAD_SIZE + 4 <= n:
        length, fsalt, seq, count, _flags = _HEAD.unpack_from(buf, offset)
        end = offset + length
        if length < _HEAD_SIZE + 4 or end > n or fsalt != salt or seq != last_seq + 1:
            return
        (crc,) = CHECKSUM.unpack_from(buf, end - 4)
        if crc32c(view[offset : end - 4]) != crc:
            return
        ops: list[Op] = []
        pos = offset + _HEAD_SIZE
        stop = end - 4
        for _ in range(count):
            if pos + _OP_SIZE > stop:
                return
            kind, klen, vlen = _OP.unpack_from(buf, pos)
            pos += _OP_SIZE
            if (
                pos + klen + vlen > stop
                or kind not in (WAL_OP_PUT, WAL_OP_DELETE)
                or klen > max_key
            ):
                return
            key = bytes(view[pos : pos + klen])
            pos += klen
            if kind == WAL_OP_PUT:
                ops.append((key, bytes(view[pos : pos + vlen])))
                pos += vlen
            else:
                if vlen:
                    return
                ops.append((key, None))
        if pos != stop:
            return
        yield seq, ops, end
        offset = end
        last_seq = seq


class WalWriter:
    """Appends frames to one WAL file, through a writable mapping of its allocated space
    (see the design note).  Not thread-safe: the write lock serialises it."""

    __slots__ = (
        "fs", "fd", "path", "salt", "start_seq", "offset", "buffer", "synced", "map", "mapped",
    )  # fmt: skip

    def __init__(self, fs: FileSystem, fd: int, path: str, salt: int, start_seq: int,
                 offset: int) -> None:  # fmt: skip
        self.fs = fs
        self.fd = fd
        self.path = path
        self.salt = salt
        self.start_seq = start_seq
        self.offset = offset  # file offset where the next frame goes (after the buffer)
        self.buffer = bytearray()
        self.synced = True
        self.map: mmap.mmap | None = None  # of the first `mapped` bytes of the file
        self.mapped = 0

    @classmethod
    def create(cls, fs: FileSystem, directory: str, start_seq: int) -> WalWriter:
        """Create (or replace) the WAL continuing from ``start_seq``, header synced, and
        the directory entry synced; then allocate and map its first frames' space.
        Raises ``OSError``."""
        path = os.path.join(directory, wal_name(start_seq))
        fd = fs.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            salt = secrets.randbits(63) | 1
            fs.pwrite(fd, encode_header(salt, start_seq), 0)
            fs.fdatasync(fd)
            fs.fsync_dir(directory)
            wal = cls(fs, fd, path, salt, start_seq, WAL_HEADER_SIZE)
            wal._grow(FIRST_ALLOCATION)
        except BaseException:
            fs.close(fd)
            raise
        return wal

    def _grow(self, need: int) -> None:
        """Allocate and map at least ``need`` bytes: double the mapping (at most
        ``MAX_GROWTH`` more), in whole 4 KiB pages.  Raises ``OSError``."""
        size = max(need, self.mapped + min(self.mapped, MAX_GROWTH))
        size = -(-size // 4096) * 4096
        self.fs.allocate(self.fd, size)
        old, self.map, self.mapped = self.map, None, 0
        if old is not None:
            old.close()
        self.map = self.fs.mmap_log(self.fd, size)
        self.mapped = size

    @property
    def size(self) -> int:
        """Bytes of frames appended (written or buffered), header included."""
        return self.offset + len(self.buffer)

    def append(self, frame: bytes, sync: str) -> None:
        """Append one frame under ``sync`` mode ("full" also needs :meth:`sync`, which the
        caller runs outside the write lock for group commit).  Raises ``OSError`` (when
        more space cannot be allocated or mapped)."""
        self.synced = False
        if sync == "off":
            self.buffer += frame
            if len(self.buffer) >= OFF_BUFFER:
                self.flush()
            return
        if self.buffer:
            self.buffer += frame
            self.flush()
        else:  # flush(), inlined for the commonest commit
            offset = self.offset
            end = offset + len(frame)
            if end > self.mapped:
                self._grow(end)
            if _FAILPOINT == "wal-mid-frame":  # a crash test ends the process mid-store
                self.fs.store(self.map, self.fd, offset, frame[: len(frame) // 2])  # type: ignore[arg-type]
                failpoint("wal-mid-frame")
            self.fs.store(self.map, self.fd, offset, frame)  # type: ignore[arg-type]
            self.offset = end
        if _FAILPOINT:
            failpoint("wal-before-sync")

    def flush(self) -> None:
        """Store buffered frames in the file.  Raises ``OSError``."""
        if self.buffer:
            data = bytes(self.buffer)
            end = self.offset + len(data)
            if end > self.mapped:
                self._grow(end)
            self.fs.store(self.map, self.fd, self.offset, data)  # type: ignore[arg-type]
            self.offset = end
            self.buffer.clear()

    def sync(self) -> None:
        """Flush and ``fdatasync``.  Raises ``OSError``."""
        self.flush()
        self.fs.fdatasync(self.fd)
        self.synced = True

    def close(self) -> None:
        """Unmap and close the descriptor (buffered frames are lost: call :meth:`flush`
        first)."""
        if self.map is not None:
            m, self.map, self.mapped = self.map, None, 0
            m.close()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self.fs.close(fd)


def read_wal(fs: FileSystem, path: str) -> bytes:
    """The whole WAL file.  Raises ``OSError``."""
    fd = fs.open(path, os.O_RDONLY)
    try:
        return _read_from(fs, fd, 0)
    finally:
        fs.close(fd)


def read_wal_tail(fs: FileSystem, path: str, start: int, size: int) -> tuple[bytes, bytes]:
    """(the header bytes, up to ``size`` bytes from offset ``start``) of a WAL file that a
    follower has read up to ``start``: a catch-up costs what was appended, not the whole
    file (nor its allocated tail).  Raises ``OSError``."""
    fd = fs.open(path, os.O_RDONLY)
    try:
        return fs.pread(fd, WAL_HEADER_SIZE, 0), fs.pread(fd, size, start)
    finally:
        fs.close(fd)


def used_end(buf: bytes) -> int:
    """Where the bytes of a WAL file's contents ``buf`` end: its length, less the zeros of
    its allocated tail (see the design note; a frame ending in zero bytes ends a little
    later).  A file whose header is damaged held frames only if something follows the
    header here.

    >>> used_end(b"head" + bytes(10)), used_end(b"head" + bytes(1) + b"x" + bytes(3))
    (4, 6)
    """
    return len(buf.rstrip(b"\0"))


def frame_length(buf: bytes, pos: int) -> int:
    """The length a frame starting at ``pos`` of ``buf`` claims (0 if ``buf`` ends before
    the field): how much a follower must read to see whether the frame is whole.

    >>> frame = encode_frame(7, 1, [(b"k", b"v")])
    >>> frame_length(frame, 0) == len(frame), frame_length(frame[:3], 0)
    (True, 0)
    """
    if pos + 8 > len(buf):
        return 0
    return int(_LENGTH.unpack_from(buf, pos)[0])


def read_wal_header(fs: FileSystem, path: str) -> bytes:
    """The first ``WAL_HEADER_SIZE`` bytes of a WAL file (fewer if it is shorter).  Raises
    ``OSError``."""
    fd = fs.open(path, os.O_RDONLY)
    try:
        return fs.pread(fd, WAL_HEADER_SIZE, 0)
    finally:
        fs.close(fd)


def _read_from(fs: FileSystem, fd: int, start: int) -> bytes:
    size = fs.size(fd)
    chunks = []
    off = start
    while off < size:
        chunk = fs.pread(fd, min(size - off, 64 << 20), off)
        if not chunk:
            break
        chunks.append(chunk)
        off += len(chunk)
    return b"".join(chunks)
