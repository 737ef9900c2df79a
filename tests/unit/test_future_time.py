"""One event from the far future must not break its partition: it is refused to the DLQ with
reason ``future_time`` against its record's own Kafka time (deterministic, live and replay
alike), and the partition's watermark, windows and dedup go on as if it never came."""

from __future__ import annotations

import orjson

from engine.clock import ManualClock
from engine.pipeline import PartitionPipeline, Record
from engine.policy import RulesOnly
from engine.state import MemoryStore
from topologies.fraud import TOPOLOGY

T0 = 1_767_225_600_000
YEAR_2100 = 4_102_444_800_000


def _rec(offset: int, eid: str, ts: int, record_ts: int | None) -> Record:
    value = orjson.dumps({"event_id": eid, "card_id": "c1", "merchant_id": "m1",
                          "amount": 10.0, "currency": "USD", "country": "US", "ts_ms": ts})
    return Record("fraud.events", 0, offset, b"c1", value, record_ts)


def _pipe() -> tuple[PartitionPipeline, MemoryStore]:
    store = MemoryStore()
    return PartitionPipeline(TOPOLOGY, 0, store,
                             RulesOnly(TOPOLOGY.rules, TOPOLOGY.features.versioned_name),
                             ManualClock(0)), store


def _feed(pipe: PartitionPipeline, store: MemoryStore, recs: list[Record]):
    out = []
    for rec in recs:
        r = pipe.process([rec], {})
        store.apply(r.changes)
        out.append(r)
    return out


def test_the_shipped_fraud_limit_is_ten_minutes():
    assert TOPOLOGY.max_future_ms == 600_000


def test_an_event_past_the_limit_goes_to_the_dlq_and_changes_nothing():
    pipe, store = _pipe()
    a, future, b = _feed(pipe, store, [
        _rec(0, "a", T0, T0), _rec(1, "future", YEAR_2100, T0 + 1_000),
        _rec(2, "b", T0 + 2_000, T0 + 2_000)])
    assert [d.headers[0] for d in future.dlq] == [("streamwise.reason", b"future_time")]
    assert dict(future.dlq[0].headers)["streamwise.detail"].startswith(
        b"event time 4102444800000 is ")
    assert future.decisions == [] and future.accepted == 0
    assert pipe.watermark.max_ts_ms == T0 + 2_000  # the future event never moved it
    assert b.late == [] and b.accepted == 1
    assert orjson.loads(b.decisions[0][1])["features"]["count_10m"] == 2  # a and b


def test_the_limit_is_inclusive_and_measured_against_the_record_time():
    pipe, store = _pipe()
    at, past = _feed(pipe, store, [_rec(0, "at", T0 + 600_000, T0),
                                   _rec(1, "past", T0 + 600_001 + 5, T0 + 5 - 1 + 1)])
    assert at.dlq == [] and at.accepted == 1
    assert [dict(d.headers)["streamwise.reason"] for d in past.dlq] == [b"future_time"]


def test_records_without_a_time_are_not_checked():
    pipe, store = _pipe()
    (r,) = _feed(pipe, store, [_rec(0, "file-line", YEAR_2100, None)])
    assert r.dlq == [] and r.accepted == 1


def test_a_resent_future_event_is_refused_again_not_deduplicated():
    pipe, store = _pipe()
    first, again = _feed(pipe, store, [_rec(0, "f", YEAR_2100, T0), _rec(1, "f", YEAR_2100, T0)])
    assert len(first.dlq) == len(again.dlq) == 1 and again.duplicates == 0
