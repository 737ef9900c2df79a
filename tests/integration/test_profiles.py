"""Profiles republished while a worker runs are picked up without a restart."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from tests.integration.worker_harness import FraudTopics, WorkerProcess, consume_all, produce

pytestmark = pytest.mark.integration


def _event(i: int, card: str) -> tuple[bytes, bytes]:
    e = {"event_id": f"p-{i}", "card_id": card, "merchant_id": "m1", "amount": 100.0,
         "currency": "EUR", "country": "FR", "ts_ms": 1_767_225_600_000 + i * 1000}
    return card.encode(), orjson.dumps(e)


async def test_a_profile_published_after_start_is_used(kafka_bootstrap, unique_prefix, tmp_path):
    topics = FraudTopics(unique_prefix)
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=2)
    try:
        worker.start()
        await worker.wait_ready()
        await produce(kafka_bootstrap, topics.events, [_event(0, "c-late-profile")])
        await _until_decided(kafka_bootstrap, topics, "p-0")
        await produce(kafka_bootstrap, topics.profiles, [
            (b"c-late-profile", orjson.dumps({"avg_amount_90d": 50.0, "home_country": "DE"}))])
        deadline = time.monotonic() + 60
        features = None
        i = 1
        while time.monotonic() < deadline:
            await produce(kafka_bootstrap, topics.events, [_event(i, "c-late-profile")])
            await asyncio.sleep(1.0)
            decided = {orjson.loads(r.value)["event_id"]: orjson.loads(r.value)
                       for r in await consume_all(kafka_bootstrap, topics.decisions)}
            if f"p-{i}" in decided and decided[f"p-{i}"]["features"]["is_foreign"] is not None:
                features = decided[f"p-{i}"]["features"]
                break
            i += 1
        assert features is not None, "the new profile was never used\n" + worker.log_tail()
        assert features["amount_over_avg"] == 2.0 and features["is_foreign"] == 1
        first = decided["p-0"]["features"]
        assert first["amount_over_avg"] is None  # decided before the profile existed
    finally:
        worker.stop()


async def _until_decided(broker: str, topics: FraudTopics, event_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(orjson.loads(r.value)["event_id"] == event_id
               for r in await consume_all(broker, topics.decisions)):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{event_id} never decided")
