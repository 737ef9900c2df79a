"""A bounded, time-limited prediction cache for the online path (repeated feature vectors)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["PredictionCache"]

V = TypeVar("V")


class PredictionCache(Generic[V]):
    """LRU with a TTL: at most `max_entries`, each valid for `ttl_ms` after it was stored.

    Keys should hold the model version and the exact feature values, so a new model or any
    changed feature is a miss. Times are passed in (ms), so tests and replay control them.
    """

    def __init__(self, max_entries: int = 10_000, ttl_ms: int = 60_000) -> None:
        if max_entries < 1 or ttl_ms <= 0:
            raise ValueError("max_entries >= 1 and ttl_ms > 0")
        self.max_entries = max_entries
        self.ttl_ms = ttl_ms
        self._data: OrderedDict[Hashable, tuple[int, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, now_ms: int) -> V | None:
        entry = self._data.get(key)
        if entry is None or now_ms - entry[0] >= self.ttl_ms:
            if entry is not None:
                del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, value: V, now_ms: int) -> None:
        self._data[key] = (now_ms, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._data)
