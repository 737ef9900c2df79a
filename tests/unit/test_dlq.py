"""Every dead-letter reason through the engine's pipeline: the exact reason string, detail and
headers of the DLQ record, its bytes (truncated past 64 KiB), and no trace left in state."""

from __future__ import annotations

import orjson
import pytest

from engine.clock import ManualClock
from engine.pipeline import PartitionPipeline, Record
from engine.policy import RulesOnly
from engine.state import MemoryStore
from topologies.fraud import TOPOLOGY

T0 = 1_767_225_600_000
NOW_MS = 1_800_000_000_123
GOOD = {"event_id": "e", "card_id": "c1", "merchant_id": "m1", "amount": 12.5,
        "currency": "USD", "country": "US", "ts_ms": T0}


def _doc(**changes: object) -> bytes:
    return orjson.dumps({k: v for k, v in {**GOOD, **changes}.items() if v is not None})


OVERSIZED = _doc(pad="x" * (1 << 20))  # over the fraud topology's 1 MiB

CASES = [
    # (reason, raw value, detail)
    ("empty", b"", "record has no value"),
    ("empty", None, "record has no value"),
    ("oversized", OVERSIZED, f"{len(OVERSIZED)} bytes > limit 1048576"),
    ("not_utf8", b"\xff\xfe{}", "invalid UTF-8 at byte 0"),
    ("invalid_json", b"{", "Invalid JSON: EOF while parsing an object at line 1 column 1"),
    ("non_finite", _doc(amount=0.5).replace(b"0.5", b"NaN"),
     "amount: Input should be a finite number"),
    ("non_finite", _doc(amount=0.5).replace(b"0.5", b"-Infinity"),
     "amount: Input should be a finite number"),
    ("missing_key", _doc(card_id=""), "card_id: String should have at least 1 character"),
    ("missing_key", _doc(event_id=None), "event_id: Field required"),
    ("schema", _doc(amount=-5.0), "amount: Input should be greater than 0"),
    ("schema", _doc(amount="12.5"), "amount: Input should be a valid number"),
    ("schema", _doc(ts_ms=1.0), "ts_ms: Input should be a valid integer"),
    ("schema", b"[1]", "Input should be an object"),
]


@pytest.mark.parametrize(("reason", "value", "detail"), CASES,
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(CASES)])
def test_a_bad_record_goes_to_the_dlq_with_its_reason_and_headers(reason: str,
                                                                  value: bytes | None,
                                                                  detail: str) -> None:
    store = MemoryStore()
    pipe = PartitionPipeline(TOPOLOGY, 5, store, RulesOnly(TOPOLOGY.rules, "fraud:v1"),
                             ManualClock(NOW_MS))
    good_before = Record("fraud.events", 5, 41, b"c1", _doc(event_id="before"), 0)
    bad = Record("fraud.events", 5, 42, b"the-key", value, 0)
    good_after = Record("fraud.events", 5, 43, b"c1", _doc(event_id="after"), 0)
    res = pipe.process([good_before, bad, good_after], {})
    store.apply(res.changes)

    assert res.dlq_reasons == [reason]
    (side,) = res.dlq
    raw = value or b""
    assert side.headers == [
        ("streamwise.reason", reason.encode()),
        ("streamwise.detail", detail.encode()),
        ("streamwise.topic", b"fraud.events"),
        ("streamwise.partition", b"5"),
        ("streamwise.offset", b"42"),
        ("streamwise.received_at_ms", str(NOW_MS).encode()),
        ("streamwise.size", str(len(raw)).encode()),
    ]
    assert side.key == b"the-key"
    assert side.value == raw[:65_536]
    # The good records around it are decided as usual, and the offset moves past all three.
    assert [orjson.loads(v)["event_id"] for _, v in res.decisions] == ["before", "after"]
    assert res.commit_offset == 44 and res.accepted == 2 and res.duplicates == 0
    assert {k for k, _ in store.items() if k.startswith(b"d/")} == {b"d/before", b"d/after"}


def test_an_oversized_record_is_truncated_to_64_kib_in_the_dlq() -> None:
    pipe = PartitionPipeline(TOPOLOGY, 0, MemoryStore(), RulesOnly(TOPOLOGY.rules, "fraud:v1"),
                             ManualClock(NOW_MS))
    (side,) = pipe.process([Record("t", 0, 0, None, OVERSIZED, 0)], {}).dlq
    assert len(side.value) == 65_536 and side.value == OVERSIZED[:65_536]
    assert dict(side.headers)["streamwise.size"] == str(len(OVERSIZED)).encode()


def test_a_record_of_exactly_the_limit_is_not_oversized() -> None:
    doc = _doc(pad="")
    exact = doc.replace(b'"pad":""', b'"pad":"' + b"x" * ((1 << 20) - len(doc)) + b'"')
    assert len(exact) == 1 << 20
    pipe = PartitionPipeline(TOPOLOGY, 0, MemoryStore(), RulesOnly(TOPOLOGY.rules, "fraud:v1"),
                             ManualClock(NOW_MS))
    res = pipe.process([Record("t", 0, 0, b"c1", exact, 0)], {})
    assert res.dlq == [] and len(res.decisions) == 1
