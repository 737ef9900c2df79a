"""The replay's driver core: runs one partition's records through a fresh pipeline batch by
batch, matches each decision to the input record it decided, and writes the partitions'
decisions in order (one after another, or merged by event time)."""

from __future__ import annotations

import contextlib
import heapq
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .clock import ManualClock
from .pipeline import Decider, Pipeline, Record
from .pipeline.records import origin
from .progress import Bar
from .replay_agents import AgentSchedule
from .sinks.files import Sink
from .state import RocksStore
from .topology import Topology

__all__ = ["BATCH", "Decided", "ReplaySummary"]

BATCH = 1000  # records per replayed batch: fixed, whatever the fetch sizes were


class Decided(NamedTuple):
    """One decision of a replay and the input record it decided: (key, decision JSON, the
    record's offset, its raw value, its partition: the entity's, or the one it was produced
    to when the replay routed it). Sinks index it (`[0]`, `[1]`)."""

    key: bytes
    value: bytes
    offset: int
    event: bytes | None
    partition: int = -1


@dataclass
class ReplaySummary:
    events: int = 0
    decisions: int = 0
    duplicates: int = 0
    late: int = 0
    dlq: int = 0
    warmup_events: int = 0
    routed: int = 0  # records decided on their entity's partition, not the one produced to
    elapsed_s: float = 0.0
    partitions: list[int] = field(default_factory=list)

    def line(self) -> str:
        rate = self.events / self.elapsed_s if self.elapsed_s else 0.0
        warm = (f", {self.warmup_events:,} earlier events replayed first to warm up windows"
                if self.warmup_events else "")
        routed = (f", {self.routed:,} routed to their entity's partition" if self.routed
                  else "")
        return (f"replayed {self.events:,} events → {self.decisions:,} decisions, "
                f"{self.duplicates:,} duplicates, {self.late:,} late, {self.dlq:,} DLQ in "
                f"{self.elapsed_s:.1f}s ({rate:,.0f} events/s){warm}{routed}")



class _Runner:
    """Runs one partition's records through a fresh pipeline, batch by batch."""

    def __init__(self, topology: Topology, decider: Decider, profiles: dict, workdir: Path,
                 summary: ReplaySummary, progress: Bar, topic: str,
                 schedules: Mapping[int, AgentSchedule] | None = None) -> None:
        self.topic = topic  # named in dead-letter and late records
        self.schedules = schedules or {}  # agents' progress per partition (`replay_agents`)
        self.topology = topology
        self.decider = decider
        self.profiles = profiles
        self.workdir = workdir
        self.summary = summary
        self.progress = progress

    async def decisions(self, partition: int, batches: AsyncIterator[tuple[bool, list[Record]]]
                        ) -> AsyncGenerator[list[Decided], None]:
        """The partition's decisions with the input record each decided, one list per batch;
        warm-up batches (flagged True: they rebuild windows) yield nothing."""
        store = RocksStore(self.workdir / f"p{partition:04d}")
        clock = ManualClock(0)
        # A pipeline per partition: an event_time merge interleaves partitions, and each
        # partition's end-of-range flush must drain only its own reorder buffer.
        pipe = Pipeline(self.topology, self.decider, clock, topic=self.topic)
        pipe.open(partition, store)
        origins = _Origins(self.topology, self.topic)
        schedule = self.schedules.get(partition)
        if schedule is not None and not schedule.recorded:
            schedule = None  # agents on the decisions are fed after every batch
        feed_each = schedule is None and self.topology.reads_agent_tables
        emitted = False
        try:
            async for warm, part in batches:
                # decided_at = newest event time seen: deterministic, unlike the wall clock
                clock.advance(origins.add(part) - clock.now_ms())
                decided: list[Decided] = []
                # agents' tables change only at the live worker's poll boundaries
                for piece in schedule.cut(part) if schedule is not None else (part,):
                    if schedule is not None:
                        schedule.reach(piece, pipe, store)
                    result = pipe.process({partition: piece},
                                          self.profiles).partitions[partition]
                    store.apply(result.changes)
                    if schedule is not None:
                        schedule.made(result.made)
                    elif feed_each:
                        changes: dict[bytes, bytes | None] = {}
                        pipe.feed_agents(partition, result.made, changes)
                        store.apply(changes)
                    origins.drop(result)
                    decided += origins.match(result.decisions)
                    if not warm:
                        self.summary.duplicates += result.duplicates
                        self.summary.late += len(result.late)
                        self.summary.dlq += len(result.dlq)
                        self.summary.decisions += len(result.decisions)
                self.progress.advance(len(part))
                if warm:
                    self.summary.warmup_events += len(part)
                    continue
                emitted = True
                self.summary.events += len(part)
                if decided:
                    yield decided
            # End of the range: events an event_time reorder buffer still holds are decided
            # too (a replay never leaves an event without a decision).
            tail = pipe.flush(self.profiles).partitions.get(partition)
            if tail is None:
                return
            store.apply(tail.changes)
            decided = origins.match(tail.decisions)
            if emitted and decided:
                self.summary.decisions += len(decided)
                yield decided
        finally:
            store.close()


