"""The write-ahead log format (kvmap/wal.py): frames, the header, scanning, file naming.

Invariant 5 (design.md): a frame counts only if its length, salt and crc32c all check and
its sequence number follows the previous one; ``scan_frames`` stops silently at the first
frame that does not, and never raises whatever the bytes.  These tests work on bytes in
memory; tests/test_recovery.py damages real WAL files and reopens the database.
"""

from __future__ import annotations

import os
import random

import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvmap
from kvmap import fileio
from kvmap.format import (
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
from kvmap.wal import (
    FIRST_ALLOCATION,
    MAX_GROWTH,
    WalWriter,
    decode_header,
    encode_frame,
    encode_header,
    frame_length,
    list_wals,
    read_wal,
    scan_frames,
    wal_name,
)

Op = tuple[bytes, bytes | None]
SALT = 0x5A17_5A17_5A17_5A17

# -- strategies ------------------------------------------------------------------------------
_keys = st.binary(min_size=0, max_size=40)
_values = st.one_of(st.binary(max_size=40), st.binary(min_size=200, max_size=3000))
_ops = st.lists(st.tuples(_keys, st.one_of(st.none(), _values)), max_size=12)
_salts = st.integers(min_value=0, max_value=2**64 - 1)
_seqs = st.integers(min_value=0, max_value=2**62)


def _log(salt: int, first_seq: int, txns: list[list[Op]]) -> tuple[bytes, list[int]]:
    """Frames for ``txns`` as commits ``first_seq + 1 ...``; returns the bytes and the end
    offset of each frame."""
    out = bytearray()
    ends = []
    for i, ops in enumerate(txns):
        out += encode_frame(salt, first_seq + 1 + i, ops)
        ends.append(len(out))
    return bytes(out), ends


def _scan(buf: bytes, salt: int = SALT, last_seq: int = 0, offset: int = 0) -> list:
    return list(scan_frames(buf, offset, salt, last_seq))


def _raw_frame(salt: int, seq: int, body: bytes, count: int, length_adjust: int = 0) -> bytes:
    """A frame with an arbitrary operations area and a *valid* checksum, so only the
    structural checks can reject it."""
    size = WAL_FRAME_HEAD.size + len(body) + 4 + length_adjust
    head = WAL_FRAME_HEAD.pack(size, salt, seq, count, 0)
    data = head + body
    return data + CHECKSUM.pack(crc32c(data))


# -- round trip ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(salt=_salts, first=_seqs, txns=st.lists(_ops, max_size=6))
def test_frames_round_trip(salt: int, first: int, txns: list[list[Op]]) -> None:
    buf, ends = _log(salt, first, txns)
    got = _scan(buf, salt, first)
    assert [(seq, ops) for seq, ops, _ in got] == [
        (first + 1 + i, ops) for i, ops in enumerate(txns)
    ]
    assert [end for _, _, end in got] == ends
    # the end offsets let a scan resume in the middle of a log
    for i, end in enumerate(ends):
        rest = _scan(buf, salt, first + 1 + i, offset=end)
        assert [seq for seq, _, _ in rest] == list(range(first + 2 + i, first + 1 + len(txns)))


def test_frame_layout_matches_the_documented_header() -> None:
    ops: list[Op] = [(b"key", b"value"), (b"gone", None), (b"", b"")]
    frame = encode_frame(SALT, 42, ops)
    length, salt, seq, count, flags = WAL_FRAME_HEAD.unpack_from(frame, 0)
    assert (length, salt, seq, count, flags) == (len(frame), SALT, 42, 3, 0)
    (crc,) = CHECKSUM.unpack_from(frame, len(frame) - 4)
    assert crc == crc32c(frame[:-4])
    pos = WAL_FRAME_HEAD.size
    kind, klen, vlen = WAL_OP.unpack_from(frame, pos)
    assert (kind, klen, vlen) == (WAL_OP_PUT, 3, 5)
    assert frame[pos + WAL_OP.size : pos + WAL_OP.size + 8] == b"keyvalue"
    pos += WAL_OP.size + 8
    assert WAL_OP.unpack_from(frame, pos) == (WAL_OP_DELETE, 4, 0)


def test_empty_and_zero_filled_input_yield_nothing() -> None:
    assert _scan(b"") == []
    assert _scan(bytes(4096)) == []  # length 0: never an endless loop
    buf, _ = _log(SALT, 0, [[(b"a", b"1")]])
    assert len(_scan(buf + bytes(4096))) == 1  # a preallocated, zeroed tail is ignored


# -- where a scan stops ----------------------------------------------------------------------

TXNS: list[list[Op]] = [
    [(b"a", b"1"), (b"b", b"2")],
    [(b"a", None), (b"c", b"x" * 30)],
    [(b"counter", b"3"), (b"d", b""), (b"b", None)],
]


def test_truncation_at_every_byte_of_the_last_frame() -> None:
    buf, ends = _log(SALT, 10, TXNS)
    for cut in range(ends[-2], ends[-1]):
        got = _scan(buf[:cut], SALT, 10)
        assert [seq for seq, _, _ in got] == [11, 12], cut
    assert [seq for seq, _, _ in _scan(buf, SALT, 10)] == [11, 12, 13]


def test_truncation_anywhere_keeps_exactly_the_whole_frames_before_it() -> None:
    buf, ends = _log(SALT, 0, TXNS)
    for cut in range(len(buf) + 1):
        whole = sum(1 for end in ends if end <= cut)
        assert len(_scan(buf[:cut])) == whole, cut


@pytest.mark.parametrize("victim", range(len(TXNS)))
def test_a_flipped_bit_anywhere_in_a_frame_stops_the_scan_there(victim: int) -> None:
    buf, ends = _log(SALT, 0, TXNS)
    start = ends[victim - 1] if victim else 0
    for pos in range(start, ends[victim]):
        for bit in range(8):
            bad = bytearray(buf)
            bad[pos] ^= 1 << bit
            got = _scan(bytes(bad))
            assert [seq for seq, _, _ in got] == list(range(1, victim + 1)), (pos, bit)
            assert [ops for _, ops, _ in got] == TXNS[:victim]


def test_wrong_salt_stops_the_scan() -> None:
    buf, _ = _log(SALT, 0, TXNS)
    assert _scan(buf, SALT ^ 1) == []
    # a frame of another WAL generation in the middle: only the frames before it count
    first, _ = _log(SALT, 0, TXNS[:1])
    other = encode_frame(SALT + 1, 2, TXNS[1])
    rest = encode_frame(SALT, 3, TXNS[2])
    got = _scan(first + other + rest)
    assert [seq for seq, _, _ in got] == [1]


@pytest.mark.parametrize("seqs", [[1, 2, 4], [1, 2, 2], [1, 3], [2], [0], [1, 1]])
def test_sequence_gap_or_repeat_stops_the_scan(seqs: list[int]) -> None:
    buf = b"".join(encode_frame(SALT, s, [(b"k%d" % s, b"v")]) for s in seqs)
    want = []
    for i, s in enumerate(seqs):
        if s != i + 1:
            break
        want.append(s)
    assert [seq for seq, _, _ in _scan(buf, SALT, 0)] == want


def test_scan_continues_from_last_seq() -> None:
    buf, _ = _log(SALT, 100, TXNS)
    assert _scan(buf, SALT, 0) == []
    assert _scan(buf, SALT, 99) == []
    assert [seq for seq, _, _ in _scan(buf, SALT, 100)] == [101, 102, 103]


_OP_PUT = WAL_OP.pack(WAL_OP_PUT, 1, 1) + b"kv"
MALFORMED = {
    "unknown op kind": (WAL_OP.pack(3, 1, 1) + b"kv", 1),
    "op kind zero": (WAL_OP.pack(0, 1, 0) + b"k", 1),
    "delete with a value length": (WAL_OP.pack(WAL_OP_DELETE, 1, 1) + b"kv", 1),
    "key runs past the frame": (WAL_OP.pack(WAL_OP_PUT, 200, 0) + b"k", 1),
    "value runs past the frame": (WAL_OP.pack(WAL_OP_PUT, 1, 5000) + b"kv", 1),
    "count larger than the ops": (_OP_PUT, 2),
    "count smaller than the ops": (_OP_PUT * 2, 1),
    "bytes after the last op": (_OP_PUT + b"\0", 1),
    "half an op header": (_OP_PUT + WAL_OP.pack(WAL_OP_PUT, 1, 1)[:3], 2),
    "ops but a count of zero": (_OP_PUT, 0),
    "huge count": (_OP_PUT, 2**32 - 1),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_operations_stop_the_scan(case: str) -> None:
    body, count = MALFORMED[case]
    good, _ = _log(SALT, 0, TXNS[:1])
    bad = _raw_frame(SALT, 2, body, count)
    after = encode_frame(SALT, 3, TXNS[1])
    got = _scan(good + bad + after)
    assert [seq for seq, _, _ in got] == [1], case


def test_well_formed_raw_frame_is_accepted() -> None:
    """The control for the malformed cases: the helper itself builds valid frames."""
    frame = _raw_frame(SALT, 1, _OP_PUT, 1)
    assert frame == encode_frame(SALT, 1, [(b"k", b"v")])
    assert [ops for _, ops, _ in _scan(frame)] == [[(b"k", b"v")]]


@pytest.mark.parametrize("adjust", [-(WAL_FRAME_HEAD.size + 4 + 2), -1, 1, 2**40])
def test_length_field_out_of_range_stops_the_scan(adjust: int) -> None:
    frame = bytearray(encode_frame(SALT, 1, [(b"k", b"v")]))
    length = WAL_FRAME_HEAD.unpack_from(frame, 0)[0]
    frame[:8] = (length + adjust).to_bytes(8, "little")
    assert _scan(bytes(frame) + bytes(64)) == []


# -- garbage never raises (hypothesis) -------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    buf=st.binary(max_size=600),
    offset=st.integers(min_value=0, max_value=700),
    salt=_salts,
    last_seq=_seqs,
)
def test_scan_never_raises_on_garbage(buf: bytes, offset: int, salt: int, last_seq: int) -> None:
    for seq, ops, end in scan_frames(buf, offset, salt, last_seq):
        assert seq == last_seq + 1 and end <= len(buf)
        assert all(isinstance(k, bytes) and (v is None or isinstance(v, bytes)) for k, v in ops)
        last_seq = seq
    list(scan_frames(memoryview(buf), offset, salt, last_seq))  # memoryviews too


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    txns=st.lists(_ops, min_size=1, max_size=5),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=8,
    ),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
    tail=st.binary(max_size=100),
)
def test_damaged_log_yields_a_prefix_of_the_original_frames(
    txns: list[list[Op]], edits: list[tuple[int, int]], cut: int | None, tail: bytes
) -> None:
    buf, ends = _log(SALT, 0, txns)
    bad = bytearray(buf)
    for pos, byte in edits:
        bad[pos % len(bad)] = byte
    if cut is not None:
        del bad[cut % (len(bad) + 1) :]
    bad += tail
    got = _scan(bytes(bad))
    want = [(1 + i, ops) for i, ops in enumerate(txns)]
    assert [(seq, ops) for seq, ops, _ in got] == want[: len(got)]
    damaged = [pos % len(buf) for pos, byte in edits if buf[pos % len(buf)] != byte]
    if cut is not None:
        damaged.append(cut % (len(buf) + 1))
    first_damage = min(damaged, default=len(buf))
    intact = sum(1 for end in ends if end <= first_damage)
    assert len(got) >= intact  # frames before the first damaged byte always count


