"""Read-only views of a partition for online serving: the decision an event would get now, and
an entity's stored features.

Both read the partition's store (which holds every batch the pipeline has returned, staged or
written), never the pipeline's live kernels, which another thread may be changing: each call
loads the entity into private kernels of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..features import (
    PROFILE_TS_FIELD,
    ProfileFeature,
    SinceLastFeature,
    TableFeature,
    WindowFeature,
)
from ..ordering import Lateness
from ..state import layout
from .decide import Decider, decision_doc, scoring_rows
from .fold import FeatureColumns, fold
from .partition import PartitionState, Row
from .records import Record
from .replica import ReplicaView

_Readable = PartitionState | ReplicaView  # what the online reads read: owned, or a replica

__all__ = ["Preview", "features_now", "preview", "preview_many"]


@dataclass(frozen=True, slots=True)
class Preview:
    """One online event's decision (JSON bytes); `duplicate` when its id was decided before."""

    decision: bytes = b""
    duplicate: bool = False


class _Private:
    """The partition's tables as stored, in kernels of their own (a preview's fold target)."""

    def __init__(self, state: _Readable) -> None:
        self.topology = state.topology
        self._state = state
        self.tables = [(tb, prefix, type(kernel)(tb.tile_ms, kernel.windows,
                                                 tb.distinct_field is not None))
                       for tb, prefix, kernel in state.tables]

    @property
    def store(self):
        return self._state.store

    def hold(self, entities: Sequence[str]) -> None:
        store = self._state.store
        for e in dict.fromkeys(entities):
            last = self._state.last_ts(e)
            for tb, prefix, kernel in self.tables:
                lo, hi = layout.tile_range(prefix, e.encode())
                kernel.load(e, last, [(layout.tile_start_of(k),
                                       *layout.unpack_tile(v, tb.distinct_field is not None))
                                      for k, v in store.items_between(lo, hi)])


def preview(state: PartitionState, events: Sequence[Any],
            profiles: Mapping[str, Mapping[str, Any]], decider: Decider,
            now_ms: int) -> list[Preview]:
    """The decision each (validated) event would get if it arrived now, changing nothing: no
    state, no watermark. Events are independent of each other.

    As the stream would decide it: dedup (an event id already decided returns its stored
    decision with ``duplicate=True``), lateness against the current watermark, features over
    the entity's stored tiles with the event folded in, then one `decider` call for all.
    """
    return preview_many([(state, events)], profiles, decider, now_ms)[0]


def preview_many(batches: Sequence[tuple[PartitionState, Sequence[Any]]],
                 profiles: Mapping[str, Mapping[str, Any]], decider: Decider,
                 now_ms: int) -> list[list[Preview]]:
    """`preview` of several partitions' events at once, with one `decider` call for all of
    them (one model call per online micro-batch, whatever partitions its events fall in);
    one list of previews per batch, in its events' order."""
    t0 = time.perf_counter()
    out: list[list[Preview]] = []
    rows: list[tuple[int, int, Row]] = []  # (batch, position in it, row)
    states: dict[int, PartitionState] = {}
    for b, (state, events) in enumerate(batches):
        topo = state.topology
        wm = state.watermark
        states[state.partition] = state
        previews: list[Preview] = []
        for i, ev in enumerate(events):
            eid = getattr(ev, topo.event_id_field)
            stored = state.store.get(layout.seen_key(eid))
            if stored is not None:
                seen = layout.unpack_seen(stored)
                if seen.decision and not state.dedup.expired(seen.ts_ms, wm.watermark_ms):
                    previews.append(Preview(decision=seen.decision, duplicate=True))
                    continue
            ts = getattr(ev, topo.time_field)
            row = Row(Record("", state.partition, -1, None, None, 0), ev,
                      getattr(ev, topo.key_field), eid, ts, wm.verdict(ts) is Lateness.LATE)
            if row.late:
                row.notes, row.horizon_ms = ("late_event",), state.tile_horizon()
            previews.append(Preview())
            rows.append((b, i, row))
        out.append(previews)
    if not rows:
        return out
    plan = batches[rows[0][0]][0].plan
    n = len(rows)
    columns = FeatureColumns(plan, np.empty((n, len(plan.names))),
                             [[None] * n for _ in plan.functions])
    for j, (b, _, row) in enumerate(rows):  # each event alone over the stored state
        one = FeatureColumns(plan, columns.matrix[j:j + 1], [[None] for _ in plan.functions])
        fold([(_Private(batches[b][0]), 0, 1)], plan, [row], profiles, one.matrix, one.values)
        for k, column in enumerate(one.values):
            columns.values[k][j] = column[0]
    t1 = time.perf_counter()
    scored = [r for _, _, r in rows]
    verdicts = decider.decide(scoring_rows(scored, columns,
                                           lambda key: _last(states[key[0]], key[1])))
    stage = {"validate_dedup_features": round((t1 - t0) * 1000, 3),
             "inference": round((time.perf_counter() - t1) * 1000, 3)}
    for j, ((b, i, row), v) in enumerate(zip(rows, verdicts, strict=True)):
        out[b][i] = Preview(decision=orjson.dumps(
            decision_doc(row, v, columns.vector(j), decider.feature_set, stage, now_ms,
                         batches[b][0].topology.decision_context)))
    return out


