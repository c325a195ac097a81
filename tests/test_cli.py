"""kvmap.cli: every subcommand, as a user runs it (in a subprocess) and through ``main()``."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kvmap
from kvmap import cli
from kvmap.cli import DumpReader, dump_items, dump_quote, main, parse_bytes, show
from kvmap.wal import FIRST_ALLOCATION

ROOT = Path(__file__).resolve().parent.parent


def kvmap_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "kvmap", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, subprocess.CompletedProcess[str]]:
    path = str(tmp_path_factory.mktemp("cli") / "db")
    return path, kvmap_cli("demo", "-n", "2000", path)


def test_demo(demo: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    path, out = demo
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    text = out.stdout
    assert path in text
    assert "wrote 2000 keys" in text
    assert "read them back" in text
    assert "full ordered scan of 2000 items" in text
    assert "still sees it: True, the database does not: False" in text
    assert "1999 entries" in text
    assert "check(): ok" in text
    assert "Traceback" not in text
    with kvmap.open(path, readonly=True) as db:
        assert len(db) == 1999
        db.check()
        keys = list(db.keys(prefix=b"user:"))
        assert len(keys) == 1999
        assert db[keys[0]] == b"profile-of-" + keys[0]


def test_demo_default_path_is_temporary() -> None:
    out = kvmap_cli("demo", "-n", "50")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("kvmap demo: database at ")
    path = first.removeprefix("kvmap demo: database at ")
    assert os.path.isdir(path)
    try:
        with kvmap.open(path, readonly=True) as db:
            assert len(db) == 49
    finally:
        shutil.rmtree(os.path.dirname(path))  # the demo's temporary directory


def test_stat(demo: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    path, made = demo
    assert made.returncode == 0
    out = kvmap_cli("stat", path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    stats = json.loads(out.stdout)
    assert stats["entries"] == 1999
    assert stats["depth"] >= 1
    assert stats["page_size"] == 4096
    assert stats["file_size"] == os.path.getsize(os.path.join(path, "kvmap.data"))
    assert stats["pages"]["leaf"] >= 1
    assert "free_pages" in stats


def test_check(demo: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    path, made = demo
    assert made.returncode == 0
    out = kvmap_cli("check", path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.startswith("ok: ")
    counts = json.loads(out.stdout.removeprefix("ok: "))
    assert counts["leaf"] >= 1 and counts["meta"] == 2


def test_stat_and_check_leave_a_database_unchanged(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with kvmap.open(path, page_size=512) as db:
        db.put_many((b"%d" % i, b"v") for i in range(300))
    before = (Path(path) / "kvmap.data").read_bytes()
    for cmd in ("stat", "check"):
        out = kvmap_cli(cmd, path)
        assert out.returncode == 0, out.stderr
    assert (Path(path) / "kvmap.data").read_bytes() == before


@pytest.mark.parametrize("cmd", ["stat", "check"])
def test_missing_database_exits_1_with_one_line(tmp_path: Path, cmd: str) -> None:
    path = str(tmp_path / "nothing-here")
    out = kvmap_cli(cmd, path)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("kvmap: error:")
    assert "nothing-here" in lines[0]
    assert "Traceback" not in out.stderr
    assert not os.path.exists(path)  # stat/check never create a database


def test_corrupt_database_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.mkdir()
    (path / "kvmap.data").write_bytes(b"\x00" * 8192)
    out = kvmap_cli("check", str(path))
    assert out.returncode == 1
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["stat"],
        ["check"],
        ["demo", "-n", "many"],
        ["stat", "a", "b"],
        ["--no-such-flag", "check", "x"],
    ],
)
def test_bad_usage_exits_2(args: list[str]) -> None:
    out = kvmap_cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "usage:" in out.stderr
    assert "Traceback" not in out.stderr


def test_help_exits_0() -> None:
    out = kvmap_cli("--help")
    assert out.returncode == 0
    for cmd in ("demo", "stat", "check"):
        assert cmd in out.stdout


def test_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "db")
    assert main(["demo", "-n", "100", path]) == 0
    assert main(["check", path]) == 0
    assert capsys.readouterr().out.count("ok") >= 2
    assert main(["stat", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kvmap: error:" in err


# == the full CLI (issue 7) ======================================================================

BINARY = {
    b"": b"the empty key",
    b"empty value": b"",
    b"\x00\xff\x80": b"\x00" * 10,
    b"text:hex:tricky": b"hex:00",
    b"tab\tnewline\n": b'quote " backslash \\ end',
    "caf\u00e9".encode(): "\u20ac".encode(),
    b"\xc3": b"\xff" * 3000,  # invalid UTF-8; an overflow value
    b"user:1": b'{"name": "alice"}',
}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """main() in process: (status, stdout, stderr)."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def bindb(tmp_path: Path) -> str:
    path = str(tmp_path / "bin")
    with kvmap.open(path) as db:
        db.put_many(BINARY.items())
    return path


