"""Shared fixtures.

``db`` is a database with 512-byte pages (the smallest), so trees are deep and splits and
merges happen after a handful of keys.  Every test that uses ``db`` or ``open_db`` gets a
``check()`` of each database it opened at teardown (invariant 3), unless the test closed it.

Randomised tests take their seed from ``KVMAP_SEED`` (default: fresh) and print it, so a
failure is replayable: ``KVMAP_SEED=1234 python -m pytest tests/test_x.py``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import pytest

import kvmap

TINY_PAGE = 512


@pytest.fixture
def db_path(tmp_path: os.PathLike[str]) -> str:
    return os.path.join(os.fspath(tmp_path), "db")


@pytest.fixture
def open_db(db_path: str) -> Iterator[Callable[..., kvmap.Database]]:
    """``open_db(**options)`` opens the test's database (tiny pages unless told otherwise)
    and checks every handle it made at teardown."""
    handles: list[kvmap.Database] = []

    def _open(path: str | None = None, **options: object) -> kvmap.Database:
        options.setdefault("page_size", TINY_PAGE)
        handle = kvmap.open(path or db_path, **options)  # type: ignore[arg-type]
        handles.append(handle)
        return handle

    yield _open
    for handle in handles:
        if handle._state is not None:
            handle.check()
            handle.close()


@pytest.fixture
def db(open_db: Callable[..., kvmap.Database]) -> kvmap.Database:
    """A fresh database with 512-byte pages, checked after the test."""
    return open_db()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded ``random.Random``; the seed is printed (shown on failure) and can be forced
    with ``KVMAP_SEED``."""
    seed = int(os.environ.get("KVMAP_SEED", random.randrange(2**32)))
    print(f"{request.node.nodeid}: KVMAP_SEED={seed}")
    return random.Random(seed)


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak N``: N rounds of every workload of tests/test_crashsim.py (fresh seeds)."""
    parser.addoption(
        "--soak", type=int, default=0, metavar="N",
        help="crash simulator soak: N rounds of every workload (also KVMAP_CRASH_SOAK=N)",
    )  # fmt: skip
