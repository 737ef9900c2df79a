"""Test helpers that ship with the engine: feed a topology records, get everything it produced.

No Kafka, no threads: `feed` cuts the input into polls the way a consumer's ``getmany`` would
(in input order, at most `poll_records` records each), optionally routes each record to its
entity's partition (as live workers and replay do), runs every poll through the same
pipeline the live worker and replay run, applies each poll's state changes to an in-memory
store per partition, and returns the decisions, dead-letter and late records per partition and
the final tables as plain values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .agents import drive, run_agent
from .clock import Clock, ManualClock
from .partitioning import router
from .pipeline import Decider, InputRecord, Pipeline, PollResult, Record, SideRecord
from .pipeline.records import forwarded_position
from .pipeline.routing import EntityRouter
from .policy import RulesOnly
from .state import MemoryStore, layout
from .topology import Topology

__all__ = ["FeedResult", "TableRow", "feed", "records_of"]


@dataclass(frozen=True, slots=True)
class TableRow:
    """One entity of a windowed table: its newest event time and its live tiles, oldest first,
    each as ``(start_ms, count, sum, min, max, last, distinct_count)``."""

    last_ts_ms: int | None
    tiles: tuple[tuple[int, int, float, float, float, float, int], ...]


@dataclass
class FeedResult:
    """What a topology produced, per input partition, in the order it produced it."""

    decisions: dict[int, list[bytes]] = field(default_factory=dict)
    dlq: dict[int, list[SideRecord]] = field(default_factory=dict)
    late: dict[int, list[SideRecord]] = field(default_factory=dict)
    tables: dict[str, dict[int, dict[str, TableRow]]] = field(default_factory=dict)
    """table -> partition -> entity key -> row (an entity is split over partitions when
    producers key its events differently)."""
    duplicates: int = 0
    agent_tables: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    """agent table -> partition -> key -> row."""


def records_of(topology: Topology, events: Iterable[Mapping[str, Any]],
               partitions: int = 1) -> list[Record]:
    """`events` (documents of the topology's contract) as the input records a producer keying
    by the entity would make: each on its entity's partition under the topology's
    partitioner, offsets counting from 0 per partition, the event time as record timestamp
    (ms), in the given order."""
    place = router(partitions, topology.partitioner)
    topic = topology.topics().events
    offsets = [0] * partitions
    out = []
    for event in events:
        key = str(event[topology.key_field]).encode()
        p = place(key)
        out.append(Record(topic, p, offsets[p], key, orjson.dumps(event),
                          event.get(topology.time_field)))
        offsets[p] += 1
    return out


def feed(topology: Topology, records: Iterable[InputRecord], *,
         profiles: Mapping[str, Mapping[str, Any]] | None = None,
         decider: Decider | None = None, clock: Clock | None = None,
         poll_records: int = 1000, kernel: type | None = None,
         topic: str = "", partitions: int | None = None,
         side: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
         agents_every: int | None = None) -> FeedResult:
    """Run `records` (each with its partition and offset) through `topology`.

    With `partitions` (the input's partition count), a record whose entity belongs to another
    partition under the topology's partitioner is decided there, at its place in the input:
    what a live worker does through the repartition topic, without the hop's delay, and what
    a replay does when record times follow the input order. Without it, every record is
    decided where it landed.

    `decider` defaults to the topology's rules alone; `clock` (wall time: `decided_at_ms`, DLQ
    `received_at_ms`) to a `ManualClock` at 0; `kernel` to the engine's tile kernel. Tiles that
    the final watermark has expired are left out of `tables`, whether or not a sweep has
    deleted them yet.

    `side`: documents of agent topics (relative names, e.g. ``"outcomes"``), each keyed by
    its `key_field` value, applied by their agents before the first poll of their partition.
    Agents on the decisions are fed each poll's decisions after it; with `agents_every`,
    only after every `agents_every` input records instead (polls are cut there too), as a
    replay feeds them at the live worker's poll boundaries: the output then no longer depends
    on `poll_records`. `agent_tables` holds the agents' rows at the end.
    """
    decider = decider or RulesOnly(topology.rules, topology.features.versioned_name)
    side_records = _side_records(topology, side or {}, partitions or 1)
    pipeline = Pipeline(topology, decider, clock or ManualClock(0), kernel=kernel,
                        topic=topic or topology.topics().events)
    profiles = profiles or {}
    stores: dict[int, MemoryStore] = {}
    out = FeedResult()

    def collect(result: PollResult) -> None:
        for p, r in result.partitions.items():
            stores[p].apply(r.changes)
            out.decisions.setdefault(p, []).extend(body for _, body in r.decisions)
            out.dlq.setdefault(p, []).extend(r.dlq)
            out.late.setdefault(p, []).extend(r.late)
            out.duplicates += r.duplicates

    routing = None if partitions is None else \
        EntityRouter(topology, router(partitions, topology.partitioner))

    def run(poll: list[InputRecord]) -> None:
        by_partition: dict[int, list[InputRecord]] = {}
        for rec in poll:
            owner = routing.partition_of(rec.value) if routing is not None else None
            if owner is not None and owner != rec.partition:
                rec = Record(getattr(rec, "topic", ""), owner,
                             forwarded_position(rec.partition, rec.offset), rec.key, rec.value,
                             rec.timestamp)
            by_partition.setdefault(rec.partition, []).append(rec)
        for p in by_partition:
            if p not in stores:
                stores[p] = MemoryStore()
                pipeline.open(p, stores[p])
                _apply_side(topology, p, stores[p], side_records.get(p, {}))
        result = pipeline.process(by_partition, profiles)
        if agents_every is None:
            pipeline.feed_poll(result)  # agents on the decisions: seen from the next poll on
        else:
            for p, r in result.partitions.items():
                made.setdefault(p, []).extend(r.made)
        collect(result)

    def feed_agents() -> None:
        for p, decisions in made.items():
            changes: dict[bytes, bytes | None] = {}
            pipeline.feed_agents(p, decisions, changes)
            stores[p].apply(changes)
        made.clear()

    made: dict[int, list[tuple[int, bytes, bytes]]] = {}
    poll: list[InputRecord] = []
    for i, rec in enumerate(records, 1):
        poll.append(rec)
        at_cut = agents_every is not None and i % agents_every == 0
        if len(poll) >= poll_records or at_cut:
            run(poll)
            poll = []
        if at_cut:
            feed_agents()
    if poll:
        run(poll)
    collect(pipeline.flush(profiles))  # what an event_time reorder buffer still holds
    out.tables = _tables(topology, stores, pipeline)
    out.agent_tables = _agent_tables(topology, stores)
    return out


def _side_records(topology: Topology, side: Mapping[str, Iterable[Mapping[str, Any]]],
                  partitions: int) -> dict[int, dict[str, list[tuple[int, bytes, bytes, None]]]]:
    """partition -> agent topic -> its records ``(offset, key, value, timestamp)``."""
    place = router(partitions, topology.partitioner)
    out: dict[int, dict[str, list]] = {}
    for topic, docs in side.items():
        for doc in docs:
            key = str(doc[topology.key_field]).encode()
            records = out.setdefault(place(key), {}).setdefault(topic, [])
            records.append((len(records), key, orjson.dumps(doc), None))
    return out


def _apply_side(topology: Topology, partition: int, store: MemoryStore,
                records: Mapping[str, list]) -> None:
    for agent in topology.agents:
        if records.get(agent.topic) and not agent.in_process:
            changes, _ = drive(run_agent(agent, partition, store, records[agent.topic]),
                               agent.name)
            store.apply(changes)


def _agent_tables(topology: Topology, stores: Mapping[int, MemoryStore]
                  ) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for agent in topology.agents:
        for name in (*agent.tables, *agent.local_tables):
            prefix = layout.agent_key(name, b"")
            out[name] = {p: {k[len(prefix):].decode(): orjson.loads(v)
                             for k, v in store.items_between(prefix, prefix + b"\xff")}
                         for p, store in stores.items()}
    return out


def _tables(topology: Topology, stores: Mapping[int, MemoryStore],
            pipeline: Pipeline) -> dict[str, dict[int, dict[str, TableRow]]]:
    tables: dict[str, dict[int, dict[str, TableRow]]] = {tb.name: {} for tb in topology.tables}
    for p, store in stores.items():
        state = pipeline.partitions[p]
        horizon = state.tile_horizon()
        entities = [(key[len(layout.ENTITY) + 2:].decode(), layout.unpack_entity(raw)[0])
                    for key, raw in store.items_between(layout.ENTITY, layout.ENTITY + b"\xff")]
        for tb, prefix, _kernel in state.tables:
            for entity, last_ts in entities:
                lo, hi = layout.tile_range(prefix, entity.encode())
                tiles = []
                for key, raw in store.items_between(lo, hi):
                    start = layout.tile_start_of(key)
                    if horizon is not None and start + tb.tile_ms <= horizon:
                        continue
                    t = layout.unpack_tile(raw, tb.distinct_field is not None)
                    tiles.append((start, t.count, t.sum, t.min, t.max, t.last,
                                  0 if t.distinct is None else len(t.distinct)))
                tables[tb.name].setdefault(p, {})[entity] = TableRow(last_ts, tuple(tiles))
    return tables
