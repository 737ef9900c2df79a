"""Kafka adapter: the one factory of every Kafka client the engine creates (consumer, producer,
admin: `new_consumer`, `new_producer`, `new_admin`, all built from `client_options`), topic
creation, batch produce, reading a topic to its end.

Every function that talks to Kafka takes a `KafkaTarget`: the engine's `KafkaConfig` (bootstrap
servers plus client security), or a bare ``"host:port"`` for a plaintext broker (tests, bench).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from .config import KafkaConfig, KafkaSecurity
from .errors import ConfigError
from .kafka_security import diagnose, security_options
from .partitioning import partition_for

__all__ = [
    "KafkaTarget",
    "MissingTopicError",
    "OutRecord",
    "TopicSpec",
    "bootstrap_of",
    "client_options",
    "connect_check",
    "new_admin",
    "new_consumer",
    "new_producer",
    "ensure_topics",
    "partition_for",
    "queue_all",
    "read_to_end",
    "send_all",
    "send_records",
    "wait_for_coordinator",
]

log = logging.getLogger(__name__)

OutRecord = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers
KafkaTarget = KafkaConfig | str  # a str: bootstrap servers of a plaintext broker

_PLAINTEXT = KafkaSecurity()


class MissingTopicError(ConfigError):
    """A topic the engine reads does not exist (it never creates an input by accident)."""


def bootstrap_of(target: KafkaTarget) -> str:
    return target if isinstance(target, str) else target.bootstrap


def _security(target: KafkaTarget) -> KafkaSecurity:
    return _PLAINTEXT if isinstance(target, str) else target.security


def client_options(target: KafkaTarget) -> dict[str, Any]:
    """Bootstrap servers and client security (TLS context, SASL) as aiokafka keyword
    arguments: what every consumer, producer and admin client of the engine is built with."""
    return {"bootstrap_servers": bootstrap_of(target), **security_options(_security(target))}


def new_consumer(target: KafkaTarget, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer of `target` (not started); `options` are aiokafka's consumer settings."""
    return AIOKafkaConsumer(*topics, **client_options(target), **options)


def new_producer(target: KafkaTarget, **options: Any) -> AIOKafkaProducer:
    """A producer of `target` (not started); `options` are aiokafka's producer settings."""
    return AIOKafkaProducer(**client_options(target), **options)


def new_admin(target: KafkaTarget, **options: Any) -> AIOKafkaAdminClient:
    """An admin client of `target` (not started)."""
    return AIOKafkaAdminClient(**client_options(target), **options)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


async def connect_check(target: KafkaTarget, timeout_s: float = 10.0) -> None:
    """Fail fast with a one-line ConfigError when no broker answers at the bootstrap servers,
    or the connection's TLS or SASL fails (the error says which and why); nothing is
    logged on the way."""
    await diagnose(bootstrap_of(target), _security(target), timeout_s)


