"""The on-disk format: every magic number, struct and size, in one place.

The byte tables in ``docs/format.md`` are the specification; this module implements them
and ``tests/test_format.py`` checks that the two agree (each table row names a struct field
defined here, at the offset and size given).  Change both together and bump
:data:`FORMAT_VERSION` whenever bytes on disk change meaning.

All integers are little-endian.  A data file is an array of ``page_size`` pages.  Every page
starts with the 24-byte page header (docs/format.md, "Page header").
"""

from __future__ import annotations

import struct
from typing import Final

FORMAT_VERSION: Final = 1
MAGIC: Final = b"KVMAPDB\x00"

DATA_FILE: Final = "kvmap.data"
LOCK_FILE: Final = "kvmap.lock"
WAL_PREFIX: Final = "kvmap.wal."  # + 16 hex digits of the WAL's start sequence

MIN_PAGE_SIZE: Final = 512
MAX_PAGE_SIZE: Final = 65536
DEFAULT_PAGE_SIZE: Final = 4096

# -- page header (docs/format.md "Page header") -------------------------------------------
#   0  u32 checksum  crc32c of every byte of the page (or run) after this field
#   4  u8  type      one of the PAGE_* constants
#   5  u8  flags     0; reserved
#   6  u16 count     cells in a leaf/branch page; 0 otherwise
#   8  u64 pgno      the page's own number
#  16  u64 txnid     the transaction that wrote the page
PAGE_HEADER: Final = struct.Struct("<IBBHQQ")
PAGE_HEADER_SIZE: Final = PAGE_HEADER.size  # 24
CHECKSUM: Final = struct.Struct("<I")

PAGE_META: Final = 1
PAGE_BRANCH: Final = 2
PAGE_LEAF: Final = 3
PAGE_OVERFLOW: Final = 4
PAGE_FREELIST: Final = 5
PAGE_TYPE_NAMES: Final = {
    PAGE_META: "meta",
    PAGE_BRANCH: "branch",
    PAGE_LEAF: "leaf",
    PAGE_OVERFLOW: "overflow",
    PAGE_FREELIST: "freelist",
}

# -- meta page body, at offset 24 of pages 0 and 1 (docs/format.md "Meta page") ------------
#  24  8s  magic        MAGIC
#  32  u32 version      FORMAT_VERSION
#  36  u32 page_size    bytes per page, a power of two in [512, 65536]
#  40  u64 root         page number of the tree's root; 0 for an empty tree
#  48  u64 freelist     first page of the freelist run; 0 when nothing is free
#  56  u64 hwm          high-water mark: pages below it are in use or free
#  64  u64 entries      number of keys in the tree
#  72  u32 depth        levels in the tree (0 empty, 1 a single leaf)
#  76  u32 flags        0; reserved
#  80  u64 wal_seq      last commit sequence folded into the tree (0 until a WAL exists)
#  88  u64 wal_salt     reserved: written 0 (the WAL files carry their own salts)
#  96  ...              zero up to the end of the page
META_BODY: Final = struct.Struct("<8sIIQQQQIIQQ")
META_OFFSET: Final = PAGE_HEADER_SIZE
META_END: Final = META_OFFSET + META_BODY.size  # 96

# -- leaf page (docs/format.md "Leaf page") ------------------------------------------------
#  24        u16[n] key lengths
#  24+2n     u16[n] value lengths; bit 15 set: the cell holds an overflow reference
#  24+4n     keys, concatenated
#  ...       values, concatenated (an overflow reference is OVERFLOW_REF: the run's first page)
VALUE_OVERFLOW_BIT: Final = 0x8000
OVERFLOW_REF: Final = struct.Struct("<Q")  # first page of the run holding the value
LEAF_CELL_OVERHEAD: Final = 4  # u16 key length + u16 value length

# -- branch page (docs/format.md "Branch page") --------------------------------------------
#  24        u16[n] key lengths (key 0 is always stored empty: the lower bound is the parent's)
#  24+2n     u64[n] child page numbers
#  24+10n    keys, concatenated
BRANCH_CELL_OVERHEAD: Final = 10  # u16 key length + u64 child

# -- overflow run (docs/format.md "Overflow run") ------------------------------------------
#  24  u64 length   bytes of value that follow
#  32  ...          the value; the run spans ceil((32 + length) / page_size) pages
#  The checksum in the header covers the whole run (all of its pages, from byte 4).
RUN_LENGTH: Final = struct.Struct("<Q")
RUN_DATA_OFFSET: Final = PAGE_HEADER_SIZE + RUN_LENGTH.size  # 32

# -- freelist run (docs/format.md "Freelist run") ------------------------------------------
#  A run like an overflow run (type PAGE_FREELIST) whose payload is:
#   0  u64 nfree     reusable page numbers that follow
#   8  u64 ngroups   pending groups that follow them
#  16  u64[nfree]    reusable pages, ascending
#  ... per group:    u64 txnid, u64 n, u64[n] pages freed by that transaction
FREELIST_HEAD: Final = struct.Struct("<QQ")
U64: Final = struct.Struct("<Q")

