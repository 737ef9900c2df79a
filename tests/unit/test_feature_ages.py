"""The age of each stored feature's freshest input (`features_now`, what GET/POST /v1/features
serve), seen from the partition's newest event time."""

from __future__ import annotations

import orjson

import topologies
from engine.clock import ManualClock
from engine.features import PROFILE_TS_FIELD
from engine.pipeline import PartitionPipeline, Record
from engine.policy import RulesOnly
from engine.state import MemoryStore

TOPO = topologies.get("fraud")
FS = TOPO.features
T0 = 1_767_225_600_000


def _pipeline(*events: tuple[str, int]) -> PartitionPipeline:
    """One partition that has decided `events` ``(card, ts)`` in this order."""
    store = MemoryStore()
    pipe = PartitionPipeline(TOPO, 0, store, RulesOnly(TOPO.rules, FS.versioned_name),
                             ManualClock(0))
    recs = [Record("fraud.events", 0, i, None, orjson.dumps(
        {"event_id": f"e{i}", "card_id": card, "merchant_id": "m1", "amount": 5.0,
         "currency": "USD", "country": "FR", "ts_ms": ts}), None)
            for i, (card, ts) in enumerate(events)]
    store.apply(pipe.process(recs, {}).changes)
    return pipe


def test_ages_by_kind_of_feature():
    pipe = _pipeline(("c1", T0 + 1_000), ("c2", T0 + 4_000))
    as_of, _, ages = pipe.features_now("c1", {"c1": {"avg_amount_90d": 1.0, "home_country": "FR",
                                                     PROFILE_TS_FIELD: T0 + 500}})
    assert as_of == T0 + 4_000  # the partition's newest event
    assert ages["count_10m"] == ages["secs_since_last"] == 3_000
    assert ages["amount_over_avg"] == ages["is_foreign"] == 3_500
    assert ages["amount"] == ages["hour_of_day"] == 0
    assert set(ages) == set(FS.names)


def test_ages_unknown_without_state_or_profile():
    # c3's only event is late (more than 60 s behind the newest): it is decided, but never
    # folded into a tile, so the card has no accepted event time.
    pipe = _pipeline(("c1", T0 + 120_000), ("c3", T0))
    _, values, ages = pipe.features_now("c3", {})
    assert ages["count_1h"] is None and ages["secs_since_last"] is None
    assert ages["amount_over_avg"] is None  # no profile
    assert values["secs_since_last"] is None and values["count_1h"] == 0
    profile_without_time = {"c3": {"avg_amount_90d": 1.0, "home_country": "FR"}}
    assert pipe.features_now("c3", profile_without_time)[2]["amount_over_avg"] is None
    assert pipe.features_now("nobody", {}) is None  # never decided: unknown
