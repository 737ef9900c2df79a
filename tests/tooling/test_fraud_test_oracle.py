"""Tests of test tooling, not of the engine: the fraud *oracle* (tests/integration/fraud_oracle.py),
the independent model of the contract that the integration tests compare a live worker against,
checked here on hand-computed cases. A change to the engine cannot make these fail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from fraud_oracle import parse, run_oracle  # noqa: E402

from topologies.fraud.workload import bad_records, generate  # noqa: E402

T0 = 1_767_225_600_000  # a tile boundary: 2026-01-01T00:00:00Z, hour 0
PROFILES = {"c1": {"avg_amount_90d": 20.0, "home_country": "US"}}


def ev(eid: str, ts: int, amount: float = 10.0, card: str = "c1", merchant: str = "m1",
       country: str = "US") -> bytes:
    return json.dumps({"event_id": eid, "card_id": card, "merchant_id": merchant,
                       "amount": amount, "currency": "USD", "country": country,
                       "ts_ms": ts}).encode()


def run(*values: bytes, partition: int = 0, profiles=PROFILES):
    return run_oracle([(partition, i, v) for i, v in enumerate(values)], profiles)


def test_oracle_first_event_features() -> None:
    r = run(ev("a", T0 + 5, amount=30.0, country="FR"))
    assert r.outcome == {"a": "accepted"}
    assert r.features["a"] == {
        "count_10m": 1, "sum_10m": 30.0, "max_10m": 30.0, "count_1h": 1, "sum_1h": 30.0,
        "mean_1h": 30.0, "distinct_merchants_1h": 1, "secs_since_last": -1.0,
        "amount_over_avg": 1.5, "is_foreign": 1, "amount": 30.0, "hour_of_day": 0}
    assert r.watermark_ms == {0: T0 + 5 - 2000}
    assert r.last_ts_ms == {"c1": T0 + 5}


def test_oracle_tile_boundary_at_exactly_60000() -> None:
    r = run(ev("a", T0 + 59_999, 1.0), ev("b", T0 + 60_000, 2.0), ev("c", T0 + 60_001, 4.0))
    assert r.tile_dicts("c1") == {
        T0: {"count": 1, "sum": 1.0, "min": 1.0, "max": 1.0, "distinct_count": 1},
        T0 + 60_000: {"count": 2, "sum": 6.0, "min": 2.0, "max": 4.0, "distinct_count": 1},
    }
    assert r.features["b"]["count_10m"] == 2 and r.features["b"]["secs_since_last"] == 0.001
    assert r.features["c"]["sum_10m"] == 7.0


def test_oracle_ten_minute_window_is_tiles_t_minus_9_to_t() -> None:
    # tile t-9 is inside the 10-minute window, tile t-10 is not; the hour sees both
    r = run(ev("old", T0, 1.0, merchant="m1"), ev("mid", T0 + 60_000, 2.0, merchant="m2"),
            ev("now", T0 + 10 * 60_000 + 30_000, 4.0, merchant="m3"))
    f = r.features["now"]
    assert (f["count_10m"], f["sum_10m"], f["max_10m"]) == (2, 6.0, 4.0)
    assert (f["count_1h"], f["sum_1h"], f["mean_1h"]) == (3, 7.0, 7.0 / 3)
    assert f["distinct_merchants_1h"] == 3
    assert f["secs_since_last"] == (10 * 60_000 + 30_000 - 60_000) / 1000


def test_oracle_hour_window_is_tiles_t_minus_59_to_t() -> None:
    r = run(ev("a", T0 + 10), ev("b", T0 + 60_000), ev("c", T0 + 59 * 60_000),
            ev("d", T0 + 60 * 60_000 + 1))
    assert r.features["c"]["count_1h"] == 3   # tiles 0..59 all count
    assert r.features["d"]["count_1h"] == 3   # tile 0 dropped out, tile 60 added
    assert r.features["d"]["hour_of_day"] == 1


def test_oracle_disorder_does_not_see_later_tiles() -> None:
    # "b" arrives after "a" but is 1.5 s older and in the previous tile
    r = run(ev("a", T0 + 60_500, 5.0), ev("b", T0 + 59_000, 3.0))
    assert r.outcome == {"a": "accepted", "b": "accepted"}
    fb = r.features["b"]
    assert (fb["count_10m"], fb["sum_10m"], fb["max_10m"]) == (1, 3.0, 3.0)
    assert fb["secs_since_last"] == -1.5           # negative under disorder
    assert r.last_ts_ms["c1"] == T0 + 60_500       # max, not the last arrival
    assert r.watermark_ms[0] == T0 + 60_500 - 2000  # never moves back


def test_oracle_lateness_cutoff_is_watermark_minus_58_s() -> None:
    top = T0 + 200_000
    cutoff = top - 2_000 - 58_000
    r = run(ev("top", top, 1.0), ev("edge", cutoff, 2.0), ev("late", cutoff - 1, 4.0),
            ev("after", top + 1, 8.0))
    assert r.outcome == {"top": "accepted", "edge": "accepted", "late": "late",
                         "after": "accepted"}
    assert r.late == {"late"}
    fl = r.features["late"]
    # scored with the state as it stands, without itself: tiles up to its own (cutoff-1) tile
    assert fl["count_10m"] == 1 and fl["sum_10m"] == 2.0  # only "edge" (same tile as late)
    assert fl["amount"] == 4.0 and fl["secs_since_last"] == (cutoff - 1 - top) / 1000
    # the late event changed no aggregate
    assert sum(t["count"] for t in r.tile_dicts("c1").values()) == 3
    assert r.features["after"]["count_10m"] == 3  # top, edge, after (edge is 3.3 min older)


def test_oracle_late_event_with_empty_window_has_null_max() -> None:
    r = run(ev("a", T0 + 10 * 60_000), ev("old", T0, 7.0))
    f = r.features["old"]
    assert r.outcome["old"] == "late"
    assert (f["count_10m"], f["sum_10m"], f["max_10m"], f["mean_1h"]) == (0, 0.0, None, None)
    assert f["distinct_merchants_1h"] == 0


def test_oracle_nothing_is_late_before_the_first_accepted_event() -> None:
    r = run(ev("a", T0), ev("b", T0 + 10 * 60_000), ev("c", T0 + 5_000))
    assert r.outcome == {"a": "accepted", "b": "accepted", "c": "late"}


def test_oracle_late_and_duplicates_do_not_move_the_watermark() -> None:
    r = run(ev("a", T0 + 600_000), ev("late", T0), ev("late", T0), ev("a", T0 + 600_000))
    assert r.watermark_ms[0] == T0 + 598_000
    assert r.duplicates == [(0, 2, "late"), (0, 3, "a")]
    assert r.late == {"late"}


def test_oracle_dedup_comes_first_and_changes_nothing() -> None:
    r = run(ev("a", T0 + 1, 5.0), ev("b", T0 + 2, 6.0), ev("a", T0 + 1, 5.0))
    assert r.duplicates == [(0, 2, "a")]
    assert r.tile_dicts("c1")[T0]["count"] == 2
    assert r.features["b"]["count_10m"] == 2
    assert r.first_seen == {"a": (0, 0), "b": (0, 1)}


def test_oracle_dedup_is_per_partition_and_ordered_by_offset() -> None:
    records = [(1, 1, ev("a", T0 + 5, card="c2")), (1, 0, ev("a", T0 + 5, card="c2")),
               (0, 0, ev("x", T0 + 1))]
    r = run_oracle(records, {})
    assert r.duplicates == [(1, 1, "a")] and r.first_seen["a"] == (1, 0)
    assert r.watermark_ms == {0: T0 - 1999, 1: T0 - 1995}
    assert r.features["x"]["amount_over_avg"] is None and r.features["x"]["is_foreign"] is None


def test_oracle_one_card_in_two_partitions_is_refused() -> None:
    with pytest.raises(ValueError):
        run_oracle([(0, 0, ev("a", T0)), (1, 0, ev("b", T0))], {})


def test_oracle_distinct_merchants_across_tiles() -> None:
    r = run(ev("a", T0, merchant="m1"), ev("b", T0 + 60_000, merchant="m1"),
            ev("c", T0 + 120_000, merchant="m2"))
    assert r.features["c"]["distinct_merchants_1h"] == 2
    assert [t["distinct_count"] for t in r.tile_dicts("c1").values()] == [1, 1, 1]


def test_oracle_bad_records_get_their_reasons() -> None:
    values = [v for _, v, _ in bad_records()]
    r = run(*values, ev("ok", T0))
    assert r.dlq == [(0, i, reason) for i, (_, _, reason) in enumerate(bad_records())]
    assert r.outcome == {"ok": "accepted"}


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "empty"),
    (b"[1, 2]", "schema"),
    (b'{"event_id": "e"}', "missing_key"),
    (json.dumps({"event_id": "e", "card_id": "c", "merchant_id": "m", "amount": 1,
                 "currency": "USD", "country": "US", "ts_ms": 1.5}).encode(), "schema"),
    (json.dumps({"event_id": "e", "card_id": "c", "merchant_id": "m", "amount": -1,
                 "currency": "USD", "country": "US", "ts_ms": 1}).encode(), "schema"),
    (json.dumps({"event_id": "e", "card_id": "c", "merchant_id": "m", "amount": 1,
                 "currency": "USDX", "country": "US", "ts_ms": 1}).encode(), "schema"),
    (b'{"event_id": "e", "card_id": "c", "amount": Infinity}', "non_finite"),
])
def test_oracle_parse_reasons(raw: bytes, reason: str) -> None:
    assert parse(raw) == reason


def test_oracle_parse_accepts_integer_amounts_and_ignores_extra_fields() -> None:
    doc = {"event_id": "e", "card_id": "c", "merchant_id": "m", "amount": 3,
           "currency": "USD", "country": "US", "ts_ms": 7, "extra": [1]}
    assert parse(json.dumps(doc).encode()) == {**{k: v for k, v in doc.items() if k != "extra"},
                                               "amount": 3.0}


def test_oracle_generated_workload_runs_through_the_oracle() -> None:
    w = generate(5_000, seed=3)
    parts: dict[str, int] = {}
    records = []
    offsets = [0, 0, 0, 0]
    for e in w.events:
        p = parts.setdefault(e["card_id"], len(parts) % 4)
        records.append((p, offsets[p], json.dumps(e).encode()))
        offsets[p] += 1
    r = run_oracle(records, w.profiles)
    assert set(r.outcome) == set(w.labels)
    assert len(r.duplicates) == 100
    assert 0.002 < len(r.late) / len(r.outcome) < 0.01
    assert sum(t.count for tiles in r.tiles.values() for t in tiles.values()) == len(r.accepted)
