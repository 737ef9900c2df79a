"""What every worker holds whole, whatever partitions it owns: the entity profiles and the
owners of every partition (the members topic), loaded at start and tailed after."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from ..kafka_io import KafkaTarget, new_consumer, read_to_end
from ..profiles import apply_profile_records
from ..routing import OwnerMap
from ..topology import TopicNames

__all__ = ["SharedState"]

log = logging.getLogger("streamwise.worker")


class SharedState:
    """Profiles (entity key -> profile) and partition owners, kept current."""

    def __init__(self, kafka: KafkaTarget, topics: TopicNames, partitions: int) -> None:
        self._kafka = kafka
        self._topics = topics
        self._partitions = partitions
        self.profiles: dict[str, Mapping[str, Any]] = {}
        self.owners = OwnerMap()  # partition -> worker, from the members topic
        self.profiles_loaded = False
        self._profile_positions: dict[int, int] = {}
        self._members_position = 0

    async def load(self) -> None:
        """Read profiles and members to their ends (before the worker joins its group)."""
        async for chunk in read_to_end(self._kafka, self._topics.profiles):
            self._apply_profiles(chunk)
        self.profiles_loaded = True
        log.info("loaded %d profiles", len(self.profiles))
        async for chunk in read_to_end(self._kafka, self._topics.members):
            self.owners.apply_all((m.key, m.value) for m in chunk)
            self._members_position = chunk[-1].offset + 1

    async def tail(self, stopping: asyncio.Event) -> None:
        """Keep profiles and partition owners current after start (a batch job may republish
        profiles at any time; workers come and go): one consumer without a group, from where
        the initial loads stopped."""
        consumer = new_consumer(self._kafka, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=500)
        await consumer.start()
        try:
            tps = [TopicPartition(self._topics.profiles, p) for p in range(self._partitions)]
            members = TopicPartition(self._topics.members, 0)
            consumer.assign([*tps, members])
            for tp in tps:
                consumer.seek(tp, self._profile_positions.get(tp.partition, 0))
            consumer.seek(members, self._members_position)
            while not stopping.is_set():
                try:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
                except KafkaError as exc:  # an outage: one line (no trace), retried
                    log.warning("profile refresh failed (%r); retrying", exc)
                    await asyncio.sleep(1.0)
                    continue
                for tp, records in batches.items():
                    if tp == members:
                        self.owners.apply_all((m.key, m.value) for m in records)
                    else:
                        self._apply_profiles(records)
        finally:
            await consumer.stop()

    def _apply_profiles(self, chunk: list) -> None:
        for m in chunk:
            self._profile_positions[m.partition] = m.offset + 1
        apply_profile_records(self.profiles, chunk)
