"""What a batch takes in and gives back: input records, the side records of the dead-letter and
late topics, and each partition's result."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from ..sinks.records import SideRecord  # defined beside its encoders: no import cycle

__all__ = ["FORWARDED", "BatchResult", "InputRecord", "PollResult", "Record", "SideRecord",
           "forwarded_position", "origin"]

FORWARDED = 1 << 44
"""A record that reaches its entity's partition from elsewhere (the live repartition topic,
a replay's routing) enters that partition's batch at a *position* above this, one range per
source partition: ``offset + FORWARDED * (1 + source partition)``; a partition's own records'
positions are their offsets. Positions order a partition's input and name a record in its
dedup entries, and never collide between sources (offsets stay below 2^44 = 1.7e13)."""


def forwarded_position(partition: int, offset: int) -> int:
    """The position of record `offset` of `partition`, forwarded to another partition."""
    return offset + FORWARDED * (1 + partition)


class InputRecord(Protocol):
    """A consumed record: aiokafka's ConsumerRecord, or `Record`. A forwarded record is a
    `Record` whose offset is its position (`FORWARDED`) and whose topic is where it was read."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def timestamp(self) -> int | None:
        """The record's Kafka timestamp, epoch ms (None or negative: unknown)."""
        ...


@dataclass(frozen=True, slots=True)
class Record:
    """One input record where no Kafka consumer made it (files, tests, online requests)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None  # None: a record without a Kafka timestamp (a file line)

    @property
    def timestamp(self) -> int | None:
        return self.timestamp_ms


@dataclass
class BatchResult:
    """What one partition's share of a poll produced. Decisions are (key, encoded JSON) in
    input order (release order for ``event_time``); `changes` is the partition's state change
    set (None deletes), written to the changelog and the store as one batch."""

    decisions: list[tuple[bytes, bytes]] = field(default_factory=list)
    dlq: list[SideRecord] = field(default_factory=list)
    late: list[SideRecord] = field(default_factory=list)
    changes: dict[bytes, bytes | None] = field(default_factory=dict)
    commit_offset: int | None = None  # of the partition's own records
    forwarded_commit: int | None = None  # of its forwarded records, in their own topic
    forward: list[tuple[bytes, InputRecord]] = field(default_factory=list)  # (entity key,
    # record) of the records that belong to another partition, to forward there unchanged
    accepted: int = 0
    duplicates: int = 0
    dlq_reasons: list[str] = field(default_factory=list)
    reemitted: list[bytes] = field(default_factory=list)  # duplicates' original decisions
    made: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (position, key,
    # decision) of the decisions made now, for the topology's in-process agents
    progress: bytes | None = None  # `engine.agents.progress_doc` of this poll, for replay


@dataclass
class PollResult:
    """A poll's results per partition, its stage timings (ms; every event of the poll waited
    for all of them) and the count of new decisions by (path, decision)."""

    partitions: dict[int, BatchResult] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    outcomes: Counter = field(default_factory=Counter)


def origin(record: InputRecord, topic: str) -> tuple[str, int, int]:
    """(topic, partition, offset) where `record` was read: its own partition's topic is
    `topic`; a forwarded record names the topic it came through and its source partition."""
    pos = record.offset
    if pos < FORWARDED:
        return topic, record.partition, pos
    return record.topic, pos // FORWARDED - 1, pos % FORWARDED