async def missing_topics(target: KafkaTarget, names: Sequence[str]) -> list[str]:
    """Which of `names` do not exist (asked without a metadata request for them, which a
    broker with auto.create.topics.enable would answer by creating them)."""
    admin = new_admin(target, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    return [n for n in names if n not in existing]


async def ensure_topics(target: KafkaTarget, specs: Sequence[TopicSpec],
                        replication_factor: int = 1, must_exist: Sequence[str] = ()
                        ) -> list[TopicSpec]:
    """Create missing topics; refuse to run when an existing one has the wrong partition count,
    or when a topic named in `must_exist` (an input) is missing: it is never created by
    accident. Returns the topics it created.

    Streamwise co-partitions its topics with the input (decisions, DLQ, late and changelog of
    input partition p go to partition p), so partition counts must match exactly.
    """
    bootstrap = bootstrap_of(target)
    admin = new_admin(target, request_timeout_ms=15000)
    await admin.start()
    try:
        # list_topics, not describe_topics: a metadata request for a missing topic would let a
        # broker with auto.create.topics.enable create it with the wrong partition count.
        existing = set(await admin.list_topics())
        absent = [n for n in must_exist if n not in existing]
        if absent:
            raise MissingTopicError(f"input topic {absent[0]} does not exist at {bootstrap} "
                                    "(check --topic-prefix and --broker; `streamwise produce` "
                                    "creates it, or pass --create-input-topic)")
        missing = [s for s in specs if s.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was faster
                await admin.create_topics([
                    NewTopic(s.name, s.partitions, replication_factor, topic_configs=s.config)
                    for s in missing])
        have = await _wait_for_metadata(admin, [s.name for s in specs])
        for s in specs:
            if have[s.name] != s.partitions:
                raise ConfigError(f"topic {s.name} has {have[s.name]} partitions, expected "
                                  f"{s.partitions}; pass --partitions {have[s.name]}")
    finally:
        await admin.close()
    if missing:
        await _wait_for_leaders(target, missing)
    return missing


async def wait_for_coordinator(target: KafkaTarget, group: str, timeout_s: float = 30.0
                               ) -> None:
    """Until the brokers name a coordinator for `group`. On a new cluster the first group
    request creates the offsets topic, and a consumer joining meanwhile logs an ERROR per
    retry; asking here first waits that out quietly (a consumer still copes if time runs
    out)."""
    admin = new_admin(target, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                await admin.find_coordinator(group)
                return
            except KafkaError as exc:
                if not exc.retriable or asyncio.get_running_loop().time() > deadline:
                    return
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def _wait_for_leaders(target: KafkaTarget, specs: Sequence[TopicSpec],
                            timeout_s: float = 30.0) -> None:
    """Until the leader of every partition of `specs` serves it. A new partition's leader
    is in the metadata before that broker has taken the partition on (KRaft applies it a
    little later); a produce in between fails with NOT_LEADER_OR_FOLLOWER, which aiokafka
    retries with a warning per partition. A ListOffsets request meets the same check, and
    aiokafka retries that one quietly, so asking every partition's end offset waits it out."""
    consumer = new_consumer(target, request_timeout_ms=int(timeout_s * 1000))
    await consumer.start()
    try:
        tps = [TopicPartition(s.name, p) for s in specs for p in range(s.partitions)]
        await consumer.end_offsets(tps)  # retried until request_timeout_ms
    except KafkaError as exc:
        raise ConfigError(f"new topics not served after {timeout_s:.0f}s: {exc}") from None
    finally:
        await consumer.stop()


async def _wait_for_metadata(admin: AIOKafkaAdminClient, names: list[str],
                             timeout_s: float = 30.0) -> dict[str, int]:
    """Partition count of each topic, once all of them are visible with leaders."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        topics = await admin.describe_topics(names)
        if all(t.get("error_code", 0) == 0 and t["partitions"]
               and all(p["leader"] >= 0 for p in t["partitions"]) for t in topics):
            return {t["topic"]: len(t["partitions"]) for t in topics}
        if asyncio.get_running_loop().time() > deadline:
            raise ConfigError(f"topics not visible after {timeout_s}s: {names}")
        await asyncio.sleep(0.2)


async def send_records(producer: AIOKafkaProducer, topic: str, partition: int,
                       records: Iterable[OutRecord]) -> list[tuple[asyncio.Future, int]]:
    """Queue records with the producer's batch API; returns (future, record count) per batch.

    One `send_batch` per ~1 MiB instead of one `send` per record: the per-message path of
    aiokafka caps near 44k records/s on these machines.
    """
    sent: list[tuple[asyncio.Future, int]] = []
    batch, count = producer.create_batch(), 0
    for key, value, headers in records:
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            if count == 0:
                raise ValueError(f"record of {len(value or b'')} bytes exceeds the batch limit")
            sent.append((await producer.send_batch(batch, topic, partition=partition), count))
            batch, count = producer.create_batch(), 0
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"record of {len(value or b'')} bytes exceeds the batch limit")
        count += 1
    if count:
        sent.append((await producer.send_batch(batch, topic, partition=partition), count))
    return sent


async def queue_all(producer: AIOKafkaProducer, topic: str,
                    records: Iterable[tuple[int, OutRecord]]) -> list[asyncio.Future]:
    """Queue (partition, record) pairs with the batch API, grouped by partition (order kept
    within each); returns the acknowledgement futures, one per batch."""
    by_partition: dict[int, list[OutRecord]] = {}
    for partition, record in records:
        by_partition.setdefault(partition, []).append(record)
    futures = []
    for partition, recs in by_partition.items():
        futures += [fut for fut, _ in await send_records(producer, topic, partition, recs)]
    return futures


async def send_all(producer: AIOKafkaProducer, topic: str,
                   records: Iterable[tuple[int, OutRecord]]) -> None:
    """`queue_all`, then wait until every record is acknowledged."""
    await asyncio.gather(*await queue_all(producer, topic, records))


async def read_to_end(target: KafkaTarget, topic: str, partitions: Sequence[int] | None = None,
                      start_offsets: dict[int, int] | None = None, chunk: int = 5000):
    """Yield lists of records from `start_offsets` (default: beginning) up to the end offsets
    seen when called; never waits for new records, so it always terminates."""
    consumer = new_consumer(target, enable_auto_commit=False, auto_offset_reset="earliest",
                            fetch_max_wait_ms=100)
    await consumer.start()
    try:
        if partitions is None:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await consumer._client.force_metadata_update()  # noqa: SLF001 (first use)
                parts = consumer.partitions_for_topic(topic) or set()
            partitions = sorted(parts)
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            start = (start_offsets or {}).get(tp.partition)
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
        remaining = {tp for tp in tps if ends[tp] > 0}
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=chunk)
            for tp, records in batches.items():
                kept = [r for r in records if r.offset < ends[tp]]
                if kept:
                    yield kept
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
