"""Online scoring on a worker: concurrent `POST /v1/score` requests micro-batched into one
read-only pipeline preview per partition and one model call per partition.

Admission is bounded: past `max_pending` requests in flight the next one is refused at once
(HTTP 429) instead of queueing without limit. Scoring runs in a worker thread with its own
fallback chain (its own breakers and statistics), so the stream's hot path and the online
path never share mutable scoring state; both read the same model registry and tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .partitioning import router
from .pipeline import Decider, Preview
from .pipeline.preview import preview_many
from .scoring.batching import MicroBatcher

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["NotOwned", "Overloaded", "OnlineScorer"]


class Overloaded(Exception):
    """Too many online requests in flight."""


class NotOwned(Exception):
    """The key's partition left this worker while the request waited."""


@dataclass(frozen=True, slots=True)
class _Item:
    partition: int
    event: Any  # validated by the topology's decoder


class OnlineScorer:
    def __init__(self, worker: Worker, decider: Decider, max_pending: int = 256,
                 max_batch: int = 64, max_wait_ms: float = 1.0) -> None:
        self._worker = worker
        self._decider = decider
        self._route = router(worker.partitions, worker.topology.partitioner)
        self.max_pending = max_pending
        self._pending = 0
        self._batcher: MicroBatcher[_Item, Preview | None] = MicroBatcher(
            self._score_many, max_size=max_batch, max_wait_ms=max_wait_ms, reserve_ms=2.0)

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered (the admission limit is `max_pending`)."""
        return self._pending

    async def score(self, key: bytes, event: Any, budget_ms: float) -> Preview:
        """The decision for one validated event within `budget_ms` (TimeoutError past it)."""
        if self._pending >= self.max_pending:
            raise Overloaded(f"{self._pending} online requests in flight")
        self._pending += 1
        try:
            item = _Item(self._route(key), event)
            # a timeout scope, not wait_for: no task per request (Python 3.11's wait_for
            # wraps the coroutine in one)
            async with asyncio.timeout(budget_ms / 1000):
                result = await self._batcher.submit(item, budget_ms)
        finally:
            self._pending -= 1
        if result is None:
            raise NotOwned(f"partition {item.partition} is not owned by this worker")
        return result

    async def close(self) -> None:
        await self._batcher.close()

    def _score_many(self, items: list[_Item]) -> Sequence[Preview | None]:
        """One batch (in a worker thread): previews of every partition's events with one
        decider call for all, results in item order."""
        out: list[Preview | None] = [None] * len(items)
        by_partition: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            by_partition.setdefault(item.partition, []).append(i)
        with self._worker.state_lock:  # the partitions' stores stay open while we read
            batches = []
            for p, idx in by_partition.items():
                state = self._worker.pipelines.get(p)
                if state is not None:  # else revoked meanwhile: NotOwned, the caller forwards
                    batches.append((state, idx))
            previews = preview_many([(state, [items[i].event for i in idx])
                                     for state, idx in batches], self._worker.profiles,
                                    self._decider, self._worker.clock.now_ms())
        for (_, idx), got in zip(batches, previews, strict=True):
            for i, prev in zip(idx, got, strict=True):
                out[i] = prev
        self._worker.metrics.observe_online_chain(self._worker.topology.name,
                                                  self._decider.drain_stats())
        return out
