"""Salvage: copy every readable record of a damaged database into a new one.

When ``kvmap check`` reports damage that ``kvmap.open`` cannot get past, or that makes reads
raise :class:`~kvmap.CorruptionError`, :func:`salvage` (``kvmap salvage DBPATH NEWPATH``)
reads the damaged files directly, trusting nothing it cannot verify, and writes what it
finds into a fresh database.  The damaged database is only read, never written.

Where records come from, most trusted first:

1. **The tree of the newest valid meta page.**  It is walked from the root; a page that
   fails a check (checksum, page number, type, depth, keys in order and inside the bounds
   its parent gives, a txn id not above the meta's, not reached twice) is recorded as
   damaged and its whole subtree is skipped.  The key range that subtree covered (known from
   the parent's separators) becomes an *unknown range*, and so does the key of a value
   whose overflow run is damaged.  Outside the unknown ranges this tree is authoritative: a
   key it does not hold stays deleted.
2. **Inside the unknown ranges only**: the tree of the other valid meta page (the commit
   before) and, as a fallback, every **orphan leaf**: a leaf page anywhere in the file whose
   checksum and page number verify (the leaves below a damaged branch, older versions of
   pages, freed pages not reused yet).  The leaf with the highest txn id wins for every key
   its span covers (a leaf of the other tree: the range its parent gives it; an orphan: its
   first to its last key), and a newer leaf that covers a key without holding it means the
   key was deleted then.  In a copy-on-write tree one leaf covers a key at a time, so this
   takes the newest surviving version of each key, but **records from orphan leaves may
   be stale**: an older value, or a key whose later deletion was recorded only in a damaged
   page.  They are counted apart in the report.  An overflow value is taken from such a
   leaf only if its run verifies and was written no later than the leaf (a run since reused
   for another value is never attached to the key).
3. **Leaves newer than the tree.**  A leaf written by a txn after the newest valid meta's
   holds committed data the tree lacks: the tree of a newest meta page that is damaged, or
   of a checkpoint that crashed before its meta page (whose commits are also in the WAL).
   Such leaves override the tree within their spans (deletions included), newest first.
4. **The write-ahead log on top.**  The valid frames of every WAL file (each read up to its
   first bad frame, as recovery does) are replayed in commit order: every frame after the
   tree's ``wal_seq`` over everything, and, over the unknown ranges, the unbroken run of
   frames ending at ``wal_seq`` (a crash can leave the WAL a checkpoint covers behind;
   replaying a frame older than a missing one could undo a newer change, so frames before
   a gap are skipped there, and after the tree too when newer leaves were used).  Frames
   after a gap are replayed (each moves its keys forward in time; the commits in the gap
   are lost).

With no valid meta page at all, the page size is guessed (the one at which the most pages
verify) and the whole key space is unknown.  The lock file is not read; salvage holds the
database's writer lock while it reads, so no process can write meanwhile.

Cost: the data file is read once for the tree walk and once for the scan for orphan and
newer leaves (a CRC-32C of each leaf page), and every WAL file is read; every record is held
in memory (a dict of keys and values); then the new database is written with bulk loads
(``put_many(append=True)``), which fill its pages completely.
"""

from __future__ import annotations

import errno
import fcntl
import os
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

from . import fileio
from .db import open as kv_open
from .errors import CorruptionError, DatabaseLockedError
from .format import (
    DATA_FILE,
    LOCK_FILE,
    MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
    PAGE_HEADER,
    PAGE_LEAF,
    PAGE_OVERFLOW,
    WAL_HEADER_SIZE,
    max_key_size,
)
from .meta import Meta, peek_page_size
from .meta import decode as decode_meta
from .node import Node, Ovf, decode, run_header, run_pages, run_payload
from .wal import decode_header, list_wals, read_wal, scan_frames, used_end

__all__ = ["SalvageReport", "Salvaged", "recover", "salvage"]

Op = tuple[bytes, bytes | None]
_PAGE_SIZES = [MIN_PAGE_SIZE << i for i in range(8) if MIN_PAGE_SIZE << i <= MAX_PAGE_SIZE]
_CHUNK = 256  # pages read at once by the scan
_NO_META = 1 << 64  # the "newest txn" when no meta is valid: no leaf is newer than it


