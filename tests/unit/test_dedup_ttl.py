"""Dedup's TTL is a rule of event time, not of how far the expiry sweeps have got."""

from __future__ import annotations

import orjson

from engine.clock import ManualClock
from engine.pipeline import PartitionPipeline, Record
from engine.policy import RulesOnly
from engine.state import MemoryStore
from topologies.fraud import TOPOLOGY

T0 = 1_767_225_600_000
DAY = 86_400_000


def _rec(offset: int, eid: str, card: str, ts: int) -> Record:
    value = orjson.dumps({"event_id": eid, "card_id": card, "merchant_id": "m1", "amount": 10.0,
                          "currency": "USD", "country": "US", "ts_ms": ts})
    return Record("fraud.events", 0, offset, card.encode(), value, ts)


def _pipeline(sweeps: bool) -> tuple[PartitionPipeline, MemoryStore]:
    store = MemoryStore()
    pipe = PartitionPipeline(TOPOLOGY, 0, store,
                             RulesOnly(TOPOLOGY.rules, TOPOLOGY.features.versioned_name),
                             ManualClock(0))
    if not sweeps:
        pipe.state.dedup_sweep_ids = 0  # the sweep finds expired ids but deletes none of them
    return pipe, store


def _run(pipe: PartitionPipeline, store: MemoryStore, recs: list[Record]) -> list[dict]:
    out = []
    for rec in recs:
        result = pipe.process([rec], {})
        store.apply(result.changes)
        for _, body in result.decisions:
            doc = orjson.loads(body)
            del doc["stage_ms"]  # wall-clock durations
            out.append(doc)
    return out


def test_a_resend_after_the_ttl_is_decided_again_whether_or_not_a_sweep_deleted_its_id():
    stream = [_rec(0, "a", "c1", T0), _rec(1, "b", "c2", T0 + DAY + 10_000),
              _rec(2, "a", "c1", T0)]  # "a" again: its id is 24 h + 8 s behind the watermark
    results = []
    for sweeps in (True, False):
        pipe, store = _pipeline(sweeps)
        decided = _run(pipe, store, stream[:2])
        # "b" moved the watermark a day past "a": the sweep deleted its id, or, without
        # sweeps, it is still stored (and expired all the same)
        assert (store.get(b"d/a") is None) == sweeps
        decided += _run(pipe, store, stream[2:])
        results.append(decided)
    for decided in results:
        first, resend = decided[0], decided[2]
        assert resend["event_id"] == "a"
        assert resend["reasons"][0] == "late_event"  # decided anew (and late), not re-emitted
        assert first["reasons"] == [r for r in first["reasons"] if r != "late_event"]
    assert results[0] == results[1]


def test_a_resend_within_the_ttl_re_emits_the_original_bytes():
    pipe, store = _pipeline(sweeps=True)
    first = pipe.process([_rec(0, "a", "c1", T0)], {})
    store.apply(first.changes)
    later = pipe.process([_rec(1, "b", "c2", T0 + DAY - 60_000)], {})
    store.apply(later.changes)
    again = pipe.process([_rec(2, "a", "c1", T0)], {})
    assert again.duplicates == 1
    assert again.decisions == first.decisions  # key and body, byte for byte