# -- the header ------------------------------------------------------------------------------


def test_header_round_trip_and_layout() -> None:
    head = encode_header(SALT, 0x1234)
    assert len(head) == WAL_HEADER_SIZE
    assert decode_header(head) == (SALT, 0x1234)
    magic, version, flags, salt, start, crc = WAL_HEADER.unpack_from(head, 0)
    assert (magic, version, flags, salt, start) == (WAL_MAGIC, FORMAT_VERSION, 0, SALT, 0x1234)
    assert crc == crc32c(head[: WAL_HEADER.size - 4])
    assert head[WAL_HEADER.size :] == bytes(WAL_HEADER_SIZE - WAL_HEADER.size)


def test_every_flipped_bit_of_the_header_is_detected() -> None:
    head = encode_header(SALT, 77)
    for pos in range(WAL_HEADER.size):
        for bit in range(8):
            bad = bytearray(head)
            bad[pos] ^= 1 << bit
            with pytest.raises(kvmap.CorruptionError):
                decode_header(bytes(bad), "w")


def test_truncated_header_is_corrupt() -> None:
    head = encode_header(SALT, 1)
    for n in range(WAL_HEADER.size):
        with pytest.raises(kvmap.CorruptionError, match="truncated"):
            decode_header(head[:n], "w")


