"""The fuzz targets of kvmap: one function per target, taking the fuzzer's bytes.

Each ``<target>_one_input(data)`` feeds ``data`` to one part of kvmap and checks what comes
back.  It returns normally when kvmap behaved, and raises when it did not:

* a decoder (page, meta, WAL, lock file) may raise only :class:`kvmap.CorruptionError`;
  any other exception escapes and is a finding;
* whatever a decoder accepts must make sense (a decoded page re-encodes to the same node, a
  meta page satisfies the documented field rules, WAL replay yields exactly the frames the
  format says count, ...): a violation raises :class:`Finding`;
* a behaviour already reported as a kvmap bug raises :class:`KnownBug` (a ``Finding``)
  naming it.  :func:`run` returns the bug's name instead of raising, so the fuzzer and the
  hypothesis tests keep exploring past it; the inputs in ``fuzz/crashes/<target>/`` named
  ``bug-*`` reproduce it, and tests/test_fuzz.py expects them to (``xfail(strict=True)``).

The atheris scripts (``fuzz/fuzz_<target>.py``) are thin wrappers around :func:`run`, and
tests/test_fuzz.py runs every target as a hypothesis test and replays the corpus and the
crash directory, so the default test run covers every target without atheris.

Input layouts (the first byte is a *mode* byte of flags in every target but ``ops``):

``page``      mode, then the bytes of a page (or of a run of pages).  mode & 3 picks the page
              size (512, 512, 1024, 4096); 0x04 recomputes the checksum (so the fuzzer gets
              past it); 0x08 decodes the page as the number its header names (else as page
              ``mode >> 5``).
``meta``      mode, then meta page 0 and meta page 1.  mode & 3 picks the page size, 0x04
              recomputes both checksums.
``wal``       mode, then a whole WAL file.  0x01 recomputes the header checksum, 0x02 each
              frame's checksum, 0x04 also rewrites each frame's salt and sequence to follow
              the header; 0x20 also opens the database for writing (recovery checkpoints).
``lockfile``  mode, then a whole lock file.  0x10 also opens a real database with it.
``ops``       a program: see :func:`ops_one_input`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from crc32c import crc32c

import kvmap
from kvmap import db as kvdb
from kvmap import fileio, meta, node, readers, wal
from kvmap.errors import CorruptionError, ReadersFullError
from kvmap.format import (
    CHECKSUM,
    DATA_FILE,
    LOCK_FILE,
    LOCK_HEADER,
    LOCK_HEADER_SIZE,
    LOCK_MAGIC,
    LOCK_SLOT_SIZE,
    PAGE_BRANCH,
    PAGE_FREELIST,
    PAGE_HEADER,
    PAGE_LEAF,
    PAGE_OVERFLOW,
    WAL_FRAME_HEAD,
    WAL_HEADER,
    WAL_HEADER_SIZE,
    WAL_OP,
    WAL_OP_DELETE,
    WAL_OP_PUT,
    max_key_size,
    valid_page_size,
)
from kvmap.freelist import Freelist

TARGETS = ("page", "meta", "wal", "lockfile", "ops")
PAGE_SIZES = (512, 512, 1024, 4096)
TINY_PAGE = 512
MAX_READERS = 65536  # the bound kvmap.open() puts on max_readers


KNOWN_BUGS: dict[str, str] = {}
# Found by these targets and fixed since (their inputs are fuzz/crashes/*/fixed-*); seen
# again, they are plain findings:
#   wal-oversized-key: a checksum-valid WAL frame holding a key longer than max_key_size
#     was replayed as data; a writable open folded it into the tree (a key longer than
#     about a page made that checkpoint loop forever);
#   lockfile-zero-slots: a lock file header saying 0 reader slots made every readonly open
#     raise ReadersFullError until the file was deleted by hand;
#   lockfile-huge-slots: a header saying more than 65536 slots made kvmap grow the lock
#     file to 128 + 64 * nslots bytes (256 GiB for 2**32 - 1), map it, and scan every slot
#     at each checkpoint.


class Finding(AssertionError):
    """kvmap misbehaved on this input."""


class KnownBug(Finding):
    """A misbehaviour already reported; ``name`` says which (see fuzz/README.md)."""

    def __init__(self, name: str, detail: str) -> None:
        assert name in KNOWN_BUGS, name
        super().__init__(f"known bug {name}: {detail}")
        self.name = name


def check(cond: bool, what: str) -> None:
    """Raise :class:`Finding` unless ``cond``."""
    if not cond:
        raise Finding(what)


# -- shared helpers ---------------------------------------------------------------------------


class FuzzFS(fileio.FileSystem):
    """The file layer for fuzzing: no fsyncs (nothing here survives a power loss anyway, and
    they cost most of the time), and a cap on how far a file may grow, so that a damaged
    header asking for a huge file is a finding instead of a 256 GiB sparse file."""

    def __init__(self, max_size: int = 64 << 20) -> None:
        self.max_size = max_size

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass

    def truncate(self, fd: int, size: int) -> None:
        if size > self.max_size:
            raise Finding(f"asked to grow a file to {size} bytes (cap {self.max_size})")
        super().truncate(fd, size)


class BytesFS(fileio.FileSystem):
    """A file layer whose every file is one in-memory buffer (for the meta discovery)."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return self.buf[offset : offset + size]


