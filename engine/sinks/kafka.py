"""Decisions and side records to Kafka: a live poll's outputs, and a replay's topic sink.

Each input partition's outputs go to the same partition of the output topics (they are
co-partitioned with the input), with the producer's batch API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from ..kafka_io import send_all, send_records
from ..pipeline.records import PollResult
from ..topology import TopicNames
from .files import Sink

__all__ = ["TopicSink", "queue_outputs"]


async def queue_outputs(producer: AIOKafkaProducer, topics: TopicNames, poll: PollResult
                        ) -> list[tuple[asyncio.Future, int]]:
    """Queue a poll's decisions, dead-letter and late records; returns the acknowledgement
    futures (one per batch, with its record count)."""
    futures: list[tuple[asyncio.Future, int]] = []
    for p, r in poll.partitions.items():
        futures += await send_records(producer, topics.decisions, p,
                                      ((k, v, []) for k, v in r.decisions))
        if r.dlq:
            futures += await send_records(producer, topics.dlq, p,
                                          ((d.key, d.value, d.headers) for d in r.dlq))
        if r.late:
            futures += await send_records(producer, topics.late, p,
                                          ((d.key, d.value, d.headers) for d in r.late))
    return futures


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
