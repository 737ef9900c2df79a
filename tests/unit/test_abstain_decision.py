"""The abstain decision (an event no path could score within its budget, online), by value."""

from __future__ import annotations

import hashlib

import orjson

import topologies
from engine.pipeline import abstain_decision

TOPO = topologies.get("fraud")


def test_an_abstain_decision_is_review_with_no_features_and_the_reason() -> None:
    event = TOPO.schema(event_id="e-1", card_id="c1", merchant_id="m1", amount=12.5,
                        currency="EUR", country="FR", ts_ms=1_767_225_600_000)
    raw = abstain_decision(TOPO, event, "fraud:v1", "budget_exhausted", 1_800_000_000_123)
    want_id = hashlib.blake2b(b"e-1\x1fnone\x1ffraud:v1", digest_size=16).hexdigest()
    assert orjson.loads(raw) == {
        "decision_id": want_id, "event_id": "e-1", "key": "c1", "score": None,
        "decision": "review", "model": "none", "path": "abstain",
        "reasons": ["budget_exhausted"],  # no late_event: an online request is never late
        "features": dict.fromkeys(["count_10m", "sum_10m", "max_10m", "count_1h", "sum_1h",
                                   "mean_1h", "distinct_merchants_1h", "secs_since_last",
                                   "amount_over_avg", "is_foreign", "amount", "hour_of_day"]),
        "stage_ms": {}, "event_ts_ms": 1_767_225_600_000, "decided_at_ms": 1_800_000_000_123}