@pytest.fixture
def bigdb(tmp_path: Path) -> str:
    """A database with a tree of depth >= 2, overflow values and free pages."""
    path = str(tmp_path / "big")
    with kvmap.open(path, page_size=512) as db:
        db.put_many(((b"k%05d" % i, b"v" * (i % 50)) for i in range(2000)), append=True)
        db.put(b"overflow", b"o" * 3000)
        db.checkpoint()  # the tree holds every key: deleting half of them frees pages
        with db.begin(write=True) as txn:
            for i in range(0, 2000, 2):
                txn.delete(b"k%05d" % i)
    with kvmap.open(path, readonly=True) as db:
        assert db.stats()["free_pages"] > 0
    return path


# -- arguments and printing ----------------------------------------------------------------------
def test_parse_bytes_forms() -> None:
    assert parse_bytes("plain text") == b"plain text"
    assert parse_bytes("caf\u00e9") == "caf\u00e9".encode()
    assert parse_bytes("hex:00ff10") == b"\x00\xff\x10"
    assert parse_bytes("hex:") == b""
    assert parse_bytes("b64:" + base64.b64encode(b"\x00\x01").decode()) == b"\x00\x01"
    assert parse_bytes("text:hex:00") == b"hex:00"
    assert parse_bytes("text:") == b""
    assert parse_bytes("") == b""
    assert parse_bytes("\udcff") == b"\xff"  # an undecodable argv byte
    for bad in ("hex:zz", "hex:0", "b64:!!", "b64:AAE"):
        with pytest.raises(Exception, match="invalid"):
            parse_bytes(bad)


def test_show_round_trips_through_parse_bytes() -> None:
    rng = random.Random(7)
    samples = [*BINARY, *BINARY.values(), b"hex:", b"b64:x", b"text:", b" lead", b"\x7f"]
    samples += [rng.randbytes(rng.randrange(12)) for _ in range(500)]
    samples += [bytes(rng.choice(b"ab:hexb64t\xc3\xa9") for _ in range(8)) for _ in range(500)]
    for data in samples:
        text = show(data)
        assert "\n" not in text and "\t" not in text
        assert parse_bytes(text) == data, (data, text)
        assert parse_bytes(show(data, ascii_only=True)) == data
        assert show(data, ascii_only=True).isascii()
    assert show(b"user:1") == "user:1"
    assert show(b"\x00") == "hex:00"
    assert show(b"hex:1") == "text:hex:1"


# -- get, put, delete ----------------------------------------------------------------------------
def test_put_get_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "db")
    assert run(capsys, "put", path, "k", "v")[0] == 1  # no database, no --create
    assert not os.path.exists(path)
    assert run(capsys, "put", "--create", path, "k", "v") == (0, "", "")
    assert run(capsys, "put", path, "hex:00ff", "b64:AAEC") == (0, "", "")
    assert run(capsys, "put", path, "text:hex:00", "") == (0, "", "")
    assert run(capsys, "get", path, "k") == (0, "v\n", "")
    assert run(capsys, "get", path, "hex:00ff") == (0, "hex:000102\n", "")
    assert run(capsys, "get", path, "text:hex:00") == (0, "\n", "")
    with kvmap.open(path, readonly=True) as db:
        assert dict(db.items()) == {b"k": b"v", b"\x00\xff": b"\x00\x01\x02", b"hex:00": b""}
    status, out, err = run(capsys, "get", path, "hex:0000")
    assert (status, out) == (1, "")
    assert err == "kvmap: error: key not found: hex:0000\n"
    assert run(capsys, "delete", path, "hex:00ff") == (0, "", "")
    status, out, err = run(capsys, "delete", path, "hex:00ff")
    assert status == 1 and err == "kvmap: error: key not found: hex:00ff\n"
    assert run(capsys, "delete", path, "hex:00ff", "--force") == (0, "", "")
    with kvmap.open(path, readonly=True) as db:
        assert sorted(db.keys()) == [b"hex:00", b"k"]
        db.check()


