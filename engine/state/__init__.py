"""Partition state: the `Store` port, its backends (RocksDB, memory, staged) and the layout of
every key (`layout`)."""

from .stores import MemoryStore, RocksStore, StagedStore

__all__ = ["MemoryStore", "RocksStore", "StagedStore"]