class _Origins:
    """Which input record each decision decided: the records not decided yet, by event id,
    oldest first (a duplicate's decision re-emits its original's, and belongs to the
    duplicate's own record; an event_time buffer releases records later)."""

    def __init__(self, topology: Topology, topic: str) -> None:
        self._topic = topic
        self._ts_field = topology.time_field
        self._id_field = topology.event_id_field
        self._score_late = topology.score_late
        self._waiting: dict[str, deque[tuple[tuple[int, int], bytes | None]]] = {}
        self._ids: dict[tuple[int, int], str] = {}  # (partition, offset) -> id, of those waiting

    def add(self, records: list[Record]) -> int:
        """Note the records of a batch; returns their newest event time (0 without one)."""
        newest = 0
        for r in records:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
                doc = orjson.loads(r.value or b"null")
                ts = doc.get(self._ts_field)
                if isinstance(ts, int) and ts > newest:
                    newest = ts
                eid = doc.get(self._id_field)
                if eid is not None and eid != "":
                    where = origin(r, self._topic)[1:]
                    self._waiting.setdefault(str(eid), deque()).append((where, r.value))
                    self._ids[where] = str(eid)
        return newest

    def drop(self, result: Any) -> None:
        """Forget records that get no decision: dead letters (and late events a topology
        does not score)."""
        side = list(result.dlq) + ([] if self._score_late else list(result.late))
        for rec in side:
            headers = dict(rec.headers)
            where = (int(headers.get("streamwise.partition", b"-1")),
                     int(headers.get("streamwise.offset", b"-1")))
            eid = self._ids.pop(where, None)
            queue = self._waiting.get(eid) if eid is not None else None
            if queue:
                kept = deque(x for x in queue if x[0] != where)
                if kept:
                    self._waiting[eid] = kept
                else:
                    del self._waiting[eid]

    def match(self, decisions: list[tuple[bytes, bytes]]) -> list[Decided]:
        out = []
        for key, value in decisions:
            eid = str(orjson.loads(value)["event_id"])
            queue = self._waiting.get(eid)
            where, event = queue.popleft() if queue else ((-1, -1), None)
            if queue is not None and not queue:
                del self._waiting[eid]
            self._ids.pop(where, None)
            out.append(Decided(key, value, where[1], event, where[0]))
        return out


async def _write_in_order(streams: dict[int, AsyncGenerator[list[Any], None]], sink: Sink,
                          merge_by_event_time: bool) -> None:
    """Partition after partition, or (``event_time`` topologies) a k-way merge of the
    partitions' decision streams by event time: each partition keeps its own order, and among
    partition heads the oldest event time goes first (ties: lower partition). Memory holds one
    batch of decisions per partition."""
    if not merge_by_event_time:
        for p, stream in streams.items():
            async for decisions in stream:
                sink.write(p, decisions)
                await sink.flush()
        return
    pending: dict[int, deque[tuple[int, Any]]] = {}
    heads: list[tuple[int, int]] = []

    async def refill(p: int) -> None:
        async for decisions in streams[p]:
            if decisions:
                pending[p] = deque((_event_ts(d[1]), d) for d in decisions)
                heapq.heappush(heads, (pending[p][0][0], p))
                return

    for p in streams:
        await refill(p)
    run_p, run = -1, []
    while heads:
        _, p = heapq.heappop(heads)
        queue = pending[p]
        if p != run_p and run:
            sink.write(run_p, run)
            run = []
        run_p = p
        run.append(queue.popleft()[1])
        if queue:
            heapq.heappush(heads, (queue[0][0], p))
        else:
            sink.write(p, run)
            run = []
            await sink.flush()
            await refill(p)
    await sink.flush()


def _merges(topology: Topology) -> bool:
    return topology.time.ordering == "event_time"


def _event_ts(decision: bytes) -> int:
    return orjson.loads(decision)["event_ts_ms"]


async def _chunks(records: list[Record]) -> AsyncIterator[tuple[bool, list[Record]]]:
    for i in range(0, len(records), BATCH):
        yield False, records[i:i + BATCH]