def test_get_raw(bindb: str, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["get", bindb, "--raw", "hex:c3"]) == 0
    assert capsysbinary.readouterr().out == b"\xff" * 3000


def test_write_commands_on_a_locked_database(
    bindb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with kvmap.open(bindb):
        for args in (["put", bindb, "a", "b"], ["delete", bindb, "user:1"],
                     ["checkpoint", bindb], ["compact", bindb]):  # fmt: skip
            status, out, err = run(capsys, *args)
            assert status == 1, args
            assert "another handle has it open for writing" in err
            assert err.count("\n") == 1
        assert run(capsys, "get", bindb, "user:1")[0] == 0  # readers never wait


# -- scan ------------------------------------------------------------------------------------------
def test_scan_text(bindb: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "scan", bindb)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(BINARY)
    pairs = [tuple(line.split("\t")) for line in lines]
    assert all(len(p) == 2 for p in pairs)
    assert [(parse_bytes(k), parse_bytes(v)) for k, v in pairs] == sorted(BINARY.items())
    assert lines[0] == "\tthe empty key"
    assert "text:text:hex:tricky\ttext:hex:00" in lines  # text that looks like a prefix
    assert "user:1\t" + '{"name": "alice"}' in lines


def test_scan_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "db")
    with kvmap.open(path) as db:
        db.put_many((b"%s:%d" % (p, i), b"%d" % i) for p in (b"a", b"b", b"c") for i in range(5))

    def keys(*opts: str) -> list[str]:
        status, out, err = run(capsys, "scan", path, "--keys-only", *opts)
        assert status == 0, err
        return out.splitlines()

    assert keys("--prefix", "b:") == [f"b:{i}" for i in range(5)]
    assert keys("--prefix", "b:", "--reverse", "--limit", "2") == ["b:4", "b:3"]
    assert keys("--start", "a:3", "--stop", "b:1") == ["a:3", "a:4", "b:0"]
    assert keys("--start", "a:3", "--stop", "b:1", "--reverse") == ["b:0", "a:4", "a:3"]
    assert keys("--start", "hex:633a34") == ["c:4"]
    assert keys("--limit", "0") == []
    assert keys("--prefix", "zzz") == []
    status, out, _ = run(capsys, "scan", path, "--prefix", "c:", "--limit", "1")
    assert out == "c:0\t0\n"


def test_scan_json(bindb: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "scan", bindb, "--format", "json")
    assert status == 0 and err == ""
    got = {}
    for line in out.splitlines():
        obj = json.loads(line)
        key = obj["key"].encode() if "key" in obj else base64.b64decode(obj["key_b64"])
        value = obj["value"].encode() if "value" in obj else base64.b64decode(obj["value_b64"])
        assert len(obj) == 2
        got[key] = value
    assert got == BINARY
    assert json.loads(out.splitlines()[0]) == {"key": "", "value": "the empty key"}
    status, out, _ = run(capsys, "scan", bindb, "--format", "json", "--keys-only", "--limit", "2")
    assert [json.loads(x) for x in out.splitlines()] == [{"key": ""}, {"key_b64": "AP+A"}]


# -- dump and load -------------------------------------------------------------------------------
def test_dump_quote_every_byte() -> None:
    every = bytes(range(256))
    line = dump_quote(every)
    assert line.isascii() and line.isprintable()
    assert line.startswith('"\\x00') and '\\"' in line and "\\\\" in line
    assert dump_quote(b"") == '""'
    assert dump_quote(b"plain text") == '"plain text"'
    reader = DumpReader(io.BytesIO(f"kvmap-dump 1\n{line} {line}\nend 1\n".encode()), "x")
    assert list(reader) == [(every, every)]


def dump_text(items: dict[bytes, bytes]) -> bytes:
    out = io.BytesIO()
    dump_items(sorted(items.items()), out, {"entries": len(items)})
    return out.getvalue()


def test_dump_format_as_documented() -> None:
    """The example in the module docstring (and docs/cli.md) is what dump writes."""
    items = {b"": b"the empty key", b"user:1": b'{"name": "alice"}',
             b"\x00\xff": "caf\u00e9".encode()}  # fmt: skip
    out = io.BytesIO()
    dump_items(sorted(items.items()), out, {"entries": 3, "page_size": 4096})
    text = out.getvalue().decode()
    assert text == (
        "kvmap-dump 1 entries=3 page_size=4096\n"
        '"" "the empty key"\n'
        '"\\x00\\xff" "caf\\xc3\\xa9"\n'
        '"user:1" "{\\"name\\": \\"alice\\"}"\n'
        "end 3\n"
    )
    documented = "".join("    " + line + "\n" for line in text.splitlines())
    assert documented in (cli.__doc__ or "")
    assert text in (ROOT / "docs" / "cli.md").read_text()


