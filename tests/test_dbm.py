"""kvmap.dbm: the stdlib dbm contract, checked with the cases CPython runs against its own
backends (Lib/test/test_dbm.py, test_dbm_dumb.py), written afresh for kvmap, plus shelve,
creation modes and durability."""

from __future__ import annotations

import dbm
import os
import pathlib
import pickle
import shelve
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvmap
import kvmap.dbm as kdbm

ROOT = Path(__file__).resolve().parent.parent

# the data set CPython's dbm tests write: bytes keys, including an empty value
DATA = {
    b"a": b"b",
    b"12345678910": b"019237410982340912840198242",
    b"empty": b"",
    b"\x00binary\xff": b"\x00\x01\x02" * 100,
    "\u00fcnicode".encode(): "v\u00e4lue".encode(),
    b"big": b"x" * 10_000,  # an overflow value
}


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "db")


def fill(path: str, flag: str = "c") -> None:
    with kdbm.open(path, flag) as db:
        for k, v in DATA.items():
            db[k] = v


def check_contents(db: kdbm.KvmapDbm) -> None:
    assert sorted(db.keys()) == sorted(DATA)
    for k, v in DATA.items():
        assert k in db
        assert db[k] == v
    assert len(db) == len(DATA)


# -- anydbm-style cases ----------------------------------------------------------------------
def test_creation_is_empty(path: str) -> None:
    with kdbm.open(path, "c") as db:
        assert db.keys() == []
        assert len(db) == 0
        assert list(db) == []
    assert os.path.isdir(path)


def test_keys_round_trip(path: str) -> None:
    fill(path)
    with kdbm.open(path, "r") as db:
        check_contents(db)
        assert db.keys() == sorted(DATA)  # kvmap keeps keys in order
        assert all(type(k) is bytes for k in db.keys())


def test_str_keys_and_values_are_utf8(path: str) -> None:
    with kdbm.open(path, "c") as db:
        db["a"] = "b"
        db["\u00fc"] = "\u20ac"
        assert db[b"a"] == db["a"] == b"b"
        assert db["\u00fc".encode()] == "\u20ac".encode()
        assert "a" in db and b"a" in db
        assert "\u00fc" in db
        db[bytearray(b"ba")] = memoryview(b"mv")
        assert db[b"ba"] == b"mv"
        del db["a"]
        assert "a" not in db
        assert db.keys() == [b"ba", "\u00fc".encode()]


def test_empty_value_and_empty_key(path: str) -> None:
    with kdbm.open(path, "c") as db:
        db[b"empty"] = b""
        db[b""] = b"empty key"
        assert db[b"empty"] == b""
        assert db[b""] == b"empty key"
        assert b"empty" in db and b"" in db
        assert db.keys() == [b"", b"empty"]


def test_missing_key_raises_keyerror(path: str) -> None:
    fill(path)
    with kdbm.open(path, "w") as db:
        with pytest.raises(KeyError):
            db[b"missing"]
        with pytest.raises(KeyError):
            db["missing"]
        with pytest.raises(KeyError):
            del db[b"missing"]
        assert b"missing" not in db
        assert len(db) == len(DATA)


def test_modification_and_reopen(path: str) -> None:
    fill(path)
    with kdbm.open(path, "c") as db:  # "c" on an existing database opens it
        check_contents(db)
        db[b"g"] = b"indented"
        db[b"a"] = b"changed"
        del db[b"empty"]
    with kdbm.open(path, "w") as db:
        assert db[b"g"] == b"indented"
        assert db[b"a"] == b"changed"
        assert b"empty" not in db
        assert len(db) == len(DATA)
    with kdbm.open(path) as db:  # the default flag is "r"
        assert db.readonly
        assert db[b"a"] == b"changed"


@pytest.mark.parametrize("flag", ["r", "w"])
def test_missing_database_is_an_error(path: str, flag: str) -> None:
    with pytest.raises(kdbm.error) as info:
        kdbm.open(path, flag)
    assert info.value.errno == 2
    assert not os.path.exists(path)  # never created
    with pytest.raises(dbm.error):  # the stdlib's except clause catches it too
        kdbm.open(path, flag)


def test_n_creates_a_new_database(path: str) -> None:
    fill(path)
    with kdbm.open(path, "n") as db:
        assert len(db) == 0 and db.keys() == []
        db[b"only"] = b"one"
    with kdbm.open(path, "r") as db:
        assert db.keys() == [b"only"]
        db.db.check()


