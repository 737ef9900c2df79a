"""`streamwise produce`: the topology's reference workload, or a JSONL file, to its topics."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from .config import EngineConfig
from .errors import ConfigError
from .event_files import keyed_events
from .kafka_io import OutRecord, connect_check, ensure_topics, partition_for, send_all
from .topology import Topology
from .worker import topic_specs

__all__ = ["produce"]

_CHUNK = 2000


async def produce(cfg: EngineConfig, topology: Topology, args: argparse.Namespace) -> int:
    k = cfg.kafka
    await connect_check(k.bootstrap)
    topics = topology.topics(k.topic_prefix)
    partitions = k.partitions or topology.default_partitions
    await ensure_topics(k.bootstrap, topic_specs(topics, partitions), k.replication_factor)
    producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap, acks="all",
                                max_batch_size=1 << 20, max_request_size=16 << 20)
    await producer.start()
    try:
        if args.file:
            events: Iterator[tuple[bytes | None, bytes]] = keyed_events(Path(args.file),
                                                                          topology.key_field)
            profiles: dict = {}
        else:
            try:
                workload = importlib.import_module(f"topologies.{topology.name}.workload")
            except ModuleNotFoundError:
                raise ConfigError(f"topology {topology.name} ships no workload; use --file") \
                    from None
            w = workload.generate(args.events, args.seed, duplicates=args.duplicates,
                                  disorder=args.disorder, late=args.late)
            key_f = topology.key_field
            events = ((e[key_f].encode(), orjson.dumps(e)) for e in w.events)
            profiles = {} if args.no_profiles else w.profiles
        if profiles:
            await _send(producer, topics.profiles, partitions,
                        ((c.encode(), orjson.dumps(p)) for c, p in profiles.items()))
            print(f"produced {len(profiles)} profiles to {topics.profiles}", file=sys.stderr)
        n, elapsed = await _send(producer, topics.events, partitions, events, rate=args.rate)
        print(f"produced {n} events to {topics.events} in {elapsed:.1f}s "
              f"({n / max(elapsed, 1e-9):,.0f} events/s)", file=sys.stderr)
    finally:
        await producer.stop()
    return 0


async def _send(producer: AIOKafkaProducer, topic: str, partitions: int,
                records: Iterator[tuple[bytes | None, bytes]], rate: float = 0.0
                ) -> tuple[int, float]:
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
                p = partition_for(key, partitions)
            else:
                p, rr = rr % partitions, rr + 1
            batch.append((p, (key, value, [])))
            if len(batch) >= chunk:
                break
        else:
            done = True
        await send_all(producer, topic, batch)
        sent += len(batch)
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return sent, time.monotonic() - start