def test_dump_reader_round_trip_random() -> None:
    rng = random.Random(3)
    items = {
        rng.randbytes(rng.randrange(30)): rng.randbytes(rng.randrange(100)) for _ in range(500)
    }
    assert dict(DumpReader(io.BytesIO(dump_text(items)), "x")) == items


def test_dump_reader_tolerates_comments_blank_lines_and_crlf() -> None:
    text = b'kvmap-dump 1 future=field\r\n# a comment\r\n\r\n"a" "1"\r\n"b" "\\X"\r\nend 2\r\n\n'
    text = text.replace(b"\\X", b"\\x41")
    reader = DumpReader(io.BytesIO(text), "x")
    assert reader.fields == {"future": "field"}
    assert list(reader) == [(b"a", b"1"), (b"b", b"A")]


@pytest.mark.parametrize(
    "text, message",
    [
        (b"", "not a kvmap dump"),
        (b"hello\n", "not a kvmap dump"),
        (b"kvmap-dump 2\nend 0\n", "version 2"),
        (b'kvmap-dump 1\n"a" "1"\n', "no end line"),
        (b'kvmap-dump 1\n"a" "1"\nend 2\n', "line 3: the end line counts 2 items"),
        (b'kvmap-dump 1\nend 0\n"a" "1"\n', "line 3: text after the end line"),
        (b'kvmap-dump 1\n"a" "\\q"\nend 1\n', "line 2: not an item"),
        (b'kvmap-dump 1\n"a" "b\nend 1\n', "line 2: not an item"),
        (b'kvmap-dump 1\n"a"  "b"\nend 1\n', "line 2: not an item"),
        (b'kvmap-dump 1\n"a" "\\x4"\nend 1\n', "line 2: not an item"),
        (b'kvmap-dump 1\n"a" "tab\there"\nend 1\n', "line 2: not an item"),
        (b'kvmap-dump 1\n"\xc3\xa9" "b"\nend 1\n', "line 2: not ASCII"),
    ],
)
def test_dump_reader_refuses(text: bytes, message: str) -> None:
    with pytest.raises(cli.CommandError, match=message):
        list(DumpReader(io.BytesIO(text), "in.kvdump"))


def test_dump_load_round_trip_is_byte_exact(
    bigdb: str, bindb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for src in (bindb, bigdb):
        out = str(tmp_path / "dump.kvdump")
        status, stdout, err = run(capsys, "dump", src, "-o", out)
        assert status == 0 and err == ""
        with kvmap.open(src, readonly=True) as db:
            expected = list(db.items())
        assert stdout == f"dumped {len(expected):,} items to {out}\n"
        dest = str(tmp_path / ("copy-" + os.path.basename(src)))
        status, stdout, err = run(capsys, "load", dest, "-i", out)
        assert status == 0 and err == ""
        assert stdout.startswith(f"loaded {len(expected):,} items into a new database")
        with kvmap.open(dest, readonly=True) as db:
            assert list(db.items()) == expected
            assert db.page_size == (512 if src == bigdb else 4096)  # from the header
            db.check()
        # dumping the copy gives the same bytes
        again = str(tmp_path / "again.kvdump")
        assert run(capsys, "dump", dest, "-o", again)[0] == 0
        assert Path(again).read_bytes() == Path(out).read_bytes()
        assert not os.path.exists(out + ".tmp")


def test_dump_to_stdout_and_load_from_stdin(
    bindb: str, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert main(["dump", bindb]) == 0
    text = capsysbinary.readouterr().out
    assert text.startswith(b"kvmap-dump 1 entries=8 page_size=4096\n")
    assert text.endswith(b"\nend 8\n")
    assert dict(DumpReader(io.BytesIO(text), "-")) == BINARY
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text)))
    dest = str(tmp_path / "from-stdin")
    assert main(["load", dest]) == 0
    with kvmap.open(dest, readonly=True) as db:
        assert dict(db.items()) == BINARY