def test_n_over_a_damaged_database(path: str) -> None:
    os.mkdir(path)
    with open(os.path.join(path, "kvmap.data"), "wb") as f:
        f.write(b"garbage" * 1000)
    with pytest.raises(kdbm.error):
        kdbm.open(path, "c")  # "c" refuses to open it ...
    with kdbm.open(path, "n") as db:  # ... "n" replaces it
        db["k"] = "v"
    with kdbm.open(path, "r") as db:
        assert db.keys() == [b"k"]


def test_n_refuses_while_a_writer_has_it(path: str) -> None:
    fill(path)
    with kdbm.open(path, "w") as writer:
        with pytest.raises(kdbm.error, match="open for writing"):
            kdbm.open(path, "n")
        with pytest.raises(kdbm.error, match="open for writing"):
            kdbm.open(path, "c")
        assert len(writer) == len(DATA)  # untouched
        with kdbm.open(path, "r") as reader:  # readers never lock
            assert len(reader) == len(DATA)


# -- flags ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["x", "", "rw", "cx", "c ", "rF", "nq"])
def test_bad_flag_is_an_error(path: str, flag: str) -> None:
    with pytest.raises(kdbm.error):
        kdbm.open(path, flag)
    assert not os.path.exists(path)


def test_flag_must_be_str(path: str) -> None:
    with pytest.raises(TypeError, match="int"):
        kdbm.open(path, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "flag, sync", [("c", "normal"), ("cf", "off"), ("cs", "full"), ("cu", "normal"),
                   ("cfs", "full"), ("csf", "off"), ("cfsu", "full")],
)  # fmt: skip
def test_modifier_flags(path: str, flag: str, sync: str) -> None:
    with kdbm.open(path, flag) as db:
        assert db.db.sync_mode == sync
        db[b"k"] = b"v"
    for f in ("ru", "wf", "ws"):
        with kdbm.open(path, f) as db:
            assert db[b"k"] == b"v"
    assert kdbm.open_flags == "rwcnfsu"


# -- read-only databases ----------------------------------------------------------------------
def test_readonly_refuses_writes(path: str) -> None:
    fill(path)
    with kdbm.open(path, "r") as db:
        for write in (
            lambda: db.__setitem__(b"a", b"new"),
            lambda: db.__setitem__(b"brand new", b"x"),
            lambda: db.__delitem__(b"a"),
            lambda: db.__delitem__(b"missing"),
            lambda: db.setdefault(b"missing", b"x"),
            lambda: db.update({b"a": b"1"}),
            db.clear,
            db.reorganize,
        ):
            with pytest.raises(kdbm.error, match="reading only"):
                write()
        check_contents(db)
        db.sync()  # allowed: nothing to do


def test_readonly_files_on_disk(path: str) -> None:
    fill(path)
    for name in os.listdir(path):
        os.chmod(os.path.join(path, name), 0o444)
    try:
        with kdbm.open(path, "r") as db:
            check_contents(db)
    finally:
        for name in os.listdir(path):
            os.chmod(os.path.join(path, name), 0o644)


# -- the mapping methods ------------------------------------------------------------------
def test_len_and_iteration(path: str) -> None:
    with kdbm.open(path, "c") as db:
        for i in range(200):
            db[b"%03d" % i] = b"v%d" % i
            assert len(db) == i + 1
        assert list(db) == [b"%03d" % i for i in range(200)]
        assert [k for k in db] == db.keys()
        assert dict(db.items())[b"007"] == b"v7"
        assert list(db.values())[:2] == [b"v0", b"v1"]
        for k in db:  # iteration reads a snapshot: writing meanwhile is safe
            del db[k]
        assert len(db) == 0


def test_get(path: str) -> None:
    with kdbm.open(path, "c") as db:
        db[b"a"] = b"1"
        assert db.get(b"a") == b"1"
        assert db.get("a") == b"1"
        assert db.get(b"b") is None
        assert db.get(b"b", b"default") == b"default"
        assert db.get("b", 42) == 42