def _resealed(magic: bytes, version: int) -> bytes:
    head = WAL_HEADER.pack(magic, version, 0, SALT, 1, 0)
    return head[:-4] + CHECKSUM.pack(crc32c(head[:-4]))


def test_bad_magic_or_version_with_a_valid_checksum_is_corrupt() -> None:
    with pytest.raises(kvmap.CorruptionError, match="magic"):
        decode_header(_resealed(b"NOTAWAL!", FORMAT_VERSION), "w")
    with pytest.raises(kvmap.CorruptionError, match="version"):
        decode_header(_resealed(WAL_MAGIC, FORMAT_VERSION + 1), "w")


# -- the writer ------------------------------------------------------------------------------


@pytest.mark.parametrize("sync", ["full", "normal", "off"])
def test_writer_appends_scannable_frames(tmp_path: os.PathLike[str], sync: str) -> None:
    fs = fileio.FileSystem()
    d = os.fspath(tmp_path)
    w = WalWriter.create(fs, d, 5)
    try:
        assert os.path.basename(w.path) == wal_name(5)
        for i, ops in enumerate(TXNS):
            w.append(encode_frame(w.salt, 6 + i, ops), sync)
        on_disk = read_wal(fs, w.path)
        if sync == "off":  # buffered in the process: the allocated space is still zeros
            assert on_disk[WAL_HEADER_SIZE:] == bytes(len(on_disk) - WAL_HEADER_SIZE)
        else:  # stored through the mapping: in the file at once
            assert on_disk[WAL_HEADER_SIZE : w.size] != bytes(w.size - WAL_HEADER_SIZE)
        w.flush()
        if sync == "full":
            w.sync()
        on_disk = read_wal(fs, w.path)
        assert len(on_disk) == w.mapped == FIRST_ALLOCATION  # allocated ahead of the frames
        assert on_disk[w.size :] == bytes(w.mapped - w.size)  # zeros after the last frame
    finally:
        w.close()
    buf = read_wal(fs, w.path)
    salt, start = decode_header(buf)
    assert (salt, start) == (w.salt, 5)
    got = list(scan_frames(buf, WAL_HEADER_SIZE, salt, start))
    assert [(seq, ops) for seq, ops, _ in got] == [(6 + i, ops) for i, ops in enumerate(TXNS)]


