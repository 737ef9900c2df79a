"""The bench data set: the reference workload, generated and encoded once per run.

Every system reads the same bytes in the same partitions. Each system (and repeat) gets its
own topic prefix, so consumer groups, outputs, changelogs and the open-loop phase of one
system never touch another's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer

from engine.kafka_io import ensure_topics, new_producer, partition_for, queue_all, send_all
from engine.topology import TopicNames, Topology
from engine.topology_loader import load_topology
from engine.worker import topic_specs

__all__ = ["DataSet", "build", "encode", "open_loop", "open_loop_events", "produce_backlog"]

Encoded = list[tuple[int, bytes, bytes]]  # partition, key, value; in production order
# The baselines (Faust, Quix Streams) are written for the card-fraud workload: the bench runs
# the reference topology, found like any other (`use`: a variant of it, as the Streamwise rows).
BENCH_TOPOLOGY = "fraud"


def use(spec: str) -> None:
    """Bench the fraud topology `spec` names (e.g. ``topologies.fraud:WITH_MERCHANT_RISK``) in
    the Streamwise rows; ValueError unless it is named ``fraud`` (the baselines' topics)."""
    global BENCH_TOPOLOGY
    topo = load_topology(spec)
    if topo.name != "fraud" or topo.workload is None:
        raise ValueError(f"bench --topology: {spec} is topology {topo.name!r}; the bench runs "
                         "a fraud topology (the baselines are written for its workload)")
    BENCH_TOPOLOGY = spec


def topology() -> Topology:
    """The benched topology (it has a reference workload)."""
    topo = load_topology(BENCH_TOPOLOGY)
    assert topo.workload is not None
    return topo


@dataclass(frozen=True)
class DataSet:
    """Encoded events and card profiles, ready to send."""

    events: Encoded
    profiles: Encoded
    partitions: int
    next_start_ms: int  # event time for a later open-loop workload (after every backlog event)


def encode(events: list[dict], partitions: int) -> Encoded:
    out = []
    for e in events:
        key = e["card_id"].encode()
        out.append((partition_for(key, partitions), key, orjson.dumps(e)))
    return out


def build(n_events: int, partitions: int, seed: int = 7) -> DataSet:
    """The reference workload of `n_events` records (2% duplicates, disorder, late)."""
    w = topology().workload(n_events, seed)
    profiles = [(partition_for(c.encode(), partitions), c.encode(), orjson.dumps(p))
                for c, p in w.profiles.items()]
    last = max((e["ts_ms"] for e in w.events), default=0)
    return DataSet(encode(w.events, partitions), profiles, partitions, last + 10_000)


def open_loop_events(ds: DataSet, n_events: int, seed: int,
                     start_ms: int | None = None) -> Encoded:
    """Fresh events (new ids) whose event time starts after the backlog's (or at
    `start_ms`: a later phase starts after the one before)."""
    w = topology().workload(n_events, seed, start_ms=start_ms or ds.next_start_ms)
    return encode(w.events, ds.partitions)


def newest_event_ms(events: Encoded) -> int:
    return max((orjson.loads(value)["ts_ms"] for _, _, value in events), default=0)


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return new_producer(bootstrap, acks="all",
                        max_batch_size=1 << 20, max_request_size=16 << 20, linger_ms=0)


async def produce_backlog(bootstrap: str, topics: TopicNames, ds: DataSet) -> None:
    """Create every topic of the fraud topology under this prefix; send profiles and events."""
    await ensure_topics(bootstrap, topic_specs(topics, ds.partitions))
    producer = _producer(bootstrap)
    await producer.start()
    try:
        await send_all(producer, topics.profiles, ((p, (k, v, [])) for p, k, v in ds.profiles))
        for i in range(0, len(ds.events), 20_000):
            await send_all(producer, topics.events,
                           ((p, (k, v, [])) for p, k, v in ds.events[i:i + 20_000]))
    finally:
        await producer.stop()


async def open_loop(bootstrap: str, topic: str, events: Encoded, rate_per_s: float,
                    max_s: float) -> tuple[int, float]:
    """Send `events` at a fixed rate, whatever the consumer does (open loop); returns the
    number sent and the seconds it took (a producer that falls behind shows here). Each tick
    sends what is due by then; record timestamps are set at send."""
    producer = _producer(bootstrap)
    await producer.start()
    futures: list = []
    sent = 0
    try:
        start = time.monotonic()
        while sent < len(events):
            elapsed = time.monotonic() - start
            if elapsed > max_s:
                break
            due = min(len(events), int(elapsed * rate_per_s) + 1)
            if due > sent:
                futures += await queue_all(producer, topic,
                                           ((p, (k, v, [])) for p, k, v in events[sent:due]))
                sent = due
            await asyncio.sleep(0.01)  # ~100 sends per second and partition at most
        elapsed = time.monotonic() - start
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent, elapsed
