"""Broker + worker CLI + RocksDB state together: 1,000 events in, SIGKILL, 1,000 more, no loss."""

from __future__ import annotations

import orjson
import pytest

from tests.integration.worker_harness import (
    FraudTopics,
    WorkerProcess,
    consume_all,
    produce,
    wait_drained,
)

pytestmark = pytest.mark.integration


def _events(start: int, n: int) -> list[dict]:
    base_ms = 1_767_225_600_000
    return [{"event_id": f"slice-{i}", "card_id": f"c{i % 97:03d}", "merchant_id": f"m{i % 13}",
             "amount": round(5 + (i % 50) * 1.5, 2), "currency": "EUR", "country": "FR",
             "ts_ms": base_ms + i * 100} for i in range(start, start + n)]


def _records(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(e["card_id"].encode(), orjson.dumps(e)) for e in events]


async def test_worker_survives_sigkill_without_losing_events(kafka_bootstrap, unique_prefix,
                                                             tmp_path):
    topics = FraudTopics(unique_prefix)
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=4)
    first, second = _events(0, 1000), _events(1000, 1000)
    try:
        worker.start()
        await worker.wait_ready()
        await produce(kafka_bootstrap, topics.events, _records(first))
        decisions = await wait_drained(kafka_bootstrap, topics,
                                       {e["event_id"] for e in first}, worker)
        assert {orjson.loads(r.value)["event_id"] for r in decisions} == {
            e["event_id"] for e in first}
        assert any((tmp_path / "state").rglob("CURRENT")), "no RocksDB state was written"

        worker.kill()  # SIGKILL: no goodbye to the group, no flush
        worker.start()
        await worker.wait_ready()
        await produce(kafka_bootstrap, topics.events, _records(second))
        every_id = {e["event_id"] for e in first + second}
        await wait_drained(kafka_bootstrap, topics, every_id, worker)
    finally:
        worker.stop()
    decided = [orjson.loads(r.value) for r in await consume_all(kafka_bootstrap,
                                                                 topics.decisions)]
    assert {d["event_id"] for d in decided} == every_id  # duplicates allowed, loss not
    by_id: dict[str, set[str]] = {}
    for d in decided:
        by_id.setdefault(d["event_id"], set()).add(d["decision_id"])
    assert all(len(ids) == 1 for ids in by_id.values()), "a re-delivery changed a decision id"
