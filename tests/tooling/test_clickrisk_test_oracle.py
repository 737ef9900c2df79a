"""Tests of test tooling, not of the engine: the clickrisk *oracle*
(tests/integration/clickrisk_oracle.py), checked here on hand-computed cases. A change to the
engine cannot make these fail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from clickrisk_oracle import parse, run_oracle  # noqa: E402

T0 = 1_767_225_600_000  # a whole hour in epoch ms


def click(eid: str, ts: int, dwell: int = 1_000, **over: object) -> bytes:
    doc = {"event_id": eid, "user_id": "u1", "session_id": "s1", "action": "view",
           "ip_country": "US", "device_id": "d1", "dwell_ms": dwell, "value": 0.0, "ts_ms": ts}
    doc.update(over)
    return json.dumps(doc).encode()


def run(*values: bytes):
    return run_oracle([(0, i, v) for i, v in enumerate(values)])


def test_release_in_event_time_order_and_what_stays_held() -> None:
    r = run(click("a", T0 + 50_000, 2_000), click("b", T0 + 47_000, 500, device_id="d2"),
            click("c", T0 + 70_000), click("d", T0 + 130_000))
    assert r.order[0] == ["b", "a", "c"]  # d waits: the watermark is 125 s
    assert r.outcome == {"a": "accepted", "b": "accepted", "c": "accepted", "d": "held"}
    assert r.features["a"]["clicks_1m"] == 2 and r.features["a"]["min_dwell_1m"] == 500.0
    assert r.features["a"]["devices_10m"] == 2 and r.features["a"]["secs_since_last"] == 3.0
    assert r.features["c"]["clicks_1m"] == 1 and r.features["c"]["clicks_10m"] == 3
    assert r.features["b"]["secs_since_last"] == -1.0


def test_a_late_event_is_decided_at_once_without_itself() -> None:
    r = run(click("a", T0 + 50_000), click("b", T0 + 70_000), click("late", T0 + 1_000, 100))
    # b's arrival: watermark 65 s, a released; 1 s < 65 s - 10 s: late, decided before b
    assert r.order[0] == ["a", "late"] and r.outcome["late"] == "late"
    assert r.late_watermark == {"late": T0 + 65_000}
    assert r.features["late"]["clicks_1m"] == 1 and r.features["late"]["min_dwell_1m"] == 1000
    assert r.features["late"]["secs_since_last"] == (1_000 - 50_000) / 1_000


def test_hopping_reads_the_newest_window_holding_the_event() -> None:
    # 10-minute windows every 2 minutes: an event at 2 min 10 s reads [2 min, 12 min).
    r = run(click("a", T0 + 100_000), click("b", T0 + 130_000), click("z", T0 + 200_000))
    assert r.features["a"]["clicks_10m"] == 1
    assert r.features["b"]["clicks_10m"] == 1  # a is in [0, 10 min), not in [2, 12 min)
    assert r.features["b"]["clicks_1m"] == 1  # minute [2, 3): b alone


def test_duplicates_and_dead_letters() -> None:
    r = run(click("a", T0), click("a", T0), b"", b"{", click("x", T0, action="hack"),
            click("y", T0, user_id=""), click("n", T0).replace(b'"value": 0.0', b'"value": NaN'))
    assert r.duplicates == [(0, 1, "a")]
    assert [reason for _, _, reason in r.dlq] == ["empty", "invalid_json", "schema",
                                                  "missing_key", "non_finite"]
    assert parse(click("i", T0, dwell_ms=1.5)) == "schema"
    assert parse(click("i", T0, value=3)) != "schema"  # an integer is a number
