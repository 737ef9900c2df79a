"""The golden stream through a live worker on a real broker: same decisions, DLQ, late, tables.

The committed golden input (tests/golden) is produced record by record with the keys and record
times it names, each to its card's partition (the golden run decides a record produced to
another partition on its card's, as if forwarded at once; a live worker's forwarding depends
on timing, and the oracle tests in test_fraud_stream.py hold it), its profiles to the profiles
topic (record time = the profile's age), and one `streamwise worker fraud` decides it. Everything it emits must equal
the golden file, but for what a live worker may legitimately do differently from the
deterministic run: wall-clock fields (`decided_at_ms`, `stage_ms`, DLQ `received_at_ms`), and
the model path of rows whose model call timed out under machine load (the timeout is the
mechanism working; those rows must still carry the golden features and ids).
"""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from engine.partitioning import router
from engine.pipeline.routing import EntityRouter
from tests.golden import fraud_golden as golden
from tests.integration.worker_harness import (
    FraudTopics,
    WorkerProcess,
    consume_all,
    create_topics,
    fetch_json,
    wait_drained,
)

pytestmark = pytest.mark.integration

# Fields a model timeout may change; everything else of a decision must match.
_MODEL_FIELDS = ("decision_id", "score", "decision", "model", "path", "reasons")


def _routed(records) -> tuple[list, dict[tuple[int, int], tuple[int, int]], int]:
    """The records at their cards' partitions (records that are no event stay), where each
    record sits now -> where the golden input has it, and how many moved."""
    route = EntityRouter(golden.TOPOLOGY, router(golden.PARTITIONS))
    offsets = [0] * golden.PARTITIONS
    out, where, moved = [], {}, 0
    for r in records:
        p = route.partition_of(r.value)
        p = r.partition if p is None else p
        moved += p != r.partition
        where[(p, offsets[p])] = (r.partition, r.offset)
        out.append(dataclasses.replace(r, partition=p, offset=offsets[p]))
        offsets[p] += 1
    return out, where, moved


async def _produce(broker: str, topics: FraudTopics, records, profiles) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5,
                                max_request_size=16 << 20)
    await producer.start()
    try:
        futures = []
        for card, prof in profiles.items():
            value = {k: v for k, v in prof.items() if k != golden.PROFILE_TS_FIELD}
            futures.append(await producer.send(
                topics.profiles, orjson.dumps(value), key=card.encode(),
                partition=golden.partition_for(card.encode(), golden.PARTITIONS),
                timestamp_ms=prof[golden.PROFILE_TS_FIELD]))
        await asyncio.gather(*futures)
        futures = []
        for r in records:
            futures.append(await producer.send(topics.events, r.value, key=r.key,
                                               partition=r.partition,
                                               timestamp_ms=r.timestamp_ms))
            if len(futures) >= 1000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _by_partition(records) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in records:
        out.setdefault(r.partition, []).append(r)
    return out


async def test_a_live_worker_emits_the_golden_output(kafka_bootstrap, unique_prefix, tmp_path):
    records, profiles = golden.load_input()
    want = golden.read_golden(golden.VARIANTS[0]).splitlines()
    topics = FraudTopics(unique_prefix)
    await create_topics(kafka_bootstrap, [
        (topics.events, golden.PARTITIONS, {"max.message.bytes": str(8 << 20)}),
        (topics.profiles, golden.PARTITIONS, {"cleanup.policy": "compact"})])
    await _produce(kafka_bootstrap, topics, [], profiles)
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=golden.PARTITIONS)
    try:
        worker.start()
        await worker.wait_ready()
        routed, where, moved = _routed(records)
        assert moved > 50  # the golden input has them
        await _produce(kafka_bootstrap, topics, routed, {})
        ids = {orjson.loads(line)["event_id"] for line in want if b'"kind":"decision"' in line}
        await wait_drained(kafka_bootstrap, topics, ids, worker, timeout_s=300)
        cards = sorted({orjson.loads(line)["key"] for line in want
                        if b'"kind":"table"' in line})
        lookups = await fetch_json(worker.url, [f"/v1/tables/velocity/{c}" for c in cards])
    finally:
        worker.stop()

    golden_decisions = [orjson.loads(line) for line in want if b'"kind":"decision"' in line]
    live = [(r.partition, r.value) for r in await consume_all(kafka_bootstrap, topics.decisions)]
    assert len(live) == len(golden_decisions), "a decision was lost or emitted twice"
    timed_out, differ = 0, []
    for (p, body), expected in zip(live, golden_decisions, strict=True):
        doc = orjson.loads(golden.decision_line(p, body))
        doc["decided_at_ms"] = expected["decided_at_ms"]  # wall clock live, fixed in golden
        if doc == expected:
            continue
        if "timeout" in doc["reasons"]:
            timed_out += 1
            doc.update({k: expected[k] for k in _MODEL_FIELDS})
            if doc == expected:
                continue
        differ.append((expected, doc))
    assert not differ, f"{len(differ)} decisions differ; first, golden vs live: " + str(
        {k: (v, differ[0][1].get(k)) for k, v in differ[0][0].items() if differ[0][1].get(k) != v})

    for kind, topic in (("dlq", topics.dlq), ("late", topics.late)):
        emitted = []
        for r in await consume_all(kafka_bootstrap, topic):
            headers = {k: v.decode() for k, v in r.headers}
            headers["streamwise.topic"] = headers["streamwise.topic"].removeprefix(unique_prefix)
            at = (int(headers["streamwise.partition"]), int(headers["streamwise.offset"]))
            headers["streamwise.partition"], headers["streamwise.offset"] = map(
                str, where[at])  # named as the golden input has it
            emitted.append(golden.side_line(kind, r.partition, r.key, r.value, headers))
        expected = [x for x in want if b'"kind":"' + kind.encode() + b'"' in x]
        assert emitted == expected, (kind, set(emitted) ^ set(expected))

    lateness = golden.TOPOLOGY.time.allowed_lateness_ms
    tables = {}
    for line in want:
        if b'"kind":"table"' in line:
            row = orjson.loads(line)
            tables[(row["partition"], row["key"])] = row
    for card in cards:
        status, body = lookups[f"/v1/tables/velocity/{card}"]
        assert status == 200, (card, body)
        tb = golden.TOPOLOGY.table("velocity")
        horizon = body["watermark_ms"] - lateness - tb.retain_ms
        tiles = [[w["start_ms"], w["value"]["count"], w["value"]["sum"], w["value"]["min"],
                  w["value"]["max"], w["value"]["last"], w["value"]["distinct_count"]]
                 for w in body["windows"] if w["end_ms"] > horizon]
        expected = tables[(body["partition"], card)]
        assert (body["value"]["last_ts_ms"], tiles) == \
            (expected["last_ts_ms"], expected["tiles"]), card
    print(f"golden live run: {len(live)} decisions, {timed_out} model calls timed out")
