"""Micro-batching of concurrent single requests into one scoring call (the online path).

A batch is flushed when it holds `max_size` items, when `max_wait_ms` has passed since its first
item arrived, or when waiting longer would break the budget of its oldest item (its deadline
minus `reserve_ms`, the time the scoring call itself needs), whichever comes first. Results
return to each caller in the order of submission. `flush_reasons` counts which of the three
(``size``, ``max_wait``, ``deadline``) ended each batch.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Item(Generic[T]):
    value: T
    deadline_s: float
    future: asyncio.Future


class MicroBatcher(Generic[T, R]):
    """`score_many(items) -> results` (same length, same order) is called once per batch, in a
    worker thread so the event loop keeps serving. Times are the event loop's clock."""

    def __init__(self, score_many: Callable[[list[T]], Sequence[R]], max_size: int = 64,
                 max_wait_ms: float = 2.0, reserve_ms: float = 1.0) -> None:
        if max_size < 1 or max_wait_ms < 0 or reserve_ms < 0:
            raise ValueError("max_size >= 1, max_wait_ms >= 0 and reserve_ms >= 0")
        self._score_many = score_many
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000
        self.reserve_s = reserve_ms / 1000
        self._pending: list[_Item[T]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.flush_reasons: Counter[str] = Counter()  # size | max_wait | deadline

    async def submit(self, value: T, budget_ms: float) -> R:
        """Score `value` within about `budget_ms` from now (the batch will not wait past it)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        item = _Item(value, loop.time() + budget_ms / 1000, loop.create_future())
        self._pending.append(item)
        self._wake.set()
        return await item.future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            first = self._pending[0]
            wait_until = loop.time() + self.max_wait_s
            budget_until = min(i.deadline_s for i in self._pending) - self.reserve_s
            while len(self._pending) < self.max_size:
                remaining = min(wait_until, budget_until) - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
                self._wake.clear()
                # a newcomer with a tighter budget pulls the flush earlier
                budget_until = min(budget_until, self._pending[-1].deadline_s - self.reserve_s)
            self.flush_reasons["size" if len(self._pending) >= self.max_size
                               else "deadline" if budget_until < wait_until else "max_wait"] += 1
            batch, self._pending = self._pending[:self.max_size], self._pending[self.max_size:]
            if self._pending:
                self._wake.set()  # the overflow starts the next batch at once
            assert batch[0] is first
            self.batches += 1
            try:
                results = await asyncio.to_thread(self._score_many, [i.value for i in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"score_many returned {len(results)} results for "
                                       f"{len(batch)} items")
            except Exception as exc:
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(exc)
                continue
            for i, r in zip(batch, results, strict=True):
                if not i.future.done():
                    i.future.set_result(r)
