"""`streamwise produce`: the topology's reference workload, or a JSONL file, to its topics.

`produce` is the command that *creates* a topology's topics (the input included) when they are
missing, with the configured partition count: producing is how a topology's input comes into
being on a development broker. It says which topics it created. A worker or a replay never
creates an input topic; they refuse to start without one.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from .config import EngineConfig
from .errors import ConfigError
from .event_files import keyed_events
from .kafka_io import OutRecord, connect_check, ensure_topics, new_producer, send_all
from .logs import release_held_logs
from .partitioning import Partitioner, partition_for
from .progress import Bar
from .topology import Topology
from .worker import topic_specs

__all__ = ["ProduceRequest", "produce"]

_CHUNK = 2000


@dataclass(frozen=True)
class ProduceRequest:
    """What to produce: `events` generated records (seeded), or the records of `file`."""

    events: int = 10_000
    rate: float = 0.0  # events/s; 0: as fast as possible
    seed: int = 7
    duplicates: float = 0.02
    disorder: float = 0.05
    late: float = 0.005
    file: Path | None = None
    profiles: bool = True
    side: tuple[str, ...] = ()  # agent topics (relative) to produce the workload's records to


async def produce(cfg: EngineConfig, topology: Topology, req: ProduceRequest) -> int:
    k = cfg.kafka
    if req.file is not None and not req.file.is_file():
        raise ConfigError(f"no such input file: {req.file}")
    if req.file is None and topology.workload is None:
        raise ConfigError(f"topology {topology.name} has no reference workload: give --file")
    agent_topics = sorted({a.topic for a in topology.agents if not a.in_process})
    for side in req.side:
        if side not in agent_topics:
            raise ConfigError(f"topology {topology.name} has no agent reading {side!r} (its "
                              f"agents read: {', '.join(agent_topics) or 'none'})")
        if req.file is not None:
            raise ConfigError(f"--side {side} produces the generator's records: not with --file")
    await connect_check(k)
    topics = topology.topics(k.topic_prefix)
    partitions = k.partitions or topology.default_partitions
    created = await ensure_topics(k, topic_specs(topics, partitions, [
        topology.agent_topic(a.topic, k.topic_prefix) for a in topology.agents],
        topology.reads_agent_tables), k.replication_factor)
    release_held_logs()  # the start-up checks passed
    if created:
        print(f"created {len(created)} topics with {partitions} partitions: "
              f"{', '.join(s.name for s in created)}", file=sys.stderr)
    producer = new_producer(k, acks="all", max_batch_size=1 << 20, max_request_size=16 << 20)
    await producer.start()
    try:
        total: int | None
        if req.file is not None:
            events: Iterator[tuple[bytes | None, bytes]] = keyed_events(req.file,
                                                                          topology.key_field)
            profiles: dict = {}
            total = None
        else:
            assert topology.workload is not None  # checked above
            w = topology.workload(req.events, req.seed, duplicates=req.duplicates,
                                  disorder=req.disorder, late=req.late)
            key_f = topology.key_field
            events = ((e[key_f].encode(), orjson.dumps(e)) for e in w.events)
            profiles = w.profiles if req.profiles else {}
            total = len(w.events)
        if profiles:
            with Bar("profiles", len(profiles), "profiles") as bar:
                await _send(producer, topics.profiles, partitions, topology.partitioner,
                            ((c.encode(), orjson.dumps(p)) for c, p in profiles.items()),
                            bar=bar)
            print(f"produced {len(profiles):,} profiles to {topics.profiles}", file=sys.stderr)
        with Bar("produce", total) as bar:
            n, elapsed = await _send(producer, topics.events, partitions, topology.partitioner,
                                     events, rate=req.rate, bar=bar)
        print(f"produced {n:,} events to {topics.events} in {elapsed:.1f}s "
              f"({n / max(elapsed, 1e-9):,.0f} events/s)", file=sys.stderr)
        for side in req.side:
            docs = getattr(w, "side", {}).get(side, [])
            topic = topology.agent_topic(side, k.topic_prefix)
            n, _ = await _send(producer, topic, partitions, topology.partitioner,
                               ((d[key_f].encode(), orjson.dumps(d)) for d in docs))
            print(f"produced {n:,} records to {topic}", file=sys.stderr)
    finally:
        await producer.stop()
    return 0


async def _send(producer: AIOKafkaProducer, topic: str, partitions: int,
                partitioner: Partitioner, records: Iterator[tuple[bytes | None, bytes]], rate: float = 0.0,
                bar: Bar | None = None) -> tuple[int, float]:
    """Send keyed records in chunks, at most `rate` per second (0: unlimited)."""
    start = time.monotonic()
    sent = 0
    done = False
    rr = 0
    chunk = _CHUNK if rate <= 0 else max(1, int(rate / 20))  # 20 sends a second when paced
    while not done:
        batch: list[tuple[int, OutRecord]] = []
        for key, value in records:
            if key is not None:
                p = partition_for(key, partitions, partitioner)
            else:
                p, rr = rr % partitions, rr + 1
            batch.append((p, (key, value, [])))
            if len(batch) >= chunk:
                break
        else:
            done = True
        await send_all(producer, topic, batch)
        sent += len(batch)
        if bar is not None:
            bar.advance(len(batch))
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return sent, time.monotonic() - start