_ROOT: list[str] = []


def scratch_root() -> str:
    """A per-process temporary directory (``KVMAP_FUZZ_TMP`` picks its parent)."""
    if not _ROOT:
        _ROOT.append(tempfile.mkdtemp(prefix="kvmap-fuzz-", dir=os.environ.get("KVMAP_FUZZ_TMP")))
        atexit.register(shutil.rmtree, _ROOT[0], True)
    return _ROOT[0]


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """A fresh directory for one input, removed afterwards."""
    path = tempfile.mkdtemp(dir=scratch_root())
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Template:
    """A small real database (512-byte pages, a two-level tree, an overflow value, a
    freelist) made once per process: its data file bytes, its contents and ``wal_seq``."""

    _made: Template | None = None

    def __init__(self) -> None:
        path = os.path.join(scratch_root(), "template")
        with fileio.installed(FuzzFS()):
            db = kvmap.open(path, page_size=TINY_PAGE, sync="off", checkpoint_size=0)
            for i in range(40):
                db.put(b"key%03d" % i, b"value %d" % i)
            db.put(b"big", b"B" * 1500)
            for i in range(0, 40, 3):
                db.delete(b"key%03d" % i)
            db.close()
        with open(os.path.join(path, DATA_FILE), "rb") as f:
            self.data = f.read()
        self.model = self._read_model(path)
        self.wal_seq = meta.pick(self.data[:TINY_PAGE], self.data[TINY_PAGE : 2 * TINY_PAGE])[
            0
        ].wal_seq
        shutil.rmtree(path)

    @staticmethod
    def _read_model(path: str) -> dict[bytes, bytes]:
        db = kvmap.open(path, readonly=True)
        try:
            return dict(db.items())
        finally:
            db.close()

    @classmethod
    def get(cls) -> Template:
        if cls._made is None:
            cls._made = Template()
        return cls._made

    def install(self, path: str) -> None:
        """Write the template's data file into the (existing) directory ``path``."""
        with open(os.path.join(path, DATA_FILE), "wb") as f:
            f.write(self.data)


def verify_db(db: kvmap.Database, model: dict[bytes, bytes], what: str) -> None:
    """The database holds exactly ``model``: items both ways, len, point reads, check()."""
    items = list(db.items())
    check(items == sorted(model.items()), f"{what}: items() differ from the model")
    check(
        list(db.keys(reverse=True)) == sorted(model, reverse=True),
        f"{what}: reverse keys() differ from the model",
    )
    check(len(db) == len(model), f"{what}: len() is {len(db)}, the model has {len(model)}")
    for k, v in model.items():
        check(db.get(k) == v, f"{what}: get({k!r}) differs from the model")
    db.check()


