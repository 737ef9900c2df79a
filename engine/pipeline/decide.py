"""From verdicts to decisions: the decision documents of a batch, their encoding, and the state
each decision leaves behind (its dedup entry and the entity's last decision)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol

import orjson

from ..policy import ScoringRows, Verdict, abstain
from ..schemas import decision_id
from ..state import layout
from ..topology import Topology
from .fold import FeatureColumns
from .partition import Row
from .records import Record

__all__ = ["Decider", "abstain_decision", "decision_doc", "encode_decisions"]


class Decider(Protocol):
    """Scores a batch: one call per poll. `feature_set` is the versioned feature-set name
    that goes into every decision id; row keys are opaque (one entity of one partition)."""

    feature_set: str

    def decide(self, rows: ScoringRows) -> list[Verdict]: ...


def decision_doc(row: Row, v: Verdict, features: dict[str, Any], feature_set: str,
                 stage: dict[str, float], now_ms: int) -> dict[str, Any]:
    """A decision message (DESIGN.md §3); field order is the message's."""
    return {
        "decision_id": decision_id(row.eid, v.model, feature_set),
        "event_id": row.eid, "key": row.key, "score": v.score,
        "decision": v.decision, "model": v.model, "path": v.path,
        "reasons": [*row.notes, *v.reasons], "features": features, "stage_ms": stage,
        "event_ts_ms": row.ts_ms, "decided_at_ms": now_ms,
    }


def encode_decisions(rows: Sequence[Row], docs: Sequence[dict[str, Any]]) -> None:
    """Encode each row's decision (set as `row.decision`)."""
    dumps = orjson.dumps
    for row, doc in zip(rows, docs, strict=True):
        row.decision = dumps(doc)


def state_changes(rows: Sequence[Row], unscored: Sequence[Row],
                  last_ts: dict[str, int | None], changes: dict[bytes, bytes | None]) -> None:
    """The dedup entry of every decided (or unscored late) event and each decided entity's
    record (its newest event time and last decision)."""
    for group in (rows, unscored):
        for row in group:
            changes[layout.seen_key(row.eid)] = layout.pack_seen(
                row.ts_ms, row.partition, row.offset, row.late, row.decision or b"")
    for row in rows:
        changes[layout.entity_key(row.kb)] = layout.pack_entity(last_ts[row.key],
                                                                row.decision or b"")


def abstain_decision(topology: Topology, event: Any, feature_set: str, reason: str,
                     now_ms: int) -> bytes:
    """The decision for a validated event no path could score in time (online budget
    exhausted): abstain → review, no features, `reason` in its reasons."""
    t = topology
    row = Row(Record("", -1, -1, None, None, 0), event, getattr(event, t.key_field),
              getattr(event, t.event_id_field), getattr(event, t.time_field), False)
    return orjson.dumps(decision_doc(row, abstain((reason,)), dict.fromkeys(t.features.names),
                                     feature_set, {}, now_ms))


def scoring_rows(rows: Sequence[Row], columns: FeatureColumns,
                 last_decision: Any) -> ScoringRows:
    keys: list[Hashable] = [(r.partition, r.key) for r in rows]
    return ScoringRows(columns.plan.names, columns.matrix, keys, [r.ts_ms for r in rows],
                       [r.late for r in rows], columns.vector, last_decision)
