"""The batch pipeline: validate → dedup → event time → windows → features → score → policy.

Framework-free. The live worker, replay and the online path all call `PartitionPipeline.process`
with a batch of records of one input partition; state reads go through a `Store` port and state
writes come back as one change set per batch, so the adapter can write them with one RocksDB
write batch and one changelog flush.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .clock import Clock
from .dedup import Dedup
from .features import FeatureVector
from .ordering import Lateness, ReorderBuffer, Watermark
from .policy import Verdict, abstain
from .schemas import EventDecoder, Rejection, decision_id
from .topology import Topology
from .windows import EntityTiles

__all__ = ["LATEST_DECISION_PREFIX", "BatchResult", "Decider", "PartitionPipeline", "Preview",
           "Record", "SideRecord", "Store", "abstain_decision"]

_WATERMARK_KEY = b"m/max_ts"
LATEST_DECISION_PREFIX = b"l/"
_STAGES = ("validate", "dedup", "features", "inference", "policy", "total")


class Store(Protocol):
    """Read side of one partition's state (the adapter applies `BatchResult.changes`)."""

    def get(self, key: bytes) -> bytes | None: ...

    def items_between(self, lo: bytes, hi: bytes) -> Iterable[tuple[bytes, bytes]]:
        """Key/value pairs with ``lo <= key < hi`` in key order."""
        ...


class Decider(Protocol):
    """Scores a batch of feature vectors; one call per pipeline batch.

    `last_decision(key)` returns the entity's last stored decision (encoded) or None; a
    fallback chain reads it only for rows it could not score.
    """

    feature_set: str

    def decide_many(self, keys: Sequence[str], vectors: Sequence[FeatureVector],
                    ts_ms: Sequence[int], late: Sequence[bool],
                    last_decision: Callable[[str], bytes | None]) -> list[Verdict]: ...


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed input record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass(slots=True)
class SideRecord:
    """A record for the dead-letter or late topic: raw bytes plus string headers."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class BatchResult:
    """Everything one batch produced. Decisions are (key, encoded JSON) in input order."""

    decisions: list[tuple[bytes, bytes]] = field(default_factory=list)
    dlq: list[SideRecord] = field(default_factory=list)
    late: list[SideRecord] = field(default_factory=list)
    changes: dict[bytes, bytes | None] = field(default_factory=dict)
    commit_offset: int | None = None
    accepted: int = 0
    duplicates: int = 0
    stage_ms: dict[str, float] = field(default_factory=dict)
    dlq_reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Preview:
    """One online event's decision (JSON bytes); `duplicate` when its id was decided before."""

    decision: bytes = b""
    duplicate: bool = False


@dataclass(slots=True)
class _Pending:
    record: Record
    event: Any
    key: str
    event_id: str
    ts_ms: int
    late: bool
    vector: FeatureVector | None = None
    decision: bytes | None = None
    waiting_duplicates: int = 0
    notes: tuple[str, ...] = ()
    horizon_ms: int | None = None  # late events: tiles ending at or before it are not seen


