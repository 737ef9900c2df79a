from __future__ import annotations

import asyncio
import time

import pytest

from engine.scoring.batching import MicroBatcher
from engine.scoring.cache import PredictionCache


async def test_concurrent_requests_share_one_call_and_keep_their_order():
    calls: list[list[int]] = []

    def score_many(items: list[int]) -> list[int]:
        calls.append(items)
        return [i * 10 for i in items]

    b = MicroBatcher(score_many, max_size=64, max_wait_ms=20)
    results = await asyncio.gather(*(b.submit(i, budget_ms=500) for i in range(10)))
    await b.close()
    assert results == [i * 10 for i in range(10)]
    assert calls == [list(range(10))]


async def test_max_size_splits_batches():
    sizes: list[int] = []
    b = MicroBatcher(lambda items: sizes.append(len(items)) or items, max_size=4,
                     max_wait_ms=50)
    out = await asyncio.gather(*(b.submit(i, budget_ms=1000) for i in range(10)))
    await b.close()
    assert out == list(range(10))
    assert sizes == [4, 4, 2]


async def test_a_batch_never_waits_past_its_oldest_items_budget():
    b = MicroBatcher(lambda items: items, max_size=1000, max_wait_ms=1000, reserve_ms=2)
    t0 = time.monotonic()
    assert await b.submit("x", budget_ms=30) == "x"
    waited_ms = (time.monotonic() - t0) * 1000
    await b.close()
    assert waited_ms < 200  # flushed near 28 ms, not at the 1 s max wait


async def test_errors_reach_every_caller_of_the_batch():
    def boom(items):
        raise ValueError("model failed")

    b = MicroBatcher(boom, max_wait_ms=5)
    results = await asyncio.gather(*(b.submit(i, 100) for i in range(3)),
                                   return_exceptions=True)
    await b.close()
    assert all(isinstance(r, ValueError) for r in results)


def test_cache_hits_expires_and_evicts_least_recent():
    c: PredictionCache[float] = PredictionCache(max_entries=2, ttl_ms=100)
    assert c.get("a", 0) is None
    c.put("a", 0.1, 0)
    c.put("b", 0.2, 10)
    assert c.get("a", 50) == 0.1  # a is now the most recent
    c.put("c", 0.3, 60)  # evicts b
    assert c.get("b", 60) is None
    assert c.get("a", 99) == 0.1
    assert c.get("a", 100) is None  # TTL over
    assert c.hits == 2 and c.misses == 3
    assert c.hit_rate == pytest.approx(0.4)
