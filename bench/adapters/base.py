"""The interface every engine adapter implements, and what the harness needs from it.

An adapter wraps one open database (a directory of its own) in one durability mode:

- ``mode`` is ``"full"`` (a commit survives power loss) or ``"normal"`` (a commit survives a
  crash of the process); each adapter maps it onto its engine's own setting and says how in
  :attr:`Adapter.durability`, which the report prints;
- writes: :meth:`bulk_load` (keys ascending, the engine's bulk path), :meth:`put_batch` (one
  transaction), :meth:`put` (one commit);
- reads: :meth:`get` (the latest value, as an application reads outside any transaction) and
  :meth:`snapshot` (one read transaction: ``get``, ``items``, ``items_from``);
- :meth:`close` makes everything durable and releases the database: write workloads time it.

The harness calls these in plain loops, with the bound method looked up once, so the per-call
overhead of the loop is the same for every engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


class Reader:
    """One read snapshot (a read transaction where the engine has one)."""

    def get(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) in ascending key order."""
        raise NotImplementedError

    def items_from(self, start: bytes, limit: int) -> Iterator[tuple[bytes, bytes]]:
        """Up to ``limit`` (key, value) pairs with ``key >= start``, ascending."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Adapter:
    """One open database of one engine.  Subclasses set the class attributes."""

    #: the engine's name on the command line and in the report
    name = ""
    #: mode -> the engine setting used for it, printed in the report
    durability: dict[str, str] = {}
    #: False when the engine cannot honour the mode (no fsync at all): printed as a caveat
    matched = True
    #: None if reader processes can run while another process commits, else why not
    concurrent_writer: str | None = None
    #: how the bulk load is done, printed in the report
    bulk_path = ""

    def __init__(self, path: str, mode: str = "normal", readonly: bool = False) -> None:
        self.path = path
        self.mode = mode
        self.readonly = readonly

    @classmethod
    def version(cls) -> str:
        """The version of the engine (and its library) in use."""
        raise NotImplementedError

    # -- writes ----------------------------------------------------------------------------
    def bulk_load(self, keys: Sequence[bytes], value: bytes) -> None:
        """Store ``value`` under every key of ``keys`` (ascending, into an empty database)
        through the engine's bulk path, committed."""
        raise NotImplementedError

    def put_batch(self, keys: Sequence[bytes], value: bytes) -> None:
        """Store ``value`` under each key of ``keys`` in one transaction (one commit)."""
        raise NotImplementedError

    def put(self, key: bytes, value: bytes) -> None:
        """Store one key in its own commit."""
        raise NotImplementedError

    # -- reads -----------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The latest value, read outside any long-lived transaction (autocommit read)."""
        raise NotImplementedError

    def snapshot(self) -> Reader:
        raise NotImplementedError

    def close(self) -> None:
        """Make every write durable (per the engine's strongest sync) and close."""
        raise NotImplementedError

    @classmethod
    def info(cls) -> dict[str, Any]:
        """What the report prints about the engine."""
        return {
            "version": cls.version(),
            "durability": dict(cls.durability),
            "matched": cls.matched,
            "concurrent_writer": cls.concurrent_writer,
            "bulk_path": cls.bulk_path,
        }
