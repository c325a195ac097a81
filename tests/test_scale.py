"""Many keys in random order: the tree stays correct as it grows deep and wide.

The default run uses 30,000 keys on 512-byte pages (a 4-5 level tree); the slow run
inserts one million keys on default pages (``python -m pytest -m slow tests/test_scale.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

import kvmap


def _fill_and_verify(
    open_db: Callable[..., kvmap.Database], rng: random.Random, n: int, page_size: int, batch: int
) -> None:
    keys = list({rng.randbytes(rng.randint(1, 24)) for _ in range(n)})
    rng.shuffle(keys)
    db = open_db(page_size=page_size, sync="off", cache_size=256 << 20)
    for i in range(0, len(keys), batch):
        with db.begin(write=True) as txn:
            for k in keys[i : i + batch]:
                txn.put(k, k[::-1] * 3)
    assert len(db) == len(keys)
    sample = rng.sample(keys, min(len(keys), 50_000))
    for k in sample:
        assert db[k] == k[::-1] * 3
    for _ in range(1000):
        assert rng.randbytes(25) not in db  # longer than any stored key
    expected = sorted(keys)
    assert list(db.keys()) == expected
    # delete a random half in random batches, then everything is still consistent
    doomed = set(rng.sample(keys, len(keys) // 2))
    order = list(doomed)
    for i in range(0, len(order), batch):
        with db.begin(write=True) as txn:
            for k in order[i : i + batch]:
                del txn[k]
    assert len(db) == len(keys) - len(doomed)
    assert list(db.keys()) == [k for k in expected if k not in doomed]
    db.check()
    db.close()
    db = open_db(page_size=page_size)
    assert len(db) == len(keys) - len(doomed)
    for k in sample[:5000]:
        assert (k in db) == (k not in doomed)


def test_many_keys_random_order_tiny_pages(
    open_db: Callable[..., kvmap.Database], rng: random.Random
) -> None:
    _fill_and_verify(open_db, rng, 30_000, 512, 997)


@pytest.mark.slow
def test_one_million_keys_random_order(
    open_db: Callable[..., kvmap.Database], rng: random.Random
) -> None:
    _fill_and_verify(open_db, rng, 1_000_000, 4096, 10_000)
