"""Partition state: the layout of every key (`layout`, pure) and the stores that hold it
(RocksDB, memory, staged; `stores`, which needs rocksdict and is loaded on first use, so the
pure core can use the layout alone)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stores import Checkpoints, MemoryStore, RocksStore, StagedStore

__all__ = ["Checkpoints", "MemoryStore", "RocksStore", "StagedStore"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import stores
        return getattr(stores, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
