"""docs/format.md is the specification of the data file and the WAL: check that kvmap agrees.

* :func:`doc_problems` parses the byte tables of docs/format.md and compares them with the
  structs of :mod:`kvmap.format`: every table whose heading names a struct constant must
  list that struct's fields at the documented offsets, sizes and types, with no gap or
  overlap; every table must be contiguous from offset 0; the constants, page types and
  page-size limits quoted in the doc must equal the code, and every struct and constant of
  :mod:`kvmap.format` must be documented.  It returns a list of problems, so the mutation
  tests can show that it catches a doc or a struct changed without the other.
* :func:`test_real_file_matches_doc` builds a real database and decodes its data file and
  a WAL file holding frames with plain :mod:`struct`, using only layouts built from the
  doc's tables: the doc describes the real files.
"""

from __future__ import annotations

import ast
import importlib
import re
import struct
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crc32c import crc32c

import kvmap
from kvmap import format as kvformat
from kvmap import segments, wal

DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"
BYTE_COLUMNS = ["offset", "size", "type", "field", "meaning"]
CONST_COLUMNS = ["constant", "value", "meaning"]
TYPE_COLUMNS = ["value", "constant", "name", "page"]
LIMIT_COLUMNS = ["page_size", "usable bytes", "max inline cell", "max key size", "first segment"]

# Where kvmap packs each struct, in the coordinates its table uses (the doc's offsets are from
# the start of the page, or of a run's first page, unless the table says otherwise).
STRUCT_BASE = {
    "PAGE_HEADER": 0,  # the first bytes of every page (node.encode, encode_run, Meta.encode)
    "META_BODY": kvformat.META_OFFSET,  # Meta.encode packs it at META_OFFSET of pages 0 and 1
    "RUN_LENGTH": kvformat.PAGE_HEADER_SIZE,  # encode_run packs it right after the header
    "FREELIST_HEAD": kvformat.RUN_DATA_OFFSET,  # the freelist payload starts the run's data
    "OVERFLOW_REF": 0,  # relative to its value slot in a leaf page (the doc says so)
    "WAL_HEADER": 0,  # the first bytes of a WAL file (wal.encode_header)
    "WAL_FRAME_HEAD": 0,  # relative to the start of a frame (wal.encode_frame)
    "WAL_OP": 0,  # relative to the start of an operation inside a frame
    "LOCK_HEADER": 0,  # the first bytes of the lock file (readers.LockFile)
    "LOCK_SLOT": 0,  # relative to the start of a reader slot
}
# Structs of kvmap.format without a table of their own, and why.
NOT_TABLED = {
    "CHECKSUM": "the first field of PAGE_HEADER",
    "U64": "a helper for the u64 arrays of the freelist",
}
SCALARS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
STRUCT_CODES = {"B": "u8", "H": "u16", "I": "u32", "Q": "u64"}


# -- parsing ---------------------------------------------------------------------------------
@dataclass
class Table:
    heading: str
    columns: list[str]
    rows: list[list[str]]


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def parse_tables(text: str) -> list[Table]:
    """Every markdown table of ``text``, with the heading it sits under."""
    tables: list[Table] = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif (
            line.startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())
        ):
            columns = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables.append(Table(heading, columns, rows))
            continue
        i += 1
    return tables


def evaluate(expr: str, env: dict[str, int]) -> int:
    """An offset or size expression of the doc: terms like ``24``, ``2n``, ``K`` or ``8F``
    joined by ``+``."""
    total = 0
    for term in expr.replace(" ", "").split("+"):
        m = re.fullmatch(r"(\d*)([A-Za-z_]\w*)?", term)
        if not term or m is None:
            raise ValueError(f"cannot evaluate {expr!r}")
        coef, sym = m.groups()
        value = int(coef) if coef else 1
        if sym is not None:
            if sym not in env:
                raise ValueError(f"unknown quantity {sym!r} in {expr!r}")
            value *= env[sym]
        total += value
    return total


