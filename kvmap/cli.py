"""The ``kvmap`` command line (also ``python -m kvmap``).

``kvmap [--debug] COMMAND DBPATH [ARGS]``, one subcommand per job (``kvmap COMMAND --help``
shows its options and examples; docs/cli.md is the full reference):

=============  ===========================================================================
``stat``       entries, depth, pages by type, file and WAL sizes, free pages (JSON or text)
``get``        print the value of a key
``put``        store a value under a key (one commit)
``delete``     remove a key (one commit)
``scan``       list items in key order: ``--start/--stop/--prefix/--reverse/--limit``
``dump``       write every item in the portable dump format (stdout or ``-o FILE``)
``load``       read a dump into a database, in one transaction (stdin or ``-i FILE``)
``check``      verify every page of the database
``salvage``    copy every readable record of a damaged database into a new one
``checkpoint`` fold the write-ahead log into the tree
``compact``    rewrite the database densely, in place or ``--to NEWPATH``; prints the space saved
``pages``      page counts by type and the tree's shape per level (``--list``: every page)
``page``       decode one page: its header and its cells
``readers``    list live reader slots; ``--clear`` clears those of dead processes
``bench``      run the benchmark suite (``python -m bench``) when it is importable
``demo``       create a database, write, read and scan it, print what it did
=============  ===========================================================================

``readers`` lists the handles (in every process) that hold a reader slot, and with
``--clear`` zeroes the slots of processes that died (a writer also does this at its next
checkpoint).

Exit status: 0 on success, 1 on an error (one line on stderr, ``kvmap: error: ...``, never a
traceback unless ``--debug`` is given), 2 on bad usage (argparse's usage message).

Keys and values on the command line
-----------------------------------
A KEY or VALUE argument (and ``--start/--stop/--prefix``) is text, encoded as UTF-8, unless
it starts with a prefix: ``hex:`` (the bytes in hexadecimal, ``hex:00ff``), ``b64:`` (the
bytes in base64, ``b64:AP8=``) or ``text:`` (the rest, literally: ``text:hex:1`` is the
4 bytes ``hex:1``).  ``get`` and ``scan`` print keys and values the same way, so anything
they print can be pasted back as an argument: text when the bytes are printable UTF-8 (and
do not start with one of the prefixes, else ``text:`` is added), otherwise ``hex:`` and
the hexadecimal bytes.  ``scan --format json`` prints JSON Lines instead, one object per
item: ``{"key": TEXT, "value": TEXT}``, where a key or value that is not valid UTF-8 is
given as ``key_b64``/``value_b64`` (standard base64) instead.

The dump format (version 1)
---------------------------
A dump is an ASCII text file; lines end with ``\\n`` (``\\r\\n`` is accepted on load).

1. The header line: ``kvmap-dump 1``, the format name and version, optionally followed by
   space-separated ``name=value`` fields.  ``kvmap dump`` writes ``entries=N`` (the number
   of items) and ``page_size=P`` (of the source database, used by ``load`` when it creates
   the database); a loader ignores fields it does not know and refuses other versions.
2. One line per item, in ascending key order: the key and the value as two quoted strings
   separated by one space, ``"KEY" "VALUE"``.  Inside the quotes, the bytes 0x20 to 0x7e
   other than ``"`` and ``\\`` stand for themselves, ``\\\\`` is a backslash, ``\\"`` a quote
   and ``\\xHH`` (two hex digits) any byte.  Nothing else may appear; an empty key or value
   is ``""``.
3. The end line: ``end N``, where N is the number of item lines.  A dump without it (a
   truncated file) or with another count is refused.

Lines that start with ``#`` (comments) and empty lines are ignored.  Example::

    kvmap-dump 1 entries=3 page_size=4096
    "" "the empty key"
    "\\x00\\xff" "caf\\xc3\\xa9"
    "user:1" "{\\"name\\": \\"alice\\"}"
    end 3

``load`` reads the whole dump in one write transaction: it loads everything or nothing.
Items replace existing values of the same keys; into an empty database, ordered items go
straight into the tree (``put_many(append=True)``).

Progress bars (``dump``, ``load``, ``compact --to``) use ``tqdm`` when it is installed (it is
in the ``bench`` extra), on a terminal and for 50,000 items or more, or always with
``--progress``; ``--no-progress`` turns them off.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import importlib.machinery
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

from . import __version__
from .check import read_freelist
from .db import Database
from .db import open as kv_open
from .errors import CorruptionError, Error
from .fileio import fs as installed_fs
from .format import (
    DATA_FILE,
    LOCK_FILE,
    MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
    PAGE_BRANCH,
    PAGE_FREELIST,
    PAGE_HEADER,
    PAGE_LEAF,
    PAGE_META,
    PAGE_OVERFLOW,
    PAGE_TYPE_NAMES,
    RUN_LENGTH,
    valid_page_size,
)
from .freelist import Freelist
from .meta import Meta, peek_page_size, pick
from .meta import decode as decode_meta
from .node import Node, Ovf, run_header, run_pages, run_payload
from .node import decode as decode_node
from .pager import Pager
from .salvage import recover, salvage
from .wal import list_wals

T = TypeVar("T")

DUMP_FORMAT = "kvmap-dump"
DUMP_VERSION = 1
PROGRESS_MIN = 50_000  # items: smaller jobs get no progress bar unless --progress
PREFIXES = ("hex:", "b64:", "text:")


class CommandError(Exception):
    """A failure to report as one line on stderr, with exit status 1."""


# -- keys and values: arguments in, safe text out -------------------------------------------
def parse_bytes(arg: str) -> bytes:
    """A KEY/VALUE argument as bytes: ``hex:``, ``b64:``, ``text:`` or plain UTF-8 text.

    >>> [parse_bytes(a) for a in ("user:1", "hex:00ff", "b64:AP8=", "text:hex:1")]
    [b'user:1', b'\\x00\\xff', b'\\x00\\xff', b'hex:1']
    """
    if arg.startswith("hex:"):
        try:
            return bytes.fromhex(arg[4:])
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid hex after 'hex:': {arg[4:]!r}") from None
    if arg.startswith("b64:"):
        try:
            return base64.b64decode(arg[4:], validate=True)
        except binascii.Error:
            raise argparse.ArgumentTypeError(f"invalid base64 after 'b64:': {arg[4:]!r}") from None
    if arg.startswith("text:"):
        arg = arg[5:]
    # undecodable bytes in argv arrive as surrogate escapes: give back the original bytes
    return arg.encode("utf-8", "surrogateescape")


def show(data: bytes, ascii_only: bool = False) -> str:
    """``data`` as a single line that :func:`parse_bytes` turns back into it.

    >>> show(b"user:1"), show(b"\\x00\\xff"), show(b"hex:1"), show(b"two\\nlines"), show(b"")
    ('user:1', 'hex:00ff', 'text:hex:1', 'hex:74776f0a6c696e6573', '')
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + data.hex()
    if not text.isprintable() or (ascii_only and not text.isascii()):
        return "hex:" + data.hex()
    if text.startswith(PREFIXES):
        return "text:" + text
    return text