@dataclass
class SalvageReport:
    """What :func:`recover` found, and where the records came from."""

    page_size: int = 0
    metas: list[str] = field(default_factory=list)  # what became of each meta page
    records: int = 0  # records recovered
    from_tree: int = 0  # records from the newest valid meta's tree
    from_older_tree: int = 0  # from the other meta's tree, inside the unknown ranges
    from_orphans: int = 0  # from orphan leaves, inside the unknown ranges: may be stale
    from_newer_leaves: int = 0  # from leaves written after the tree
    wal_frames: int = 0  # WAL frames replayed (over everything or over the unknown ranges)
    wal_problems: list[str] = field(default_factory=list)
    damaged_pages: dict[int, str] = field(default_factory=dict)  # page -> what failed
    skipped: int = 0  # subtrees and overflow values cut off by damage
    unknown_ranges: int = 0  # key ranges the newest tree could not vouch for

    @property
    def damaged(self) -> bool:
        """Whether anything failed its checks."""
        return bool(self.damaged_pages or self.wal_problems or self.skipped)

    def summary(self) -> str:
        """The report as a few lines of text."""
        lines = [
            f"records recovered: {self.records:,} (from the tree {self.from_tree:,}, the "
            f"older tree {self.from_older_tree:,}, newer leaves {self.from_newer_leaves:,}, "
            f"orphan leaves {self.from_orphans:,} [may be stale]; {self.wal_frames:,} WAL "
            "frame(s) replayed)",
            f"pages damaged: {len(self.damaged_pages):,} (subtrees and values skipped: "
            f"{self.skipped:,}, unknown key ranges: {self.unknown_ranges:,}); page size "
            f"{self.page_size}",
        ]
        lines += [f"  {m}" for m in self.metas]
        for pgno, why in sorted(self.damaged_pages.items())[:20]:
            lines.append(f"  page {pgno}: {why}")
        if len(self.damaged_pages) > 20:
            lines.append(f"  ... and {len(self.damaged_pages) - 20:,} more damaged pages")
        lines += [f"  {p}" for p in self.wal_problems]
        return "\n".join(lines)


@dataclass
class Salvaged:
    """The records :func:`recover` found (key -> value), and its report."""

    records: dict[bytes, bytes]
    report: SalvageReport


def _max_hi(a: bytes | None, b: bytes | None) -> bytes | None:
    return None if a is None or b is None else max(a, b)


def _after(key: bytes) -> bytes:
    """The smallest key greater than ``key``."""
    return key + b"\x00"


class _Ranges:
    """A set of disjoint half-open key ranges ``[lo, hi)`` (``hi`` None: no upper bound),
    with O(log n) membership and insertion."""

    def __init__(self) -> None:
        self._d = SortedDict()  # lo -> hi

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        d = self._d
        i = d.bisect_right(key) - 1
        if i < 0:
            return False
        hi = d.peekitem(i)[1]
        return bool(hi is None or key < hi)

    def add(self, lo: bytes, hi: bytes | None) -> None:
        """Add ``[lo, hi)``, merged with the ranges it touches."""
        d = self._d
        i = d.bisect_right(lo) - 1
        if i >= 0:
            plo, phi = d.peekitem(i)
            if phi is None or phi >= lo:  # the range before reaches lo
                del d[plo]
                lo, hi = plo, _max_hi(hi, phi)
        while True:  # the ranges that start inside [lo, hi]
            j = d.bisect_left(lo)
            if j >= len(d):
                break
            nlo, nhi = d.peekitem(j)
            if hi is not None and nlo > hi:
                break
            del d[nlo]
            hi = _max_hi(hi, nhi)
        d[lo] = hi

    def spans(self) -> list[tuple[bytes, bytes | None]]:
        """The ranges, ascending."""
        return list(self._d.items())

    def overlaps(self, lo: bytes | None, hi: bytes | None) -> bool:
        """Whether some range meets ``[lo, hi)`` (None: unbounded)."""
        d = self._d
        lo = lo or b""
        i = d.bisect_right(lo) - 1
        if i >= 0:
            phi = d.peekitem(i)[1]
            if phi is None or phi > lo:
                return True
        j = i + 1
        return j < len(d) and (hi is None or d.peekitem(j)[0] < hi)


