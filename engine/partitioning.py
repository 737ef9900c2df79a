"""Which partition an entity key belongs to (pure): the partitioner a topology's producers use.

Kafka's clients disagree: the Java client, aiokafka and kafka-python hash a key with murmur2;
every client built on librdkafka (kcat, confluent-kafka for Python, Go and .NET) uses CRC32 by
default (``consistent_random``). A topology names its producers' partitioner so that their
records are already where the engine decides them; a record elsewhere (another partitioner, a
null key, a key that is not the entity) is forwarded to its entity's partition first
(`engine.worker` and the repartition topic), so the entity's state is never split.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Literal

from .kernel import murmur2_partition

__all__ = ["PARTITIONERS", "Partitioner", "partition_for", "router"]

Partitioner = Literal["murmur2", "crc32"]
PARTITIONERS: tuple[Partitioner, ...] = ("murmur2", "crc32")


def _crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's ``consistent`` partitioner: CRC-32 (IEEE, as zlib) modulo the count."""
    return zlib.crc32(key) % partitions


_BY_NAME: dict[str, Callable[[bytes, int], int]] = {"murmur2": murmur2_partition,
                                                     "crc32": _crc32_partition}


def partition_for(key: bytes, partitions: int, partitioner: Partitioner = "murmur2") -> int:
    """The partition of `key` among `partitions` under `partitioner`."""
    return _BY_NAME[partitioner](key, partitions)


def router(partitions: int, partitioner: Partitioner = "murmur2") -> Callable[[bytes], int]:
    """`partition_for` with the count and the partitioner bound: key bytes -> partition."""
    if partitioner not in _BY_NAME:
        raise ValueError(f"unknown partitioner {partitioner!r}; known: {', '.join(PARTITIONERS)}")
    fn = _BY_NAME[partitioner]
    return lambda key: fn(key, partitions)