def _reseal_page(page: bytearray) -> None:
    CHECKSUM.pack_into(page, 0, crc32c(memoryview(page)[4:]))


# -- page ----------------------------------------------------------------------------------


def page_one_input(data: bytes) -> None:
    """Tree-page, overflow-run and freelist-run decoding (kvmap/node.py, kvmap/freelist.py)."""
    if not data:
        return
    mode, body = data[0], data[1:]
    ps = PAGE_SIZES[mode & 3]
    npages = max(1, -(-len(body) // ps))
    buf = bytearray(body.ljust(npages * ps, b"\0"))
    page = bytearray(buf[:ps])
    if mode & 0x04:
        _reseal_page(page)
    stored_pgno = PAGE_HEADER.unpack_from(page, 0)[4]
    pgno = stored_pgno if mode & 0x08 else mode >> 5
    _tree_page(bytes(page), pgno, ps)
    for ptype in (PAGE_OVERFLOW, PAGE_FREELIST):
        _run(buf, pgno, ps, ptype, reseal=bool(mode & 0x04))


def _tree_page(page: bytes, pgno: int, ps: int) -> None:
    try:
        n = node.decode(page, pgno)
    except CorruptionError:
        return
    check(isinstance(n, node.Node) and n.pgno == pgno, "decode returned a wrong node")
    ptype = PAGE_HEADER.unpack_from(page, 0)[1]
    if n.kids is None:
        check(ptype == PAGE_LEAF and n.vals is not None, "a leaf from a non-leaf page")
        assert n.vals is not None
        check(len(n.keys) == len(n.vals), "leaf keys and values differ in number")
        for v in n.vals:
            check(isinstance(v, bytes), "a leaf value that is not bytes")
            check(v.__class__ is not node.Ovf or len(v) == 8, "a bad overflow reference")
    else:
        check(ptype == PAGE_BRANCH and n.vals is None, "a branch from a non-branch page")
        check(len(n.keys) == len(n.kids) >= 1, "branch keys and children differ in number")
        check(n.keys[0] == b"", "a branch whose first key is not empty")
    check(all(type(k) is bytes for k in n.keys), "a key that is not bytes")
    check(n.size() <= ps, f"a decoded page of {n.size()} bytes in a {ps}-byte page")
    # Whatever decodes re-encodes to a page that decodes to the same node.
    again = node.decode(node.encode(n, ps), pgno)
    check(again.keys == n.keys and again.kids == n.kids, "re-encoding changed the keys")
    check(again.txn == n.txn, "re-encoding changed the txn id")
    if n.vals is not None:
        assert again.vals is not None
        same = [(a == b and a.__class__ is b.__class__) for a, b in zip(again.vals, n.vals)]
        check(all(same), "re-encoding changed the values")


def _run(buf: bytearray, pgno: int, ps: int, ptype: int, reseal: bool) -> None:
    """An overflow or freelist run, read the way btree.read_overflow and
    check.read_freelist read one (a run longer than the file is the pager's
    CorruptionError: skipped here)."""
    try:
        _, length = node.run_header(bytes(buf[:ps]), pgno, ptype)
    except CorruptionError:
        return
    npages = node.run_pages(length, ps)
    if npages * ps > len(buf):
        return
    run = bytearray(buf[: npages * ps])
    if reseal:
        _reseal_page(run)
    try:
        payload = node.run_payload(bytes(run), pgno, length)
    except CorruptionError:
        return
    check(len(payload) == length, f"run payload of {len(payload)} bytes, header says {length}")
    if ptype == PAGE_FREELIST:
        hwm = 2 + (pgno % 4096)
        try:
            fl = Freelist.decode(payload, hwm)
        except CorruptionError:
            return
        pages = fl.pages()
        check(all(2 <= p < hwm for p in pages), "a free page outside [2, hwm)")
        again = Freelist.decode(fl.encode(), hwm)
        check(sorted(again.pages()) == sorted(pages), "freelist re-encoding changed it")


# -- meta ----------------------------------------------------------------------------------


def meta_one_input(data: bytes) -> None:
    """Meta page decoding, choice of meta and page-size discovery (kvmap/meta.py and the
    open path's ``_read_meta_fd``)."""
    if not data:
        return
    mode, body = data[0], data[1:]
    peeked = meta.peek_page_size(body)
    check(peeked is None or valid_page_size(peeked), f"peek_page_size gave {peeked}")
    ps = PAGE_SIZES[mode & 3]
    pages = [bytearray(body[i * ps : (i + 1) * ps].ljust(ps, b"\0")) for i in (0, 1)]
    if mode & 0x04:
        for p in pages:
            _reseal_page(p)
    decoded: list[meta.Meta | None] = []
    for pgno, p in enumerate(pages):
        try:
            m = meta.decode(bytes(p), pgno)
        except CorruptionError:
            decoded.append(None)
            continue
        decoded.append(m)
        _check_meta(m, pgno, ps)
    try:
        newest, other = meta.pick(bytes(pages[0]), bytes(pages[1]))
    except CorruptionError:
        check(decoded == [None, None], "pick() refused a valid meta page")
    else:
        valid = [m for m in decoded if m is not None]
        check(newest == max(valid, key=lambda m: m.txnid), "pick() chose the older meta")
        check((other is not None) == (len(valid) == 2), "pick() lost the other meta")
    # The open path: find the page size, then the newest meta, from the file's bytes.
    fs = BytesFS(bytes(pages[0]) + bytes(pages[1]) if mode & 0x04 else body)
    try:
        found, found_ps = kvdb._read_meta_fd(fs, 0, "fuzz")
    except CorruptionError:
        return
    check(found.page_size == found_ps and valid_page_size(found_ps), "wrong page size found")
    _check_meta(found, found.txnid % 2, found_ps)


def _check_meta(m: meta.Meta, pgno: int, ps: int) -> None:
    check(m.page_size == ps and m.txnid % 2 == pgno, f"meta {pgno}: page size or txn id")
    check(m.hwm >= 2 and m.root < m.hwm and m.freelist < m.hwm, f"meta {pgno}: beyond hwm")
    check(m.root != 1 and m.freelist != 1, f"meta {pgno}: root or freelist on a meta page")
    check((m.root == 0) == (m.depth == 0) == (m.entries == 0), f"meta {pgno}: empty tree")
    check(meta.decode(m.encode(), pgno) == m, f"meta {pgno}: re-encoding changed it")


# -- wal -----------------------------------------------------------------------------------

Op = tuple[bytes, bytes | None]


def reference_frames(buf: bytes, salt: int, start_seq: int) -> list[tuple[int, list[Op]]]:
    """The frames of a WAL file that count, written from docs/format.md ("Which frames
    count") independently of kvmap/wal.py."""
    out: list[tuple[int, list[Op]]] = []
    off, last, n = WAL_HEADER_SIZE, start_seq, len(buf)
    head, op = WAL_FRAME_HEAD, WAL_OP
    while n - off >= head.size + 4:
        length, fsalt, seq, count, _flags = head.unpack_from(buf, off)
        end = off + length
        if length < head.size + 4 or end > n or fsalt != salt or seq != last + 1:
            break
        if crc32c(buf[off : end - 4]) != CHECKSUM.unpack_from(buf, end - 4)[0]:
            break
        ops: list[Op] = []
        pos, ok = off + head.size, True
        for _ in range(count):
            if pos + op.size > end - 4:
                ok = False
                break
            kind, klen, vlen = op.unpack_from(buf, pos)
            vstart = pos + op.size + klen
            if kind not in (WAL_OP_PUT, WAL_OP_DELETE) or vstart + vlen > end - 4:
                ok = False
                break
            if kind == WAL_OP_DELETE and vlen:
                ok = False
                break
            key = buf[pos + op.size : vstart]
            ops.append((key, buf[vstart : vstart + vlen] if kind == WAL_OP_PUT else None))
            pos = vstart + vlen
        if not ok or pos != end - 4:
            break
        out.append((seq, ops))
        off, last = end, seq
    return out


def _reseal_wal(buf: bytearray, mode: int) -> None:
    """Let the fuzzer past the checksums: fix the header's (0x01) and each frame's (0x02),
    after making frames follow the header's salt and sequence (0x04)."""
    if len(buf) >= WAL_HEADER.size and mode & 0x01:
        CHECKSUM.pack_into(buf, WAL_HEADER.size - 4, crc32c(bytes(buf[: WAL_HEADER.size - 4])))
    if not mode & 0x06 or len(buf) < WAL_HEADER.size:
        return
    _, _, _, salt, seq, _ = WAL_HEADER.unpack_from(buf, 0)
    off = WAL_HEADER_SIZE
    while len(buf) - off >= WAL_FRAME_HEAD.size + 4:
        length = struct.unpack_from("<Q", buf, off)[0]
        if length < WAL_FRAME_HEAD.size + 4 or off + length > len(buf):
            break
        seq = (seq + 1) & 0xFFFF_FFFF_FFFF_FFFF  # the u64 field wraps
        if mode & 0x04:
            struct.pack_into("<QQ", buf, off + 8, salt, seq)
        if mode & 0x02:
            end = off + length
            CHECKSUM.pack_into(buf, end - 4, crc32c(bytes(buf[off : end - 4])))
        off += length


def wal_one_input(data: bytes) -> None:
    """WAL decoding (kvmap/wal.py) and recovery (``kvmap.open`` replaying a WAL file next to
    a real data file), against :func:`reference_frames`."""
    if not data:
        return
    mode = data[0]
    buf = bytearray(data[1:])
    _reseal_wal(buf, mode)
    raw = bytes(buf)
    try:
        salt, start = wal.decode_header(raw, "fuzz")
    except CorruptionError:
        header: tuple[int, int] | None = None
    else:
        header = (salt, start)
        frames = reference_frames(raw, salt, start)
        scanned = list(wal.scan_frames(raw, WAL_HEADER_SIZE, salt, start))
        got = [(seq, ops) for seq, ops, _ in scanned]
        check(got == frames, "scan_frames disagrees with the format's rules")
        begin = WAL_HEADER_SIZE
        for seq, ops, end in scanned:  # a frame that counts re-encodes to its own bytes
            if WAL_FRAME_HEAD.unpack_from(raw, begin)[4] == 0:  # (flags are not checked)
                again = wal.encode_frame(salt, seq, ops)
                check(again == raw[begin:end], f"frame {seq} does not re-encode to its bytes")
            begin = end
    _recover(raw, header, writable=bool(mode & 0x20))


def _recover(raw: bytes, header: tuple[int, int] | None, writable: bool) -> None:
    tpl = Template.get()
    expected: dict[bytes, bytes] | None = dict(tpl.model)  # None: CorruptionError expected
    oversized = False
    if header is None:
        if len(raw) > WAL_HEADER_SIZE:
            expected = None
        name = wal.wal_name(tpl.wal_seq)
    else:
        salt, start = header
        name = wal.wal_name(start)
        if start > tpl.wal_seq:
            expected = None
        else:
            assert expected is not None
            for seq, ops in reference_frames(raw, salt, start):
                if seq <= tpl.wal_seq:
                    continue
                for k, v in ops:
                    oversized |= len(k) > max_key_size(TINY_PAGE)
                    if v is None:
                        expected.pop(k, None)
                    else:
                        expected[k] = v
    with scratch_dir() as path, fileio.installed(FuzzFS()):
        tpl.install(path)
        with open(os.path.join(path, name), "wb") as f:
            f.write(raw)
        try:
            db = kvmap.open(path, readonly=True)
        except CorruptionError:
            # (refusing a frame with an oversized key would be right too)
            check(expected is None or oversized, "CorruptionError on a good WAL")
            return
        try:
            check(expected is not None, "readonly open accepted a WAL it must refuse")
            assert expected is not None
            if oversized:
                check(
                    not any(len(k) > max_key_size(TINY_PAGE) for k in db.keys()),
                    "a WAL frame holding a key longer than max_key_size was replayed",
                )
                return  # replay stopped at that frame (or refused the WAL): both right
            verify_db(db, expected, "readonly open after replay")
        finally:
            db.close()
        if not writable:
            return
        db = kvmap.open(path, page_size=TINY_PAGE)
        try:
            verify_db(db, expected, "writable open after replay")
        finally:
            db.close()
        db = kvmap.open(path, readonly=True)
        try:
            verify_db(db, expected, "reopen after the recovery checkpoint")
        finally:
            db.close()


# -- lockfile ------------------------------------------------------------------------------


def lockfile_one_input(data: bytes) -> None:
    """The lock file header and reader table (kvmap/readers.py): whatever is in the file (it
    is shared memory, a crash may leave anything in it) must give a working handle, or
    CorruptionError for a file that is not a kvmap lock file."""
    if not data:
        return
    mode, body = data[0], data[1:]
    cap = LOCK_HEADER_SIZE + LOCK_SLOT_SIZE * MAX_READERS
    stored = _stored_slots(body)
    with scratch_dir() as path:
        lock_path = os.path.join(path, LOCK_FILE)
        with open(lock_path, "wb") as f:
            f.write(body)
        fs = FuzzFS(max_size=cap)
        try:
            lf = readers.LockFile(fs, lock_path, 1 + mode % 8, readonly_fs=False)
        except CorruptionError:
            return
        except Finding as exc:
            if stored is not None and stored > MAX_READERS:
                raise _huge_slots(stored) from exc
            raise
        try:
            if lf.nslots > MAX_READERS:
                raise _huge_slots(lf.nslots)
            pub = lf.published()
            check(all(isinstance(x, int) and x >= 0 for x in pub), "published() fields")
            try:
                lf.claim()  # no other handle exists: a slot must be free
            except ReadersFullError as exc:
                if lf.nslots == 0:
                    raise Finding(
                        "lockfile-zero-slots (fixed, back again): a lock file header saying "
                        "0 reader slots makes every readonly open fail with ReadersFullError"
                    ) from exc
                raise
            lf.hold(7, 9)
            check(lf.readers(clear_stale=True) == [], "a dead slot reported as a live reader")
            check(lf.oldest_txnid(100) == 100, "a dead slot holds back page reuse")
            check(lf.try_lock_writer(), "the writer lock is taken with no other handle")
        finally:
            lf.release()
        if mode & 0x10:
            _open_with_lock_file(path, body, cap)


def _stored_slots(body: bytes) -> int | None:
    """The slot count a kvmap lock file header in ``body`` records, if it is one."""
    if len(body) < LOCK_HEADER_SIZE or body[:8] != LOCK_MAGIC:
        return None
    return int(LOCK_HEADER.unpack_from(body, 0)[2])


def _huge_slots(stored: int) -> Finding:
    return Finding(
        "lockfile-huge-slots (fixed, back again): "
        f"a lock file header saying {stored} reader slots (open() allows at most "
        f"{MAX_READERS}) makes kvmap grow the lock file to {128 + 64 * stored} bytes, map "
        "it, and scan every slot at each checkpoint",
    )


def _open_with_lock_file(path: str, body: bytes, cap: int) -> None:
    """A real database next to the damaged lock file: readonly and writable opens work
    and see the data."""
    tpl = Template.get()
    tpl.install(path)
    with open(os.path.join(path, LOCK_FILE), "wb") as f:
        f.write(body)
    stored = _stored_slots(body)
    try:
        with fileio.installed(FuzzFS(max_size=cap)):
            try:
                db = kvmap.open(path, readonly=True)
            except CorruptionError:
                return
            except ReadersFullError as exc:
                if stored == 0:
                    raise Finding("lockfile-zero-slots (fixed, back again)") from exc
                raise
            try:
                verify_db(db, tpl.model, "readonly open with a damaged lock file")
            finally:
                db.close()
            db = kvmap.open(path, page_size=TINY_PAGE)
            try:
                verify_db(db, tpl.model, "writable open with a damaged lock file")
                db.put(b"new", b"1")
            finally:
                db.close()
            db = kvmap.open(path, readonly=True)
            try:
                verify_db(db, {**tpl.model, b"new": b"1"}, "reopen after a write")
            finally:
                db.close()
    except Finding as exc:
        if stored is not None and stored > MAX_READERS and "lockfile-" not in str(exc):
            raise _huge_slots(stored) from exc
        raise


# -- ops -----------------------------------------------------------------------------------


class _Program:
    """The fuzzer's bytes read as a program; reading past the end gives zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    _ALPHABET = b"a\x00b\xff"

    def key(self) -> bytes:
        b = self.byte()
        if b >= 0xF0:  # a key near the size limit
            return b"L" * (max_key_size(TINY_PAGE) - 1 - (b & 7)) + bytes([self.byte() & 1])
        return bytes(self._ALPHABET[self.byte() & 3] for _ in range(b % 5))

    def value(self) -> bytes:
        b = self.byte()
        size = b % 40 if b < 192 else (b - 192) * 97  # up to 6 KiB: overflow runs
        return bytes([self.byte()]) * size


MAX_OPS = 300
OPS = (
    "put", "delete", "txn", "checkpoint", "reopen", "snapshot", "append", "range", "follow",
    "compact", "get", "sync",
)  # fmt: skip


def ops_one_input(data: bytes) -> None:
    """A sequence of operations on a 512-byte-page database, checked against a dict.

    Byte 0 configures: sync mode (``% 3``: off, normal, full), ``checkpoint_size``
    (``>> 2 & 3``: 0, 512, 8192, 1 MiB).  Then each operation is a byte (``% 12``, the index
    in :data:`OPS`) and its arguments; keys come from a 4-letter alphabet (so they collide)
    or sit at the size limit, values are 0-39 bytes or up to 6 KiB (overflow runs).  A
    ``txn`` runs up to 7 puts and deletes then commits, aborts or raises out of its ``with``
    block; ``snapshot`` takes a read snapshot, or checks and closes the one taken;
    ``follow`` opens a readonly handle, or checks that it sees every commit; ``reopen``
    closes and reopens the writer.  After every operation ``len(db)`` must match; at the end
    the whole contents, ``check()``, and again after a reopen.
    """
    prog = _Program(data)
    cfg = prog.byte()
    options: dict[str, Any] = {
        "page_size": TINY_PAGE,
        "sync": ("off", "normal", "full")[cfg % 3],
        "checkpoint_size": (0, 512, 8192, 1 << 20)[(cfg >> 2) & 3],
    }
    model: dict[bytes, bytes] = {}
    with scratch_dir() as path, fileio.installed(FuzzFS()):
        dbpath = os.path.join(path, "db")
        handles: dict[str, Any] = {"db": kvmap.open(dbpath, **options)}
        try:
            for _ in range(MAX_OPS):
                if not prog.more():
                    break
                _OP_FUNCS[prog.byte() % len(OPS)](prog, handles, model, dbpath, options)
                db = handles["db"]
                check(len(db) == len(model), f"len() {len(db)} != model {len(model)}")
            verify_db(handles["db"], model, "end of program")
        finally:
            for name in ("snapshot", "follower", "db"):
                h = handles.pop(name, None)
                if h is not None:
                    (h[0] if isinstance(h, tuple) else h).close()
        db = kvmap.open(dbpath, **options)
        try:
            verify_db(db, model, "reopen at the end")
        finally:
            db.close()


Handles = dict[str, Any]
OpFunc = Callable[[_Program, Handles, dict[bytes, bytes], str, dict[str, Any]], None]


def _op_put(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    k, v = prog.key(), prog.value()
    h["db"].put(k, v)
    model[k] = v


def _op_delete(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    k = prog.key()
    check(h["db"].delete(k) == (k in model), f"delete({k!r}) returned the wrong answer")
    model.pop(k, None)


class _Abort(Exception):
    pass


def _op_txn(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    mine = dict(model)
    n = prog.byte() % 8
    end = prog.byte() % 3
    try:
        with h["db"].begin(write=True) as txn:
            for _ in range(n):
                k = prog.key()
                if prog.byte() & 1:
                    v = prog.value()
                    txn.put(k, v)
                    mine[k] = v
                else:
                    check(txn.delete(k) == (k in mine), "txn.delete() returned the wrong answer")
                    mine.pop(k, None)
                check(txn.get(k) == mine.get(k), "a transaction does not see its own write")
            check(len(txn) == len(mine), "a transaction's len() is wrong")
            if end == 1:
                txn.abort()
            elif end == 2:
                raise _Abort
    except _Abort:
        pass
    if end == 0:
        model.clear()
        model.update(mine)


def _op_checkpoint(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    h["db"].checkpoint()


def _op_reopen(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    snap = h.pop("snapshot", None)
    if snap is not None:
        snap[0].close()
    h["db"].close()
    h["db"] = kvmap.open(p, **o)


def _op_snapshot(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    snap = h.pop("snapshot", None)
    if snap is None:
        h["snapshot"] = (h["db"].begin(), dict(model))
        return
    s, frozen = snap
    try:
        check(list(s.items()) == sorted(frozen.items()), "a snapshot saw a later commit")
        check(len(s) == len(frozen), "a snapshot's len() moved")
    finally:
        s.close()


def _op_append(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    top = max(model, default=b"")
    n = 1 + prog.byte() % 4
    if len(top) + n + 1 > max_key_size(TINY_PAGE):
        return
    items = [(top + b"\xff" * i + b"\x01", prog.value()) for i in range(n)]
    h["db"].put_many(items, append=True)
    model.update(items)


def _op_range(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    lo, hi, flags = prog.key(), prog.key(), prog.byte()
    reverse = bool(flags & 1)
    if flags & 2:
        got = list(h["db"].items(prefix=lo, reverse=reverse))
        want = sorted(((k, v) for k, v in model.items() if k.startswith(lo)), reverse=reverse)
    else:
        start = lo if flags & 4 else None
        stop = hi if flags & 8 else None
        got = list(h["db"].items(start, stop, reverse=reverse))
        want = sorted(
            ((k, v) for k, v in model.items()
             if (start is None or k >= start) and (stop is None or k < stop)),
            reverse=reverse,
        )  # fmt: skip
    check(got == want, f"items() of a range (flags {flags}) differs from the model")


def _op_follow(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    ro = h.get("follower")
    if ro is None:
        h["db"].sync()
        h["follower"] = kvmap.open(p, readonly=True)
        return
    h["db"].sync()  # under sync="off" frames reach the file only now
    check(dict(ro.items()) == model, "a readonly handle does not see the writer's commits")
    check(len(ro) == len(model), "a readonly handle's len() is behind")


def _op_compact(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    h["db"].compact()


def _op_get(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    k = prog.key()
    check(h["db"].get(k) == model.get(k), f"get({k!r}) differs from the model")


def _op_sync(prog: _Program, h: Handles, model: dict[bytes, bytes], p: str, o: Any) -> None:
    h["db"].sync()


_OP_FUNCS: tuple[OpFunc, ...] = (
    _op_put, _op_delete, _op_txn, _op_checkpoint, _op_reopen, _op_snapshot, _op_append,
    _op_range, _op_follow, _op_compact, _op_get, _op_sync,
)  # fmt: skip
assert len(_OP_FUNCS) == len(OPS)


# -- running -------------------------------------------------------------------------------

ONE_INPUT: dict[str, Callable[[bytes], None]] = {
    "page": page_one_input,
    "meta": meta_one_input,
    "wal": wal_one_input,
    "lockfile": lockfile_one_input,
    "ops": ops_one_input,
}


def run(target: str, data: bytes) -> str | None:
    """Run one input; returns the name of a :class:`KnownBug` it hit (None if none).
    Any other failure raises."""
    try:
        ONE_INPUT[target](data)
    except KnownBug as exc:
        return exc.name
    return None


def corpus_dir(target: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", target)


def crashes_dir(target: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "crashes", target)