class PartitionPipeline:
    """The pipeline for one input partition: owns its watermark and reorder buffer.

    Build one per assigned partition (after its state is restored) and drop it on revoke.
    """

    DLQ_TRUNCATE_BYTES = 64 * 1024
    DEDUP_SWEEP_IDS = 4096  # expired event ids a batch deletes at most
    TILE_SWEEP_ENTITIES = 256  # entities a batch examines while a tile sweep is under way
    ENTITY_CACHE_SIZE = 50_000  # decoded entities kept across batches (this pipeline is their
    # only writer, so the cache cannot go stale)

    def __init__(self, topology: Topology, partition: int, store: Store, decider: Decider,
                 clock: Clock, dedup_sweep_every_ms: int = 60_000) -> None:
        self.topology = topology
        self.partition = partition
        self._store = store
        self._decider = decider
        self._clock = clock
        self._decoder = EventDecoder(topology.schema,
                                     (topology.key_field, topology.event_id_field),
                                     topology.max_record_bytes)
        self._dedup = Dedup(topology.dedup_ttl_ms)
        t = topology.time
        raw_max = store.get(_WATERMARK_KEY)
        self._persisted_max_ts = int(raw_max) if raw_max is not None else None
        self.watermark = Watermark(t.max_out_of_orderness_ms, t.allowed_lateness_ms,
                                   self._persisted_max_ts)
        self._reorder: ReorderBuffer[_Pending] | None = (
            ReorderBuffer(t.reorder_capacity) if t.ordering == "event_time" else None)
        self._buffered: dict[str, _Pending] = {}
        self._sweep_every_ms = dedup_sweep_every_ms
        self._tile_sweep_every_ms = min(tb.retain_ms for tb in topology.tables) // 4 or 1
        self._last_dedup_sweep: int | None = None
        self._last_tile_sweep: int | None = None
        self._tile_cursor: tuple[int, bytes] | None = None  # (table index, next key)
        self._dedup_sweep_unfinished = False
        self._entity_cache: dict[bytes, EntityTiles] = {}

    # -- the batch -------------------------------------------------------------------------

    def process(self, records: Sequence[Record],
                profiles: Mapping[str, Mapping[str, Any]]) -> BatchResult:
        """Run one batch of this partition's records, in offset order."""
        out = BatchResult()
        if not records:
            return out
        topo = self.topology
        clock = time.perf_counter
        t0 = clock()
        overlay = out.changes

        # 1. validate
        decoded = []
        decode = self._decoder.decode
        for rec in records:
            ev = decode(rec.value)
            if type(ev) is Rejection:
                self._dead_letter(rec, ev, out)
            else:
                decoded.append((rec, ev))
        t1 = clock()

        # 2. dedup, then lateness against the watermark of accepted events before this one
        key_f, id_f, ts_f = topo.key_field, topo.event_id_field, topo.time_field
        wm = self.watermark
        reorder = self._reorder
        in_batch: dict[str, _Pending] = {}
        ordered: list[_Pending] = []  # processing order (arrival, or release in event_time)
        emits: list = []  # output order: a _Pending, or (key, original) for a duplicate
        for rec, ev in decoded:
            eid = getattr(ev, id_f)
            original = self._original(eid, in_batch, overlay)
            if original is not None:
                out.duplicates += 1
                if isinstance(original, _Pending) and original.event_id in self._buffered:
                    original.waiting_duplicates += 1  # emitted when the original is decided
                    continue
                if isinstance(original, bytes) and self._is_redelivery(rec, ev, overlay):
                    # The very record we processed before a crash: emit all it produced
                    # then, its late record included, not only the stored decision.
                    out.late.append(self._late_record(rec, getattr(ev, ts_f)))
                emits.append((getattr(ev, key_f).encode(), original))
                continue
            ts = getattr(ev, ts_f)
            late = wm.verdict(ts) is Lateness.LATE
            p = _Pending(rec, ev, getattr(ev, key_f), eid, ts, late)
            in_batch[eid] = p
            if late:
                out.late.append(self._late_record(rec, ts))
                if not topo.score_late:
                    overlay[self._dedup.seen_key(eid)] = b""
                    overlay[self._dedup.index_key(ts, eid)] = _origin(rec, late=True)
                    continue
                # Scored now, against state as it stands: tiles the watermark has already
                # expired are not seen, however the stream was cut into batches.
                p.notes, p.horizon_ms = ("late_event",), self._tile_horizon()
                ordered.append(p)
                emits.append(p)
                continue
            wm.observe(ts)
            out.accepted += 1
            if reorder is None:
                ordered.append(p)
                emits.append(p)
            else:
                reorder.push(ts, rec.offset, p)
                self._buffered[eid] = p
                for r in reorder.release(wm.watermark_ms):
                    del self._buffered[r.event_id]
                    ordered.append(r)
                    emits.append(r)
        t2 = clock()
        stage = {"validate": _ms(t1 - t0), "dedup": _ms(t2 - t1)}
        self._decide(ordered, emits, profiles, out, stage, t0)
        last = records[-1].offset + 1
        held = self._reorder.min_offset if self._reorder is not None else None
        out.commit_offset = min(last, held) if held is not None else last
        return out

    def flush(self, profiles: Mapping[str, Mapping[str, Any]]) -> BatchResult:
        """End of the input (a replay's last batch): decide every event the reorder buffer
        still holds, oldest first, as if the watermark had passed them all. Live workers never
        call it: there, held events wait for later input. Arrival ordering: an empty result."""
        out = BatchResult()
        if self._reorder is None or not len(self._reorder):
            return out
        t0 = time.perf_counter()
        ordered = self._reorder.drain()
        for p in ordered:
            del self._buffered[p.event_id]
        self._decide(ordered, list(ordered), profiles, out,
                     {"validate": 0.0, "dedup": _ms(time.perf_counter() - t0)}, t0)
        return out

    def preview(self, events: Sequence[Any], profiles: Mapping[str, Mapping[str, Any]],
                decider: Decider) -> list[Preview]:
        """Online scoring: the decision each event would get if it arrived now, changing
        nothing (no state, no watermark, no cache). Events are independent of each other.

        `events` are already validated (the topology's `EventDecoder`, as the caller answers
        a rejection itself). Then the stages of `process`: dedup (an event id already decided
        returns its stored decision with `duplicate=True`), lateness against the current
        watermark, features over a private copy of the entity's tiles with the event folded
        in, one `decider` call for all.
        """
        t0 = time.perf_counter()
        out: list[Preview] = []
        pending: list[tuple[int, _Pending]] = []
        t = self.topology
        for i, ev in enumerate(events):
            eid = getattr(ev, t.event_id_field)
            stored = self._store.get(self._dedup.seen_key(eid))
            if stored and not self._dedup.expired(orjson.loads(stored)["event_ts_ms"],
                                                  self.watermark.watermark_ms):
                out.append(Preview(decision=stored, duplicate=True))
                continue
            ts = getattr(ev, t.time_field)
            p = _Pending(Record("", self.partition, -1, None, None, 0), ev,
                         getattr(ev, t.key_field), eid, ts,
                         self.watermark.verdict(ts) is Lateness.LATE)
            if p.late:
                p.notes, p.horizon_ms = ("late_event",), self._tile_horizon()
            per_table, previous = self._entities_now(p.key, p.horizon_ms)
            for tb in t.tables:
                if not p.late:
                    ent = per_table[tb.name]
                    distinct = getattr(ev, tb.distinct_field) if tb.distinct_field else None
                    ent.add(p.ts_ms, getattr(ev, tb.value_field), distinct, tb.tile_ms)
            p.vector = self._vector(p, per_table, previous, profiles)
            out.append(Preview())
            pending.append((i, p))
        t1 = time.perf_counter()
        if pending:
            scored = [p for _, p in pending]
            verdicts = decider.decide_many(
                [p.key for p in scored], [p.vector for p in scored], [p.ts_ms for p in scored],
                [p.late for p in scored],
                lambda key: self._store.get(LATEST_DECISION_PREFIX + key.encode()))
            t2 = time.perf_counter()
            stage = {"validate_dedup_features": _ms(t1 - t0), "inference": _ms(t2 - t1)}
            now_ms = self._clock.now_ms()
            for (i, p), v in zip(pending, verdicts, strict=True):
                out[i] = Preview(decision=orjson.dumps(
                    _decision_doc(p, v, decider.feature_set, stage, now_ms)))
        return out

    def features_now(self, key: str, profiles: Mapping[str, Mapping[str, Any]]
                     ) -> tuple[int | None, FeatureVector, dict[str, int | None]]:
        """The stored features of `key` as of the newest event time this partition has seen
        (`as_of_ms`, None before any event): window and since-last features from the tables,
        each feature's age; features that need an event (the event's own fields, profile
        ratios) are None. Changes nothing."""
        as_of = self.watermark.max_ts_ms
        per_table, previous = self._entities_now(key, None)
        profile = profiles.get(key)
        fs = self.topology.features
        if as_of is None:
            return None, dict.fromkeys(fs.names), fs.ages(0, per_table, profile)
        return as_of, fs.stored_values(as_of, per_table, previous), \
            fs.ages(as_of, per_table, profile)

    def _entities_now(self, key: str, horizon_ms: int | None
                      ) -> tuple[dict[str, EntityTiles], dict[str, int | None]]:
        """Private copies of the entity's tiles as stored, and each table's last event time."""
        per_table: dict[str, EntityTiles] = {}
        previous: dict[str, int | None] = {}
        for tb in self.topology.tables:
            raw = self._store.get(tb.state_prefix + key.encode())
            ent = EntityTiles.from_json(orjson.loads(raw)) if raw else EntityTiles()
            if horizon_ms is not None:
                ent.expire(horizon_ms, tb.tile_ms)
            per_table[tb.name] = ent
            previous[tb.name] = ent.last_ts_ms
        return per_table, previous

    def _decide(self, ordered: list[_Pending], emits: list,
                profiles: Mapping[str, Mapping[str, Any]], out: BatchResult,
                stage: dict[str, float], t0: float) -> None:
        """Steps 3-5 of a batch: features, one scoring call, decisions in `emits` order."""
        clock = time.perf_counter
        overlay = out.changes
        wm = self.watermark
        t2 = clock()
        # 3. windows and features, in processing order (late events see state without themselves)
        scored = self._features(ordered, profiles, overlay)
        t3 = clock()

        # 4. one scoring call for the whole batch
        verdicts = self._decider.decide_many(
            [p.key for p in scored], [p.vector for p in scored], [p.ts_ms for p in scored],
            [p.late for p in scored],
            lambda key: self._get(LATEST_DECISION_PREFIX + key.encode(), overlay),
        ) if scored else []
        t4 = clock()

        # 5. policy → decisions; remember each decision under its event id for re-delivery
        stage["features"], stage["inference"] = _ms(t3 - t2), _ms(t4 - t3)
        fs = self._decider.feature_set
        now_ms = self._clock.now_ms()
        dumps = orjson.dumps
        docs = [_decision_doc(p, v, fs, stage, now_ms)
                for p, v in zip(scored, verdicts, strict=True)]
        t5 = clock()
        stage["policy"] = _ms(t5 - t4)
        stage["total"] = _ms(t5 - t0)
        seen_key, index_key = self._dedup.seen_key, self._dedup.index_key
        for p, doc in zip(scored, docs, strict=True):
            p.decision = body = dumps(doc)
            overlay[seen_key(p.event_id)] = body
            overlay[index_key(p.ts_ms, p.event_id)] = _origin(p.record, p.late)
            overlay[LATEST_DECISION_PREFIX + p.key.encode()] = body
        for e in emits:  # input order (event_time mode: release order)
            if type(e) is _Pending:
                key = e.key.encode()
                out.decisions.append((key, e.decision))
                # duplicates that arrived while this event sat in the reorder buffer
                out.decisions.extend((key, e.decision) for _ in range(e.waiting_duplicates))
            else:
                key, original = e
                body = original if isinstance(original, bytes) else original.decision
                if body:  # b"" or None: a late event that was not scored
                    out.decisions.append((key, body))
        out.stage_ms = stage

        if wm.max_ts_ms != self._persisted_max_ts:
            overlay[_WATERMARK_KEY] = str(wm.max_ts_ms).encode()
            self._persisted_max_ts = wm.max_ts_ms
        self._sweep(overlay)

    # -- stages ------------------------------------------------------------------------------

    def _features(self, order: list[_Pending], profiles: Mapping[str, Mapping[str, Any]],
                  overlay: dict[bytes, bytes | None]) -> list[_Pending]:
        """Fold accepted events into their tiles and compute every event's vector, in order."""
        tables = self.topology.tables
        entities: dict[bytes, EntityTiles] = {}
        cache = self._entity_cache
        for p in order:
            ev = p.event
            per_table: dict[str, EntityTiles] = {}
            previous: dict[str, int | None] = {}
            for tb in tables:
                skey = tb.state_prefix + p.key.encode()
                ent = entities.get(skey)
                if ent is None:
                    ent = cache.pop(skey, None)
                    if ent is None:
                        raw = self._get(skey, overlay)
                        ent = EntityTiles.from_json(orjson.loads(raw)) if raw else EntityTiles()
                    entities[skey] = ent
                if p.horizon_ms is not None:
                    ent.expire(p.horizon_ms, tb.tile_ms)
                per_table[tb.name] = ent
                previous[tb.name] = ent.last_ts_ms
                if not p.late:
                    distinct = getattr(ev, tb.distinct_field) if tb.distinct_field else None
                    ent.add(p.ts_ms, getattr(ev, tb.value_field), distinct, tb.tile_ms)
            p.vector = self._vector(p, per_table, previous, profiles)
        horizon = self._tile_horizon()
        for skey, ent in entities.items():
            if horizon is not None:
                ent.expire(horizon, self._tile_ms_of(skey))
            overlay[skey] = orjson.dumps(ent.to_json())
            cache[skey] = ent  # re-inserted last: the dict's order is least recently used first
        while len(cache) > self.ENTITY_CACHE_SIZE:
            del cache[next(iter(cache))]
        return order

    def _vector(self, p: _Pending, per_table: Mapping[str, EntityTiles],
                previous: Mapping[str, int | None],
                profiles: Mapping[str, Mapping[str, Any]]) -> FeatureVector:
        fs = self.topology.features
        profile = profiles.get(p.key)
        if profile is not None and fs.profile_is_stale(profile, p.ts_ms):
            profile, p.notes = None, (*p.notes, "stale_profile")
        return fs.compute(p.event, p.ts_ms, per_table, previous, profile)

    def _tile_ms_of(self, skey: bytes) -> int:
        for tb in self.topology.tables:
            if skey.startswith(tb.state_prefix):
                return tb.tile_ms
        raise KeyError(skey)

    def _original(self, eid: str, in_batch: Mapping[str, _Pending],
                  overlay: Mapping[bytes, bytes | None]) -> _Pending | bytes | None:
        """The first occurrence of event id `eid` within the dedup TTL, or None.

        An id whose TTL has passed counts as unseen even before a sweep deletes it, so what
        is a duplicate never depends on how far the (bounded, batch-paced) sweeps have got.
        """
        original = in_batch.get(eid) or self._buffered.get(eid)
        if original is not None:
            return None if self._dedup.expired(original.ts_ms, self.watermark.watermark_ms) \
                else original
        stored = self._get(self._dedup.seen_key(eid), overlay)
        if stored and self._dedup.expired(orjson.loads(stored)["event_ts_ms"],
                                          self.watermark.watermark_ms):
            return None
        return stored

    def _is_redelivery(self, rec: Record, ev: Any, overlay: Mapping[bytes, bytes | None]
                       ) -> bool:
        """Is this duplicate the same input record as the original, and was that one late?

        Only then is it a re-delivery after a crash (the original's late record may never
        have been produced); a duplicate at another offset is a duplicate event.
        """
        t = self.topology
        origin = self._get(self._dedup.index_key(getattr(ev, t.time_field),
                                                 getattr(ev, t.event_id_field)), overlay)
        return origin == _origin(rec, late=True)

    def _dead_letter(self, rec: Record, why: Rejection, out: BatchResult) -> None:
        raw = rec.value or b""
        out.dlq.append(SideRecord(rec.key, raw[: self.DLQ_TRUNCATE_BYTES], [
            ("streamwise.reason", why.reason.encode()),
            ("streamwise.detail", why.detail.encode()),
            ("streamwise.topic", rec.topic.encode()),
            ("streamwise.partition", str(rec.partition).encode()),
            ("streamwise.offset", str(rec.offset).encode()),
            ("streamwise.received_at_ms", str(self._clock.now_ms()).encode()),
            ("streamwise.size", str(len(raw)).encode()),
        ]))
        out.dlq_reasons.append(why.reason)

    def _late_record(self, rec: Record, ts_ms: int) -> SideRecord:
        return SideRecord(rec.key, rec.value or b"", [
            ("streamwise.watermark_ms", str(self.watermark.watermark_ms).encode()),
            ("streamwise.event_ts_ms", str(ts_ms).encode()),
            ("streamwise.topic", rec.topic.encode()),
            ("streamwise.partition", str(rec.partition).encode()),
            ("streamwise.offset", str(rec.offset).encode()),
        ])

    # -- state -------------------------------------------------------------------------------

    def _get(self, key: bytes, overlay: Mapping[bytes, bytes | None]) -> bytes | None:
        if key in overlay:
            return overlay[key]
        return self._store.get(key)

    def _tile_horizon(self) -> int | None:
        """Tiles ending at or before this are expired (None before the first event)."""
        cutoff = self.watermark.late_before_ms
        if cutoff is None:
            return None
        return cutoff - max(tb.retain_ms for tb in self.topology.tables)

    def _sweep(self, overlay: dict[bytes, bytes | None]) -> None:
        """Expire dedup ids and idle entities' tiles, in event time, now and then."""
        wm = self.watermark.watermark_ms
        if wm is None:
            return
        if self._dedup_sweep_unfinished or self._last_dedup_sweep is None \
                or wm - self._last_dedup_sweep >= self._sweep_every_ms:
            self._last_dedup_sweep = wm
            lo, hi = self._dedup.expiry_range(wm)
            # at most a bounded number of ids per batch; the rest in the next batches
            budget = self.DEDUP_SWEEP_IDS
            self._dedup_sweep_unfinished = False
            for ikey, _ in self._store.items_between(lo, hi):
                if budget == 0:
                    self._dedup_sweep_unfinished = True
                    break
                budget -= 1
                overlay[ikey] = None
                overlay[self._dedup.seen_key(self._dedup.event_id_of_index(ikey))] = None
        if self._tile_cursor is None and (
                self._last_tile_sweep is None
                or wm - self._last_tile_sweep >= self._tile_sweep_every_ms):
            self._last_tile_sweep = wm
            self._tile_cursor = (0, self.topology.tables[0].state_prefix)
        if self._tile_cursor is not None:
            self._sweep_tiles(overlay)

    def _sweep_tiles(self, overlay: dict[bytes, bytes | None]) -> None:
        """Expire the tiles of up to `TILE_SWEEP_ENTITIES` stored entities, from the cursor
        on: a sweep of every entity is spread over batches instead of stalling one."""
        horizon = self._tile_horizon()
        tables = self.topology.tables
        i, start = self._tile_cursor
        tb = tables[i]
        budget = self.TILE_SWEEP_ENTITIES
        for skey, raw in self._store.items_between(start, tb.state_prefix + b"\xff"):
            if budget == 0:
                self._tile_cursor = (i, skey)
                return
            budget -= 1
            if skey in overlay:
                continue
            ent = self._entity_cache.get(skey) or EntityTiles.from_json(orjson.loads(raw))
            if ent.expire(horizon, tb.tile_ms):
                overlay[skey] = orjson.dumps(ent.to_json())
        self._tile_cursor = (i + 1, tables[i + 1].state_prefix) if i + 1 < len(tables) else None


