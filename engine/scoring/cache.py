"""A bounded, time-limited prediction cache for the online path (repeated feature vectors)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["CachedModel", "CachingWrap", "PredictionCache"]

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


class CachedModel:
    """A model whose scores of identical rows come from a `PredictionCache` within its TTL.

    Valid where the same input must give the same score: a key is the model version plus the
    row's exact float32 bytes, so another version or any changed feature is a miss. The online
    path uses it (`POST /v1/score` retried, or the same event scored twice); the stream does
    not: its feature vectors fold the event itself in (amount, counts, time since the last
    event), so a repeat is vanishingly rare and the lookups would cost more than they save.
    """

    def __init__(self, model: Any, cache: PredictionCache[float], now_ms: Callable[[], int],
                 lock: threading.Lock) -> None:
        self._model = model
        self._cache = cache
        self._now_ms = now_ms
        self._lock = lock
        self.ref = model.ref
        self.manifest = model.manifest

    def run_options(self) -> Any:
        return self._model.run_options()

    def score_many(self, rows: np.ndarray, run_options: Any = None) -> np.ndarray:
        now = self._now_ms()
        keys = [(self.ref, row.tobytes()) for row in rows]
        out = np.empty(len(rows), dtype=np.float64)
        with self._lock:
            found = [self._cache.get(k, now) for k in keys]
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:
            scores = self._model.score_many(rows[todo], run_options)
            with self._lock:
                for i, s in zip(todo, scores.tolist(), strict=True):
                    self._cache.put(keys[i], s, now)
            out[todo] = scores
        for i, v in enumerate(found):
            if v is not None:
                out[i] = v
        return out


class CachingWrap:
    """A model wrapper for `FallbackChain(wrap=...)`: every model through one cache (after
    `inner`, the fault injector of chaos tests, when there is one)."""

    def __init__(self, cache: PredictionCache[float], now_ms: Callable[[], int],
                 inner: Callable[[Any], Any] | None = None) -> None:
        self.cache = cache
        self._now_ms = now_ms
        self._inner = inner
        self._lock = threading.Lock()

    def __call__(self, model: Any) -> CachedModel:
        if self._inner is not None:
            model = self._inner(model)
        return CachedModel(model, self.cache, self._now_ms, self._lock)
