"""Meta pages 0 and 1: which tree is the committed one.

Invariant 2 (design.md): transaction N writes meta page ``N % 2``; each meta carries a
checksum; open picks the valid meta with the higher txn id and falls back to the other.
Because a commit writes and syncs every new page *before* it writes the meta page, a torn
or lost meta write leaves the previous meta intact and the tree it names complete.
"""

from __future__ import annotations

from typing import NamedTuple

from crc32c import crc32c

from .errors import CorruptionError
from .format import (
    CHECKSUM,
    FORMAT_VERSION,
    MAGIC,
    META_BODY,
    META_OFFSET,
    PAGE_HEADER,
    PAGE_META,
    valid_page_size,
)


class Meta(NamedTuple):
    """One decoded meta page (docs/format.md "Meta page")."""

    txnid: int
    page_size: int
    root: int
    freelist: int
    hwm: int
    entries: int
    depth: int
    wal_seq: int = 0
    wal_salt: int = 0
    flags: int = 0

    def encode(self) -> bytes:
        """The full meta page, written to page ``txnid % 2``, with its checksum."""
        page = bytearray(self.page_size)
        pgno = self.txnid % 2
        PAGE_HEADER.pack_into(page, 0, 0, PAGE_META, 0, 0, pgno, self.txnid)
        META_BODY.pack_into(
            page, META_OFFSET, MAGIC, FORMAT_VERSION, self.page_size, self.root,
            self.freelist, self.hwm, self.entries, self.depth, self.flags, self.wal_seq,
            self.wal_salt,
        )  # fmt: skip
        CHECKSUM.pack_into(page, 0, crc32c(memoryview(page)[4:]))
        return bytes(page)


def peek_page_size(buf: bytes) -> int | None:
    """The page size recorded in a meta page's first bytes, or None if they do not look like
    a kvmap meta page.  Used on open, before the page size is known."""
    if len(buf) < META_OFFSET + META_BODY.size:
        return None
    magic, _version, page_size = META_BODY.unpack_from(buf, META_OFFSET)[:3]
    if magic != MAGIC or not valid_page_size(page_size):
        return None
    return int(page_size)


def decode(buf: bytes, pgno: int) -> Meta:
    """Decode meta page ``pgno`` (0 or 1) from its ``page_size`` bytes.

    Raises :class:`CorruptionError` naming the problem: checksum, magic, version, page
    number, page type, or fields that cannot be true (a root beyond the high-water mark).
    """
    page_size = len(buf)
    stored, ptype, _, _, stored_pgno, txnid = PAGE_HEADER.unpack_from(buf, 0)
    if crc32c(memoryview(buf)[4:]) != stored:
        raise CorruptionError(f"meta page {pgno}: checksum mismatch")
    if ptype != PAGE_META or stored_pgno != pgno:
        raise CorruptionError(f"meta page {pgno}: wrong page type or number")
    (magic, version, psize, root, freelist, hwm, entries, depth, flags, wal_seq, wal_salt) = (
        META_BODY.unpack_from(buf, META_OFFSET)
    )
    if magic != MAGIC:
        raise CorruptionError(f"meta page {pgno}: not a kvmap data file (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptionError(
            f"meta page {pgno}: format version {version}, this kvmap reads {FORMAT_VERSION}"
        )
    if psize != page_size:
        raise CorruptionError(f"meta page {pgno}: page size {psize} != {page_size}")
    if txnid % 2 != pgno:
        raise CorruptionError(f"meta page {pgno}: txn {txnid} belongs in meta page {txnid % 2}")
    if hwm < 2 or root >= hwm or freelist >= hwm or (root == 0) != (depth == 0):
        raise CorruptionError(f"meta page {pgno}: inconsistent fields")
    if (root == 0) != (entries == 0) or root == 1 or freelist == 1:
        raise CorruptionError(f"meta page {pgno}: inconsistent fields")
    return Meta(txnid, page_size, root, freelist, hwm, entries, depth, wal_seq, wal_salt, flags)


def pick(page0: bytes, page1: bytes) -> tuple[Meta, Meta | None]:
    """The newest valid meta, and the other one if it is valid too.

    Raises :class:`CorruptionError` (mentioning both failures) when neither is valid.
    """
    metas: list[Meta] = []
    errors: list[str] = []
    for pgno, buf in ((0, page0), (1, page1)):
        try:
            metas.append(decode(buf, pgno))
        except CorruptionError as exc:
            errors.append(str(exc))
    if not metas:
        raise CorruptionError("no valid meta page: " + "; ".join(errors))
    metas.sort(key=lambda m: m.txnid, reverse=True)
    return metas[0], (metas[1] if len(metas) > 1 else None)
