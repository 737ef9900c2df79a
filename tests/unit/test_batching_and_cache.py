from __future__ import annotations

import asyncio

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
    assert b.flush_reasons == {"max_wait": 1}


async def test_max_size_splits_batches():
    sizes: list[int] = []
    b = MicroBatcher(lambda items: sizes.append(len(items)) or items, max_size=4,
                     max_wait_ms=50)
    out = await asyncio.gather(*(b.submit(i, budget_ms=1000) for i in range(10)))
    await b.close()
    assert out == list(range(10))
    assert sizes == [4, 4, 2]
    assert b.flush_reasons == {"size": 2, "max_wait": 1}
    assert b.batches == 3


async def test_a_batch_never_waits_past_its_oldest_items_budget():
    # max wait 1 s, budget 30 ms: the batch is flushed for the item's budget, not the wait
    b = MicroBatcher(lambda items: items, max_size=1000, max_wait_ms=1000, reserve_ms=2)
    assert await b.submit("x", budget_ms=30) == "x"
    await b.close()
    assert b.flush_reasons == {"deadline": 1}


async def test_a_newcomer_with_a_tighter_budget_pulls_the_flush_earlier():
    b = MicroBatcher(lambda items: items, max_size=1000, max_wait_ms=5_000, reserve_ms=1)
    loose = asyncio.ensure_future(b.submit("loose", budget_ms=5_000))
    await asyncio.sleep(0)  # the batch is open and waiting on the loose item's budget
    assert await b.submit("tight", budget_ms=20) == "tight"
    assert await loose == "loose"
    await b.close()
    assert b.flush_reasons == {"deadline": 1} and b.batches == 1


def test_bad_settings_are_refused():
    for kw in ({"max_size": 0}, {"max_wait_ms": -1}, {"reserve_ms": -1}):
        with pytest.raises(ValueError, match="max_size >= 1"):
            MicroBatcher(lambda items: items, **kw)


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