def test_each_wal_file_gets_a_fresh_salt(tmp_path: os.PathLike[str]) -> None:
    fs = fileio.FileSystem()
    salts = set()
    for start in range(20):
        w = WalWriter.create(fs, os.fspath(tmp_path), start)
        salts.add(w.salt)
        w.close()
    assert len(salts) == 20


def test_recreating_a_wal_replaces_its_frames(tmp_path: os.PathLike[str]) -> None:
    fs = fileio.FileSystem()
    d = os.fspath(tmp_path)
    w = WalWriter.create(fs, d, 0)
    w.append(encode_frame(w.salt, 1, [(b"a", b"1")]), "normal")
    w.close()
    w2 = WalWriter.create(fs, d, 0)
    w2.close()
    buf = read_wal(fs, w2.path)
    assert buf[WAL_HEADER_SIZE:] == bytes(len(buf) - WAL_HEADER_SIZE)
    salt, start = decode_header(buf)
    assert list(scan_frames(buf, WAL_HEADER_SIZE, salt, start)) == []


def test_the_writer_allocates_ahead_and_grows(tmp_path: os.PathLike[str]) -> None:
    """Frames go into allocated blocks (not a hole a full disk could not back), and the
    allocation doubles (at least to what a big frame needs) as frames fill it."""
    fs = fileio.FileSystem()
    w = WalWriter.create(fs, os.fspath(tmp_path), 0)
    sizes = [w.mapped]
    frames = []
    try:
        for i in range(1, 400):
            value = b"%d" % i * (30_000 if i == 300 else 30)  # one frame of ~100 KiB
            frames.append((i, [(b"k%05d" % i, value)]))
            w.append(encode_frame(w.salt, i, frames[-1][1]), "normal")
            if w.mapped != sizes[-1]:
                sizes.append(w.mapped)
        st = os.stat(w.path)
        assert st.st_size == w.mapped >= w.size
        assert st.st_blocks * 512 >= st.st_size  # allocated, not sparse
    finally:
        w.close()
    assert sizes[0] == FIRST_ALLOCATION and len(sizes) >= 4
    assert all(b >= a + min(a, MAX_GROWTH) for a, b in zip(sizes, sizes[1:]))
    buf = read_wal(fs, w.path)
    got = [(seq, ops) for seq, ops, _ in scan_frames(buf, WAL_HEADER_SIZE, w.salt, 0)]
    assert got == frames