def test_setdefault(path: str) -> None:
    with kdbm.open(path, "c") as db:
        assert db.setdefault(b"a", b"first") == b"first"
        assert db.setdefault(b"a", b"second") == b"first"
        assert db[b"a"] == b"first"
        assert db.setdefault("s", "str") == b"str"
        assert db.setdefault(b"empty") == b""  # dbm.gnu's default
        assert db[b"empty"] == b""
        assert len(db) == 3


def test_mutable_mapping_extras(path: str) -> None:
    with kdbm.open(path, "c") as db:
        db.update({b"a": b"1", "b": "2"}, c=b"3")
        db.update([(b"d", b"4")])
        assert db.keys() == [b"a", b"b", b"c", b"d"]
        assert db.pop(b"a") == b"1"
        assert db.pop(b"zzz", None) is None
        seq = db.db.stats()["commit_seq"]
        db.clear()
        assert len(db) == 0
        assert db.db.stats()["commit_seq"] == seq + 1  # one commit


def test_wrong_types(path: str) -> None:
    with kdbm.open(path, "c") as db:
        with pytest.raises(TypeError, match="int"):
            db[1] = b"v"
        with pytest.raises(TypeError, match="NoneType"):
            db[b"k"] = None  # type: ignore[assignment]
        with pytest.raises(TypeError, match="float"):
            db[1.5]
        with pytest.raises(TypeError):
            1 in db  # noqa: B015
        with pytest.raises(TypeError):
            db.setdefault(b"k", None)  # type: ignore[arg-type]
        assert len(db) == 0


def test_too_large_key_is_an_error(path: str) -> None:
    with kdbm.open(path, "c") as db:
        with pytest.raises(kdbm.error, match="max_key_size"):
            db[b"k" * 5000] = b"v"


def test_context_manager(path: str) -> None:
    with kdbm.open(path, "c") as db:
        db["context"] = "manager"
        assert db[b"context"] == b"manager"
    with pytest.raises(kdbm.error, match="closed"):
        db.keys()
    with kdbm.open(path, "r") as db:
        assert db[b"context"] == b"manager"


def test_use_after_close(path: str) -> None:
    db = kdbm.open(path, "c")
    db[b"k"] = b"v"
    db.close()
    db.close()  # closing twice is fine
    for use in (
        lambda: db[b"k"],
        lambda: db.__setitem__(b"k", b"w"),
        lambda: db.__delitem__(b"k"),
        lambda: b"k" in db,
        lambda: len(db),
        lambda: iter(db),
        db.keys,
        lambda: db.get(b"k"),
        lambda: db.setdefault(b"k", b"x"),
        db.sync,
        db.clear,
        lambda: db.db,
    ):
        with pytest.raises(kdbm.error, match="closed"):
            use()
    with pytest.raises(kdbm.error):
        with db:
            pass


def test_error_class() -> None:
    assert issubclass(kdbm.error, OSError)
    assert issubclass(kdbm.error, kvmap.Error)
    assert issubclass(kdbm.error, dbm.error)  # dbm.error is a tuple holding OSError
    exc = kdbm.error("x")
    assert isinstance(exc, dbm.error)


def test_corruption_is_an_error(path: str) -> None:
    fill(path)
    with open(os.path.join(path, "kvmap.data"), "r+b") as f:
        f.write(b"\xff" * 8192)
    for flag in "rwc":
        with pytest.raises(kdbm.error) as info:
            kdbm.open(path, flag)
        assert isinstance(info.value.__cause__, kvmap.CorruptionError)


# -- paths and modes ------------------------------------------------------------------------
def test_path_types(tmp_path: Path) -> None:
    p = tmp_path / "p\u00e4th db"  # a non-ASCII name with a space
    with kdbm.open(pathlib.Path(p), "c") as db:
        db[b"k"] = b"v"
    with kdbm.open(os.fsencode(p), "r") as db:
        assert db[b"k"] == b"v"
    with kdbm.open(str(p), "r") as db:
        assert db[b"k"] == b"v"


def test_parent_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(kdbm.error):
        kdbm.open(tmp_path / "no" / "such" / "db", "c")
    assert not (tmp_path / "no").exists()


@pytest.fixture
def umask() -> Iterator[int]:
    old = os.umask(0o002)
    try:
        yield 0o002
    finally:
        os.umask(old)


def modes(path: str) -> dict[str, int]:
    return {name: stat.S_IMODE(os.stat(os.path.join(path, name)).st_mode)
            for name in os.listdir(path)}  # fmt: skip


