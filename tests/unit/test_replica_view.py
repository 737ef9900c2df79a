"""A standby replica's reads (engine/pipeline/replica.py): over a copy of a partition's store
built from its change sets alone, the online reads answer exactly what the owner's partition
state answers, and the watermark follows each applied change set."""

from __future__ import annotations

import orjson

from engine.clock import ManualClock
from engine.pipeline import PartitionPipeline, Record, ReplicaView
from engine.pipeline.preview import features_now, last_decision, table_view
from engine.policy import RulesOnly
from engine.state import MemoryStore
from topologies.fraud import TOPOLOGY

T0 = 1_767_225_600_000
NOW = 1_800_000_000_000


def _payment(eid: str, card: str, ts: int, amount: float) -> bytes:
    return orjson.dumps({"event_id": eid, "card_id": card, "merchant_id": f"m{ts % 3}",
                         "amount": amount, "currency": "USD", "country": "US", "ts_ms": ts})


def test_replica_reads_equal_the_owners_and_follow_each_change_set() -> None:
    owned, replica = MemoryStore(), MemoryStore()
    pipe = PartitionPipeline(TOPOLOGY, 0, owned,
                             RulesOnly(TOPOLOGY.rules, TOPOLOGY.features.versioned_name),
                             ManualClock(NOW))
    view = ReplicaView(TOPOLOGY, 0, replica)
    assert view.watermark.max_ts_ms is None and table_view(view, "velocity", "c1") is None
    cards = ["c1", "c2", "c3"]
    behind: list = []  # change sets the replica has not applied yet (in order)
    for i in range(60):
        card = cards[i % 3]
        value = _payment(f"e{i}", card, T0 + i * 30_000, 10.0 + i)
        behind.append(pipe.process([Record("fraud.events", 0, i, card.encode(), value, None)],
                                   {}).changes)
        owned.apply(behind[-1])
        if i % 5 == 4:  # the replica lags now and then: reads are as of what it applied
            assert view.watermark.max_ts_ms is None or \
                view.watermark.max_ts_ms < pipe.state.watermark.max_ts_ms
            continue
        for changes in behind:  # change sets are all it ever gets: no kernels, no pipeline
            replica.apply(changes)
        behind.clear()
        assert view.watermark.max_ts_ms == pipe.state.watermark.max_ts_ms
        for card in cards:
            assert table_view(view, "velocity", card) == table_view(pipe.state, "velocity", card)
            assert features_now(view, card, {}) == features_now(pipe.state, card, {})
            assert last_decision(view, card) == last_decision(pipe.state, card)
    assert table_view(view, "velocity", "never-seen") is None
    assert features_now(view, "never-seen", {}) is None
