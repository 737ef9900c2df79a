"""engine.testing.records_of: events as a keying producer would write them, ready for feed."""

from __future__ import annotations

import orjson

import topologies
from engine.partitioning import partition_for
from engine.testing import feed, records_of

TOPO = topologies.get("fraud")
T0 = 1_767_225_600_000


def _payments(cards: list[str]) -> list[dict]:
    return [{"event_id": f"e{i}", "card_id": card, "merchant_id": "m1", "amount": 10.0 + i,
             "currency": "EUR", "country": "FR", "ts_ms": T0 + i * 1_000}
            for i, card in enumerate(cards)]


def test_records_sit_on_their_entitys_partition_with_offsets_and_event_time() -> None:
    events = _payments(["c1", "c2", "c1", "c3", "c2", "c1"])
    recs = records_of(TOPO, events, partitions=4)
    assert [r.partition for r in recs] == [partition_for(e["card_id"].encode(), 4)
                                          for e in events]
    for p in {r.partition for r in recs}:
        assert [r.offset for r in recs if r.partition == p] == list(
            range(sum(1 for r in recs if r.partition == p)))
    assert [(r.key, orjson.loads(r.value), r.timestamp) for r in recs] == [
        (e["card_id"].encode(), e, e["ts_ms"]) for e in events]
    assert {r.topic for r in recs} == {"fraud.events"}


def test_fed_records_are_decided_and_counted_per_card() -> None:
    events = _payments(["c1", "c2", "c1", "c1"])
    out = feed(TOPO, records_of(TOPO, events, partitions=2), partitions=2)
    decided = [orjson.loads(d) for ds in out.decisions.values() for d in ds]
    assert sorted(d["event_id"] for d in decided) == ["e0", "e1", "e2", "e3"]
    p1 = partition_for(b"c1", 2)
    row = out.tables["velocity"][p1]["c1"]
    assert (row.last_ts_ms, sum(t[1] for t in row.tiles)) == (T0 + 3_000, 3)