def test_creation_mode_respects_umask(path: str, umask: int) -> None:
    with kdbm.open(path, "c", 0o637) as db:
        db[b"k"] = b"v"
        during = modes(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o737 & ~umask  # x where r
    after = modes(path)
    assert {n for n in after if n.startswith("kvmap.wal.")}  # logs were created, too
    for name, mode in [*during.items(), *after.items()]:
        assert mode == 0o637 & ~umask, name


def test_later_files_follow_the_data_file(path: str, umask: int) -> None:
    with kdbm.open(path, "c", 0o600):
        pass
    with kdbm.open(path, "w", 0o666) as db:  # mode only matters when creating
        db[b"k"] = b"v"
        db.db.checkpoint()
    assert set(modes(path).values()) == {0o600}


def test_default_mode(path: str, umask: int) -> None:
    with kdbm.open(path, "n") as db:
        db[b"k"] = b"v"
    assert set(modes(path).values()) == {0o666 & ~umask}


# -- shelve -------------------------------------------------------------------------------------
def test_shelve(path: str) -> None:
    values = {
        "int": 1,
        "list": [1, 2, [3, 4]],
        "dict": {"a": (1, 2.5), b"bytes": None},
        "unicode \u00fc": "\u20ac" * 1000,
        "": set(range(50)),
    }
    with shelve.Shelf(kdbm.open(path, "c")) as shelf:
        for k, v in values.items():
            shelf[k] = v
        assert shelf["list"] == [1, 2, [3, 4]]
        assert "dict" in shelf and "nope" not in shelf
        del shelf["int"]
        assert len(shelf) == 4
    with shelve.Shelf(kdbm.open(path, "r")) as shelf:
        assert sorted(shelf.keys()) == sorted(k for k in values if k != "int")
        for k in shelf:
            assert shelf[k] == values[k]
        with pytest.raises(KeyError):
            shelf["int"]
    with kdbm.open(path, "r") as db:  # what shelve stored: pickles under UTF-8 keys
        assert pickle.loads(db["list"]) == [1, 2, [3, 4]]


def test_shelve_writeback(path: str) -> None:
    with shelve.Shelf(kdbm.open(path, "c"), writeback=True) as shelf:
        shelf["items"] = []
        shelf["items"].append("x")  # cached, written back at sync/close
        shelf.sync()
        shelf["items"].append("y")
    with shelve.Shelf(kdbm.open(path, "r")) as shelf:
        assert shelf["items"] == ["x", "y"]


# -- durability --------------------------------------------------------------------------------
def test_assignments_survive_a_process_crash(path: str) -> None:
    """Each assignment is a commit that reached the OS (sync="normal"): a process killed
    without close() loses none of them."""
    code = (
        "import os, kvmap.dbm\n"
        f"db = kvmap.dbm.open({path!r}, 'c')\n"
        "for i in range(100):\n"
        "    db[b'%d' % i] = b'v'\n"
        "os._exit(0)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    with kdbm.open(path, "r") as db:
        assert len(db) == 100
        db.db.check()


def test_reorganize_gives_space_back(path: str) -> None:
    with kdbm.open(path, "c") as db:
        db.update((b"%05d" % i, b"x" * 200) for i in range(3000))
        db.db.checkpoint()
        for k in db.keys()[100:]:
            del db[k]
        db.sync()
        db.db.checkpoint()
        before = os.path.getsize(os.path.join(path, "kvmap.data"))
        db.reorganize()
        assert os.path.getsize(os.path.join(path, "kvmap.data")) < before
        assert len(db) == 100
    with kdbm.open(path, "r") as db:
        assert len(db) == 100
        db.db.check()


def test_repr(path: str) -> None:
    db = kdbm.open(path, "c")
    assert path in repr(db)
    db.close()
    assert "closed" in repr(db)


def test_the_mode_file_layer_delegates_every_operation() -> None:
    """``kvmap.dbm`` wraps the installed file layer to apply ``mode``: every operation must
    go to that layer (a test's recorder or fault injector), none to the default."""
    from kvmap import fileio
    from kvmap.dbm import _ModeFS

    public = {n for n, v in vars(fileio.FileSystem).items() if callable(v) and n[0] != "_"}
    assert public <= set(vars(_ModeFS)), public - set(vars(_ModeFS))