def symbols(expr: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", expr))


def type_size(typ: str, env: dict[str, int], fmt: Any) -> int | None:
    """Bytes a ``type`` cell stands for; None for a plain ``bytes`` (up to the end)."""
    if m := re.fullmatch(r"`(\w+)`", typ):
        s = getattr(fmt, m[1], None)
        if not isinstance(s, struct.Struct):
            raise ValueError(f"type {typ} names no struct of kvmap.format")
        return s.size
    if typ in SCALARS:
        return SCALARS[typ]
    if m := re.fullmatch(r"(u8|u16|u32|u64)\[(.+)\]", typ):
        return SCALARS[m[1]] * evaluate(m[2], env)
    if m := re.fullmatch(r"bytes\[(.+)\]", typ):
        return evaluate(m[1], env)
    if typ == "bytes":
        return None
    raise ValueError(f"unknown type {typ!r}")


def struct_fields(s: struct.Struct, base: int) -> list[tuple[int, int, str]]:
    """(offset, size, doc type) of every field of a little-endian struct, from ``base``."""
    fmt = s.format
    if not fmt.startswith("<"):
        raise ValueError(f"struct {fmt!r} is not little-endian and unpadded ('<')")
    out = []
    off = base
    for count, code in re.findall(r"(\d*)(\D)", fmt[1:]):
        n = int(count) if count else 1
        if code == "s":
            out.append((off, n, f"bytes[{n}]"))
            off += n
        elif code in STRUCT_CODES:
            size = struct.calcsize("<" + code)
            for _ in range(n):
                out.append((off, size, STRUCT_CODES[code]))
                off += size
        else:
            raise ValueError(f"struct code {code!r} of {fmt!r} has no doc type")
    return out


def heading_structs(heading: str, fmt: Any) -> list[str]:
    """The struct constants of ``fmt`` a heading names in backticks."""
    names = re.findall(r"`([A-Z][A-Z0-9_]*)`", heading)
    return [n for n in names if isinstance(getattr(fmt, n, None), struct.Struct)]


def is_fixed(row: list[str]) -> bool:
    """A row of a struct's own field: integer offset and size, not an embedded struct."""
    off, size, typ = row[0], row[1], row[2]
    return off.isdigit() and size.isdigit() and not typ.startswith("`")


def resolve(name: str, fmt: Any) -> Any:
    """``NAME`` in kvmap.format (or ``fmt``), or ``module.NAME`` in kvmap.module."""
    if "." in name:
        module, attr = name.rsplit(".", 1)
        return getattr(importlib.import_module(f"kvmap.{module}"), attr)
    return getattr(fmt, name)


# -- checking ---------------------------------------------------------------------------------
def _check_byte_table(t: Table, fmt: Any) -> list[str]:
    where = f"table under {t.heading!r}"
    problems = []
    if any(len(r) != len(BYTE_COLUMNS) for r in t.rows):
        return [f"{where}: every row needs {len(BYTE_COLUMNS)} cells"]
    names = set().union(*(symbols(r[0]) | symbols(r[1]) for r in t.rows))
    for r in t.rows:
        if m := re.fullmatch(r"\w+\[(.+)\]", r[2]):
            names |= symbols(m[1])
    # contiguity and type sizes, for a few values of the table's quantities
    for trial in range(3):
        env = {s: 1 + 3 * trial + 7 * i for i, s in enumerate(sorted(names))}
        try:
            expected = 0
            for i, (off, size, typ, field, _) in enumerate(t.rows):
                at = evaluate(off, env)
                if at != expected:
                    shown = off if off.isdigit() else f"{off} (= {at} for {env})"
                    problems.append(f"{where}: {field} at offset {shown}, expected {expected}")
                    break
                tsize = type_size(typ, env, fmt)
                if size == "...":
                    if i != len(t.rows) - 1 or tsize is not None:
                        problems.append(f"{where}: size '...' only on a last 'bytes' row")
                    break
                n = evaluate(size, env)
                if tsize != n:
                    problems.append(f"{where}: {field}: size {size} != size of type {typ}")
                    break
                expected = at + n
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
        if problems:
            return problems
    # the struct the heading names: its fields, exactly
    named = heading_structs(t.heading, fmt)
    if len(named) > 1:
        return [f"{where}: names more than one struct: {named}"]
    if named:
        name = named[0]
        if name not in STRUCT_BASE:
            return [f"{where}: add {name} to STRUCT_BASE in tests/test_format.py"]
        try:
            want = struct_fields(getattr(fmt, name), STRUCT_BASE[name])
        except ValueError as exc:
            return [f"{name}: {exc}"]
        got = [(int(r[0]), int(r[1]), r[2]) for r in t.rows if is_fixed(r)]
        if got != want:
            problems.append(
                f"{name} ({getattr(fmt, name).format!r}) does not match its table: "
                f"doc {got} != code {want}"
            )
    return problems


def doc_problems(text: str, fmt: Any = kvformat) -> list[str]:
    """Everything in which the doc ``text`` and the format module ``fmt`` disagree."""
    problems: list[str] = []
    tables = parse_tables(text)
    tabled: set[str] = set()
    documented: set[str] = set()
    for t in tables:
        if t.columns and t.columns[0] == "offset":
            if t.columns != BYTE_COLUMNS:
                problems.append(f"table under {t.heading!r}: columns must be {BYTE_COLUMNS}")
                continue
            problems += _check_byte_table(t, fmt)
            tabled.update(heading_structs(t.heading, fmt))
        elif t.columns == CONST_COLUMNS:
            for name, value, _ in t.rows:
                name = name.strip("`")
                documented.add(name)
                try:
                    actual = resolve(name, fmt)
                except AttributeError:
                    problems.append(f"constant {name} is quoted in the doc but not defined")
                    continue
                try:
                    quoted = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    problems.append(f"constant {name}: {value!r} is not a Python literal")
                    continue
                if type(actual) is not type(quoted) or actual != quoted:
                    problems.append(f"constant {name}: doc says {value}, code has {actual!r}")
        elif t.columns == TYPE_COLUMNS:
            seen = set()
            for value, const, name, _ in t.rows:
                const = const.strip("`")
                documented.add(const)
                seen.add(int(value))
                if getattr(fmt, const, None) != int(value):
                    problems.append(f"page type {const}: doc says {value}")
                if fmt.PAGE_TYPE_NAMES.get(int(value)) != name:
                    problems.append(f"page type {value}: doc names it {name!r}")
            if seen != set(fmt.PAGE_TYPE_NAMES):
                problems.append(f"page types in the doc {seen} != {set(fmt.PAGE_TYPE_NAMES)}")
        elif t.columns == LIMIT_COLUMNS:
            for row in t.rows:
                ps, usable, cell, key, seg = map(int, row)
                got = (
                    fmt.usable_size(ps),
                    fmt.max_inline_cell(ps),
                    fmt.max_key_size(ps),
                    segments.first_segment(ps),
                )
                if got != (usable, cell, key, seg):
                    problems.append(f"limits for page size {ps}: doc {row[1:]}, code {got}")
    for name, value in vars(fmt).items():
        if not name.isupper() or name.startswith("_"):
            continue
        if isinstance(value, struct.Struct):
            if name not in tabled and name not in NOT_TABLED:
                problems.append(f"struct {name} has no table in the doc")
        elif isinstance(value, (int, bytes, str)) and name not in documented:
            problems.append(f"constant {name} is not quoted in the doc's constants table")
    for name in STRUCT_BASE:
        if name not in tabled:
            problems.append(f"no table for struct {name}")
    return problems


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


# -- the doc agrees with the code ---------------------------------------------------------------
def test_doc_matches_format_module() -> None:
    assert doc_problems(doc_text()) == []


def test_doc_has_the_required_tables() -> None:
    tables = parse_tables(doc_text())
    headings = [t.heading for t in tables if t.columns == BYTE_COLUMNS]
    for struct_name in STRUCT_BASE:
        assert any(f"`{struct_name}`" in h for h in headings), struct_name
    for title in ("Leaf page", "Branch page", "Pending group"):
        assert any(h.startswith(title) for h in headings), title


def test_doc_describes_the_wal() -> None:
    text = doc_text()
    assert f"`{wal.wal_name(255)}`" in text  # the naming example follows the code
    assert "Replay stops at the first frame that does not count" in text
    for heading in ("## The write-ahead log", "### Which frames count", "### Recovery",
                    "## Commit and checkpoint order on disk"):  # fmt: skip
        assert f"\n{heading}" in text, heading
    meta = next(t for t in parse_tables(text) if "`META_BODY`" in t.heading)
    assert [r[3] for r in meta.rows if r[3].startswith("wal_")] == ["wal_seq", "wal_salt"]


def test_formulas_quoted_in_doc() -> None:
    text = doc_text()
    assert "(page_size - 24) // 4" in text
    assert "(page_size - 24) // 4 - 12" in text
    assert "4 + len(key) + len(value)" in text
    for ps in (512 << i for i in range(8)):
        assert kvformat.valid_page_size(ps)
        assert kvformat.max_inline_cell(ps) == (ps - 24) // 4
        assert kvformat.max_key_size(ps) == (ps - 24) // 4 - 12
        # an inline value is shorter than VALUE_OVERFLOW_BIT, so bit 15 is free
        assert kvformat.max_inline_cell(ps) < kvformat.VALUE_OVERFLOW_BIT
    assert not kvformat.valid_page_size(256) and not kvformat.valid_page_size(131072)
    assert not kvformat.valid_page_size(3000)


def test_checksum_is_crc32c() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the check value the doc quotes


def doc_segment_ends(page_size: int, count: int) -> list[int]:
    """Segment boundaries by the doc's rule: first max(64 KiB, 16 pages), then doubling
    up to a 1 GiB cap."""
    size = max(64 * 1024, 16 * page_size)
    ends = [size]
    while len(ends) < count:
        size = min(2 * size, 1 << 30)
        ends.append(ends[-1] + size)
    return ends


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_segment_rule_matches_doc(page_size: int) -> None:
    ends = doc_segment_ends(page_size, 20)
    prev = 0
    for end in ends:
        assert segments.segment_end(prev + 1, page_size) == end
        assert segments.segment_end(end, page_size) == end
        prev = end
    assert ends[-1] - ends[-2] == segments.SEGMENT_CAP
    if page_size <= 4096:
        kib = [e // 1024 for e in ends[:5]]
        assert kib == [64, 192, 448, 960, 1984]
        assert "64 KiB, 192 KiB, 448 KiB, 960 KiB, 1984 KiB" in doc_text()


# -- the checker catches a doc or a struct changed alone -----------------------------------------
DOC_MUTATIONS = [
    # (what, old, new)
    ("a meta field resized", "| 36 | 4 | u32 | page_size |", "| 36 | 8 | u64 | page_size |"),
    ("a header field retyped", "| 6 | 2 | u16 | count |", "| 6 | 2 | u32 | count |"),
    ("a header field moved", "| 5 | 1 | u8 | flags |", "| 6 | 1 | u8 | flags |"),
    ("a meta row dropped", "| 76 | 4 | u32 | flags | reserved: written 0 |\n", ""),
    ("the run length resized", "| 24 | 8 | u64 | length |", "| 24 | 4 | u32 | length |"),
    ("freelist head retyped", "| 40 | 8 | u64 | ngroups |", "| 40 | 8 | bytes[8] | ngroups |"),
    ("overflow ref resized", "| 0 | 8 | u64 | pgno |", "| 0 | 4 | u32 | pgno |"),
    (
        "a leaf array misplaced",
        "| 24+2n | 2n | u16[n] | val_len |",
        "| 24+4n | 2n | u16[n] | val_len |",
    ),
    (
        "a branch array resized",
        "| 24+2n | 8n | u64[n] | child |",
        "| 24+2n | 4n | u32[n] | child |",
    ),
    ("the version", "| `FORMAT_VERSION` | 1 |", "| `FORMAT_VERSION` | 2 |"),
    ("the magic", '| `MAGIC` | b"KVMAPDB\\x00" |', '| `MAGIC` | b"KVMAPDB\\x01" |'),
    ("the overflow bit", "| `VALUE_OVERFLOW_BIT` | 0x8000 |", "| `VALUE_OVERFLOW_BIT` | 0x4000 |"),
    ("a page type", "| 3 | `PAGE_LEAF` | leaf |", "| 6 | `PAGE_LEAF` | leaf |"),
    ("a page size limit", "| `MAX_PAGE_SIZE` | 65536 |", "| `MAX_PAGE_SIZE` | 32768 |"),
    ("a max key size", "| 4096 | 4072 | 1018 | 1006 |", "| 4096 | 4072 | 1018 | 1004 |"),
    ("a struct's heading", "## Meta page (`META_BODY`)", "## Meta page"),
    ("a column", "| offset | size | type | field |", "| offset | size | type | name |"),
    (
        "a WAL header field moved",
        "| 24 | 8 | u64 | start_seq |",
        "| 24 | 8 | u64 | salt2 |\n| 32 | 8 | u64 | start_seq |",
    ),
    (
        "the WAL header checksum dropped",
        "| 32 | 4 | u32 | checksum | CRC-32C of bytes 0 .. 32 of the header",
        "| 32 | 4 | bytes[4] | checksum | CRC-32C of bytes 0 .. 32 of the header",
    ),
    ("a WAL frame field resized", "| 24 | 4 | u32 | count |", "| 24 | 8 | u64 | count |"),
    ("a WAL frame field retyped", "| 16 | 8 | u64 | seq |", "| 16 | 8 | bytes[8] | seq |"),
    ("a WAL op length narrowed", "| 1 | 2 | u16 | key_len |", "| 1 | 1 | u8 | key_len |"),
    (
        "a WAL op array misplaced",
        "| 7+k | v | bytes[v] | value |",
        "| 8+k | v | bytes[v] | value |",
    ),
    ("the WAL magic", '| `WAL_MAGIC` | b"KVMAPWAL" |', '| `WAL_MAGIC` | b"KVMAPWAl" |'),
    ("the WAL header size", "| `WAL_HEADER_SIZE` | 64 |", "| `WAL_HEADER_SIZE` | 36 |"),
    ("a WAL op kind", "| `WAL_OP_DELETE` | 2 |", "| `WAL_OP_DELETE` | 3 |"),
    ("the WAL prefix", '| `WAL_PREFIX` | "kvmap.wal." |', '| `WAL_PREFIX` | "kvmap-wal-" |'),
    ("a WAL heading", "### WAL frame (`WAL_FRAME_HEAD`)", "### WAL frame"),
]


@pytest.mark.parametrize(("what", "old", "new"), DOC_MUTATIONS, ids=[m[0] for m in DOC_MUTATIONS])
def test_checker_catches_a_changed_doc(what: str, old: str, new: str, tmp_path: Path) -> None:
    text = doc_text()
    assert old in text, f"mutation {what!r} no longer applies to docs/format.md"
    copy = tmp_path / "format.md"
    copy.write_text(text.replace(old, new, 1), encoding="utf-8")
    assert doc_problems(copy.read_text(encoding="utf-8")) != []


def _fmt_with(**changes: Any) -> Any:
    fmt = types.SimpleNamespace(**vars(kvformat))
    for name, value in changes.items():
        setattr(fmt, name, value)
    return fmt


STRUCT_MUTATIONS = {
    "META_BODY gains a field": {"META_BODY": struct.Struct("<8sIIQQQQIIQQQ")},
    "META_BODY loses a field": {"META_BODY": struct.Struct("<8sIIQQQQIIQ")},
    "PAGE_HEADER field resized": {"PAGE_HEADER": struct.Struct("<IBBIQQ")},
    "PAGE_HEADER fields swapped": {"PAGE_HEADER": struct.Struct("<IBBHQQ".replace("BBH", "BHB"))},
    "RUN_LENGTH narrowed": {"RUN_LENGTH": struct.Struct("<I")},
    "FREELIST_HEAD widened": {"FREELIST_HEAD": struct.Struct("<QQQ")},
    "OVERFLOW_REF narrowed": {"OVERFLOW_REF": struct.Struct("<I")},
    "native byte order": {"RUN_LENGTH": struct.Struct("Q")},
    "a new struct": {"NEW_THING": struct.Struct("<Q")},
    "a new constant": {"NEW_LIMIT": 7},
    "version bumped": {"FORMAT_VERSION": 2},
    "a page type renumbered": {"PAGE_OVERFLOW": 6},
    "WAL_HEADER loses its checksum": {"WAL_HEADER": struct.Struct("<8sIIQQ")},
    "WAL_HEADER start_seq narrowed": {"WAL_HEADER": struct.Struct("<8sIIQII")},
    "WAL_FRAME_HEAD count widened": {"WAL_FRAME_HEAD": struct.Struct("<QQQQI")},
    "WAL_FRAME_HEAD gains a field": {"WAL_FRAME_HEAD": struct.Struct("<QQQIIQ")},
    "WAL_OP key length widened": {"WAL_OP": struct.Struct("<BII")},
    "WAL_OP fields swapped": {"WAL_OP": struct.Struct("<BIH")},
    "WAL magic changed": {"WAL_MAGIC": b"KVMAPLOG"},
    "WAL op kind renumbered": {"WAL_OP_PUT": 3},
    "WAL header size changed": {"WAL_HEADER_SIZE": 128},
}


@pytest.mark.parametrize("what", list(STRUCT_MUTATIONS))
def test_checker_catches_a_changed_struct(what: str) -> None:
    assert doc_problems(doc_text(), _fmt_with(**STRUCT_MUTATIONS[what])) != []


def test_parser_reads_tables() -> None:
    text = (
        "# T\n## Thing (`RUN_LENGTH`)\n\n| offset | size | type | field | meaning |\n"
        "| --- | --- | --- | --- | --- |\n| 0 | 24 | `PAGE_HEADER` | header | a \\| b |\n"
        "| 24 | 8 | u64 | length | x |\n| 32 | ... | bytes | rest | y |\n"
    )
    (t,) = parse_tables(text)
    assert t.heading == "Thing (`RUN_LENGTH`)"
    assert t.rows[0] == ["0", "24", "`PAGE_HEADER`", "header", "a | b"]
    assert _check_byte_table(t, kvformat) == []
    assert evaluate("24+10n+K", {"n": 3, "K": 5}) == 59
    assert struct_fields(kvformat.PAGE_HEADER, 0)[-1] == (16, 8, "u64")


# -- the doc describes the real file ------------------------------------------------------------
class DocLayouts:
    """Structs and constants built only from docs/format.md's tables."""

    def __init__(self, text: str) -> None:
        self.structs: dict[str, tuple[struct.Struct, list[str], int]] = {}
        self.consts: dict[str, Any] = {}
        self.types: dict[str, int] = {}
        for t in parse_tables(text):
            if t.columns == BYTE_COLUMNS:
                named = heading_structs(t.heading, kvformat)
                rows = [r for r in t.rows if is_fixed(r)]
                if named and rows:
                    codes = {v: k for k, v in STRUCT_CODES.items()}
                    fmt = "<" + "".join(
                        f"{r[1]}s" if r[2].startswith("bytes") else codes[r[2]] for r in rows
                    )
                    fields = [r[3] for r in rows]
                    self.structs[named[0]] = (struct.Struct(fmt), fields, int(rows[0][0]))
            elif t.columns == CONST_COLUMNS:
                for name, value, _ in t.rows:
                    self.consts[name.strip("`")] = ast.literal_eval(value)
            elif t.columns == TYPE_COLUMNS:
                for value, _, name, _ in t.rows:
                    self.types[name] = int(value)

    def unpack(self, name: str, buf: bytes, start: int = 0) -> dict[str, Any]:
        """Decode struct ``name`` of a page (or value slot) that begins at ``start``."""
        s, fields, base = self.structs[name]
        return dict(zip(fields, s.unpack_from(buf, start + base)))


def decode_wal(doc: DocLayouts, raw: bytes) -> tuple[dict[str, Any], list[tuple[int, list[Any]]]]:
    """The header and the frames (seq, operations) of a WAL file, decoded by the doc's tables
    alone, asserting every rule of "Which frames count" on the way: the file must hold only
    counting frames after its header, then the zeros of its allocated space."""
    hdr = doc.unpack("WAL_HEADER", raw)
    hdr_struct = doc.structs["WAL_HEADER"][0]
    assert hdr["magic"] == doc.consts["WAL_MAGIC"] == b"KVMAPWAL"
    assert hdr["version"] == doc.consts["FORMAT_VERSION"] and hdr["flags"] == 0
    assert hdr["salt"] != 0
    assert crc32c(raw[: hdr_struct.size - 4]) == hdr["checksum"]  # bytes before the field
    size = doc.consts["WAL_HEADER_SIZE"]
    assert raw[hdr_struct.size : size] == bytes(size - hdr_struct.size)  # zero padding
    head = doc.structs["WAL_FRAME_HEAD"][0].size
    op_size = doc.structs["WAL_OP"][0].size
    frames: list[tuple[int, list[Any]]] = []
    off, seq = size, hdr["start_seq"]
    while off < len(raw):
        if raw[off:] == bytes(len(raw) - off):
            break  # the rest of the file's allocated space
        f = doc.unpack("WAL_FRAME_HEAD", raw, off)
        end = off + f["length"]
        assert f["length"] >= head + 4 and end <= len(raw)
        assert f["salt"] == hdr["salt"] and f["seq"] == seq + 1 and f["flags"] == 0
        (crc,) = struct.unpack_from("<I", raw, end - 4)
        assert crc == crc32c(raw[off : end - 4])
        pos = off + head
        ops: list[Any] = []
        for _ in range(f["count"]):
            op = doc.unpack("WAL_OP", raw, pos)
            pos += op_size
            key = raw[pos : pos + op["key_len"]]
            pos += op["key_len"]
            if op["kind"] == doc.consts["WAL_OP_PUT"]:
                ops.append((key, raw[pos : pos + op["value_len"]]))
                pos += op["value_len"]
            else:
                assert op["kind"] == doc.consts["WAL_OP_DELETE"] and op["value_len"] == 0
                ops.append((key, None))
        assert pos == end - 4  # the operations fill the frame up to its checksum
        frames.append((f["seq"], ops))
        seq, off = f["seq"], end
    return hdr, frames


def test_real_file_matches_doc(tmp_path: Path) -> None:
    doc = DocLayouts(doc_text())
    ps = 512
    limit = (ps - 24) // 4  # the doc's max inline cell
    items = {b"key%03d" % i: b"value-%03d-" % i * 3 for i in range(80)}
    items[b"big"] = bytes(range(256)) * 12  # an overflow run of several pages
    items[b"inline-max"] = b"i" * (limit - 4 - len(b"inline-max"))  # cell == limit: inline
    items[b"overflow-min"] = b"o" * (limit - 4 - len(b"overflow-min") + 1)  # one byte more
    items[b""] = b""
    path = tmp_path / "db"
    # two commits checkpointed one by one (so the tree has replaced, freed pages) ...
    with kvmap.open(path, page_size=ps, checkpoint_size=0) as db:
        with db.begin(write=True) as txn:
            for k, v in items.items():
                txn.put(k, v)
        db.put(b"key000", b"changed")
        items[b"key000"] = b"changed"
    # ... then three that stay in the WAL until the checkpoint
    large = bytes(range(256)) * 40  # an overflow run in the tree, whole in its WAL frame
    logged: list[tuple[int, list[Any]]] = []
    with kvmap.open(path, sync="full") as db:  # "full": every frame is in the file at once
        wal_start = db.stats()["commit_seq"]
        with db.begin(write=True) as txn:
            for i in range(2, 40):
                txn.delete(b"key%03d" % i)
                del items[b"key%03d" % i]
        logged.append((wal_start + 1, [(b"key%03d" % i, None) for i in range(2, 40)]))
        with db.begin(write=True) as txn:
            txn.put(b"wal-large", large)
            txn.put(b"wal-empty", b"")
            txn.delete(b"key040")
        items.update({b"wal-large": large, b"wal-empty": b""})
        del items[b"key040"]
        logged.append(
            (wal_start + 2, [(b"key040", None), (b"wal-empty", b""), (b"wal-large", large)])
        )
        db.put(b"", b"")  # the empty key and value, rewritten
        logged.append((wal_start + 3, [(b"", b"")]))
        last_seq = db.stats()["commit_seq"]
        assert last_seq == wal_start + 3
        wal_name = doc.consts["WAL_PREFIX"] + f"{wal_start:016x}"
        wal_raw = (path / wal_name).read_bytes()
        db.checkpoint()  # the tree takes the logged commits; a new WAL starts at last_seq
        last_txn = db.stats()["txnid"]
    new_wal = doc.consts["WAL_PREFIX"] + f"{last_seq:016x}"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [doc.consts["DATA_FILE"], doc.consts["LOCK_FILE"], new_wal]
    )

    # -- the WAL: a header and one frame per commit, as the doc's tables say
    hdr, frames = decode_wal(doc, wal_raw)
    assert hdr["start_seq"] == wal_start and frames == logged
    hdr2, frames2 = decode_wal(doc, (path / new_wal).read_bytes())
    assert hdr2["start_seq"] == last_seq and frames2 == [] and hdr2["salt"] != hdr["salt"]

    raw = (path / doc.consts["DATA_FILE"]).read_bytes()
    assert len(raw) in doc_segment_ends(ps, 10)  # the file ends on a segment boundary

    def page(p: int) -> bytes:
        return raw[p * ps : (p + 1) * ps]

    # -- meta pages 0 and 1
    metas = []
    for pgno in (0, 1):
        buf = page(pgno)
        hdr = doc.unpack("PAGE_HEADER", buf)
        body = doc.unpack("META_BODY", buf)
        assert crc32c(buf[4:]) == hdr["checksum"]
        assert hdr["type"] == doc.types["meta"] and hdr["pgno"] == pgno and hdr["count"] == 0
        assert hdr["txnid"] % 2 == pgno
        assert body["magic"] == doc.consts["MAGIC"] == b"KVMAPDB\x00"
        assert body["version"] == doc.consts["FORMAT_VERSION"] == 1
        assert body["page_size"] == ps
        assert body["flags"] == 0 and body["wal_salt"] == 0
        assert buf[doc.consts["META_END"] :] == bytes(ps - doc.consts["META_END"])
        metas.append({**body, "txnid": hdr["txnid"]})
    meta = max(metas, key=lambda m: m["txnid"])
    other = min(metas, key=lambda m: m["txnid"])
    assert meta["txnid"] == last_txn and other["txnid"] == last_txn - 1
    # wal_seq: the last commit each tree holds (the checkpoint took the WAL's three)
    assert meta["wal_seq"] == last_seq and other["wal_seq"] == wal_start
    hwm = meta["hwm"]
    assert 2 <= hwm and hwm * ps <= len(raw)
    assert meta["entries"] == len(items) and meta["depth"] >= 2

    # -- the tree, the overflow runs and the freelist, accounting for every page (invariant 3)
    owner: dict[int, str] = {}

    def claim(p: int, what: str) -> None:
        assert 2 <= p < hwm and p not in owner, (p, what, owner.get(p))
        owner[p] = what

    def read_run(p: int, ptype: str) -> bytes:
        hdr = doc.unpack("PAGE_HEADER", page(p))
        assert hdr["type"] == doc.types[ptype] and hdr["pgno"] == p and hdr["count"] == 0
        assert hdr["txnid"] <= meta["txnid"]
        length = doc.unpack("RUN_LENGTH", page(p))["length"]
        data_at = doc.consts["RUN_DATA_OFFSET"]
        npages = max(1, -(-(data_at + length) // ps))
        run = raw[p * ps : (p + npages) * ps]
        assert crc32c(run[4:]) == hdr["checksum"]  # one checksum over the whole run
        assert run[data_at + length :] == bytes(len(run) - data_at - length)
        for q in range(p, p + npages):
            claim(q, f"{ptype} run at {p}")
        return run[data_at : data_at + length]

    found: dict[bytes, bytes] = {}
    overflowed: set[bytes] = set()
    ovf_bit = doc.consts["VALUE_OVERFLOW_BIT"]
    ref_size = doc.structs["OVERFLOW_REF"][0].size
    seen_types = set()

    def walk(p: int, depth: int, lo: bytes | None, hi: bytes | None) -> None:
        claim(p, "tree")
        buf = page(p)
        hdr = doc.unpack("PAGE_HEADER", buf)
        assert crc32c(buf[4:]) == hdr["checksum"] and hdr["pgno"] == p
        assert hdr["txnid"] <= meta["txnid"]
        n = hdr["count"]
        assert n >= 1
        seen_types.add(hdr["type"])
        klens = struct.unpack_from(f"<{n}H", buf, 24)
        if hdr["type"] == doc.types["leaf"]:
            assert depth == meta["depth"]
            vlens = struct.unpack_from(f"<{n}H", buf, 24 + 2 * n)
            off = 24 + 4 * n
            keys = []
            for kl in klens:
                keys.append(buf[off : off + kl])
                off += kl
            for k, vl in zip(keys, vlens):
                if vl & ovf_bit:
                    assert vl == ovf_bit | ref_size
                    ref = doc.unpack("OVERFLOW_REF", buf, off)["pgno"]
                    found[k] = read_run(ref, "overflow")
                    overflowed.add(k)
                    off += ref_size
                else:
                    found[k] = buf[off : off + vl]
                    off += vl
            assert buf[off:] == bytes(ps - off)
        else:
            assert hdr["type"] == doc.types["branch"] and depth < meta["depth"]
            assert klens[0] == 0
            kids = struct.unpack_from(f"<{n}Q", buf, 24 + 2 * n)
            off = 24 + 10 * n
            keys = [b""]
            for kl in klens[1:]:
                keys.append(buf[off : off + kl])
                off += kl
            assert buf[off:] == bytes(ps - off)
            for i, kid in enumerate(kids):
                walk(kid, depth + 1, lo if i == 0 else keys[i], keys[i + 1] if i + 1 < n else hi)
            keys = keys[1:]
        assert all(a < b for a, b in zip(keys, keys[1:]))
        if keys:
            assert lo is None or keys[0] >= lo
            assert hi is None or keys[-1] < hi

    walk(meta["root"], 1, None, None)
    assert seen_types == {doc.types["leaf"], doc.types["branch"]}
    assert found == items
    assert overflowed == {b"big", b"overflow-min", b"wal-large"}

    assert meta["freelist"] != 0  # the deletes freed pages
    payload = read_run(meta["freelist"], "freelist")
    head = doc.unpack("FREELIST_HEAD", payload, -doc.consts["RUN_DATA_OFFSET"])
    nfree, ngroups = head["nfree"], head["ngroups"]
    off = 16
    listed = list(struct.unpack_from(f"<{nfree}Q", payload, off))
    assert listed == sorted(listed)
    off += 8 * nfree
    txnids = []
    for _ in range(ngroups):
        txnid, n = struct.unpack_from("<QQ", payload, off)
        group = list(struct.unpack_from(f"<{n}Q", payload, off + 16))
        assert group == sorted(group) and txnid <= meta["txnid"]
        txnids.append(txnid)
        listed += group
        off += 16 + 8 * n
    assert txnids == sorted(txnids)
    assert payload[off:] == bytes(len(payload) - off)
    for p in listed:
        claim(p, "free")
    assert set(owner) == set(range(2, hwm))  # every page below hwm accounted for, once
