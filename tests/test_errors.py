"""kvmap.errors: the error tree, and every error the API raises on purpose, asserted by type
and message (bad options, missing databases, locks, key sizes, wrong types)."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import kvmap
from kvmap import errors

OpenDB = Callable[..., kvmap.Database]
ROOT = Path(__file__).resolve().parent.parent

ERRORS = [
    kvmap.CorruptionError,
    kvmap.ReadOnlyError,
    kvmap.TxnClosedError,
    kvmap.DatabaseClosedError,
    kvmap.NestedWriteError,
    kvmap.KeyTooLargeError,
    kvmap.ValueTooLargeError,
    kvmap.ReadersFullError,
    kvmap.DatabaseLockedError,
    kvmap.FatalError,
]


# -- the tree --------------------------------------------------------------------------------


def test_every_error_is_a_kvmap_error() -> None:
    assert issubclass(kvmap.Error, Exception)
    for exc in ERRORS:
        assert issubclass(exc, kvmap.Error), exc
        assert exc.__module__ == "kvmap.errors"
        assert getattr(kvmap, exc.__name__) is exc
        assert getattr(errors, exc.__name__) is exc


def test_errors_module_exports_the_whole_tree() -> None:
    declared = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }
    assert {"Error"} | {e.__name__ for e in ERRORS} <= declared
    assert set(errors.__all__) == declared
    for name in declared:
        assert issubclass(getattr(errors, name), kvmap.Error), name
        assert getattr(kvmap, name) is getattr(errors, name), name
        assert name in kvmap.__all__, name


def test_every_error_documents_when_it_is_raised() -> None:
    for exc in [kvmap.Error, *ERRORS]:
        doc = inspect.getdoc(exc) or ""
        assert len(doc) > 40, exc
        if exc is not kvmap.Error:
            assert "raised" in doc.lower(), exc


def test_size_errors_are_value_errors() -> None:
    assert issubclass(kvmap.KeyTooLargeError, ValueError)
    assert issubclass(kvmap.ValueTooLargeError, ValueError)


def test_one_except_catches_them_all(db: kvmap.Database) -> None:
    caught = []
    for call in (
        lambda: db.begin(write=True).put(b"k" * (db.max_key_size + 1), b""),
        lambda: db.begin().put(b"a", b"b"),
    ):
        try:
            call()
        except kvmap.Error as exc:
            caught.append(type(exc))
    assert caught == [kvmap.KeyTooLargeError, kvmap.ReadOnlyError]


def test_documented_max_key_size_matches_the_code() -> None:
    """README.md and the KeyTooLargeError docstring quote the default max_key_size; both must
    agree with what a 4096-byte-page database accepts."""
    from kvmap.format import max_key_size

    actual = max_key_size(4096)
    readme = (ROOT / "README.md").read_text()
    for text, where in (
        (readme, "README.md"),
        (inspect.getdoc(kvmap.KeyTooLargeError) or "", "KeyTooLargeError docstring"),
    ):
        quoted = {int(n) for n in re.findall(r"\b(1\d{3})\b(?= ?bytes| at the default)", text)}
        assert quoted, f"{where} should state the default max_key_size"
        assert quoted == {actual}, f"{where} says {quoted}, max_key_size(4096) is {actual}"


# -- open --------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1000, 256, 131072, 0, -4096, 3 << 10, 1 << 17])
def test_bad_page_size_raises_value_error(db_path: str, page_size: int) -> None:
    with pytest.raises(ValueError, match=rf"page_size.*{page_size}"):
        kvmap.open(db_path, page_size=page_size)
    assert not os.path.exists(os.path.join(db_path, "kvmap.data"))


@pytest.mark.parametrize("page_size", ["4096", 4096.0, None, True])
def test_page_size_of_wrong_type_raises_type_error(db_path: str, page_size: object) -> None:
    with pytest.raises(TypeError, match=rf"page_size.*{type(page_size).__name__}"):
        kvmap.open(db_path, page_size=page_size)  # type: ignore[arg-type]


@pytest.mark.parametrize("sync", ["bogus", "", "FULL", "fsync"])
def test_bad_sync_raises_value_error(db_path: str, sync: str) -> None:
    with pytest.raises(ValueError, match=r"sync must be one of full, normal, off"):
        kvmap.open(db_path, sync=sync)


def test_sync_of_wrong_type_raises_type_error(db_path: str) -> None:
    with pytest.raises(TypeError, match="sync.*int"):
        kvmap.open(db_path, sync=1)  # type: ignore[arg-type]


def test_unknown_keyword_raises_type_error(db_path: str) -> None:
    with pytest.raises(TypeError, match="map_size"):
        kvmap.open(db_path, map_size=1 << 30)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        kvmap.open(db_path, "full")  # type: ignore[misc]  # options are keyword-only


@pytest.mark.parametrize(
    ("option", "value", "exc", "pattern"),
    [
        ("create", "yes", TypeError, "create.*str"),
        ("readonly", 1, TypeError, "readonly.*int"),
        ("cache_size", -1, ValueError, "cache_size"),
        ("cache_size", 1.5, TypeError, "cache_size.*float"),
        ("lock_timeout", "1", TypeError, "lock_timeout.*str"),
    ],
)
def test_other_bad_options(
    db_path: str, option: str, value: object, exc: type[Exception], pattern: str
) -> None:
    with pytest.raises(exc, match=pattern):
        kvmap.open(db_path, **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("path", [None, 42, b"bytes/path"])
def test_bad_path_type(path: object) -> None:
    with pytest.raises(TypeError):
        kvmap.open(path)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"readonly": True}, {"create": False}])
def test_missing_database_raises_file_not_found(db_path: str, options: dict[str, bool]) -> None:
    with pytest.raises(FileNotFoundError) as info:
        kvmap.open(db_path, **options)
    assert db_path in str(info.value)
    assert not os.path.exists(db_path)  # nothing was created


def test_create_false_opens_an_existing_database(open_db: OpenDB) -> None:
    db = open_db()
    db.put(b"a", b"1")
    db.close()
    db = open_db(create=False)
    assert db[b"a"] == b"1"


def test_second_writable_open_raises_database_locked(open_db: OpenDB, db_path: str) -> None:
    db = open_db()
    db.put(b"a", b"1")
    with pytest.raises(kvmap.DatabaseLockedError, match="another handle"):
        kvmap.open(db_path)
    with pytest.raises(kvmap.DatabaseLockedError):
        kvmap.open(db_path, lock_timeout=0.1)
    assert db[b"a"] == b"1"  # the first handle is unaffected
    db.put(b"b", b"2")
    db.close()
    with kvmap.open(db_path) as again:  # closing released the lock
        assert len(again) == 2


def test_second_writable_open_in_another_process_is_locked(open_db: OpenDB, db_path: str) -> None:
    import subprocess
    import sys

    db = open_db()
    db.put(b"a", b"1")
    code = (
        "import sys, kvmap\n"
        "try:\n"
        "    kvmap.open(sys.argv[1])\n"
        "except kvmap.DatabaseLockedError:\n"
        "    print('locked')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, db_path],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.stdout.strip() == "locked", out.stderr


def test_not_a_database_raises_corruption(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.mkdir()
    (path / "kvmap.data").write_bytes(b"this is not a kvmap data file" * 300)
    with pytest.raises(kvmap.CorruptionError, match="meta"):
        kvmap.open(path, readonly=True)


# -- keys and values -------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_key_too_large(open_db: OpenDB, page_size: int) -> None:
    db = open_db(page_size=page_size)
    n = db.max_key_size
    db.put(b"x" * n, b"fits")
    for call in (
        lambda: db.put(b"x" * (n + 1), b"v"),
        lambda: db.__setitem__(bytearray(n + 1), b"v"),
        lambda: db.put_many([(b"ok", b"v"), (memoryview(bytes(n + 5)), b"v")]),
    ):
        with pytest.raises(kvmap.KeyTooLargeError) as info:
            call()
        msg = str(info.value)
        assert f"max_key_size={n}" in msg
        assert re.search(rf"key of {n + 1}|key of {n + 5}", msg)
    with db.begin(write=True) as txn:
        with pytest.raises(kvmap.KeyTooLargeError):
            txn.put(b"y" * (n + 1), b"v")
        txn.put(b"y" * n, b"still usable")
    assert db[b"x" * n] == b"fits"
    assert db[b"y" * n] == b"still usable"
    assert len(db) == 2


def test_max_key_size_at_4096(open_db: OpenDB) -> None:
    assert open_db(page_size=4096).max_key_size >= 1000


def test_value_too_large_error_message() -> None:
    from kvmap.format import MAX_VALUE_SIZE

    assert MAX_VALUE_SIZE >= 64 << 20
    assert "2 GiB" in (inspect.getdoc(kvmap.ValueTooLargeError) or "")


@pytest.mark.parametrize(
    ("bad", "name"),
    [("s", "str"), (1, "int"), (None, "NoneType"), ([b"a"], "list"), ({}, "dict"),
     (object(), "object")],
)  # fmt: skip
def test_type_errors_name_the_type(db: kvmap.Database, bad: object, name: str) -> None:
    def check(what: str, call: Callable[[], object]) -> None:
        with pytest.raises(TypeError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(what), msg
        assert msg.endswith(f"not {name}"), msg
        assert "bytes, bytearray or memoryview" in msg

    check("keys", lambda: db.put(bad, b"v"))  # type: ignore[arg-type]
    check("values", lambda: db.put(b"k", bad))  # type: ignore[arg-type]
    check("keys", lambda: db.get(bad))  # type: ignore[arg-type]
    check("keys", lambda: db.delete(bad))  # type: ignore[arg-type]
    with db.begin(write=True) as txn:
        check("keys", lambda: txn.put(bad, b"v"))  # type: ignore[arg-type]
        check("values", lambda: txn.put(b"k", bad))  # type: ignore[arg-type]
        check("keys", lambda: txn.get(bad))  # type: ignore[arg-type]
        check("keys", lambda: txn.delete(bad))  # type: ignore[arg-type]
    with db.begin() as snap:
        check("keys", lambda: snap.get(bad))  # type: ignore[arg-type]
    if bad is not None:
        for bound in ("start", "stop", "prefix"):
            with pytest.raises(TypeError, match=rf"^{bound} must be .* not {name}$"):
                list(db.items(**{bound: bad}))
    assert len(db) == 0


def test_type_error_is_not_a_kvmap_error(db: kvmap.Database) -> None:
    with pytest.raises(TypeError) as info:
        db.put("str", b"v")  # type: ignore[arg-type]
    assert not isinstance(info.value, kvmap.Error)


# -- state errors, by type and message -------------------------------------------------------


def test_state_error_messages(open_db: OpenDB) -> None:
    db = open_db()
    with db.begin() as snap, pytest.raises(kvmap.ReadOnlyError, match="read snapshot"):
        snap.put(b"a", b"b")
    with (
        db.begin(write=True),
        pytest.raises(
            kvmap.NestedWriteError, match="this thread already holds the write transaction"
        ),
    ):
        db.begin(write=True)
    txn = db.begin(write=True)
    txn.commit()
    with pytest.raises(kvmap.TxnClosedError, match="finished"):
        txn.get(b"a")
    snap = db.begin()
    db.close()
    with pytest.raises(kvmap.DatabaseClosedError, match=rf"{re.escape(db.path)}.*closed"):
        db.get(b"a")
    with pytest.raises(kvmap.TxnClosedError, match="closed"):
        snap.get(b"a")
    ro = open_db(readonly=True)
    with pytest.raises(kvmap.ReadOnlyError, match="readonly"):
        ro.put(b"a", b"b")
