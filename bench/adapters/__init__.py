"""Engine adapters: one module per engine, imported only when that engine is used (so the
peak RSS of an engine's process counts only its own library)."""

from __future__ import annotations

import importlib

from .base import Adapter, Reader

#: engine name -> (module, class); the order is the report's column order
ENGINES: dict[str, tuple[str, str]] = {
    "kvmap": ("bench.adapters.kvmap_adapter", "KvmapAdapter"),
    "lmdb": ("bench.adapters.lmdb_adapter", "LmdbAdapter"),
    "sqlite": ("bench.adapters.sqlite_adapter", "SqliteAdapter"),
    "dbm.dumb": ("bench.adapters.dbm_adapter", "DumbAdapter"),
    "semidbm": ("bench.adapters.semidbm_adapter", "SemidbmAdapter"),
}


def load(name: str) -> type[Adapter]:
    """The adapter class of engine ``name``; raises ``ImportError`` if its library does not
    import and ``KeyError`` for an unknown name."""
    module, cls = ENGINES[name]
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def available(names: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(engines that import, {engine: why not} for the others)."""
    ok: list[str] = []
    missing: dict[str, str] = {}
    for name in names if names is not None else list(ENGINES):
        try:
            load(name)
        except ImportError as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
        else:
            ok.append(name)
    return ok, missing


__all__ = ["Adapter", "ENGINES", "Reader", "available", "load"]
