"""Partition state stores: RocksDB (rocksdict) for workers, memory for tests and small replays.

Each input partition has its own store. A store applies one batch's change set atomically
(RocksDB write batch) together with the changelog offset that change set was written at, so
restore knows where to resume reading the changelog.

RocksDB runs without its write-ahead log (the changelog is the log), so what a crash keeps is
what reached an SST file. A worker's stores checkpoint: they flush their memtables once
`Checkpoints.every_records` changes or `every_s` seconds have gone unflushed, so a crash
replays at most about that much of the changelog, not all of it.
"""

from __future__ import annotations

import bisect
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from ..errors import StateError
from . import layout

__all__ = ["Checkpoints", "MemoryStore", "RocksStore", "StagedStore"]

_CHANGELOG_OFFSET = layout.CHANGELOG_OFFSET_KEY  # local only: never itself changelogged


class MemoryStore:
    """A sorted in-memory store with the same interface as `RocksStore`."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def items_between(self, lo: bytes, hi: bytes) -> Iterable[tuple[bytes, bytes]]:
        i = bisect.bisect_left(self._keys, lo)
        j = bisect.bisect_left(self._keys, hi)
        return [(k, self._data[k]) for k in self._keys[i:j]]

    def apply(self, changes: Mapping[bytes, bytes | None],
              changelog_offset: int | None = None) -> None:
        for key, value in changes.items():
            if value is None:
                if self._data.pop(key, None) is not None:
                    del self._keys[bisect.bisect_left(self._keys, key)]
            else:
                if key not in self._data:
                    bisect.insort(self._keys, key)
                self._data[key] = value
        if changelog_offset is not None:
            self._data[_CHANGELOG_OFFSET] = str(changelog_offset).encode()

    @property
    def changelog_offset(self) -> int | None:
        raw = self._data.get(_CHANGELOG_OFFSET)
        return int(raw) if raw is not None else None

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return [(k, self._data[k]) for k in self._keys if k != _CHANGELOG_OFFSET]

    def close(self) -> None:
        pass


_MEMORY: tuple[Cache, WriteBufferManager] | None = None
STATE_MEMORY_BYTES = 96 << 20  # RocksDB memtables and block cache of all stores of a process


def _memory() -> tuple[Cache, WriteBufferManager]:
    """The process's shared block cache and the write buffer manager charged to it."""
    global _MEMORY
    if _MEMORY is None:
        cache = Cache(STATE_MEMORY_BYTES)
        _MEMORY = cache, WriteBufferManager.new_write_buffer_manager_with_cache(
            STATE_MEMORY_BYTES // 2, False, cache)
    return _MEMORY


@dataclass(frozen=True)
class Checkpoints:
    """When a store flushes its memtables on its own: once this many changes, or changes this
    many seconds old, are not yet in an SST file (the flush runs in RocksDB's background
    threads; `every_s` is also enforced by `RocksStore.checkpoint_if_due`, which a worker
    calls for stores that receive no writes)."""

    every_records: int = 100_000
    every_s: float = 10.0


class RocksStore:
    """One partition's state in a RocksDB directory.

    Every RocksDB error (cannot open, cannot write, cannot flush, the directory deleted under
    it) is raised as a `StateError` that names the directory."""

    def __init__(self, path: Path, checkpoints: Checkpoints | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot open state at {path}: {exc.strerror or exc}") from None
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        # One memory budget for every store of the process (a worker holds one per partition):
        # memtables and block cache share it, so state memory does not grow with partitions.
        opts.set_write_buffer_manager(_memory()[1])
        opts.set_write_buffer_size(16 << 20)
        # Most lookups are misses (a new event id is not in the dedup table): a bloom filter
        # answers those without reading a block.
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        table.set_block_cache(_memory()[0])
        opts.set_block_based_table_factory(table)
        try:
            self._db = Rdict(str(path), opts)
        except Exception as exc:  # rocksdict raises plain Exception on corruption/lock
            raise StateError(f"cannot open state at {path}: {exc}") from exc
        self.path = path
        found = self._db.get(layout.FORMAT_KEY)
        if found is None:
            it = self._db.iter()
            it.seek_to_first()
            if it.valid():  # state from before format markers: format 1
                self._db.close()
                layout.check_format(b"1", f"the state directory {path}")
            wb = WriteBatch(raw_mode=True)
            wb.put(layout.FORMAT_KEY, str(layout.STATE_FORMAT_VERSION).encode())
            no_wal = WriteOptions()
            no_wal.disable_wal = True
            self._db.write(wb, no_wal)
            self._db.flush()  # durable at once: a crash must never leave data without it
        else:
            try:
                layout.check_format(found, f"the state directory {path}")
            except StateError:
                self._db.close()
                raise
        # No RocksDB write-ahead log: the Kafka changelog is the log. Each write batch carries
        # the changelog offset it corresponds to, so after a crash the store comes back as of
        # its last flushed batch (a prefix of the batches) and restore replays the changelog
        # from that offset on. Memtables are flushed on a clean close.
        self._write_opts = WriteOptions()
        self._write_opts.disable_wal = True
        self.checkpoints = checkpoints
        self._clock = clock
        self._unflushed = 0  # changes written since the last flush
        self._dirty_since: float | None = None  # when the oldest of them was written
        self.flushes = 0

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def items_between(self, lo: bytes, hi: bytes) -> Iterable[tuple[bytes, bytes]]:
        ro = ReadOptions()
        ro.set_iterate_upper_bound(hi)
        it = self._db.iter(ro)
        it.seek(lo)
        while it.valid():
            yield it.key(), it.value()
            it.next()

    def apply(self, changes: Mapping[bytes, bytes | None],
              changelog_offset: int | None = None) -> None:
        wb = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        if changelog_offset is not None:
            wb.put(_CHANGELOG_OFFSET, str(changelog_offset).encode())
        try:
            self._db.write(wb, self._write_opts)
        except Exception as exc:  # a failed background flush fails every later write
            raise StateError(f"cannot write state at {self.path}: {exc}") from None
        if self._dirty_since is None:
            self._dirty_since = self._clock()
        self._unflushed += len(changes)
        self.checkpoint_if_due()

    def checkpoint_if_due(self) -> bool:
        """Start a background flush when the checkpoint policy says so; True if one started.
        A flush that fails (a full disk, the directory gone) fails the next write."""
        c = self.checkpoints
        if c is None or self._dirty_since is None:
            return False
        if self._unflushed < c.every_records and self._clock() - self._dirty_since < c.every_s:
            return False
        self.flush(wait=False)
        return True

    def flush(self, wait: bool = True) -> None:
        """Memtables to SST files (with `wait=False`, in RocksDB's background threads)."""
        self._unflushed, self._dirty_since = 0, None
        try:
            self._db.flush(wait)
        except Exception as exc:
            raise StateError(f"cannot write state at {self.path}: {exc}") from None
        self.flushes += 1

    def present(self) -> bool:
        """False once the store's directory is gone (deleted under a running worker): nothing
        written from then on would survive a restart."""
        return (self.path / "CURRENT").is_file()

    @property
    def changelog_offset(self) -> int | None:
        raw = self._db.get(_CHANGELOG_OFFSET)
        return int(raw) if raw is not None else None

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return ((k, v) for k, v in self.items_between(b"\x01", b"\xff\xff\xff\xff")
                if k != _CHANGELOG_OFFSET)

    def close(self) -> None:
        """Flush the memtables and close (raises StateError when the flush fails; the store is
        closed either way)."""
        try:
            self._db.close()
        except Exception as exc:
            raise StateError(f"cannot flush state at {self.path} on close: {exc}") from None

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


def _newest(staged: tuple[Mapping[bytes, bytes | None], ...], key: bytes,
            stored: bytes | None) -> bytes | None:
    """`key`'s value in the newest staged set that has it, else `stored`."""
    for changes in reversed(staged):
        if key in changes:
            return changes[key]
    return stored


class StagedStore:
    """A partition store whose newest change sets wait for their changelog acknowledgement
    before they reach the store, while reads already see them.

    The worker stages a batch's changes as soon as the pipeline returns them, then runs the
    next batch while the changelog is in flight; `apply_oldest` writes the oldest staged set
    once its changelog offset is known. Reads may come from other threads: the tuple of
    staged sets is replaced, never mutated, and a set leaves it only after the store has it.
    """

    def __init__(self, store: RocksStore | MemoryStore) -> None:
        self.inner = store
        self._staged: tuple[Mapping[bytes, bytes | None], ...] = ()
        # id(staged set) -> (the set, its keys sorted); the set is held, so its id is not
        # reused while the entry lives; entries of written sets are dropped as they go
        self._sorted: dict[int, tuple[Mapping[bytes, bytes | None], list[bytes]]] = {}

    def get(self, key: bytes) -> bytes | None:
        for changes in reversed(self._staged):
            if key in changes:
                return changes[key]
        return self.inner.get(key)

    def items_between(self, lo: bytes, hi: bytes) -> Iterable[tuple[bytes, bytes]]:
        """The pairs in ``[lo, hi)``, in key order, as they will be once every staged set is
        written: the store's, with staged values over them (the newest wins, a staged
        deletion hides a key), and the keys only staged so far. (Listing only the store's
        keys made a lookup miss a tile its entity's newest event had just created.)"""
        staged = self._staged
        if not staged:
            yield from self.inner.items_between(lo, hi)
            return
        extra: set[bytes] = set()
        for changes in staged:
            keys = self._keys_of(changes)
            extra.update(keys[bisect.bisect_left(keys, lo):bisect.bisect_left(keys, hi)])
        only_staged = sorted(extra)
        i = 0
        for key, value in self.inner.items_between(lo, hi):
            while i < len(only_staged) and only_staged[i] <= key:
                if only_staged[i] != key:
                    v = _newest(staged, only_staged[i], None)
                    if v is not None:
                        yield only_staged[i], v
                i += 1
            value = _newest(staged, key, value)
            if value is not None:
                yield key, value
        for key in only_staged[i:]:
            v = _newest(staged, key, None)
            if v is not None:
                yield key, v

    def _keys_of(self, changes: Mapping[bytes, bytes | None]) -> list[bytes]:
        """A staged set's keys, sorted once (on the first range read that needs them)."""
        entry = self._sorted.get(id(changes))
        if entry is None or entry[0] is not changes:
            entry = self._sorted[id(changes)] = (changes, sorted(changes))
        return entry[1]

    def stage(self, changes: Mapping[bytes, bytes | None]) -> None:
        self._staged = (*self._staged, changes)

    @property
    def staged(self) -> int:
        return len(self._staged)

    def apply_oldest(self, changelog_offset: int) -> None:
        """Write the oldest staged change set, acknowledged at `changelog_offset`."""
        self.inner.apply(self._staged[0], changelog_offset=changelog_offset)
        self._staged = self._staged[1:]
        live = {id(c) for c in self._staged}
        for key in list(self._sorted):  # list(): one call, safe beside a reading thread
            if key not in live:
                self._sorted.pop(key, None)

    def close(self) -> None:
        self.inner.close()
