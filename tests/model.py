"""Helpers shared by the test modules that check kvmap against a dict model."""

from __future__ import annotations

import kvmap

Op = tuple[bytes, bytes | None]  # a put, or a delete when the value is None


def applied(state: dict[bytes, bytes], ops: list[Op]) -> dict[bytes, bytes]:
    """A new model: ``state`` after ``ops`` (deleting a missing key is a no-op)."""
    out = dict(state)
    for k, v in ops:
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def commit_ops(db: kvmap.Database, ops: list[Op]) -> None:
    """Commit ``ops`` in one write transaction."""
    with db.begin(write=True) as txn:
        for k, v in ops:
            if v is None:
                txn.delete(k)
            else:
                txn.put(k, v)