class _DataFile:
    """Raw, verified reads of a data file."""

    def __init__(self, fs: fileio.FileSystem, path: str) -> None:
        self.fs = fs
        self.fd = fs.open(path, os.O_RDONLY)
        try:
            self.size = fs.size(self.fd)
        except BaseException:
            fs.close(self.fd)
            raise
        self.page_size = MIN_PAGE_SIZE

    def close(self) -> None:
        self.fs.close(self.fd)

    @property
    def npages(self) -> int:
        return self.size // self.page_size

    def raw(self, pgno: int, n: int = 1, page_size: int = 0) -> bytes:
        ps = page_size or self.page_size
        return self.fs.pread(self.fd, n * ps, pgno * ps)

    def node(self, pgno: int) -> Node:
        """Tree page ``pgno``, verified.  Raises :class:`CorruptionError`."""
        if not 2 <= pgno < self.npages:
            raise CorruptionError(f"page {pgno} lies outside the data file")
        return decode(self.raw(pgno), pgno)

    def overflow(self, ref: Ovf, max_txn: int | None = None) -> bytes:
        """The value in the overflow run ``ref``, verified; with ``max_txn``, the run must
        have been written by that txn or before.  Raises :class:`CorruptionError`."""
        pgno, ps = ref.pgno, self.page_size
        if not 2 <= pgno < self.npages:
            raise CorruptionError(f"page {pgno}: overflow run outside the data file")
        txn, length = run_header(self.raw(pgno), pgno, PAGE_OVERFLOW)
        n = run_pages(length, ps)
        if pgno + n > self.npages:
            raise CorruptionError(f"page {pgno}: overflow run runs past the end of the file")
        if max_txn is not None and txn > max_txn:
            raise CorruptionError(f"page {pgno}: overflow run rewritten by txn {txn}")
        return run_payload(self.raw(pgno, n), pgno, length)


@dataclass
class _Leaf:
    txn: int
    pgno: int
    lo: bytes  # the key span the leaf vouches for: [lo, hi)
    hi: bytes | None
    node: Node
    source: str  # "older tree" or "orphan"


def _why(exc: CorruptionError, pgno: int) -> str:
    msg = str(exc)
    return msg.removeprefix(f"page {pgno}: ")


def _check_node(node: Node, meta: Meta, depth: int, lo: bytes | None, hi: bytes | None) -> None:
    """The checks ``check()`` makes of a tree page, raised as :class:`CorruptionError`."""
    pgno = node.pgno
    if node.txn > meta.txnid:
        raise CorruptionError(f"page {pgno}: written by txn {node.txn} > {meta.txnid}")
    if (node.kids is None) != (depth == meta.depth):
        raise CorruptionError(f"page {pgno}: wrong page type at depth {depth}")
    keys = node.keys
    first = 0 if node.kids is None else 1
    if node.kids is None and not keys:
        raise CorruptionError(f"page {pgno}: empty leaf")
    for a, b in zip(keys[first:], keys[first + 1 :]):
        if a >= b:
            raise CorruptionError(f"page {pgno}: keys out of order")
    if len(keys) > first and (
        (lo is not None and keys[first] < lo) or (hi is not None and keys[-1] >= hi)
    ):
        raise CorruptionError(f"page {pgno}: a key outside its parent's bounds")


def _walk(
    f: _DataFile, meta: Meta, report: SalvageReport, unknown: _Ranges, within: _Ranges | None,
) -> Iterator[tuple[int, bytes | None, bytes | None, Node]]:  # fmt: skip
    """The leaves of ``meta``'s tree that pass every check, as (pgno, lo, hi, node), in
    key order.  A damaged page is recorded in ``report`` and its subtree's key range added
    to ``unknown``; with ``within``, subtrees wholly outside it are not read."""
    seen: set[int] = set()
    # (page, depth, lower bound, upper bound); bounds are None when open
    stack: list[tuple[int, int, bytes | None, bytes | None]] = [(meta.root, 1, None, None)]
    while stack:
        pgno, depth, lo, hi = stack.pop()
        if within is not None and not within.overlaps(lo, hi):
            continue
        try:
            if pgno in seen:
                raise CorruptionError(f"page {pgno}: reached twice")
            seen.add(pgno)
            node = f.node(pgno)
            _check_node(node, meta, depth, lo, hi)
        except CorruptionError as exc:
            report.damaged_pages.setdefault(pgno, _why(exc, pgno))
            report.skipped += 1
            unknown.add(lo or b"", hi)
            continue
        if node.kids is None:
            yield pgno, lo, hi, node
            continue
        kids, keys = node.kids, node.keys
        for i in range(len(kids) - 1, -1, -1):  # pushed in reverse: popped in key order
            stack.append((kids[i], depth + 1, lo if i == 0 else keys[i],
                          keys[i + 1] if i + 1 < len(kids) else hi))  # fmt: skip


