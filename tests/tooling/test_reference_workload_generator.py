"""Tests of tooling, not of the engine: the reference fraud workload *generator*
(topologies/fraud/workload.py, behind `streamwise produce` and the benchmark): determinism,
shares, schema, hidden fraud signals, the bad records it makes. A change to the engine cannot
make these fail."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from topologies.fraud.workload import bad_records, generate

FIELDS = {"event_id": str, "card_id": str, "merchant_id": str, "amount": float,
          "currency": str, "country": str, "ts_ms": int}
N = 20_000


@pytest.fixture(scope="module")
def workload():
    return generate(N, seed=11)


def _encode(events: list[dict]) -> bytes:
    return b"\n".join(json.dumps(e, sort_keys=True).encode() for e in events)


def test_generator_same_seed_same_bytes_other_seed_other_stream() -> None:
    a, b = generate(3_000, seed=5), generate(3_000, seed=5)
    assert _encode(a.events) == _encode(b.events)
    assert a.profiles == b.profiles and a.labels == b.labels
    assert _encode(generate(3_000, seed=6).events) != _encode(a.events)


def test_generator_schema_of_every_event(workload) -> None:
    for ev in workload.events:
        assert set(ev) == set(FIELDS)
        for name, typ in FIELDS.items():
            assert type(ev[name]) is typ, (name, ev)
        assert ev["amount"] > 0 and round(ev["amount"], 2) == ev["amount"]
        assert math.isfinite(ev["amount"])
        assert len(ev["currency"]) == 3 and ev["currency"].isalpha()
        assert len(ev["country"]) == 2 and ev["country"].isalpha()
        assert ev["card_id"].startswith("c") and len(ev["card_id"]) == 7
        assert ev["event_id"] and ev["merchant_id"]


def test_generator_count_includes_duplicates_and_duplicates_are_exact_copies(workload) -> None:
    events = workload.events
    assert len(events) == N
    first: dict[str, int] = {}
    dup_positions = []
    for pos, ev in enumerate(events):
        eid = ev["event_id"]
        if eid in first:
            original = events[first[eid]]
            assert ev == original
            dup_positions.append(pos - first[eid])
        else:
            first[eid] = pos
    assert len(dup_positions) == round(N * 0.02)
    assert len(first) == len(workload.labels) == N - len(dup_positions)
    # re-sent soon after the original: within ~500 distinct events (+ the duplicates between)
    assert max(dup_positions) <= 600


def test_generator_disorder_and_late_shares_roughly_right(workload) -> None:
    distinct = list({ev["event_id"]: ev for ev in workload.events}.values())
    running_max = -1
    behind = late = 0
    for ev in distinct:
        ts = ev["ts_ms"]
        if ts < running_max - 60_000:
            late += 1
        elif ts < running_max:
            behind += 1
        running_max = max(running_max, ts)
    n = len(distinct)
    assert 0.003 <= late / n <= 0.008
    # 5% are shifted back up to 2 s; some of them are still ahead of the previous event
    assert 0.03 <= behind / n <= 0.08


def test_generator_time_advances_by_the_mean_gap(workload) -> None:
    times = [ev["ts_ms"] for ev in workload.events]
    assert times[0] == 1_767_225_600_000
    span = max(times) - times[0]  # min() may be an early event shifted back up to 300 s
    assert 0.8 * 20 * N < span < 1.2 * 20 * N


def test_generator_cards_are_skewed(workload) -> None:
    per_card = Counter(ev["card_id"] for ev in workload.events)
    top = per_card.most_common(10)
    assert top[0][1] > 10 * (N / len(per_card))   # a few cards are very busy
    assert sum(1 for c in per_card.values() if c <= 2) > len(per_card) / 3  # most are rare


def test_generator_profiles_cover_about_95_percent_of_cards(workload) -> None:
    share = len(workload.profiles) / 10_000
    assert 0.93 <= share <= 0.97
    for card, prof in workload.profiles.items():
        assert set(prof) == {"avg_amount_90d", "home_country"}
        assert prof["avg_amount_90d"] > 0 and len(prof["home_country"]) == 2, card


def test_generator_fraud_labels_are_rare_and_carry_signals() -> None:
    # a 200 ms mean gap spreads 20,000 events over ~67 minutes, so 10-minute bursts stand out
    workload = generate(N, seed=11, mean_gap_ms=200.0)
    labels = workload.labels
    share = sum(labels.values()) / len(labels)
    assert 0.01 <= share <= 0.02
    distinct = list({ev["event_id"]: ev for ev in workload.events}.values())
    profiles = workload.profiles

    def foreign(ev: dict) -> bool:
        p = profiles.get(ev["card_id"])
        return p is not None and ev["country"] != p["home_country"]

    def big(ev: dict) -> bool:
        p = profiles.get(ev["card_id"])
        return p is not None and ev["amount"] > 4 * p["avg_amount_90d"]

    fraud = [ev for ev in distinct if labels[ev["event_id"]]]
    legit = [ev for ev in distinct if not labels[ev["event_id"]]]

    def rate(pred, evs):
        return sum(map(pred, evs)) / len(evs)

    assert rate(foreign, fraud) > 0.5 > 0.1 > rate(foreign, legit)
    assert rate(big, fraud) > 0.3 > 0.05 > rate(big, legit)
    # bursts: a fraud event usually has another event of its card within 10 minutes before
    by_card: dict[str, list[int]] = {}
    for ev in distinct:
        by_card.setdefault(ev["card_id"], []).append(ev["ts_ms"])

    def burst(ev: dict) -> bool:
        ts = ev["ts_ms"]
        return sum(1 for t in by_card[ev["card_id"]] if ts - 600_000 <= t <= ts) >= 3

    assert rate(burst, fraud) > 2 * rate(burst, legit)


def test_generator_zero_shares_give_a_clean_stream() -> None:
    w = generate(2_000, seed=3, duplicates=0, disorder=0, late=0)
    times = [ev["ts_ms"] for ev in w.events]
    assert times == sorted(times)
    assert len({ev["event_id"] for ev in w.events}) == 2_000


@pytest.mark.parametrize("n", [0, 1, 2, 50])
def test_generator_tiny_streams(n: int) -> None:
    w = generate(n, seed=1)
    assert len(w.events) == n
    assert len(w.labels) == len({ev["event_id"] for ev in w.events})


def test_generator_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        generate(-1)
    with pytest.raises(ValueError):
        generate(10, duplicates=1.5)
    with pytest.raises(ValueError):
        generate(10, disorder=0.7, late=0.5)


def test_generator_bad_records_one_per_distinct_reason() -> None:
    bad = bad_records()
    reasons = [r for _, _, r in bad]
    assert sorted(reasons) == sorted(
        ["invalid_json", "schema", "oversized", "not_utf8", "non_finite", "missing_key"])
    by_reason = {r: v for _, v, r in bad}
    with pytest.raises(ValueError):
        json.loads(by_reason["invalid_json"])
    assert json.loads(by_reason["schema"])["amount"] == "abc"
    assert len(by_reason["oversized"]) == 2 * 1024 * 1024
    assert json.loads(by_reason["oversized"])["event_id"] == "bad-oversized"
    with pytest.raises(UnicodeDecodeError):
        by_reason["not_utf8"].decode("utf-8")
    assert b'"amount": NaN' in by_reason["non_finite"]
    assert json.loads(by_reason["missing_key"])["card_id"] == ""
    assert bad_records() == bad