MAX_VALUE_SIZE: Final = 2**31 - 1

# -- lock file (docs/format.md "Lock file") -------------------------------------------------
# The lock file is shared memory: every process maps it read-write.  Header:
#   0  8s  magic        LOCK_MAGIC
#   8  u32 version      FORMAT_VERSION
#  12  u32 nslots       reader slots that follow the header
#  16  u64 seq          the writer's last commit whose frame reached the WAL file
#  24  u64 txnid        the tree's txn id (the newest durable meta page)
#  32  u64 wal_start    start sequence of the WAL file the writer appends to
#  40  u32 writer_pid   pid of the writing process (0: none); informational
#  44  ...              zero up to LOCK_HEADER_SIZE
# Slot i at LOCK_HEADER_SIZE + 64 * i (a cache line each); a slot is owned by whoever holds
# an OFD write lock on its 64 bytes (the kernel drops it when the owner dies):
#   0  u32 pid          owner's pid (informational)
#   4  u32 flags        0; reserved
#   8  u64 token        random per handle, so a slot reused by another handle is told apart
#  16  u64 txnid        the oldest tree txn id the handle's readers hold; 0: none
#  24  u64 seq          the commit sequence of that oldest reader
#  32  ...              zero up to 64
LOCK_MAGIC: Final = b"KVMAPLCK"
LOCK_HEADER: Final = struct.Struct("<8sIIQQQI")
LOCK_HEADER_SIZE: Final = 128
LOCK_SLOT: Final = struct.Struct("<IIQQQ")
LOCK_SLOT_SIZE: Final = 64
DEFAULT_READER_SLOTS: Final = 126

# -- WAL file header (docs/format.md "WAL header") ------------------------------------------
#   0  8s  magic      WAL_MAGIC
#   8  u32 version    FORMAT_VERSION
#  12  u32 flags      0; reserved
#  16  u64 salt       random, per WAL file: frames carry it, so frames of another file or
#                     generation never count
#  24  u64 start_seq  frames continue from this commit sequence (the first is start_seq + 1)
#  32  u32 checksum   crc32c of bytes 0..32
#  36  ...            zero up to WAL_HEADER_SIZE
WAL_MAGIC: Final = b"KVMAPWAL"
WAL_HEADER: Final = struct.Struct("<8sIIQQI")
WAL_HEADER_SIZE: Final = 64

# -- WAL frame: one committed transaction (docs/format.md "WAL frame") ----------------------
#   0  u64 length     bytes in the frame, this field and the trailing checksum included
#   8  u64 salt       the WAL header's salt
#  16  u64 seq        commit sequence number (the previous frame's + 1)
#  24  u32 count      operations that follow
#  28  u32 flags      0; reserved
#  32  ...            operations: u8 kind, u16 key length, u32 value length, key, value
#  -4  u32 checksum   crc32c of every byte of the frame before it
WAL_FRAME_HEAD: Final = struct.Struct("<QQQII")
WAL_OP: Final = struct.Struct("<BHI")
WAL_OP_PUT: Final = 1
WAL_OP_DELETE: Final = 2

_arrays: dict[str, struct.Struct] = {}


def array(code: str, n: int) -> struct.Struct:
    """A cached little-endian ``struct.Struct`` for ``n`` items of type ``code``.

    >>> array("H", 3).size
    6
    """
    fmt = f"<{n}{code}"
    s = _arrays.get(fmt)
    if s is None:
        if len(_arrays) > 4096:
            _arrays.clear()
        s = _arrays[fmt] = struct.Struct(fmt)
    return s


def usable_size(page_size: int) -> int:
    """Bytes of a page available for cells: the page minus its header.

    >>> usable_size(4096)
    4072
    """
    return page_size - PAGE_HEADER_SIZE


def max_inline_cell(page_size: int) -> int:
    """The largest leaf or branch cell (lengths + key + inline value) a page holds.

    Every cell fits in a quarter of a page, so a page that overflows has at least five cells
    and splitting it always yields non-empty halves.

    >>> max_inline_cell(4096)
    1018
    """
    return usable_size(page_size) // 4


def max_key_size(page_size: int) -> int:
    """Longest key accepted: a leaf cell with this key and an overflow reference still fits
    in :func:`max_inline_cell`, and so does a branch cell.

    >>> max_key_size(4096), max_key_size(512)
    (1006, 110)
    """
    return max_inline_cell(page_size) - LEAF_CELL_OVERHEAD - OVERFLOW_REF.size


def valid_page_size(page_size: int) -> bool:
    """True when ``page_size`` is a power of two in [512, 65536].

    >>> valid_page_size(4096), valid_page_size(1000), valid_page_size(256)
    (True, False, False)
    """
    return MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE and page_size & (page_size - 1) == 0
