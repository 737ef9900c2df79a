"""Decisions and side records to Kafka: a live poll's outputs, and a replay's topic sink.

Each input partition's outputs go to the same partition of the output topics (they are
co-partitioned with the input), with the producer's batch API; records that belong to
another partition go to that partition of the repartition topic.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from ..kafka_io import send_all, send_records
from ..pipeline.records import InputRecord, PollResult
from ..topology import TopicNames
from .files import Sink

__all__ = ["TopicSink", "queue_outputs"]


async def queue_outputs(producer: AIOKafkaProducer, topics: TopicNames, poll: PollResult,
                        route: Callable[[bytes], int]) -> list[tuple[asyncio.Future, int]]:
    """Queue a poll's decisions, dead-letter and late records, its agents' progress, and its
    records to forward (to the repartition topic's partition `route` gives their entity key);
    returns the acknowledgement futures (one per batch, with its record count)."""
    futures: list[tuple[asyncio.Future, int]] = []
    forward: dict[int, list[tuple[bytes, InputRecord]]] = defaultdict(list)
    for r in poll.partitions.values():
        for kb, rec in r.forward:
            forward[route(kb)].append((kb, rec))
    for p, records in forward.items():
        futures += await _send_forwarded(producer, topics.repartition, p, records, topics.events)
    for p, r in poll.partitions.items():
        futures += await send_records(producer, topics.decisions, p,
                                      ((k, v, []) for k, v in r.decisions))
        if r.dlq:
            futures += await send_records(producer, topics.dlq, p,
                                          ((d.key, d.value, d.headers) for d in r.dlq))
        if r.late:
            futures += await send_records(producer, topics.late, p,
                                          ((d.key, d.value, d.headers) for d in r.late))
        if r.progress is not None:
            futures += await send_records(producer, topics.progress, p,
                                          [(None, r.progress, [])])
    return futures


async def _send_forwarded(producer: AIOKafkaProducer, topic: str, partition: int,
                          records: Sequence[tuple[bytes, InputRecord]], source: str
                          ) -> list[tuple[asyncio.Future, int]]:
    """Forward records unchanged but for their key (the entity's): value and Kafka timestamp
    kept (the owner's future-time check compares with it), and a header naming the record it
    copies (``streamwise.origin``: topic/partition/offset)."""
    sent: list[tuple[asyncio.Future, int]] = []
    batch, count = producer.create_batch(), 0
    for kb, rec in records:
        ts = rec.timestamp if rec.timestamp is not None and rec.timestamp >= 0 else None
        headers = [("streamwise.origin", f"{source}/{rec.partition}/{rec.offset}".encode())]
        if batch.append(key=kb, value=rec.value, timestamp=ts, headers=headers) is None:
            if count:
                sent.append((await producer.send_batch(batch, topic, partition=partition),
                             count))
                batch, count = producer.create_batch(), 0
            if batch.append(key=kb, value=rec.value, timestamp=ts, headers=headers) is None:
                raise ValueError(f"record of {len(rec.value or b'')} bytes exceeds the batch "
                                 "limit")
        count += 1
    if count:
        sent.append((await producer.send_batch(batch, topic, partition=partition), count))
    return sent


class TopicSink(Sink):
    """The decision records, as the live worker writes them, to an explicit topic."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._pending: list[tuple[int, Sequence[Any]]] = []

    def write(self, partition: int, decisions: Sequence[Any]) -> None:
        self._pending.append((partition, decisions))

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        await send_all(self._producer, self._topic,
                       ((p, (d[0], d[1], [])) for p, decisions in pending for d in decisions))
