"""From verdicts to decisions: the decision documents of a batch, their encoding, and the state
each decision leaves behind (its dedup entry and the entity's last decision)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol

import numpy as np
import orjson

from ..kernel import encode_decisions
from ..policy import DeciderHealth, DeciderStats, ScoringRows, Verdict, abstain
from ..schemas import decision_id
from ..state import layout
from ..topology import Topology
from .fold import FeatureColumns
from .partition import Row
from .records import Record

__all__ = ["Decider", "abstain_decision", "decision_doc", "encode_rows", "scoring_rows",
           "unscored_changes"]


class Decider(Protocol):
    """Scores a batch: one call per poll. `feature_set` is the versioned feature-set name
    that goes into every decision id; row keys are opaque (one entity of one partition).
    A decider reports for itself: its counts since the last drain, its models' health, and a
    twin with its own breakers and counts (the online path's)."""

    feature_set: str

    def decide(self, rows: ScoringRows) -> list[Verdict]: ...

    def drain_stats(self) -> DeciderStats: ...

    def health(self) -> DeciderHealth: ...

    def twin(self) -> Decider: ...


def decision_doc(row: Row, v: Verdict, features: dict[str, Any], feature_set: str,
                 stage: dict[str, float], now_ms: int,
                 context: tuple[str, ...] = ()) -> dict[str, Any]:
    """A decision message (DESIGN.md §3); field order is the message's. `shadow` only when
    a rollout shadows a candidate on the event; `context` (the event's fields named by the
    topology's `decision_context`) only when it names some."""
    context = {f: getattr(row.event, f) for f in context} if context else None
    doc = {
        "decision_id": decision_id(row.eid, v.model, feature_set),
        "event_id": row.eid, "key": row.key, "score": v.score,
        "decision": v.decision, "model": v.model, "path": v.path,
        "reasons": [*row.notes, *v.reasons], "features": features,
    }
    if v.shadow is not None:
        doc["shadow"] = v.shadow
    if context is not None:
        doc["context"] = context
    doc.update(stage_ms=stage, event_ts_ms=row.ts_ms, decided_at_ms=now_ms)
    return doc


def encode_rows(rows: Sequence[Row], verdicts: Sequence[Verdict], columns: FeatureColumns,
                feature_set: str, stage: dict[str, float], now_ms: int,
                last_ts: Sequence[int], changes: Sequence[dict[bytes, bytes | None]],
                context: tuple[str, ...] = ()) -> None:
    """Encode each row's decision (set as `row.decision`, the compiled `encode_decisions`)
    and write its dedup entry and its entity record (newest event time `last_ts[i]`, NO_TS
    for none; last decision) to its partition's change set `changes[i]`. `context`: the
    event fields each decision carries under ``context``."""
    n = len(rows)
    if not n:
        return
    plan = columns.plan
    kinds = bytearray(b"f" * len(plan.names))
    objects: list[Any] = [None] * len(plan.names)
    for col in plan.integer:
        kinds[col] = ord("i")
    for j, (col, _) in enumerate(plan.functions):
        kinds[col] = ord("o")
        objects[col] = columns.values[j]
    shadows = [v.shadow for v in verdicts]  # a rollout's shadow fields (None: no field)
    bodies, seen, entity = encode_decisions(
        [r.eid for r in rows], [r.key for r in rows],
        np.fromiter((r.ts_ms for r in rows), np.int64, n),
        [v.score for v in verdicts], [v.decision for v in verdicts],
        [v.model for v in verdicts], [v.path for v in verdicts],
        [(*r.notes, *v.reasons) for r, v in zip(rows, verdicts, strict=True)],
        plan.names, np.ascontiguousarray(columns.matrix), bytes(kinds), objects, feature_set,
        orjson.dumps(stage), now_ms, np.fromiter((r.partition for r in rows), np.int64, n),
        np.fromiter((r.offset for r in rows), np.int64, n), [r.late for r in rows],
        np.asarray(last_ts, dtype=np.int64), shadows if shadows.count(None) < n else None,
        [orjson.dumps({f: getattr(r.event, f) for f in context}) for r in rows]
        if context else None)
    seen_key, entity_key = layout.seen_key, layout.entity_key
    for i, row in enumerate(rows):
        row.decision = bodies[i]
        out = changes[i]
        out[seen_key(row.eid)] = seen[i]
        out[entity_key(row.kb)] = entity[i]


def unscored_changes(unscored: Sequence[Row], changes: dict[bytes, bytes | None]) -> None:
    """The dedup entry of each late event the topology does not score (no decision)."""
    for row in unscored:
        changes[layout.seen_key(row.eid)] = layout.pack_seen(row.ts_ms, row.partition,
                                                             row.offset, row.late, b"")


def abstain_decision(topology: Topology, event: Any, feature_set: str, reason: str,
                     now_ms: int) -> bytes:
    """The decision for a validated event no path could score in time (online budget
    exhausted): abstain → review, no features, `reason` in its reasons."""
    t = topology
    row = Row(Record("", -1, -1, None, None, 0), event, getattr(event, t.key_field),
              getattr(event, t.event_id_field), getattr(event, t.time_field), False)
    return orjson.dumps(decision_doc(row, abstain((reason,)), dict.fromkeys(t.features.names),
                                     feature_set, {}, now_ms, t.decision_context))


def scoring_rows(rows: Sequence[Row], columns: FeatureColumns,
                 last_decision: Any) -> ScoringRows:
    keys: list[Hashable] = [(r.partition, r.key) for r in rows]
    return ScoringRows(columns.plan.names, columns.matrix, keys, [r.ts_ms for r in rows],
                       [r.late for r in rows], columns.vector, last_decision)
