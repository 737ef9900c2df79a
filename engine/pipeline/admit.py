"""Admission, per partition and in offset order: decode, routing, dedup, lateness, reorder.

What comes out is the rows to decide in processing order (arrival, or release order for
``event_time``), the output order of the partition's decisions (a row, or a duplicate's
original decision bytes), the dead-letter and late records, and the state changes of events
that are not scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..ordering import Lateness, too_far_ahead
from ..schemas import Rejection
from ..sinks.records import dead_letter, late_record
from ..state import layout
from .partition import PartitionState, Row
from .records import FORWARDED, BatchResult, InputRecord, origin

__all__ = ["Admitted", "admit", "original_of"]


@dataclass
class Admitted:
    """One partition's admitted share of a poll."""

    rows: list[Row] = field(default_factory=list)      # to decide, in processing order
    emits: list = field(default_factory=list)           # output order: Row or (key, original)
    unscored: list[Row] = field(default_factory=list)   # late events the topology won't score


def admit(state: PartitionState, records: Sequence[InputRecord], events: Sequence[Any],
          topic: str, now_ms: Callable[[], int], out: BatchResult,
          route: Callable[[bytes], int] | None = None) -> Admitted:
    """Admit one partition's records (in offset order), decoded as `events` (an event or a
    `Rejection` each), into `out` and the returned rows. With `route` (entity key bytes ->
    its partition), a record of this partition's own input whose entity belongs to another
    partition goes to `out.forward` untouched: no dedup, no state, no decision here (a
    forwarded record is never forwarded again). Records that cannot be decoded are
    dead-lettered where they are."""
    topo = state.topology
    key_f, id_f, ts_f = topo.key_field, topo.event_id_field, topo.time_field
    wm = state.watermark
    reorder = state.reorder
    max_future = topo.max_future_ms
    adm = Admitted()
    in_batch: dict[str, Row] = {}
    # One filter probe for the batch: the ids it has surely never seen skip the store read.
    maybe_seen = iter(state.seen.maybe([getattr(ev, id_f) for ev in events
                                        if type(ev) is not Rejection]))
    here = state.partition
    for rec, ev in zip(records, events, strict=True):
        if type(ev) is Rejection:
            out.dlq.append(dead_letter(*origin(rec, topic), rec.key, rec.value,
                                       ev.reason, ev.detail, now_ms()))
            out.dlq_reasons.append(ev.reason)
            continue
        maybe = next(maybe_seen)
        if route is not None and rec.offset < FORWARDED:
            kb = getattr(ev, key_f).encode()
            if route(kb) != here:
                out.forward.append((kb, rec))
                continue
        eid = getattr(ev, id_f)
        ahead = too_far_ahead(getattr(ev, ts_f), rec.timestamp, max_future)
        if ahead is not None:  # before dedup: no future event is ever a table's input
            out.dlq.append(dead_letter(*origin(rec, topic), rec.key, rec.value,
                                       "future_time", ahead, now_ms()))
            out.dlq_reasons.append("future_time")
            continue
        original = original_of(state, eid, in_batch, out.changes, maybe)
        if original is not None:
            out.duplicates += 1
            if type(original) is Row:
                if original.eid in state.buffered:
                    original.waiting_duplicates += 1  # emitted when the original is decided
                    continue
                adm.emits.append((original.kb, original))
                continue
            seen = layout.unpack_seen(original)
            if seen.late and (seen.partition, seen.offset) == (rec.partition, rec.offset):
                # The very record processed before a crash: emit all it produced then, its
                # late record included, not only the stored decision.
                out.late.append(late_record(*origin(rec, topic), rec.key, rec.value,
                                            wm.watermark_ms, getattr(ev, ts_f)))
            adm.emits.append((getattr(ev, key_f).encode(), seen.decision))
            continue
        ts = getattr(ev, ts_f)
        row = Row(rec, ev, getattr(ev, key_f), eid, ts, wm.verdict(ts) is Lateness.LATE)
        in_batch[eid] = row
        if row.late:
            out.late.append(late_record(*origin(rec, topic), rec.key, rec.value,
                                        wm.watermark_ms, ts))
            if not topo.score_late:
                row.decision = b""  # marked seen, never decided
                adm.unscored.append(row)
                continue
            # Scored now, against state as it stands: tiles the watermark has already expired
            # are not seen, however the stream was cut into batches.
            row.notes = ("late_event",)
            row.horizon_ms = state.tile_horizon()
            adm.rows.append(row)
            adm.emits.append(row)
            continue
        wm.observe(ts)
        out.accepted += 1
        if reorder is None:
            adm.rows.append(row)
            adm.emits.append(row)
        else:
            reorder.push(ts, rec.offset, row)
            state.buffered[eid] = row
            for r in reorder.release(wm.watermark_ms):
                del state.buffered[r.eid]
                # A row held over from an earlier poll is in no store until this poll's
                # changes are written: a copy later in this poll must find it here.
                in_batch[r.eid] = r
                adm.rows.append(r)
                adm.emits.append(r)
    return adm


def original_of(state: PartitionState, eid: str, in_batch: dict[str, Row],
                changes: dict[bytes, bytes | None], maybe_stored: bool = True
                ) -> Row | bytes | None:
    """The first occurrence of event id `eid` within the dedup TTL: a row of this batch (or
    of the reorder buffer), the stored seen record, or None. `maybe_stored` False (the dedup
    filter has surely never seen it) skips the store read.

    An id whose TTL has passed counts as unseen even before a sweep deletes it, so what is a
    duplicate never depends on how far the (bounded, batch-paced) sweeps have got.
    """
    wm = state.watermark.watermark_ms
    row = in_batch.get(eid) or state.buffered.get(eid)
    if row is not None:
        return None if state.dedup.expired(row.ts_ms, wm) else row
    if not maybe_stored:
        return None
    key = layout.seen_key(eid)
    stored = changes[key] if key in changes else state.store.get(key)
    if stored is None or state.dedup.expired(layout.unpack_seen(stored).ts_ms, wm):
        return None
    return stored