def test_frame_length_reads_the_claimed_length() -> None:
    frame = encode_frame(3, 1, [(b"k", b"v" * 100)])
    assert frame_length(frame, 0) == len(frame)
    assert frame_length(b"x" + frame, 1) == len(frame)
    assert frame_length(bytes(7), 0) == 0 and frame_length(bytes(8), 0) == 0


# -- file naming -----------------------------------------------------------------------------


def test_wal_name_is_sixteen_hex_digits() -> None:
    assert wal_name(0) == WAL_PREFIX + "0" * 16
    assert wal_name(255) == WAL_PREFIX + "00000000000000ff"
    assert wal_name(2**64 - 1) == WAL_PREFIX + "f" * 16
    for n in (0, 1, 9, 10, 16, 4096, 2**40 + 3):
        name = wal_name(n)
        assert len(name) == len(WAL_PREFIX) + 16
        assert int(name[len(WAL_PREFIX) :], 16) == n


def test_list_wals_orders_by_sequence(tmp_path: os.PathLike[str]) -> None:
    d = os.fspath(tmp_path)
    seqs = [0, 1, 9, 10, 15, 16, 255, 256, 2**33, 2**63]
    shuffled = list(seqs)
    random.Random(3).shuffle(shuffled)
    for s in shuffled:
        open(os.path.join(d, wal_name(s)), "wb").close()
    for other in ("kvmap.data", "kvmap.lock", "kvmap.data.new", "readme.txt"):
        open(os.path.join(d, other), "wb").close()
    assert list_wals(d) == [(s, os.path.join(d, wal_name(s))) for s in seqs]


def test_list_wals_of_an_empty_directory(tmp_path: os.PathLike[str]) -> None:
    assert list_wals(os.fspath(tmp_path)) == []


@pytest.mark.parametrize(
    "name",
    [
        WAL_PREFIX + "0000000000000005.bak",
        WAL_PREFIX + "tmp",
        WAL_PREFIX,
        WAL_PREFIX + "bad",  # a word that happens to be hex
        WAL_PREFIX + "0x10",
        WAL_PREFIX + "5",  # not the 16 digits wal_name() writes
    ],
)
def test_list_wals_ignores_names_wal_name_never_writes(
    tmp_path: os.PathLike[str], name: str
) -> None:
    """Only ``kvmap.wal.<16 hex digits>`` are WAL files (wal.py docstring).  A stray file
    with another suffix must be neither replayed (a damaged "log" would make open raise
    CorruptionError) nor deleted by the next checkpoint."""
    d = os.fspath(tmp_path)
    open(os.path.join(d, name), "wb").close()
    open(os.path.join(d, wal_name(7)), "wb").close()
    assert list_wals(d) == [(7, os.path.join(d, wal_name(7)))]


def test_database_wal_file_is_named_after_its_start_sequence(db: kvmap.Database) -> None:
    [(start, path)] = list_wals(db.path)
    assert start == 0 and os.path.basename(path) == wal_name(0)
    for i in range(3):
        db.put(b"k%d" % i, b"v")
    db.checkpoint()
    [(start, path)] = list_wals(db.path)
    assert start == 3 and os.path.basename(path) == wal_name(3)
    buf = read_wal(fileio.FileSystem(), path)
    assert decode_header(buf)[1] == 3


def test_a_stray_file_with_a_wal_like_name_is_left_alone(db_path: str) -> None:
    """The database-level consequence of the naming rule: a file the user (or another tool)
    left in the directory, named ``kvmap.wal.bad``, is not a log: open must neither fail on
    it nor delete it."""
    with kvmap.open(db_path, page_size=512) as db:
        db.put(b"a", b"1")
    stray = os.path.join(db_path, WAL_PREFIX + "bad")
    with open(stray, "wb") as f:
        f.write(b"notes about this database\n" * 10)
    with kvmap.open(db_path, page_size=512) as db:
        assert db[b"a"] == b"1"
        db.put(b"b", b"2")
        db.checkpoint()
    assert os.path.exists(stray)
