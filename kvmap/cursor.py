"""Ordered iteration: range scans over a tree, and merging a sorted overlay over them.

A copy-on-write tree has no sibling pointers, so a scan keeps the path from the root as a
stack of (branch, child index) and climbs it to reach the next leaf.  Each leaf's decoded
lists are walked directly: a scan costs about one tuple per key plus one cached-node fetch
per leaf.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any

from .pager import Pager

_END: Any = object()


def prefix_stop(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with ``prefix`` (None: no bound).

    >>> prefix_stop(b"user:"), prefix_stop(b"a\\xff"), prefix_stop(b"\\xff\\xff")
    (b'user;', b'b', None)
    """
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


def bounds(
    start: bytes | None, stop: bytes | None, prefix: bytes | None
) -> tuple[bytes | None, bytes | None]:
    """Combine ``start``/``stop`` (inclusive/exclusive) with a ``prefix`` into one range.

    >>> bounds(None, None, b"ab")
    (b'ab', b'ac')
    >>> bounds(b"abc", b"b", b"ab")
    (b'abc', b'ac')
    """
    if prefix is None:
        return start, stop
    pstop = prefix_stop(prefix)
    lo = prefix if start is None or start < prefix else start
    hi = pstop if stop is None or (pstop is not None and pstop < stop) else stop
    return lo, hi


def scan(
    pager: Pager, root: int, start: bytes | None, stop: bytes | None, reverse: bool = False
) -> Iterator[tuple[bytes, Any]]:
    """Yield (key, stored value) for ``start <= key < stop`` in key order (descending when
    ``reverse``).  Stored values are ``bytes`` or :class:`~kvmap.node.Ovf` references.
    Cost: O(log n) to position, then O(1) per key."""
    if not root or (start is not None and stop is not None and start >= stop):
        return
    node_of = pager.node
    stack: list[tuple[Any, int]] = []
    node = node_of(root)
    if not reverse:
        while node.kids is not None:
            i = 0 if start is None else bisect_right(node.keys, start, 1) - 1
            stack.append((node, i))
            node = node_of(node.kids[i])
        i = 0 if start is None else bisect_left(node.keys, start)
        while True:
            keys, vals = node.keys, node.vals
            if stop is None or (keys and keys[-1] < stop):
                for j in range(i, len(keys)):
                    yield keys[j], vals[j]
            else:
                for j in range(i, len(keys)):
                    k = keys[j]
                    if k >= stop:
                        return
                    yield k, vals[j]
            while stack:
                parent, pi = stack.pop()
                pi += 1
                if pi < len(parent.kids):
                    if stop is not None and parent.keys[pi] >= stop:
                        return
                    stack.append((parent, pi))
                    node = node_of(parent.kids[pi])
                    while node.kids is not None:
                        stack.append((node, 0))
                        node = node_of(node.kids[0])
                    i = 0
                    break
            else:
                return
    else:
        while node.kids is not None:
            i = len(node.kids) - 1 if stop is None else bisect_left(node.keys, stop, 1) - 1
            stack.append((node, i))
            node = node_of(node.kids[i])
        i = len(node.keys) if stop is None else bisect_left(node.keys, stop)
        while True:
            keys, vals = node.keys, node.vals
            for j in range(i - 1, -1, -1):
                k = keys[j]
                if start is not None and k < start:
                    return
                yield k, vals[j]
            while stack:
                parent, pi = stack.pop()
                if pi > 0:
                    if start is not None and parent.keys[pi] <= start:
                        return
                    pi -= 1
                    stack.append((parent, pi))
                    node = node_of(parent.kids[pi])
                    while node.kids is not None:
                        stack.append((node, len(node.kids) - 1))
                        node = node_of(node.kids[-1])
                    i = len(node.keys)
                    break
            else:
                return


def merge(
    base: Iterator[tuple[bytes, Any]],
    overlay: Iterator[tuple[bytes, Any]],
    reverse: bool = False,
) -> Iterator[tuple[bytes, Any]]:
    """Merge two iterators sorted the same way; on equal keys the overlay wins, and an
    overlay value of None (a delete) hides the key.

    >>> list(merge(iter([(b"a", 1), (b"c", 3)]), iter([(b"b", 2), (b"c", None)])))
    [(b'a', 1), (b'b', 2)]
    """
    b = next(base, _END)
    o = next(overlay, _END)
    while b is not _END and o is not _END:
        bk, ok = b[0], o[0]
        if bk == ok:
            if o[1] is not None:
                yield o
            b = next(base, _END)
            o = next(overlay, _END)
        elif (bk < ok) != reverse:
            yield b
            b = next(base, _END)
        else:
            if o[1] is not None:
                yield o
            o = next(overlay, _END)
    while b is not _END:
        yield b
        b = next(base, _END)
    while o is not _END:
        if o[1] is not None:
            yield o
        o = next(overlay, _END)
