"""Smoke tests of the real broker with aiokafka: the client features the engine relies on
(Kafka 4.x dropped old protocol versions, so each one is exercised once here)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

pytestmark = pytest.mark.integration


async def consume(consumer: AIOKafkaConsumer, count: int, timeout: float = 30.0) -> list:
    """Read until `count` records arrived (bounded in time)."""
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for batch in batches.values():
            records.extend(batch)
    return records


async def test_produce_consume_commit(kafka_bootstrap, admin, unique_prefix):
    topic, group = f"{unique_prefix}orders", f"{unique_prefix}group"
    await admin.create_topics(topic, partitions=3)

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for i in range(30):
            await producer.send(topic, f"v{i}".encode(), key=f"k{i % 5}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        records = await consume(consumer, 30)
        assert len(records) == 30
        per_key: dict[bytes, list[int]] = {}
        for r in records:
            per_key.setdefault(r.key, []).append(int(r.value[1:]))
        assert all(values == sorted(values) for values in per_key.values())  # order per key
        await consumer.commit()
        partitions = [TopicPartition(topic, p) for p in range(3)]
        ends = await consumer.end_offsets(partitions)
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        assert committed == ends
        assert sum(ends.values()) == 30
    finally:
        await consumer.stop()

    # A new member of the same group resumes after the committed offsets: nothing left.
    again = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    await again.start()
    try:
        assert await consume(again, 1, timeout=3) == []
    finally:
        await again.stop()


async def test_two_mib_record(kafka_bootstrap, admin, unique_prefix):
    topic = f"{unique_prefix}big"
    await admin.create_topics(topic)
    payload = bytes(range(256)) * (2 * 1024 * 4)  # 2 MiB
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        await producer.send_and_wait(topic, payload)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        [record] = await consume(consumer, 1)
        assert record.value == payload
    finally:
        await consumer.stop()


async def test_transactions_read_committed(kafka_bootstrap, admin, unique_prefix):
    topic = f"{unique_prefix}txn"
    await admin.create_topics(topic, partitions=2)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{unique_prefix}tx"
    )
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(3):
                await producer.send(topic, f"committed-{i}".encode(), key=b"k")
        await producer.begin_transaction()
        for i in range(2):
            await producer.send(topic, f"aborted-{i}".encode(), key=b"k")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed-3", key=b"k")
    finally:
        await producer.stop()

    async def read(isolation: str, count: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            auto_offset_reset="earliest",
            isolation_level=isolation,
        )
        await consumer.start()
        try:
            values = [r.value for r in await consume(consumer, count, timeout=10)]
            await asyncio.sleep(0.5)  # anything extra would show up here
            values += [
                r.value
                for batch in (await consumer.getmany(timeout_ms=500)).values()
                for r in batch
            ]
            return values
        finally:
            await consumer.stop()

    assert await read("read_committed", 4) == [
        b"committed-0",
        b"committed-1",
        b"committed-2",
        b"committed-3",
    ]
    assert len(await read("read_uncommitted", 6)) == 6


async def test_consume_transform_produce_exactly_once(kafka_bootstrap, admin, unique_prefix):
    source, sink, group = f"{unique_prefix}in", f"{unique_prefix}out", f"{unique_prefix}eos"
    await admin.create_topics(source, sink, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(10):
            await producer.send(source, str(i).encode(), key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    txn = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{unique_prefix}eos-tx"
    )
    await consumer.start()
    await txn.start()
    try:
        records = await consume(consumer, 10)
        assert len(records) == 10
        offsets = {}
        async with txn.transaction():
            for r in records:
                await txn.send(sink, str(int(r.value) * 10).encode(), key=r.key)
                offsets[TopicPartition(r.topic, r.partition)] = r.offset + 1
            await txn.send_offsets_to_transaction(offsets, group)
        # The commit markers reach __consumer_offsets asynchronously after EndTxn returns.
        deadline = time.monotonic() + 15
        while True:
            committed = {tp: await consumer.committed(tp) for tp in offsets}
            if committed == offsets or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert committed == offsets
    finally:
        await txn.stop()
        await consumer.stop()

    reader = AIOKafkaConsumer(
        sink,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await reader.start()
    try:
        out = sorted(int(r.value) for r in await consume(reader, 10))
        assert out == [i * 10 for i in range(10)]
    finally:
        await reader.stop()


async def test_acknowledged_records_survive_broker_kill(kafka_broker, admin, unique_prefix):
    if not kafka_broker.controllable:
        pytest.skip(f"cannot kill the {kafka_broker.source} broker from the tests")
    topic = f"{unique_prefix}durable"
    await admin.create_topics(topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"acknowledged")
    finally:
        await producer.stop()

    await asyncio.to_thread(kafka_broker.kill)  # SIGKILL: no controlled shutdown
    try:
        await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(kafka_broker.start)  # log recovery

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        assert [r.value for r in await consume(consumer, 1, timeout=60)] == [b"acknowledged"]
    finally:
        await consumer.stop()