def test_load_merges_and_accepts_any_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "db")
    with kvmap.open(path) as db:
        db.put_many([(b"a", b"old"), (b"keep", b"kept")])
    dump = tmp_path / "hand.kvdump"
    dump.write_bytes(b'kvmap-dump 1\n"z" "26"\n"a" "new"\n"m" "13"\n"z" "last wins"\nend 4\n')
    status, out, err = run(capsys, "load", path, "-i", str(dump))
    assert status == 0, err
    assert out == f"loaded 4 items into the database {path} (4 entries)\n"
    with kvmap.open(path, readonly=True) as db:
        assert dict(db.items()) == {b"a": b"new", b"keep": b"kept", b"m": b"13", b"z": b"last wins"}
    # into an empty database, out of order after an ordered start
    fresh = str(tmp_path / "fresh")
    assert run(capsys, "load", fresh, "-i", str(dump))[0] == 0
    with kvmap.open(fresh, readonly=True) as db:
        assert dict(db.items()) == {b"a": b"new", b"m": b"13", b"z": b"last wins"}
        db.check()


def test_a_failed_load_changes_nothing(
    bindb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.kvdump"
    bad.write_bytes(b'kvmap-dump 1\n"new" "1"\n"newer" "2"\n')  # truncated: no end line
    status, out, err = run(capsys, "load", bindb, "-i", str(bad))
    assert status == 1 and out == ""
    assert err == f"kvmap: error: {bad}: the dump has no end line (truncated?)\n"
    with kvmap.open(bindb, readonly=True) as db:
        assert dict(db.items()) == BINARY  # one transaction: nothing was loaded
    for fresh in (tmp_path / "new-dir", tmp_path / "existing-dir"):
        if fresh.name.startswith("existing"):
            fresh.mkdir()
        assert run(capsys, "load", str(fresh), "-i", str(bad))[0] == 1
        assert not fresh.exists() or list(fresh.iterdir()) == []  # no empty database left


def test_load_page_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "d.kvdump"
    dump.write_bytes(b'kvmap-dump 1\n"a" "1"\nend 1\n')
    assert run(capsys, "load", str(tmp_path / "a"), "-i", str(dump))[0] == 0
    assert run(capsys, "load", str(tmp_path / "b"), "-i", str(dump), "--page-size", "1024")[0] == 0
    with (
        kvmap.open(tmp_path / "a", readonly=True) as a,
        kvmap.open(tmp_path / "b", readonly=True) as b,
    ):
        assert (a.page_size, b.page_size) == (4096, 1024)
    dump.write_bytes(b'kvmap-dump 1 page_size=1000\n"a" "1"\nend 1\n')
    status, _, err = run(capsys, "load", str(tmp_path / "c"), "-i", str(dump))
    assert status == 1 and "page_size=1000 is not a valid page size" in err


def test_progress_bars(bigdb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    pytest.importorskip("tqdm")
    out = str(tmp_path / "d.kvdump")
    status, _, err = run(capsys, "dump", bigdb, "-o", out, "--progress")
    assert status == 0 and "dump" in err and "1001/1001" in err
    status, _, err = run(capsys, "load", str(tmp_path / "l"), "-i", out, "--progress")
    assert status == 0 and "1001/1001" in err
    status, _, err = run(capsys, "compact", bigdb, "--to", str(tmp_path / "c"), "--progress")
    assert status == 0 and "1001/1001" in err
    assert run(capsys, "dump", bigdb, "-o", out, "--no-progress")[2] == ""
    assert run(capsys, "dump", bigdb, "-o", out)[2] == ""  # not a terminal, small

    def no_tqdm(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(cli.importlib, "import_module", no_tqdm)
    status, _, err = run(capsys, "dump", bigdb, "-o", out, "--progress")
    assert status == 0 and err == ""  # without tqdm: silently no bar


# -- maintenance -------------------------------------------------------------------------------
def test_checkpoint_folds_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "db")
    code = (
        "import os, kvmap\n"
        f"db = kvmap.open({path!r}, sync='normal')\n"
        "for i in range(300):\n"
        "    db.put(b'%d' % i, b'v' * 100)\n"
        "os._exit(0)\n"  # no close: the commits are only in the log
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    wal_before = sum(p.stat().st_size for p in Path(path).glob("kvmap.wal.*"))
    assert wal_before > 300 * 100
    status, out, err = run(capsys, "checkpoint", path)
    assert status == 0 and err == ""
    assert out.startswith("checkpoint: the tree holds every commit up to 300;")
    assert f"{wal_before:,} bytes" in out
    stats = json.loads(run(capsys, "stat", path)[1])
    assert stats["memtable_keys"] == 0 and stats["checkpoint_seq"] == 300
    # the new log holds its header: on disk, the space allocated for its first frames
    assert stats["entries"] == 300 and stats["wal_size"] == FIRST_ALLOCATION


def test_compact_in_place(bigdb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with kvmap.open(bigdb, readonly=True) as db:
        expected = list(db.items())
    before = os.path.getsize(os.path.join(bigdb, "kvmap.data"))
    status, out, err = run(capsys, "compact", bigdb)
    assert status == 0 and err == ""
    saved = int(out.split("(saved ")[1].split(" bytes")[0].replace(",", ""))
    assert saved > 0
    assert before - os.path.getsize(os.path.join(bigdb, "kvmap.data")) >= saved - 1000
    with kvmap.open(bigdb, readonly=True) as db:
        assert list(db.items()) == expected
        db.check()


def test_compact_to_a_new_path(
    bigdb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = str(tmp_path / "compacted")
    status, out, err = run(capsys, "compact", bigdb, "--to", dest)
    assert status == 0 and err == ""
    assert out.startswith(f"compacted {bigdb} into {dest}: ") and "1,001 entries" in out
    with kvmap.open(bigdb, readonly=True) as a, kvmap.open(dest, readonly=True) as b:
        assert list(a.items()) == list(b.items())
        assert b.page_size == a.page_size
        assert b.stats()["free_pages"] == 0
        b.check()
    assert os.path.getsize(os.path.join(dest, "kvmap.data")) < os.path.getsize(
        os.path.join(bigdb, "kvmap.data")
    )
    status, _, err = run(capsys, "compact", bigdb, "--to", dest)  # never overwrites
    assert status == 1 and "a database already exists there" in err
    status, _, err = run(capsys, "compact", bigdb, "--to", bigdb)
    assert status == 1


def test_check_finds_damage(bigdb: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "check", bigdb)[0] == 0
    with kvmap.open(bigdb, readonly=True) as db:
        root = json.loads(run(capsys, "stat", bigdb)[1])["high_water_mark"] - 1
        assert db.check()
    data = Path(bigdb) / "kvmap.data"
    raw = bytearray(data.read_bytes())
    for pgno in range(2, root + 1):  # flip one byte in every page but the metas
        raw[pgno * 512 + 100] ^= 0xFF
    data.write_bytes(bytes(raw))
    status, out, err = run(capsys, "check", bigdb)
    assert status == 1 and out == "" and "checksum mismatch" in err and err.count("\n") == 1


# -- pages -------------------------------------------------------------------------------------
def test_pages_summary_and_list(bigdb: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "pages", bigdb)
    assert status == 0 and err == ""
    with kvmap.open(bigdb, readonly=True) as db:
        stats = db.stats()
    counts = {}
    for line in out.split("pages by type\n")[1].split("\n\n")[0].splitlines():
        if line.lstrip().startswith("("):
            continue
        name, n = line.split()[:2]
        counts[name] = int(n.replace(",", ""))
    for kind in ("meta", "branch", "leaf", "overflow", "freelist", "free"):
        assert counts[kind] == stats["pages"][kind], kind
    assert counts["total"] == stats["high_water_mark"]
    levels = out.split("tree by level\n")[1].splitlines()[1:]
    assert len(levels) == stats["depth"] >= 2
    assert levels[0].split()[:3] == ["1", "branch", "1"]
    assert levels[-1].split()[1] == "leaf"
    assert int(levels[-1].split()[3].replace(",", "")) == stats["entries"]

    status, out, _ = run(capsys, "pages", bigdb, "--list")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows)
    kinds = [r[1] for r in rows]
    assert kinds[:2] == ["meta", "meta"]
    assert kinds.count("leaf") == stats["pages"]["leaf"]
    overflow = [r for r in rows if r[1] == "overflow"]
    assert len(overflow) == 1 and int(overflow[0][3]) == stats["pages"]["overflow"] - 1
    in_runs = sum(int(r[3]) for r in rows)
    assert len(rows) + in_runs == stats["high_water_mark"]


def test_pages_of_an_empty_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "db")
    kvmap.open(path).close()
    status, out, _ = run(capsys, "pages", path)
    assert status == 0 and "(empty tree)" in out


def test_page_decodes_each_type(bigdb: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "pages", bigdb, "--list")
    rows = {r[1]: int(r[0]) for r in (line.split() for line in out.splitlines()[2:])}
    status, out, err = run(capsys, "page", bigdb, "1")
    assert status == 0 and "type      meta" in out and "meta page: valid" in out
    assert "page_size  512" in out
    status, out, err = run(capsys, "page", bigdb, str(rows["leaf"]), "--width", "4")
    assert status == 0, err
    assert "type      leaf" in out and "status    in use" in out
    assert '"k0' in out and " ... (6 bytes)" in out
    status, out, _ = run(capsys, "page", bigdb, str(rows["branch"]))
    assert "type      branch" in out and "child" in out and "(from the parent)" in out
    status, out, _ = run(capsys, "page", bigdb, str(rows["overflow"]), "--width", "0")
    assert "run of 6 page(s) holding 3,000 bytes" in out and '"' + "o" * 3000 + '"' in out
    status, out, _ = run(capsys, "page", bigdb, str(rows["freelist"]))
    assert "type      freelist" in out and "checksum ok" in out
    status, out, _ = run(capsys, "page", bigdb, str(rows["leaf"]), "--hex")
    assert "000000  " in out and "0001f0  " in out
    # a page inside the overflow run has no header
    status, out, err = run(capsys, "page", bigdb, str(rows["overflow"] + 1))
    assert status == 1 and "no page header here" in err and err.count("\n") == 1
    hwm = json.loads(run(capsys, "stat", bigdb)[1])["high_water_mark"]
    size = os.path.getsize(os.path.join(bigdb, "kvmap.data")) // 512
    status, out, err = run(capsys, "page", bigdb, str(size))
    assert status == 1 and f"beyond the end of the file ({size} pages)" in err
    if hwm < size:
        status, out, _ = run(capsys, "page", bigdb, str(size - 1))
        assert status == 0 and "beyond the high-water mark" in out


def test_page_of_a_free_page(bigdb: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "pages", bigdb, "--list")
    free = [line.split() for line in out.splitlines()[2:] if line.split()[1] in ("free", "pending")]
    assert free
    status, out, _ = run(capsys, "page", bigdb, free[0][0])
    assert "status    free" in out


# -- stat, bench, errors -------------------------------------------------------------------------
def test_stat_text(bigdb: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "stat", bigdb, "--format", "text")
    assert status == 0 and err == ""
    fields = {line[:16].strip(): line[17:] for line in out.splitlines()}
    assert fields["entries"] == "1,001"
    assert fields["page size"] == "512"
    assert "leaf" in fields["pages"] and "overflow 6" in fields["pages"]
    assert fields["WAL"].endswith("in 1 file(s)")
    assert {"depth", "free pages", "file size", "high-water mark"} <= set(fields)


def test_bench_runs_the_suite(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert cli.find_bench() == str(ROOT)
    calls = []

    class Done:
        returncode = 3

    def fake_run(cmd: list[str], env: dict[str, str]) -> Done:
        calls.append((cmd, env))
        return Done()

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    assert main(["bench", "--", "--quick", "--n", "10"]) == 3
    cmd, env = calls[0]
    assert cmd == [sys.executable, "-m", "bench", "--quick", "--n", "10"]
    assert str(ROOT) in env["PYTHONPATH"].split(os.pathsep)


def test_bench_help_in_a_subprocess() -> None:
    out = kvmap_cli("bench", "--", "--help")
    assert out.returncode == 0, out.stderr
    assert "python -m bench" in out.stdout


def test_bench_missing(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "find_bench", lambda: None)
    status, out, err = run(capsys, "bench")
    assert status == 1 and out == ""
    assert err.startswith("kvmap: error: the benchmark suite is not importable")
    assert err.count("\n") == 1


COMMANDS = ["stat", "get", "put", "delete", "scan", "dump", "load", "check", "checkpoint",
            "compact", "pages", "page", "bench", "demo", "readers", "salvage"]  # fmt: skip


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([cmd, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: kvmap " + cmd), cmd
        assert "examples:\n  kvmap " + cmd in out, cmd
    with pytest.raises(SystemExit):
        main(["dump", "--help"])
    out = capsys.readouterr().out
    assert "kvmap-dump 1" in out and "end N" in out and "\\xHH" in out


@pytest.mark.parametrize(
    "args",
    [
        ["get", "db"], ["get", "db", "hex:zz"], ["put", "db", "k"], ["delete", "db"],
        ["scan", "db", "--limit", "-1"], ["scan", "db", "--format", "xml"],
        ["scan", "db", "--start", "b64:***"], ["page", "db"], ["page", "db", "-3"],
        ["page", "db", "x"], ["load", "db", "--page-size", "1000"], ["dump"],
        ["readers"], ["get", "db", "k", "--frobnicate"],
    ],
)  # fmt: skip
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: kvmap" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [["get", "{}", "k"], ["put", "{}", "k", "v"], ["delete", "{}", "k"], ["scan", "{}"],
     ["dump", "{}"], ["checkpoint", "{}"], ["compact", "{}"], ["compact", "{}", "--to", "{}2"],
     ["pages", "{}"], ["page", "{}", "0"], ["load", "{}", "-i", "{}.kvdump"]],
)  # fmt: skip
def test_missing_database_errors(args: list[str], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    path = str(tmp_path / "nothing-here")
    status, out, err = run(capsys, *(a.replace("{}", path) for a in args))
    assert status == 1 and out == ""
    assert err.startswith("kvmap: error: ") and "nothing-here" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(path)  # nothing creates a database by mistake


def test_errors_in_a_subprocess_one_line_or_traceback_with_debug(tmp_path: Path) -> None:
    path = str(tmp_path / "missing")
    out = kvmap_cli("get", path, "k")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == f"kvmap: error: {path}: no kvmap database here\n"
    for args in (["--debug", "get", path, "k"], ["get", path, "k", "--debug"]):
        out = kvmap_cli(*args)
        assert out.returncode == 1
        assert "Traceback" in out.stderr and "FileNotFoundError" in out.stderr


def test_binary_arguments_in_a_subprocess(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in argv reach the database as they are."""
    path = str(tmp_path / "db")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd: list[str | bytes] = [sys.executable, "-m", "kvmap", "put", "--create", path,
                              b"\xff\xfekey", b"\x80value"]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, timeout=60)
    with kvmap.open(path, readonly=True) as db:
        assert dict(db.items()) == {b"\xff\xfekey": b"\x80value"}
    got = subprocess.run(
        [sys.executable, "-m", "kvmap", "get", "--raw", path, "hex:fffe6b6579"],
        capture_output=True, env=env, timeout=60,
    )  # fmt: skip
    assert got.returncode == 0 and got.stdout == b"\x80value"
    scan = subprocess.run([sys.executable, "-m", "kvmap", "scan", path], capture_output=True,
                          env=env, timeout=60)  # fmt: skip
    assert scan.stdout == b"hex:fffe6b6579\thex:8076616c7565\n"


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with kvmap.open(path) as db:  # ~1 MiB of output: more than a pipe holds
        db.put_many(((b"%04d" % i, b"v" * 2000) for i in range(500)), append=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "kvmap", "scan", path], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_readers_lists_live_handles_and_clears_dead_ones(tmp_path: Path) -> None:
    """``kvmap readers`` lists every live reader slot (other processes included) and
    ``--clear`` zeroes the slots of processes that died."""
    import signal

    path = str(tmp_path / "db")
    with kvmap.open(path) as db:
        db[b"a"] = b"1"
        reader = kvmap.open(path, readonly=True)
        try:
            out = subprocess.run(
                [sys.executable, "-m", "kvmap", "readers", path, "--format", "json"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            listed = json.loads(out)
            assert [r["pid"] for r in listed] == [os.getpid()]
            code = (
                "import kvmap, os, signal\n"
                f"r = kvmap.open({path!r}, readonly=True)\n"
                "print(r._lock.slot, flush=True)\n"
                "os.kill(os.getpid(), signal.SIGKILL)\n"
            )
            child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            assert child.returncode == -signal.SIGKILL
            dead_slot = int(child.stdout)
            lock = os.path.join(path, "kvmap.lock")
            token_at = 128 + 64 * dead_slot + 8
            with open(lock, "rb") as f:
                f.seek(token_at)
                assert f.read(8) != bytes(8)  # the dead process's slot is still filled in
            out = subprocess.run(
                [sys.executable, "-m", "kvmap", "readers", path, "--clear"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert "1 live reader(s), stale slots cleared" in out
            with open(lock, "rb") as f:
                f.seek(token_at)
                assert f.read(8) == bytes(8)  # cleared
        finally:
            reader.close()