def _last(state: _Readable, key: str) -> bytes | None:
    raw = state.store.get(layout.entity_key(key.encode()))
    return None if raw is None else layout.unpack_entity(raw)[1] or None


def last_decision(state: _Readable, key: str) -> bytes | None:
    """The entity's last decision as stored (None: never decided)."""
    return _last(state, key)


def features_now(state: _Readable, key: str, profiles: Mapping[str, Mapping[str, Any]]
                 ) -> tuple[int | None, dict[str, Any], dict[str, int | None]] | None:
    """The stored features of `key` as of the newest event time its partition has seen
    (`as_of_ms`, None before any event): window features and the time since the entity's
    newest event; features that need an event (its own fields, profile ratios) are None.
    With each feature's age in ms (None where it has no input). None for an unknown key.
    Changes nothing."""
    fs = state.topology.features
    last_raw = state.store.get(layout.entity_key(key.encode()))
    if last_raw is None:
        return None
    last = layout.unpack_entity(last_raw)[0]
    as_of = state.watermark.max_ts_ms
    if as_of is None:
        values: dict[str, Any] = dict.fromkeys(fs.names)
    else:
        private = _Private(state)
        private.hold([key])
        values = state.plan.stored_vector(
            [kernel.read(key, as_of)[0] for _, _, kernel in private.tables],
            None if last is None else (as_of - last) / 1000)
    seen_from = 0 if as_of is None else as_of
    profile = profiles.get(key)
    written = profile.get(PROFILE_TS_FIELD) if profile is not None else None
    ages: dict[str, int | None] = {}
    for f in fs.features:
        if isinstance(f, WindowFeature | SinceLastFeature):
            ages[f.name] = None if last is None else seen_from - last
        elif isinstance(f, ProfileFeature):
            ages[f.name] = None if written is None else seen_from - written
        elif isinstance(f, TableFeature):  # keyed by an event field: needs the event
            ages[f.name] = None
        else:
            ages[f.name] = 0
    return as_of, values, ages


def table_view(state: _Readable, table: str, key: str
               ) -> tuple[int | None, list[dict[str, Any]]] | None:
    """An entity of a windowed table as stored: its newest event time and every stored tile as
    ``{start_ms, end_ms, value: {count, sum, min, max, mean, last, distinct_count}}``, oldest
    first (expired tiles stay until a sweep deletes them). None for an unknown key."""
    raw = state.store.get(layout.entity_key(key.encode()))
    if raw is None:
        return None
    tb, prefix, _ = next(t for t in state.tables if t[0].name == table)
    lo, hi = layout.tile_range(prefix, key.encode())
    windows = []
    for k, v in state.store.items_between(lo, hi):
        start = layout.tile_start_of(k)
        t = layout.unpack_tile(v, tb.distinct_field is not None)
        windows.append({"start_ms": start, "end_ms": start + tb.tile_ms,
                        "value": {"count": t.count, "sum": t.sum, "min": t.min, "max": t.max,
                                  "mean": t.sum / t.count, "last": t.last,
                                  "distinct_count": 0 if t.distinct is None
                                  else len(t.distinct)}})
    return layout.unpack_entity(raw)[0], windows