def _stdout_ascii_only() -> bool:
    encoding = (getattr(sys.stdout, "encoding", None) or "ascii").lower().replace("-", "")
    return encoding not in ("utf8", "utf_8")


def _shorten(data: bytes, limit: int) -> tuple[bytes, str]:
    if limit and len(data) > limit:
        return data[:limit], f" ... ({len(data)} bytes)"
    return data, ""


def _json_item(key: bytes, value: bytes | None) -> str:
    obj: dict[str, str] = {}
    for name, data in (("key", key), ("value", value)):
        if data is None:
            continue
        try:
            obj[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            obj[name + "_b64"] = base64.b64encode(data).decode("ascii")
    return json.dumps(obj)


# -- the dump format ------------------------------------------------------------------------
_SAFE = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')
_ESCAPE = [chr(c) if c in _SAFE else f"\\x{c:02x}" for c in range(256)]
_ESCAPE[ord('"')] = '\\"'
_ESCAPE[ord("\\")] = "\\\\"
_FIELD = r'"((?:[ !#-\[\]-~]|\\x[0-9a-fA-F]{2}|\\["\\])*)"'
_ITEM = re.compile(_FIELD + " " + _FIELD)
_UNESCAPE = re.compile(r"\\(x..|.)")
_HEADER = re.compile(r"kvmap-dump (\d+)((?: +[^ =]+=[^ ]*)*) *")


def dump_quote(data: bytes) -> str:
    """One field of a dump line.

    >>> print(dump_quote(b'say "hi"\\n'), dump_quote(b""), dump_quote("é".encode()))
    "say \\"hi\\"\\x0a" "" "\\xc3\\xa9"
    """
    if not data.translate(None, _SAFE):
        return '"' + data.decode("ascii") + '"'
    return '"' + "".join([_ESCAPE[c] for c in data]) + '"'


def _unquote(field: str) -> bytes:
    if "\\" not in field:
        return field.encode("ascii")
    return _UNESCAPE.sub(
        lambda m: chr(int(m[1][1:], 16)) if m[1][0] == "x" else m[1], field
    ).encode("latin-1")


def dump_items(
    items: Iterable[tuple[bytes, bytes]], out: IO[bytes], header: Mapping[str, object]
) -> int:
    """Write a dump of ``items`` (ascending keys) to the binary stream ``out``; returns the
    number of items written."""
    fields = "".join(f" {k}={v}" for k, v in header.items())
    out.write(f"{DUMP_FORMAT} {DUMP_VERSION}{fields}\n".encode("ascii"))
    n = 0
    lines: list[str] = []
    for k, v in items:
        lines.append(f"{dump_quote(k)} {dump_quote(v)}\n")
        n += 1
        if len(lines) >= 1024:
            out.write("".join(lines).encode("ascii"))
            lines.clear()
    lines.append(f"end {n}\n")
    out.write("".join(lines).encode("ascii"))
    return n


class DumpReader:
    """Parse a dump from a binary stream: :attr:`fields` (the header's ``name=value``
    fields) once constructed, then iterate the (key, value) items.  Raises
    :class:`CommandError` naming the line for anything that is not format 1."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.stream = stream
        self.name = name
        first = stream.readline()
        self.lineno = 1
        line = self._text(first)
        m = _HEADER.fullmatch(line)
        if not m:
            what = "an empty input" if not first else f"{line[:40]!r}"
            raise CommandError(f"{name}: not a kvmap dump (line 1 is {what})")
        version = int(m[1])
        if version != DUMP_VERSION:
            raise CommandError(
                f"{name}: dump format version {version}; this kvmap reads version {DUMP_VERSION}"
            )
        self.fields = dict(f.split("=", 1) for f in m[2].split())

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode("ascii").rstrip("\r\n")
        except UnicodeDecodeError:
            raise self.error("not ASCII text") from None

    def error(self, message: str) -> CommandError:
        return CommandError(f"{self.name}: line {self.lineno}: {message}")

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        count = 0
        ended = False
        match = _ITEM.fullmatch
        for raw in self.stream:
            self.lineno += 1
            line = self._text(raw)
            if not line or line[0] == "#":
                continue
            if ended:
                raise self.error("text after the end line")
            m = match(line)
            if m:
                count += 1
                yield _unquote(m[1]), _unquote(m[2])
            elif line.startswith("end "):
                if line[4:] != str(count):
                    raise self.error(
                        f"the end line counts {line[4:]} items, the dump holds {count}"
                    )
                ended = True
            else:
                raise self.error(f'not an item ("KEY" "VALUE") or end line: {line[:60]!r}')
        if not ended:
            raise CommandError(f"{self.name}: the dump has no end line (truncated?)")


# -- helpers ----------------------------------------------------------------------------------
def _progress(items: Iterable[T], total: int | None, desc: str, wanted: bool | None) -> Iterable[T]:
    """``items`` wrapped in a tqdm progress bar on stderr when wanted (see the module
    docstring); ``items`` unchanged when tqdm is not installed."""
    if wanted is False:
        return items
    if wanted is None and (total is None or total < PROGRESS_MIN or not sys.stderr.isatty()):
        return items
    try:
        tqdm: Any = importlib.import_module("tqdm").tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, unit=" items", file=sys.stderr)  # type: ignore[no-any-return]


def _dir_size(path: str) -> int:
    """Bytes in the database's files (data file and logs)."""
    total = 0
    for name in [DATA_FILE, *(os.path.basename(p) for _, p in list_wals(path))]:
        try:
            total += os.path.getsize(os.path.join(path, name))
        except OSError:
            pass
    return total


def _wal_size(path: str) -> tuple[int, int]:
    """(files, bytes) of the write-ahead logs on disk."""
    files = total = 0
    for _, wal in list_wals(path) if os.path.isdir(path) else []:
        try:
            total += os.path.getsize(wal)
            files += 1
        except OSError:  # deleted meanwhile by a checkpoint
            pass
    return files, total


def _size(n: float) -> str:
    """
    >>> _size(512), _size(1536), _size(3 * 1024**3)
    ('512 B', '1.5 KiB', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _remove_new_db(path: str, made_dir: bool) -> None:
    """Remove a database this command created before failing (its directory too, if the
    command made it)."""
    if made_dir:
        shutil.rmtree(path, ignore_errors=True)
        return
    names = [DATA_FILE, DATA_FILE + ".new", LOCK_FILE]
    for name in [*names, *(os.path.basename(p) for _, p in list_wals(path))]:
        try:
            os.unlink(os.path.join(path, name))
        except OSError:
            pass


def _open_ro(path: str) -> Database:
    return kv_open(path, readonly=True)


def _open_rw(args: argparse.Namespace, create: bool = False, **options: Any) -> Database:
    return kv_open(args.path, create=create, lock_timeout=args.lock_timeout, **options)


def _out() -> IO[bytes]:
    """Standard output as a binary stream (after the text written so far)."""
    sys.stdout.flush()
    return sys.stdout.buffer


# -- commands -------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    path = args.path or os.path.join(tempfile.mkdtemp(prefix="kvmap-demo-"), "db")
    n = args.n
    rng = random.Random(42)
    keys = [b"user:%08d" % i for i in range(n)]
    rng.shuffle(keys)
    print(f"kvmap demo: database at {path}")
    with kv_open(path, sync="full") as db:
        t = time.perf_counter()
        with db.begin(write=True) as txn:
            for k in keys:
                txn.put(k, b"profile-of-" + k)
        dt = time.perf_counter() - t
        print(
            f"  wrote {n} keys in random order in one transaction: {dt:.2f} s "
            f"({n / dt:,.0f} puts/s)"
        )
        t = time.perf_counter()
        for k in keys:
            assert db[k] == b"profile-of-" + k
        dt = time.perf_counter() - t
        print(f"  read them back with db[key]: {dt:.2f} s ({n / dt:,.0f} gets/s)")
        first = list(db.items(prefix=b"user:0000001", reverse=True))[:3]
        print(f"  prefix scan user:0000001*, newest first: {[k.decode() for k, _ in first]}")
        t = time.perf_counter()
        count = sum(1 for _ in db.items())
        dt = time.perf_counter() - t
        print(f"  full ordered scan of {count} items: {dt:.3f} s")
        with db.begin() as snap:
            del db[keys[0]]
            print(
                f"  deleted {keys[0].decode()}; an older snapshot still sees it: "
                f"{keys[0] in snap}, the database does not: {keys[0] in db}"
            )
        stats = db.stats()
        print(
            f"  {stats['entries']} entries, depth {stats['depth']}, "
            f"{stats['file_size'] / 1024:.0f} KiB file, pages: {stats['pages']}"
        )
        db.check()
        print("  check(): ok")
    return 0


def _stat(args: argparse.Namespace) -> int:
    with _open_ro(args.path) as db:
        stats = db.stats()
    # A read-only handle has no log of its own: report the logs on disk.
    stats["wal_files"], stats["wal_size"] = _wal_size(args.path)
    stats = {"path": os.path.abspath(args.path), **stats}
    if args.format == "json":
        print(json.dumps(stats, indent=2))
        return 0
    pages = stats["pages"]
    rows = [
        ("path", stats["path"]),
        ("entries", f"{stats['entries']:,}"),
        ("depth", stats["depth"]),
        ("page size", stats["page_size"]),
        ("pages", ", ".join(f"{k} {v:,}" for k, v in pages.items())),
        ("high-water mark", f"{stats['high_water_mark']:,} pages"),
        ("free pages", f"{stats['free_pages']:,}"),
        ("file size", f"{stats['file_size']:,} bytes ({_size(stats['file_size'])})"),
        ("WAL", f"{stats['wal_size']:,} bytes in {stats['wal_files']} file(s)"),
        ("unfolded keys", f"{stats['memtable_keys']:,} (in the WAL, not yet in the tree)"),
        ("commit", f"{stats['commit_seq']:,} (tree up to {stats['checkpoint_seq']:,})"),
        ("segments", stats["segments"]),
    ]
    for name, value in rows:
        print(f"{name:<16} {value}")
    return 0


def _get(args: argparse.Namespace) -> int:
    with _open_ro(args.path) as db:
        value = db.get(args.key)
    if value is None:
        raise CommandError(f"key not found: {show(args.key)}")
    if args.raw:
        out = _out()
        out.write(value)
        out.flush()
    else:
        print(show(value, _stdout_ascii_only()))
    return 0


def _put(args: argparse.Namespace) -> int:
    with _open_rw(args, create=args.create) as db:
        db.put(args.key, args.value)
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _open_rw(args) as db:
        found = db.delete(args.key)
    if not found and not args.force:
        raise CommandError(f"key not found: {show(args.key)}")
    return 0


def _scan(args: argparse.Namespace) -> int:
    ascii_only = _stdout_ascii_only()
    with _open_ro(args.path) as db:
        it: Iterator[tuple[bytes, bytes | None]]
        opts = {"prefix": args.prefix, "reverse": args.reverse}
        if args.keys_only:
            it = ((k, None) for k in db.keys(args.start, args.stop, **opts))
        else:
            it = db.items(args.start, args.stop, **opts)
        lines: list[str] = []
        out = sys.stdout
        for i, (k, v) in enumerate(it):
            if args.limit is not None and i >= args.limit:
                break
            if args.format == "json":
                lines.append(_json_item(k, v))
            elif v is None:
                lines.append(show(k, ascii_only))
            else:
                lines.append(f"{show(k, ascii_only)}\t{show(v, ascii_only)}")
            if len(lines) >= 512:
                out.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            out.write("\n".join(lines) + "\n")
    return 0


def _dump(args: argparse.Namespace) -> int:
    with _open_ro(args.path) as db, db.begin() as snap:
        total = len(snap)
        header = {"entries": total, "page_size": db.page_size}
        items = _progress(snap.items(), total, "dump", args.progress)
        if args.output in (None, "-"):
            out = _out()
            dump_items(items, out, header)
            out.flush()
            return 0
        tmp = args.output + ".tmp"
        try:
            with open(tmp, "wb") as f:
                n = dump_items(items, f, header)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, args.output)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    print(f"dumped {n:,} items to {args.output}")
    return 0


def _load(args: argparse.Namespace) -> int:
    source = args.input
    stream: IO[bytes]
    if source in (None, "-"):
        stream, name = sys.stdin.buffer, "<stdin>"
    else:
        stream, name = open(source, "rb"), source  # noqa: SIM115 - closed below
    try:
        reader = DumpReader(stream, name)
        page_size = args.page_size
        if page_size is None:
            recorded = reader.fields.get("page_size", "")
            page_size = int(recorded) if recorded.isdigit() else 4096
            if not valid_page_size(page_size):
                raise reader.error(f"page_size={recorded} is not a valid page size")
        total = reader.fields.get("entries", "")
        items = _progress(reader, int(total) if total.isdigit() else None, "load", args.progress)
        created = not os.path.exists(os.path.join(args.path, DATA_FILE))
        made_dir = not os.path.exists(args.path)
        try:
            with _open_rw(args, create=True, page_size=page_size) as db:
                n = _load_items(db, items)
                entries = len(db)
        except BaseException:
            if created:  # leave no empty database behind
                _remove_new_db(args.path, made_dir)
            raise
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    what = "a new" if created else "the"
    print(f"loaded {n:,} items into {what} database {args.path} ({entries:,} entries)")
    return 0


def _load_items(db: Database, items: Iterable[tuple[bytes, bytes]]) -> int:
    """Put every item in one transaction; items in ascending order go into an empty
    database with ``put_many(append=True)``.  Returns the number of items read."""
    n = 0
    with db.begin(write=True) as txn:
        append = len(txn) == 0
        batch: list[tuple[bytes, bytes]] = []
        last: bytes | None = None
        for k, v in items:
            n += 1
            if append and (last is None or k > last):
                batch.append((k, v))
                last = k
                if len(batch) >= 4096:
                    txn.put_many(batch, append=True)
                    batch.clear()
                continue
            if batch:
                txn.put_many(batch, append=True)
                batch.clear()
            append = False  # out of order: ordinary puts from here on (the last one wins)
            txn.put(k, v)
        if batch:
            txn.put_many(batch, append=True)
    return n


def _check(args: argparse.Namespace) -> int:
    with _open_ro(args.path) as db:
        counts = db.check()
        note = db.stats()["other_meta_problem"]
    print(f"ok: {json.dumps(counts)}")
    if note:
        print(f"note: {note}; a crash during a checkpoint leaves a torn meta page, and the "
              "next checkpoint rewrites it")  # fmt: skip
    return 0


def _salvage(args: argparse.Namespace) -> int:
    if not os.path.exists(os.path.join(args.path, DATA_FILE)):
        raise CommandError(f"{args.path}: no kvmap database here")
    if args.dry_run:
        report = recover(args.path).report
        print(f"salvage {args.path} (dry run: nothing written)")
        print(report.summary())
        return 0
    dest = args.newpath
    if dest is None:
        args.usage_error("the following arguments are required: NEWPATH (or --dry-run)")
    if os.path.exists(os.path.join(dest, DATA_FILE)):
        raise CommandError(f"{dest}: a database already exists there")
    if os.path.abspath(dest) == os.path.abspath(args.path):
        raise CommandError("NEWPATH must be another directory")
    made_dir = not os.path.exists(dest)
    try:
        report = salvage(args.path, dest)
    except BaseException:
        _remove_new_db(dest, made_dir)
        raise
    print(f"salvaged {args.path} into {dest}")
    print(report.summary())
    return 0


def _readers(args: argparse.Namespace) -> int:
    with _open_ro(args.path) as db:
        own = (os.getpid(), db._lock.slot if db._lock is not None else -1)
        live = [r for r in db.readers(clear_stale=args.clear) if (r.pid, r.slot) != own]
    if args.format == "json":
        print(json.dumps([r._asdict() for r in live]))
    else:
        for r in live:
            print(f"slot {r.slot:4}  pid {r.pid:8}  txnid {r.txnid:8}  seq {r.seq:10}")
        print(f"{len(live)} live reader(s)" + (", stale slots cleared" if args.clear else ""))
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    if not os.path.exists(os.path.join(args.path, DATA_FILE)):
        raise CommandError(f"{args.path}: no kvmap database here")
    files, before = _wal_size(args.path)
    with _open_rw(args) as db:  # a writable open folds what the log holds already
        db.checkpoint()
        seq = db.stats()["checkpoint_seq"]
    _, after = _wal_size(args.path)
    print(
        f"checkpoint: the tree holds every commit up to {seq:,}; "
        f"write-ahead log {before:,} bytes in {files} file(s) -> {after:,} bytes"
    )
    return 0


def _compact(args: argparse.Namespace) -> int:
    if not os.path.exists(os.path.join(args.path, DATA_FILE)):
        raise CommandError(f"{args.path}: no kvmap database here")
    if args.to is not None:
        return _compact_to(args)
    before = _dir_size(args.path)
    with _open_rw(args) as db:
        db.compact()
    after = _dir_size(args.path)
    print(
        f"compacted {args.path}: {_size(before)} -> {_size(after)} (saved {before - after:,} bytes)"
    )
    return 0


def _compact_to(args: argparse.Namespace) -> int:
    dest = args.to
    if os.path.exists(os.path.join(dest, DATA_FILE)):
        raise CommandError(f"{dest}: a database already exists there")
    if os.path.abspath(dest) == os.path.abspath(args.path):
        raise CommandError("--to must name another directory")
    made_dir = not os.path.exists(dest)
    before = _dir_size(args.path)
    try:
        with _open_ro(args.path) as src, src.begin() as snap:
            with kv_open(dest, page_size=src.page_size, sync="normal") as out:
                items = _progress(snap.items(), len(snap), "compact", args.progress)
                batch: list[tuple[bytes, bytes]] = []
                size = 0
                for k, v in items:  # key order: each batch goes straight into the tree
                    batch.append((k, v))
                    size += len(k) + len(v) + 16
                    if size >= 8 << 20:
                        out.put_many(batch, append=True)
                        batch, size = [], 0
                out.put_many(batch, append=True)
                entries = len(out)
    except BaseException:
        _remove_new_db(dest, made_dir)
        raise
    after = _dir_size(dest)
    print(
        f"compacted {args.path} into {dest}: {_size(before)} -> {_size(after)} "
        f"(saved {before - after:,} bytes), {entries:,} entries"
    )
    return 0


# -- looking at pages -------------------------------------------------------------------------
class DataFile:
    """The data file of a database read directly (no WAL, no lock): its page size, newest
    valid meta page and raw pages.  Used by ``pages`` and ``page``."""

    def __init__(self, path: str) -> None:
        data = os.path.join(path, DATA_FILE)
        if not os.path.exists(data):
            raise CommandError(f"{path}: no kvmap database here")
        self.fd = os.open(data, os.O_RDONLY)
        try:
            self.size = os.fstat(self.fd).st_size
            self.meta, self.page_size = self._find_meta(data)
            self.pager = Pager(installed_fs(), self.fd, self.page_size, decode_node, 1 << 20)
        except BaseException:
            os.close(self.fd)
            raise

    def _find_meta(self, data: str) -> tuple[Meta, int]:
        first = peek_page_size(os.pread(self.fd, 4096, 0))
        sizes = [first] if first else []
        sizes += [s for s in (512 << i for i in range(8)) if s != first]
        for ps in sizes:
            try:
                return pick(self.raw(0, ps), self.raw(1, ps))[0], ps
            except CorruptionError:
                continue
        raise CorruptionError(f"{data}: no valid meta page")

    def raw(self, pgno: int, page_size: int | None = None) -> bytes:
        ps = page_size or self.page_size
        return os.pread(self.fd, ps, pgno * ps).ljust(ps, b"\0")

    def status(self, pgno: int) -> str:
        """Whether page ``pgno`` is in use, free or beyond the high-water mark (reads the
        freelist only)."""
        if pgno < 2:
            return "meta page"
        if pgno >= self.meta.hwm:
            return "beyond the high-water mark: unused"
        self.pager.check_covers(self.meta.hwm)
        freelist, _ = read_freelist(self.pager, self.meta)
        if pgno in freelist.free:
            return "free (reusable): its bytes are what a freed page held"
        for txn, group in freelist.pending.items():
            if pgno in group:
                return f"free (pending since txn {txn}): its bytes are what a freed page held"
        return "in use (tree, overflow or freelist)"

    @property
    def npages(self) -> int:
        return self.size // self.page_size

    def close(self) -> None:
        self.pager.close()
        os.close(self.fd)

    def __enter__(self) -> DataFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def walk(self) -> tuple[list[list[Node]], dict[int, tuple[str, int, int]], Freelist]:
        """The tree level by level, what every page in use is ({pgno: (type, items,
        extra pages of its run)}), and the freelist."""
        meta = self.meta
        ps = self.page_size
        self.pager.check_covers(meta.hwm)
        owners: dict[int, tuple[str, int, int]] = {0: ("meta", 0, 0), 1: ("meta", 0, 0)}
        levels: list[list[Node]] = []
        current = [meta.root] if meta.root else []
        while current:
            nodes = [self.pager.node(p) for p in current]
            levels.append(nodes)
            nxt: list[int] = []
            for node in nodes:
                kind = "leaf" if node.kids is None else "branch"
                owners[node.pgno] = (kind, len(node.keys), 0)
                if node.kids is not None:
                    nxt.extend(node.kids)
                    continue
                for v in node.vals:
                    if v.__class__ is Ovf:
                        _, length = run_header(self.pager.page(v.pgno), v.pgno, PAGE_OVERFLOW)
                        owners[v.pgno] = ("overflow", 1, run_pages(length, ps) - 1)
            current = nxt
        freelist, fl_pages = read_freelist(self.pager, meta)
        if meta.freelist:
            owners[meta.freelist] = ("freelist", len(freelist), fl_pages - 1)
        for p in freelist.free:
            owners[p] = ("free", 0, 0)
        for group in freelist.pending.values():
            for p in group:
                owners[p] = ("pending", 0, 0)
        return levels, owners, freelist


def _pages(args: argparse.Namespace) -> int:
    with DataFile(args.path) as f:
        meta = f.meta
        levels, owners, freelist = f.walk()
        counts = dict.fromkeys(["meta", "branch", "leaf", "overflow", "freelist", "free"], 0)
        for kind, _, extra in owners.values():
            counts["free" if kind == "pending" else kind] += 1 + extra
        print(f"{args.path}: tree of txn {meta.txnid}, page size {f.page_size}, depth "
              f"{meta.depth}, {meta.entries:,} entries, file {f.size:,} bytes")  # fmt: skip
        if args.list:
            print(f"{'ID':>10} {'TYPE':<10} {'ITEMS':>6} {'OVRFLW':>6}")
            for pgno in sorted(owners):
                kind, items, extra = owners[pgno]
                print(f"{pgno:>10} {kind:<10} {items:>6} {extra:>6}")
            return 0
        print("\npages by type")
        for kind, n in counts.items():
            print(f"  {kind:<10} {n:>10,}")
        total = sum(counts.values())
        print(f"  {'total':<10} {total:>10,}  (the high-water mark is {meta.hwm:,})")
        print(f"  {'unused':<10} {f.npages - meta.hwm:>10,}  (file beyond the high-water mark)")
        if freelist.pending:
            pending = sum(map(len, freelist.pending.values()))
            print(f"  ({pending:,} of the free pages are pending: freed, not yet reusable)")
        print("\ntree by level")
        print(f"  {'level':>5}  {'type':<6} {'pages':>9} {'cells':>11} {'cells/page':>10} "
              f"{'fill':>6} {'overflow':>9}")  # fmt: skip
        for depth, nodes in enumerate(levels, 1):
            cells = sum(len(n.keys) for n in nodes)
            fill = sum(n.size() for n in nodes) / (len(nodes) * f.page_size)
            ovf = sum(owners[v.pgno][2] + 1 for n in nodes if n.vals for v in n.vals
                      if v.__class__ is Ovf)  # fmt: skip
            kind = "leaf" if nodes[0].kids is None else "branch"
            print(f"  {depth:>5}  {kind:<6} {len(nodes):>9,} {cells:>11,} "
                  f"{cells / len(nodes):>10.1f} {fill:>6.0%} {ovf:>9,}")  # fmt: skip
        if not levels:
            print("  (empty tree)")
    return 0


def _page(args: argparse.Namespace) -> int:
    with DataFile(args.path) as f:
        n = args.pgno
        if n >= f.npages:
            raise CommandError(f"page {n} is beyond the end of the file ({f.npages} pages)")
        buf = f.raw(n)
        ps = f.page_size
        limit = args.width

        def short(data: bytes) -> str:
            head, tail = _shorten(data, limit)
            return dump_quote(head) + tail

        crc, ptype, flags, count, pgno, txn = PAGE_HEADER.unpack_from(buf, 0)
        name = PAGE_TYPE_NAMES.get(ptype, f"unknown ({ptype})")
        print(f"page {n} of {args.path} (page size {ps}, tree of txn {f.meta.txnid}, "
              f"high-water mark {f.meta.hwm})")  # fmt: skip
        print(f"  {'status':<9} {f.status(n)}")
        if not any(buf):
            print("  all zeros: an unused page")
            return 0
        print(f"  {'type':<9} {name}\n  {'flags':<9} {flags}\n  {'count':<9} {count}")
        print(f"  {'pgno':<9} {pgno}\n  {'txn':<9} {txn}\n  {'checksum':<9} 0x{crc:08x}")
        if args.hex:
            for off in range(0, ps, 16):
                row = buf[off : off + 16]
                text = "".join(chr(c) if 0x20 <= c < 0x7F else "." for c in row)
                print(f"  {off:06x}  {row.hex(' '):<47}  {text}")
        try:
            if ptype == PAGE_META:
                meta = decode_meta(buf, n)
                print("  meta page: valid" + (" (the newest)" if meta == f.meta else ""))
                for field, value in meta._asdict().items():
                    print(f"    {field:<10} {value}")
            elif ptype in (PAGE_LEAF, PAGE_BRANCH):
                node = decode_node(buf, n)
                print(f"  cells ({len(node.keys)}):")
                if node.kids is not None:
                    for i, (key, kid) in enumerate(zip(node.keys, node.kids)):
                        sep = "(from the parent)" if i == 0 else short(key)
                        print(f"    {i:>5}  child {kid:<8} key >= {sep}")
                else:
                    for i, (key, v) in enumerate(zip(node.keys, node.vals or [])):
                        if v.__class__ is Ovf:
                            _, length = run_header(f.raw(v.pgno), v.pgno, PAGE_OVERFLOW)
                            val = f"<overflow run at page {v.pgno}: {length:,} bytes>"
                        else:
                            val = short(v)
                        print(f"    {i:>5}  {short(key)}  {val}")
            elif ptype in (PAGE_OVERFLOW, PAGE_FREELIST):
                (length,) = RUN_LENGTH.unpack_from(buf, PAGE_HEADER.size)
                npages = run_pages(length, ps)
                print(f"  run of {npages} page(s) holding {length:,} bytes")
                if n + npages > f.npages:
                    raise CorruptionError(f"page {n}: the run runs past the end of the file")
                run = os.pread(f.fd, npages * ps, n * ps)
                payload = run_payload(run, n, length)
                print("  checksum ok (the whole run)")
                if ptype == PAGE_OVERFLOW:
                    print(f"  value: {short(payload)}")
                else:
                    fl = Freelist.decode(payload, f.meta.hwm)
                    print(f"  reusable pages ({len(fl.free)}): {sorted(fl.free)}")
                    for t, group in sorted(fl.pending.items()):
                        print(f"  pending, freed by txn {t} ({len(group)}): {sorted(group)}")
            else:
                raise CorruptionError(
                    f"page {n}: no page header here (a page inside an overflow run, or "
                    f"bytes left on a free page?)"
                )
        except CorruptionError as exc:
            raise CommandError(f"cannot decode: {exc}") from exc
    return 0


# -- bench ----------------------------------------------------------------------------------
def find_bench() -> str | None:
    """The directory holding kvmap's ``bench`` package (on ``sys.path`` or in the current
    directory), or None."""
    for entry in [*sys.path, os.getcwd()]:
        spec = importlib.machinery.PathFinder.find_spec("bench", [entry or os.getcwd()])
        if spec is None or not spec.submodule_search_locations:
            continue
        pkg = list(spec.submodule_search_locations)[0]
        if all(os.path.exists(os.path.join(pkg, m)) for m in ("__main__.py", "runner.py")):
            return os.path.dirname(os.path.abspath(pkg))
    return None


def _bench(args: argparse.Namespace) -> int:
    where = find_bench()
    if where is None:
        raise CommandError(
            "the benchmark suite is not importable: run kvmap bench from a kvmap source "
            "checkout (it is the bench/ package there, with its extra: pip install -e '.[bench]')"
        )
    rest = list(args.args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [where, here, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "bench", *rest], env=env).returncode


# -- the parser -----------------------------------------------------------------------------
def _pgno(arg: str) -> int:
    try:
        n = int(arg, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a page number: {arg!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a page number is >= 0, not {n}")
    return n


def _count(arg: str) -> int:
    try:
        n = int(arg)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {arg!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {n}")
    return n


def _page_size(arg: str) -> int:
    try:
        n = int(arg)
    except ValueError:
        n = 0
    if not valid_page_size(n):
        raise argparse.ArgumentTypeError(
            f"a page size is a power of two in [{MIN_PAGE_SIZE}, {MAX_PAGE_SIZE}], not {arg!r}"
        )
    return n


ARGUMENTS = """\
KEY and VALUE are UTF-8 text, or bytes written hex:00ff, b64:AP8= or text:... (the rest
literally).  Keys and values are printed the same way: text when printable, else hex:..."""


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``kvmap`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="kvmap",
        description="Inspect and maintain kvmap databases.  kvmap COMMAND --help for more.",
        epilog=ARGUMENTS + "\n\nExit status: 0 ok, 1 error, 2 bad usage.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"kvmap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], summary: str, examples: str,
        path: bool = True, description: str = "",
    ) -> argparse.ArgumentParser:  # fmt: skip
        paragraphs = (description or summary).split("\n\n")
        text = "\n\n".join(textwrap.fill(p, 88) if "\n" not in p else p for p in paragraphs)
        p = sub.add_parser(
            name, help=summary, description=text, parents=[common],
            epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        if path:
            p.add_argument("path", metavar="DBPATH", help="the database (a directory)")
        p.set_defaults(func=func)
        return p

    def writer(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--lock-timeout", type=float, default=0.0, metavar="SECONDS",
            help="wait this long for another writer to finish (default: fail at once)",
        )  # fmt: skip

    def progress(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--progress", action=argparse.BooleanOptionalAction, default=None,
            help=f"show a progress bar (tqdm; default: on a terminal, for {PROGRESS_MIN:,} "
            "items or more)",
        )  # fmt: skip

    p = command(
        "readers", _readers, "list the handles holding reader slots; --clear stale ones",
        "  kvmap readers data/db\n  kvmap readers data/db --clear",
    )  # fmt: skip
    p.add_argument("--clear", action="store_true",
                   help="zero the slots of processes that died")  # fmt: skip
    p.add_argument("--format", choices=["json", "text"], default="text",
                   help="text (default) or JSON")  # fmt: skip

    p = command(
        "stat", _stat, "print entries, depth, pages by type, file and WAL sizes, free pages",
        "  kvmap stat data/db\n  kvmap stat data/db --format text",
    )  # fmt: skip
    p.add_argument("--format", choices=["json", "text"], default="json",
                   help="JSON (default) or aligned text")  # fmt: skip

    p = command(
        "get", _get, "print the value stored under KEY",
        "  kvmap get data/db user:1\n  kvmap get data/db hex:00ff --raw > value.bin",
        description="Print the value stored under KEY (exit status 1 if there is none).\n\n"
        + ARGUMENTS,
    )  # fmt: skip
    p.add_argument("key", type=parse_bytes, metavar="KEY")
    p.add_argument("--raw", action="store_true",
                   help="write the value's bytes exactly, with no newline")  # fmt: skip

    p = command(
        "put", _put, "store VALUE under KEY (one durable commit)",
        "  kvmap put data/db user:1 alice\n  kvmap put data/db hex:00ff b64:AAEC\n"
        "  kvmap put --create new/db greeting 'hello world'",
        description="Store VALUE under KEY, replacing any value, in one durable commit.\n\n"
        + ARGUMENTS,
    )  # fmt: skip
    p.add_argument("key", type=parse_bytes, metavar="KEY")
    p.add_argument("value", type=parse_bytes, metavar="VALUE")
    p.add_argument("--create", action="store_true", help="create the database if missing")
    writer(p)

    p = command(
        "delete", _delete, "remove KEY (one durable commit)",
        "  kvmap delete data/db user:1\n  kvmap delete data/db hex:00ff --force",
        description="Remove KEY in one durable commit (exit status 1 if it is missing, "
        "unless --force).\n\n" + ARGUMENTS,
    )  # fmt: skip
    p.add_argument("key", type=parse_bytes, metavar="KEY")
    p.add_argument("-f", "--force", action="store_true", help="a missing key is not an error")
    writer(p)

    p = command(
        "scan", _scan, "print items in key order (KEY<tab>VALUE, or JSON Lines)",
        "  kvmap scan data/db --prefix user: --limit 10\n"
        "  kvmap scan data/db --start a --stop b --reverse\n"
        "  kvmap scan data/db --format json | jq .key",
        description="Print the items with START <= key < STOP (and PREFIX), in key order "
        "(descending with --reverse), one per line: KEY<tab>VALUE, each printed as text when "
        "printable UTF-8, otherwise hex:...; or --format json: JSON Lines "
        '{"key": ..., "value": ...}, with "key_b64"/"value_b64" (base64) for bytes that are '
        "not UTF-8.\n\n" + ARGUMENTS,
    )  # fmt: skip
    p.add_argument("--start", type=parse_bytes, metavar="KEY", help="first key (inclusive)")
    p.add_argument("--stop", type=parse_bytes, metavar="KEY", help="end key (exclusive)")
    p.add_argument("--prefix", type=parse_bytes, metavar="KEY", help="only keys starting so")
    p.add_argument("--reverse", action="store_true", help="descending key order")
    p.add_argument("--limit", type=_count, metavar="N", help="print at most N items")
    p.add_argument("--keys-only", action="store_true", help="print keys only")
    p.add_argument("--format", choices=["text", "json"], default="text")

    dump_doc = (__doc__ or "").partition("(version 1)\n---------------------------\n")[2]
    dump_doc = dump_doc.partition("\nProgress bars")[0].replace("``", "").replace("::", ":")
    p = command(
        "dump", _dump, "write every item in the portable dump format",
        "  kvmap dump data/db > backup.kvdump\n  kvmap dump data/db -o backup.kvdump\n"
        "  kvmap dump old/db | kvmap load new/db",
        description="Write every item of one snapshot, in key order, in the portable text "
        "dump format that kvmap load reads (byte-exact, binary keys and values included).\n\n"
        "The dump format (version 1):\n" + dump_doc,
    )  # fmt: skip
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write here (atomically, via FILE.tmp) instead of stdout")  # fmt: skip
    progress(p)

    p = command(
        "load", _load, "read a dump into a database, in one transaction",
        "  kvmap load new/db -i backup.kvdump\n  kvmap load new/db < backup.kvdump",
        description="Read a dump (kvmap dump --help describes the format) into DBPATH, "
        "creating it if missing, in one write transaction: everything or nothing.  Items "
        "replace existing values of the same keys.",
    )  # fmt: skip
    p.add_argument("-i", "--input", metavar="FILE", help="read this file instead of stdin")
    p.add_argument(
        "--page-size", type=_page_size, metavar="BYTES",
        help="page size of a database created (default: the dump's, else 4096)",
    )  # fmt: skip
    writer(p)
    progress(p)

    command(
        "check", _check, "verify every page of the database",
        "  kvmap check data/db",
        description="Verify the tree (checksums, key order, page accounting, entry count); "
        "prints ok and the page counts, or exits 1 with the first problem found.",
    )  # fmt: skip

    p = command(
        "salvage", _salvage, "copy every readable record of a damaged database into a new one",
        "  kvmap salvage data/db data/db-salvaged\n  kvmap salvage data/db --dry-run",
        description="For a database that check reports damaged: read its files directly "
        "(holding the writer lock; the damaged database is never written) and copy every "
        "record that verifies into a new database at NEWPATH, then print where the records "
        "came from and which pages are damaged.  Records come from the tree of the newest "
        "valid meta page, skipping damaged subtrees; inside the key ranges those covered, "
        "from the other meta page's tree and any leaf page whose checksum verifies (such "
        "records may be stale: an older value, or a key deleted since); then the valid "
        "frames of the write-ahead log are replayed on top.  Exit status 0 once NEWPATH is "
        "written, even if damage was found (see the report).",
    )  # fmt: skip
    p.add_argument("newpath", nargs="?", metavar="NEWPATH",
                   help="the new database (a directory without a database in it)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="only read DBPATH and print the report; write nothing")  # fmt: skip
    p.set_defaults(usage_error=p.error)  # exit status 2, with the usage

    p = command(
        "checkpoint", _checkpoint, "fold the write-ahead log into the tree",
        "  kvmap checkpoint data/db",
    )  # fmt: skip
    writer(p)

    p = command(
        "compact", _compact, "rewrite the database densely, printing the space saved",
        "  kvmap compact data/db\n  kvmap compact data/db --to data/db-compact",
        description="Rewrite the live tree into a dense file (in place, holding the writer "
        "lock), or with --to copy it into a new database filled in key order; prints the "
        "sizes before and after.",
    )  # fmt: skip
    p.add_argument("--to", metavar="NEWPATH", help="write a compacted copy here instead")
    writer(p)
    progress(p)

    p = command(
        "pages", _pages, "page counts by type and the tree's shape per level",
        "  kvmap pages data/db\n  kvmap pages data/db --list",
        description="Read the data file directly (the tree of the newest meta page; commits "
        "still in the write-ahead log are not in it: kvmap checkpoint first) and print page "
        "counts by type and, per tree level, pages, cells and fill.",
    )  # fmt: skip
    p.add_argument(
        "--list", action="store_true",
        help="list every page in use: ID, TYPE, ITEMS, OVRFLW (like bbolt pages)",
    )  # fmt: skip

    p = command(
        "page", _page, "decode one page: header and cells",
        "  kvmap page data/db 0\n  kvmap page data/db 5 --hex",
    )  # fmt: skip
    p.add_argument("pgno", type=_pgno, metavar="N", help="the page number")
    p.add_argument("--hex", action="store_true", help="also print the page's bytes")
    p.add_argument(
        "--width", type=_count, default=64, metavar="BYTES",
        help="shorten keys and values to this many bytes (0: never; default 64)",
    )  # fmt: skip

    p = command(
        "bench", _bench, "run the benchmark suite (python -m bench)",
        "  kvmap bench -- --quick\n  kvmap bench -- --help",
        path=False,
        description="Run python -m bench with the arguments that follow (put -- first so "
        "they are not read as kvmap's).  Needs the bench package of a source checkout.",
    )  # fmt: skip
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")

    p = command(
        "demo", _demo, "create a database, write, read, scan, print what it did",
        "  kvmap demo\n  kvmap demo /tmp/demo-db -n 1000000", path=False,
    )  # fmt: skip
    p.add_argument("path", nargs="?", help="database directory (default: a temporary one)")
    p.add_argument("-n", type=int, default=100_000, help="number of keys (default 100000)")
    return parser


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, Error):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror}"
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (Error, OSError, CommandError) as exc:
        if args.debug:
            raise
        if isinstance(exc, BrokenPipeError):  # the reader went away (| head): stop quietly
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return 1
        print(f"kvmap: error: {_describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("kvmap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