def abstain_decision(topology: Topology, event: Any, feature_set: str, reason: str,
                     now_ms: int) -> bytes:
    """The decision for a validated event that no path could score in time (online budget
    exhausted): abstain → review, no features, `reason` in its reasons."""
    t = topology
    p = _Pending(Record("", -1, -1, None, None, 0), event, getattr(event, t.key_field),
                 getattr(event, t.event_id_field), getattr(event, t.time_field), False)
    p.vector = dict.fromkeys(t.features.names)
    return orjson.dumps(_decision_doc(p, abstain((reason,)), feature_set, {}, now_ms))


def _decision_doc(p: _Pending, v: Verdict, feature_set: str, stage: dict[str, float],
                  now_ms: int) -> dict[str, Any]:
    return {
        "decision_id": decision_id(p.event_id, v.model, feature_set),
        "event_id": p.event_id, "key": p.key, "score": v.score,
        "decision": v.decision, "model": v.model, "path": v.path,
        "reasons": [*p.notes, *v.reasons], "features": p.vector, "stage_ms": stage,
        "event_ts_ms": p.ts_ms, "decided_at_ms": now_ms,
    }


def _origin(rec: Record, late: bool) -> bytes:
    """Value of a dedup index entry: where the original came from and whether it was late."""
    return b"%d:%d:%d" % (rec.partition, rec.offset, late)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
