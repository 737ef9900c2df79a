"""Test helpers that ship with the engine: feed a topology records, get everything it produced.

No Kafka, no threads: `feed` cuts the input into polls the way a consumer's ``getmany`` would
(in input order, at most `poll_records` records each), runs every poll through the same
pipeline the live worker and replay run, applies each poll's state changes to an in-memory
store per partition, and returns the decisions, dead-letter and late records per partition and
the final tables as plain values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .clock import Clock, ManualClock
from .pipeline import Decider, PartitionPipeline, Record, SideRecord
from .policy import RulesOnly
from .state import MemoryStore
from .topology import Topology
from .windows import EntityTiles

__all__ = ["FeedResult", "TableRow", "feed"]


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
    tables: dict[str, dict[str, TableRow]] = field(default_factory=dict)
    duplicates: int = 0


def feed(topology: Topology, records: Iterable[Record], *,
         profiles: Mapping[str, Mapping[str, Any]] | None = None,
         decider: Decider | None = None, clock: Clock | None = None,
         poll_records: int = 1000) -> FeedResult:
    """Run `records` (each with its partition and offset) through `topology`.

    `decider` defaults to the topology's rules alone; `clock` (wall time: `decided_at_ms`, DLQ
    `received_at_ms`) to a `ManualClock` at 0. Tiles that the final watermark has expired are
    left out of `tables`, whether or not a sweep has deleted them yet.
    """
    decider = decider or RulesOnly(topology.rules, topology.features.versioned_name)
    clock = clock or ManualClock(0)
    profiles = profiles or {}
    stores: dict[int, MemoryStore] = {}
    pipes: dict[int, PartitionPipeline] = {}
    out = FeedResult()

    def run(poll: list[Record]) -> None:
        by_partition: dict[int, list[Record]] = {}
        for rec in poll:
            by_partition.setdefault(rec.partition, []).append(rec)
        for p, recs in by_partition.items():
            if p not in pipes:
                stores[p] = MemoryStore()
                pipes[p] = PartitionPipeline(topology, p, stores[p], decider, clock)
            result = pipes[p].process(recs, profiles)
            stores[p].apply(result.changes)
            out.decisions.setdefault(p, []).extend(body for _, body in result.decisions)
            out.dlq.setdefault(p, []).extend(result.dlq)
            out.late.setdefault(p, []).extend(result.late)
            out.duplicates += result.duplicates

    poll: list[Record] = []
    for rec in records:
        poll.append(rec)
        if len(poll) >= poll_records:
            run(poll)
            poll = []
    if poll:
        run(poll)
    for p, pipe in pipes.items():  # what an event_time reorder buffer still holds
        tail = pipe.flush(profiles)
        stores[p].apply(tail.changes)
        out.decisions[p].extend(body for _, body in tail.decisions)
    out.tables = _tables(topology, stores, pipes)
    return out


def _tables(topology: Topology, stores: Mapping[int, MemoryStore],
            pipes: Mapping[int, PartitionPipeline]) -> dict[str, dict[str, TableRow]]:
    tables: dict[str, dict[str, TableRow]] = {tb.name: {} for tb in topology.tables}
    for p, store in stores.items():
        horizon = pipes[p]._tile_horizon()  # noqa: SLF001 (the engine's own helper module)
        for tb in topology.tables:
            prefix = tb.state_prefix
            for skey, raw in store.items_between(prefix, prefix + b"\xff"):
                ent = EntityTiles.from_json(orjson.loads(raw))
                if horizon is not None:
                    ent.expire(horizon, tb.tile_ms)
                tiles = tuple((w["start_ms"], w["value"]["count"], w["value"]["sum"],
                               w["value"]["min"], w["value"]["max"], w["value"]["last"],
                               w["value"]["distinct_count"]) for w in ent.windows(tb.tile_ms))
                tables[tb.name][skey[len(prefix):].decode()] = TableRow(ent.last_ts_ms, tiles)
    return tables