def _find_page_size(f: _DataFile, report: SalvageReport) -> list[Meta]:
    """Set ``f.page_size``; returns the valid meta pages, newest first."""
    first = peek_page_size(f.raw(0, page_size=4096))
    sizes = ([first] if first else []) + [s for s in _PAGE_SIZES if s != first]
    for ps in sizes:
        metas = []
        notes = []
        for pgno in (0, 1):
            try:
                metas.append(decode_meta(f.raw(pgno, page_size=ps).ljust(ps, b"\0"), pgno))
            except CorruptionError as exc:
                notes.append((pgno, str(exc)))
        if metas:
            f.page_size = ps
            for pgno, why in notes:
                report.damaged_pages[pgno] = why.removeprefix(f"meta page {pgno}: ")
                report.metas.append(f"meta page {pgno}: damaged ({why}), not used")
            metas.sort(key=lambda m: m.txnid, reverse=True)
            return metas
    best, best_count = 0, 0  # no valid meta: the size at which the most pages verify
    for ps in sizes:
        count = 0
        for pgno in range(2, min(f.size // ps, 66)):
            try:
                decode(f.raw(pgno, page_size=ps), pgno)
                count += 1
            except CorruptionError:
                pass
        if count > best_count:
            best, best_count = ps, count
    if not best:
        raise CorruptionError("no valid meta page and no readable tree page: nothing to salvage")
    f.page_size = best
    for pgno in (0, 1):
        report.damaged_pages[pgno] = "no valid meta page"
    report.metas.append(f"no valid meta page; page size {best} guessed from the tree pages")
    return []


def _scan_leaves(f: _DataFile, unknown: _Ranges, newer_than: int) -> Iterator[_Leaf]:
    """Every leaf page of the file that verifies and holds a key of ``unknown`` or was
    written by a txn after ``newer_than``."""
    ps = f.page_size
    for start in range(2, f.npages, _CHUNK):
        n = min(_CHUNK, f.npages - start)
        chunk = f.raw(start, n)
        for i in range(n):
            pgno = start + i
            buf = chunk[i * ps : (i + 1) * ps]
            if len(buf) < ps:
                return
            _, ptype, _, _, stored, txn = PAGE_HEADER.unpack_from(buf, 0)
            if ptype != PAGE_LEAF or stored != pgno:
                continue
            try:
                node = decode(buf, pgno)
            except CorruptionError:
                continue
            keys = node.keys
            if keys and (txn > newer_than or any(k in unknown for k in keys)):
                yield _Leaf(txn, pgno, keys[0], _after(keys[-1]), node, "orphan")


def recover(path: str) -> Salvaged:
    """Every record that can be read from the database in directory ``path``, nothing
    written (the module docstring says where records come from and which may be stale).

    Cost: reads every tree page reachable from the newest valid meta, every page of the
    data file once more (the scan for orphan and newer leaves), every WAL file; memory for
    every record.  Raises ``FileNotFoundError`` when there is no data file,
    :class:`~kvmap.DatabaseLockedError` when a writer has the database open,
    :class:`~kvmap.CorruptionError` when no page of the file verifies, and ``OSError`` when
    reading fails."""
    data = os.path.join(path, DATA_FILE)
    if not os.path.exists(data):
        raise FileNotFoundError(errno.ENOENT, "no kvmap database here", path)
    lock = _lock_writer(path)
    try:
        f = _DataFile(fileio.fs(), data)
        try:
            return _recover(path, f)
        finally:
            f.close()
    finally:
        if lock >= 0:
            os.close(lock)  # releases the writer lock


def _lock_writer(path: str) -> int:
    """Take the database's writer lock (``flock`` on the lock file, when there is one):
    the descriptor holding it, or -1."""
    lock = os.path.join(path, LOCK_FILE)
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseLockedError(
            f"{path}: another handle has it open for writing: close it first"
        ) from None
    return fd


def _recover(path: str, f: _DataFile) -> Salvaged:
    report = SalvageReport()
    metas = _find_page_size(f, report)
    report.page_size = f.page_size
    unknown = _Ranges()
    records: dict[bytes, bytes] = {}
    newest = metas[0] if metas else None
    # 1. the newest valid meta's tree
    if newest is None:
        unknown.add(b"", None)
    else:
        report.metas.insert(0, f"meta page {newest.txnid % 2}: txn {newest.txnid}, "
                               f"{newest.entries:,} entries, commits up to {newest.wal_seq}: "
                               "used")  # fmt: skip
        if newest.hwm > f.npages:
            report.metas.append(f"the file has {f.npages} pages, the meta needs {newest.hwm}")
        if newest.root:
            for _, _, _, node in _walk(f, newest, report, unknown, None):
                for k, v in zip(node.keys, node.vals or []):
                    if isinstance(v, Ovf):
                        try:
                            records[k] = f.overflow(v)
                        except CorruptionError as exc:
                            report.damaged_pages.setdefault(v.pgno, _why(exc, v.pgno))
                            report.skipped += 1
                            unknown.add(k, _after(k))
                    else:
                        records[k] = bytes(v)
        report.from_tree = len(records)
    report.unknown_ranges = len(unknown)
    # 2, 3. the unknown ranges from the other meta's tree and orphan leaves; leaves newer
    #       than the tree
    newest_txn = newest.txnid if newest is not None else _NO_META
    leaves = []
    if len(metas) > 1 and len(unknown):
        leaves = _older_leaves(f, metas[1], unknown, report)
    leaves.extend(_scan_leaves(f, unknown, newest_txn))
    newer_used = _fill(f, leaves, unknown, newest_txn, records, report)
    # 4. the write-ahead log on top
    _replay_wal(path, newest, unknown, newer_used, records, report)
    report.records = len(records)
    return Salvaged(records, report)


def _older_leaves(
    f: _DataFile, older: Meta, unknown: _Ranges, report: SalvageReport
) -> list[_Leaf]:
    """The leaves of the other meta's tree that cover keys of the unknown ranges."""
    report.metas.append(f"meta page {older.txnid % 2}: txn {older.txnid}, commits up to "
                        f"{older.wal_seq}: used for the unknown ranges")  # fmt: skip
    scratch = SalvageReport()  # damage in the older tree only narrows what it offers
    out = []
    for pgno, lo, hi, node in _walk(f, older, scratch, _Ranges(), unknown):
        out.append(_Leaf(node.txn, pgno, lo or b"", hi, node, "older tree"))
    for pgno, why in scratch.damaged_pages.items():
        report.damaged_pages.setdefault(pgno, why)
    return out


def _fill(
    f: _DataFile, leaves: list[_Leaf], unknown: _Ranges, newest_txn: int,
    records: dict[bytes, bytes], report: SalvageReport,
) -> bool:  # fmt: skip
    """Newest leaf wins for every key its span covers: inside the unknown ranges any leaf,
    elsewhere only leaves written after the tree, which override it (deletions included).
    Returns whether any such newer leaf was used."""
    leaves.sort(key=lambda lf: (-lf.txn, lf.source != "older tree"))
    claimed = _Ranges()
    taken: set[int] = set()
    newer_used = False
    ordered: list[bytes] | None = None
    for leaf in leaves:
        if leaf.pgno in taken:
            continue  # an orphan that is a page of the older tree, used already
        taken.add(leaf.pgno)
        newer = leaf.txn > newest_txn
        node = leaf.node
        if newer:  # keys its span covers that it does not hold did not exist at its txn
            if ordered is None:
                ordered = sorted(records)
            held = set(node.keys)
            i = bisect_left(ordered, leaf.lo)
            while i < len(ordered) and (leaf.hi is None or ordered[i] < leaf.hi):
                k = ordered[i]
                if k not in held and k not in claimed and k in records:
                    del records[k]
                    newer_used = True
                i += 1
        for k, v in zip(node.keys, node.vals or []):
            if k in claimed or not (newer or k in unknown):
                continue
            if isinstance(v, Ovf):
                try:
                    v = f.overflow(v, max_txn=leaf.txn)
                except CorruptionError:
                    continue  # an older version of the key may still be found
            if newer and records.get(k) == v:
                continue  # the tree holds it already
            records[k] = bytes(v)
            if newer:
                report.from_newer_leaves += 1
                newer_used = True
            elif leaf.source == "older tree":
                report.from_older_tree += 1
            else:
                report.from_orphans += 1
        claimed.add(leaf.lo, leaf.hi)
    return newer_used


def _read_frames(path: str, report: SalvageReport) -> dict[int, list[Op]]:
    """The valid frames of every WAL file in ``path``, by commit sequence (a frame with a
    key too long for the database's pages counts as invalid, as in recovery)."""
    frames: dict[int, list[Op]] = {}
    fs = fileio.fs()
    for _, wal in list_wals(path):
        name = os.path.basename(wal)
        try:
            buf = read_wal(fs, wal)
        except OSError as exc:
            report.wal_problems.append(f"{name}: unreadable ({exc})")
            continue
        try:
            salt, start = decode_header(buf, name)
        except CorruptionError as exc:
            if used_end(buf) > WAL_HEADER_SIZE:
                report.wal_problems.append(f"{exc}: its frames are skipped")
            continue
        end = WAL_HEADER_SIZE
        max_key = max_key_size(report.page_size) if report.page_size else 0xFFFF
        for seq, ops, fend in scan_frames(buf, WAL_HEADER_SIZE, salt, start, max_key):
            frames.setdefault(seq, ops)
            end = fend
        if end < used_end(buf):  # (the zeros of the file's allocated tail are not damage)
            report.wal_problems.append(
                f"{name}: {used_end(buf) - end:,} byte(s) after the last valid frame ignored "
                "(a torn tail or damage)"
            )
    return frames


def _replay_wal(
    path: str, newest: Meta | None, unknown: _Ranges, newer_used: bool,
    records: dict[bytes, bytes], report: SalvageReport,
) -> None:  # fmt: skip
    """Replay the valid WAL frames on top (module docstring, step 4)."""
    frames = _read_frames(path, report)
    if not frames:
        return
    base = newest.wal_seq if newest is not None else 0
    if len(unknown) and newest is not None:  # frames the tree holds, over the unknown ranges
        run = []
        seq = base
        while seq > 0 and seq in frames:
            run.append(seq)
            seq -= 1
        for s in reversed(run):
            _apply(frames[s], records, unknown)
        report.wal_frames += len(run)
    later = sorted(s for s in frames if s > base)
    if not later:
        return
    start = 0
    expected = base + 1 if newest is not None else later[0]
    for i, s in enumerate(later):
        if s != expected:
            report.wal_problems.append(f"commits {expected}..{s - 1} are missing from the log")
            start = i
        expected = s + 1
    if newer_used and start:
        report.wal_problems.append(
            f"{start} frame(s) before the gap not replayed: leaves newer than the tree may "
            "hold later versions of their keys"
        )
    else:
        start = 0
    for s in later[start:]:
        _apply(frames[s], records, None)
    report.wal_frames += len(later) - start


def _apply(ops: list[Op], records: dict[bytes, bytes], only: _Ranges | None) -> None:
    for k, v in ops:
        if only is not None and k not in only:
            continue
        if v is None:
            records.pop(k, None)
        else:
            records[k] = v


def salvage(path: str, newpath: str, *, batch_bytes: int = 8 << 20) -> SalvageReport:
    """Copy every readable record of the database in directory ``path`` into a new
    database in ``newpath`` (same page size) and return the report: records recovered,
    pages damaged, where the records came from.  ``path`` is only read.  An undamaged
    database salvages to an identical copy (the same items).

    Cost: :func:`recover`, then a bulk load of the records (``put_many(append=True)`` in
    batches of about ``batch_bytes``) and a ``check()`` of the new database.  Raises
    ``FileNotFoundError`` (no database at ``path``), ``FileExistsError`` (``newpath``
    holds a database already), ``ValueError`` (``newpath`` is ``path``),
    :class:`~kvmap.DatabaseLockedError` (a writer has ``path`` open),
    :class:`~kvmap.CorruptionError` (not a page of ``path`` verifies), and ``OSError`` or
    :class:`~kvmap.FatalError` when writing the new database fails (what was written of
    it is then left in ``newpath``)."""
    if os.path.abspath(newpath) == os.path.abspath(path):
        raise ValueError("salvage writes a new database: NEWPATH must be another directory")
    if os.path.exists(os.path.join(newpath, DATA_FILE)):
        raise FileExistsError(errno.EEXIST, "a kvmap database already exists there", newpath)
    found = recover(path)
    with kv_open(newpath, page_size=found.report.page_size, sync="normal") as out:
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for k in sorted(found.records):
            v = found.records[k]
            batch.append((k, v))
            size += len(k) + len(v) + 16
            if size >= batch_bytes:
                out.put_many(batch, append=True)
                batch, size = [], 0
        if batch:
            out.put_many(batch, append=True)
        out.sync()
        out.check()
    return found.report
