"""engine.pipeline: the batch pipeline over a MemoryStore with the fraud topology and rules only.

Every test applies ``result.changes`` to the store after each batch, as the worker does.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.features import PROFILE_TS_FIELD
from engine.pipeline import BatchResult, PartitionPipeline, Record
from engine.policy import RulesOnly
from engine.schemas import EventDecoder, Rejection
from engine.sinks.records import DLQ_TRUNCATE_BYTES
from engine.state import MemoryStore, layout
from engine.topology import TimeSettings, Topology
from topologies.fraud import TOPOLOGY

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 472_222 * HOUR  # hour aligned, 2023-11-14
TOPIC = "fraud.events"
NOW_MS = 1_800_000_000_000
VELOCITY = TOPOLOGY.table("velocity")
VELOCITY_PREFIX = layout.table_prefix(VELOCITY.name, VELOCITY.version, VELOCITY.tile_ms)

PROFILES = {f"c{i}": {"avg_amount_90d": 40.0 + i, "home_country": "US"} for i in range(0, 24, 2)}


# --------------------------------------------------------------------------- helpers


def payment(eid: str, card: str, ts: int, amount: float = 25.0, merchant: str = "m1",
            country: str = "US") -> bytes:
    return orjson.dumps({"event_id": eid, "card_id": card, "merchant_id": merchant,
                         "amount": amount, "currency": "USD", "country": country, "ts_ms": ts})


def records(values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None,
            first_offset: int = 0, partition: int = 0) -> list[Record]:
    out = []
    for i, value in enumerate(values):
        try:
            event = orjson.loads(value)
        except Exception:
            event = None
        if keys is not None:
            key = keys[i]
        else:
            try:
                key = event["card_id"].encode()
            except Exception:
                key = None
        # produced when it happened: the record time is the event's own (or T0 for junk), so
        # no event is in the future of its record (see test_future_time.py for that)
        ts = event.get("ts_ms") if isinstance(event, dict) else None
        record_ts = ts if type(ts) is int and ts >= T0 else T0
        out.append(Record(TOPIC, partition, first_offset + i, key, value, record_ts))
    return out


def make_stream(seed: int, n: int = 700, *, late: float = 0.03, dup: float = 0.05,
                bad: float = 0.02, disorder_ms: int = 2_000, cards: int = 24) -> list[Record]:
    """A deterministic card-payment stream spanning well under the 1 h retention.

    Event time advances ~2 s per event; most events are shifted back by up to `disorder_ms`,
    a `late` share by 61..300 s (late for the fraud topology), a `dup` share re-sends one of the
    last 50 events, and a `bad` share is undecodable.
    """
    rng = random.Random(seed)
    values: list[bytes | None] = []
    sent: list[bytes] = []
    t = T0
    for i in range(n):
        x = rng.random()
        if x < bad:
            values.append(rng.choice([b"", None, b"{", b"\xff\xfe{}",
                                      payment(f"bad{i}", "", t), payment(f"bad{i}", "c1", 1.5)]))
            continue
        if x < bad + dup and sent:
            values.append(rng.choice(sent[-50:]))
            continue
        t += rng.randrange(0, 4_000)
        if rng.random() < late:
            ts = t - rng.randrange(61_000, 300_000)
        else:
            ts = t - rng.randrange(0, disorder_ms + 1)
        value = payment(f"e{seed}-{i}", f"c{rng.randrange(cards)}", ts,
                        round(rng.uniform(1, 6_000), 2), f"m{rng.randrange(30)}",
                        rng.choice(["US", "US", "US", "FR"]))
        sent.append(value)
        values.append(value)
    return records(values)


def new_pipeline(store: MemoryStore, topology: Topology = TOPOLOGY) -> PartitionPipeline:
    decider = RulesOnly(topology.rules, topology.features.versioned_name)
    return PartitionPipeline(topology, 0, store, decider, ManualClock(NOW_MS))


def feed(pipe: PartitionPipeline, store: MemoryStore, recs: Sequence[Record], batch: int,
         profiles: Mapping[str, Mapping[str, Any]] = PROFILES) -> list[BatchResult]:
    results = []
    for i in range(0, len(recs), batch):
        res = pipe.process(recs[i:i + batch], profiles)
        store.apply(res.changes)
        results.append(res)
    return results


def run(recs: Sequence[Record], batch: int,
        topology: Topology = TOPOLOGY) -> tuple[MemoryStore, list[BatchResult]]:
    store = MemoryStore()
    return store, feed(new_pipeline(store, topology), store, recs, batch)


def doc(body: bytes) -> dict:
    return orjson.loads(body)


def stable(body: bytes) -> bytes:
    """A decision without its timing fields (which legitimately vary run to run)."""
    d = orjson.loads(body)
    del d["stage_ms"], d["decided_at_ms"]
    return orjson.dumps(d, option=orjson.OPT_SORT_KEYS)


def decisions(results: Sequence[BatchResult]) -> list[tuple[bytes, bytes]]:
    return [kv for r in results for kv in r.decisions]


def stable_state(store: MemoryStore) -> dict[bytes, bytes]:
    """Store contents with stored decisions stripped of their timing fields, without the
    dedup expiry records (bookkeeping: one per batch, so they follow the batch cuts)."""
    out: dict[bytes, object] = {}
    for k, v in store.items():
        if k.startswith(layout.EXPIRY):
            continue
        if k.startswith(layout.SEEN):
            seen = layout.unpack_seen(v)
            out[k] = seen._replace(decision=stable(seen.decision) if seen.decision else b"")
        elif k.startswith(layout.ENTITY):
            last_ts, last = layout.unpack_entity(v)
            out[k] = (last_ts, stable(last) if last else b"")
        else:
            out[k] = v
    return out


def by_event(results: Sequence[BatchResult]) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for _, body in decisions(results):
        out.setdefault(doc(body)["event_id"], set()).add(stable(body))
    return out


# --------------------------------------------------------------------------- (a) batch sizes


@pytest.mark.parametrize("seed", [1, 2])
def test_batch_size_does_not_change_decisions_or_state(seed: int) -> None:
    recs = make_stream(seed)
    runs = {size: run(recs, size) for size in (1, 7, 1000)}
    store1, res1 = runs[1]
    want_decisions = Counter((k, stable(v)) for k, v in decisions(res1))
    assert len(want_decisions) > 500
    assert any(r.late for r in res1) and any(r.dlq for r in res1) and any(r.duplicates
                                                                          for r in res1)
    for size, (store, res) in runs.items():
        assert Counter((k, stable(v)) for k, v in decisions(res)) == want_decisions, size
        assert by_event(res) == by_event(res1)
        assert stable_state(store) == stable_state(store1), size
        assert sorted(x for r in res for x in r.dlq_reasons) == \
            sorted(x for r in res1 for x in r.dlq_reasons)
        assert sum(len(r.late) for r in res) == sum(len(r.late) for r in res1)
        assert sum(r.accepted for r in res) == sum(r.accepted for r in res1)
        assert res[-1].commit_offset == len(recs)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6),
       cuts=st.lists(st.integers(1, 179), max_size=12, unique=True).map(sorted))
def test_any_batch_split_gives_same_decisions_and_state(seed: int, cuts: list[int]) -> None:
    recs = make_stream(seed, n=180, late=0.05, dup=0.08, bad=0.03)
    ref_store, ref = run(recs, len(recs))
    store = MemoryStore()
    pipe = new_pipeline(store)
    results = []
    for lo, hi in zip([0, *cuts], [*cuts, len(recs)], strict=True):
        results += feed(pipe, store, recs[lo:hi], hi - lo)
    assert Counter((k, stable(v)) for k, v in decisions(results)) == \
        Counter((k, stable(v)) for k, v in decisions(ref))
    assert stable_state(store) == stable_state(ref_store)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.integers(5, 60), crash=st.integers(0, 299),
       rewind=st.integers(0, 150))
def test_any_crash_point_recovers_to_the_uninterrupted_state(seed: int, size: int, crash: int,
                                                             rewind: int) -> None:
    recs = make_stream(seed, n=300)
    clean_store, clean = run(recs, size)
    crash_start = crash - crash % size  # the batch whose changes are lost
    store = MemoryStore()
    pipe = new_pipeline(store)
    emitted = []
    for i in range(0, crash_start + size, size):
        res = pipe.process(recs[i:i + size], PROFILES)
        emitted.append(res)
        if i < crash_start:
            store.apply(res.changes)
    resume = max(0, crash_start - rewind)
    emitted += feed(new_pipeline(store), store, recs[resume:], size)
    assert stable_state(store) == stable_state(clean_store)
    clean_ids = {doc(v)["event_id"]: doc(v)["decision_id"] for _, v in decisions(clean)}
    assert {doc(v)["event_id"]: doc(v)["decision_id"] for _, v in decisions(emitted)} == \
        clean_ids


def test_decisions_keep_input_order_within_a_batch() -> None:
    """BatchResult.decisions are in input order, a re-delivered duplicate included."""
    a = payment("a", "c1", T0 + 1_000)
    b = payment("b", "c1", T0 + 2_000)
    recs = records([a, a, b])
    _, one_by_one = run(recs, 1)
    _, together = run(recs, 3)
    assert [doc(v)["event_id"] for _, v in decisions(one_by_one)] == ["a", "a", "b"]
    assert [doc(v)["event_id"] for _, v in decisions(together)] == ["a", "a", "b"]


def test_every_input_offset_ends_as_decision_dlq_or_late() -> None:
    recs = make_stream(5)
    _, res = run(recs, 13)
    n_decided = len(decisions(res))
    n_dlq = sum(len(r.dlq) for r in res)
    assert n_decided + n_dlq == len(recs)  # score_late: late events are decided too
    assert all(r.commit_offset == min(len(recs), (i + 1) * 13) for i, r in enumerate(res))


# --------------------------------------------------------------------------- (b) replay


@pytest.mark.parametrize("fresh", [False, True], ids=["same_pipeline", "restarted"])
def test_second_pass_changes_nothing_and_re_emits_identical_decisions(fresh: bool) -> None:
    recs = make_stream(3)
    store = MemoryStore()
    pipe = new_pipeline(store)
    first = feed(pipe, store, recs, 50)
    snapshot = list(store.items())
    if fresh:
        pipe = new_pipeline(store)
    second = []
    for i in range(0, len(recs), 50):
        res = pipe.process(recs[i:i + 50], PROFILES)
        assert all(store.get(k) == v for k, v in res.changes.items()), res.changes.keys()
        store.apply(res.changes)
        second.append(res)
    assert list(store.items()) == snapshot
    assert Counter(decisions(second)) == Counter(decisions(first))  # same keys, same bytes
    assert sum(r.accepted for r in second) == 0
    # The same records at the same offsets are a re-delivery: their late records come again
    # (a crash may have lost them), and nothing else does.
    assert sorted(d.value for r in second for d in r.late) == sorted(
        d.value for r in first for d in r.late)
    assert sum(r.duplicates for r in second) == len(decisions(first))
    ids_first = {doc(v)["event_id"]: doc(v)["decision_id"] for _, v in decisions(first)}
    ids_second = {doc(v)["event_id"]: doc(v)["decision_id"] for _, v in decisions(second)}
    assert ids_first == ids_second


def test_in_batch_and_cross_batch_duplicates_re_emit_original_bytes() -> None:
    a = payment("a", "c1", T0 + 1_000, 10.0)
    store = MemoryStore()
    pipe = new_pipeline(store)
    (r1,) = feed(pipe, store, records([a, a]), 10)
    assert r1.accepted == 1 and r1.duplicates == 1
    assert r1.decisions[0] == r1.decisions[1]
    (r2,) = feed(pipe, store, records([a], first_offset=2), 10)
    assert r2.decisions == [r1.decisions[0]]
    assert layout.unpack_seen(store.get(layout.seen_key("a"))).decision == r1.decisions[0][1]
    assert layout.unpack_entity(store.get(layout.entity_key(b"c1")))[1] == r1.decisions[0][1]


def test_redelivered_duplicate_keeps_the_original_decision_key() -> None:
    """A record produced without a Kafka key: the re-emitted decision keeps the entity key."""
    a = payment("a", "c1", T0 + 1_000)
    _, res = run(records([a, a], keys=[None, None]), 1)
    assert [k for k, _ in decisions(res)] == [b"c1", b"c1"]


# --------------------------------------------------------------------------- (c) crash


@pytest.mark.parametrize(("crash_batch", "rewind"), [(3, 1), (8, 73), (12, 260)])
def test_crash_losing_last_batch_then_replay_equals_uninterrupted(crash_batch: int,
                                                                  rewind: int) -> None:
    recs = make_stream(4, n=900)
    size = 50
    clean_store, clean = run(recs, size)

    store = MemoryStore()
    pipe = new_pipeline(store)
    emitted = []
    for i in range(0, (crash_batch + 1) * size, size):
        res = pipe.process(recs[i:i + size], PROFILES)
        emitted.append(res)
        if i < crash_batch * size:
            store.apply(res.changes)  # the crash batch's changes are lost
    # Restart: a new pipeline over the surviving store, from an offset before the lost batch.
    pipe = new_pipeline(store)
    resume = crash_batch * size - rewind
    emitted += feed(pipe, store, recs[resume:], size)

    assert stable_state(store) == stable_state(clean_store)
    clean_ids = {doc(v)["event_id"]: doc(v)["decision_id"] for _, v in decisions(clean)}
    got_ids: dict[str, set[str]] = {}
    for _, v in decisions(emitted):
        got_ids.setdefault(doc(v)["event_id"], set()).add(doc(v)["decision_id"])
    assert got_ids == {e: {i} for e, i in clean_ids.items()}
    assert by_event(emitted) == by_event(clean)


def test_restart_gives_bit_identical_features() -> None:
    """A restarted pipeline (entities read back from the store) computes the same features."""
    values = [
        payment("e1", "c1", T0 + 1_000, 0.1),
        payment("e2", "c1", T0 + 2 * MINUTE + 1_000, 2.3),
        payment("e3", "c1", T0 + MINUTE + 30_000, 0.2),  # out of order, on time: older tile
        payment("e4", "c1", T0 + 3 * MINUTE + 1_000, 1.0),
    ]
    recs = records(values)
    _, clean = run(recs, 1)
    store = MemoryStore()
    feed(new_pipeline(store), store, recs[:3], 1)
    restarted = feed(new_pipeline(store), store, recs[3:], 1)
    want = doc(decisions(clean)[-1][1])["features"]
    got = doc(decisions(restarted)[-1][1])["features"]
    assert got["count_10m"] == want["count_10m"] == 4
    assert got == want


# --------------------------------------------------------------------------- (d) late events


def entity(store: MemoryStore, card: str) -> list[tuple[bytes, bytes]]:
    """The card's stored tiles (keys and values)."""
    return list(store.items_between(*layout.tile_range(VELOCITY_PREFIX, card.encode())))


def test_late_event_changes_no_aggregate_and_is_decided_as_late() -> None:
    values = [payment(f"a{i}", "c1", T0 + i * 20_000, 30.0, f"m{i}") for i in range(6)]
    values += [payment(f"b{i}", "c2", T0 + 5 * MINUTE + i * 1_000) for i in range(3)]
    store = MemoryStore()
    pipe = new_pipeline(store)
    feed(pipe, store, records(values), 4)
    before_entity = entity(store, "c1")
    before_wm = store.get(b"m/max_ts")
    assert before_wm == str(T0 + 5 * MINUTE + 2_000).encode()

    late_ts = T0 + 5 * MINUTE + 2_000 - 60_000 - 1  # one ms below max - ooo - lateness
    late_value = payment("late1", "c1", late_ts, 9_999.0, "m-new")
    (res,) = feed(pipe, store, records([late_value], first_offset=len(values)), 10)

    assert entity(store, "c1") == before_entity  # no tile changed
    assert store.get(b"m/max_ts") == before_wm
    assert res.accepted == 0
    assert len(res.decisions) == 1
    d = doc(res.decisions[0][1])
    assert d["event_id"] == "late1"
    assert d["reasons"][0] == "late_event"
    assert d["features"]["count_10m"] == 6  # the state without the late event itself
    assert d["features"]["distinct_merchants_1h"] == 6
    assert d["features"]["amount"] == 9_999.0
    assert len(res.late) == 1
    side = res.late[0]
    assert side.value == late_value and side.key == b"c1"
    assert dict(side.headers) == {
        "streamwise.watermark_ms": str(T0 + 5 * MINUTE).encode(),
        "streamwise.event_ts_ms": str(late_ts).encode(),
        "streamwise.topic": TOPIC.encode(),
        "streamwise.partition": b"0",
        "streamwise.offset": str(len(values)).encode(),
    }
    # One ms later is on time and does count.
    on_time = payment("ok1", "c1", late_ts + 1, 1.0)
    (res2,) = feed(pipe, store, records([on_time], first_offset=len(values) + 1), 10)
    assert not res2.late
    d2 = doc(res2.decisions[0][1])
    assert "late_event" not in d2["reasons"]
    assert d2["features"]["count_10m"] == 7
    # A re-delivered late event: same decision bytes, not reported late again.
    (res3,) = feed(pipe, store, records([late_value], first_offset=len(values) + 2), 10)
    assert res3.decisions == res.decisions and not res3.late and res3.duplicates == 1


def test_late_event_not_scored_when_topology_says_so() -> None:
    topo = dataclasses.replace(TOPOLOGY, score_late=False)
    store = MemoryStore()
    pipe = new_pipeline(store, topo)
    feed(pipe, store, records([payment("a", "c1", T0 + 10 * MINUTE)]), 10)
    late = records([payment("old", "c1", T0)], first_offset=1)
    (res,) = feed(pipe, store, late, 10)
    assert res.decisions == [] and len(res.late) == 1
    assert res.commit_offset == 2
    (again,) = feed(pipe, store, records([payment("old", "c1", T0)], first_offset=2), 10)
    assert again.decisions == [] and again.late == [] and again.duplicates == 1


def test_late_event_features_do_not_depend_on_batch_boundaries() -> None:
    """A very late event is scored the same whether the stream came in one batch or many."""
    values = [payment("x0", "cX", T0 + 1_000)]
    values += [payment(f"y{k}", "cY", T0 + k * MINUTE) for k in range(1, 200)]  # ~3 h on
    values += [payment("x-late", "cX", T0 + 30 * MINUTE)]
    recs = records(values)
    got = {}
    for size in (1, len(recs)):
        _, res = run(recs, size)
        (late,) = [stable(v) for _, v in decisions(res) if doc(v)["event_id"] == "x-late"]
        assert "late_event" in doc(late)["reasons"]
        got[size] = late
    one_by_one, together = (doc(got[size])["features"] for size in (1, len(recs)))
    assert one_by_one["count_1h"] == together["count_1h"]
    assert got[1] == got[len(recs)]


def test_profiles_feed_features_and_stale_profiles_count_as_missing() -> None:
    max_age = TOPOLOGY.features.profile_max_age_ms
    assert max_age is not None
    ts = T0 + 1_000
    profiles = {
        "fresh": {"avg_amount_90d": 10.0, "home_country": "FR", PROFILE_TS_FIELD: ts - max_age},
        "stale": {"avg_amount_90d": 10.0, "home_country": "FR",
                  PROFILE_TS_FIELD: ts - max_age - 1},
    }
    values = [payment(f"e-{card}", card, ts, 50.0) for card in ("fresh", "stale", "none")]
    store = MemoryStore()
    (res,) = feed(new_pipeline(store), store, records(values), 10, profiles)
    fresh, stale, none = (doc(v) for _, v in res.decisions)
    assert fresh["features"]["amount_over_avg"] == 5.0
    assert fresh["features"]["is_foreign"] == 1
    assert "stale_profile" not in fresh["reasons"] and "no_profile" not in fresh["reasons"]
    assert stale["features"]["amount_over_avg"] is None
    assert stale["features"]["is_foreign"] is None
    assert "stale_profile" in stale["reasons"]
    assert none["features"]["amount_over_avg"] is None
    assert "stale_profile" not in none["reasons"] and "no_profile" in none["reasons"]


# --------------------------------------------------------------------------- (e) DLQ


def test_dlq_records_carry_reason_and_origin_headers() -> None:
    big = payment("big", "c1", T0) + b" " * (TOPOLOGY.max_record_bytes + 1)
    bad = {
        "empty": b"",
        "not_utf8": b"\xff\xfe{}",
        "invalid_json": b"{",
        "non_finite": payment("n", "c1", T0).replace(b"25.0", b"NaN"),
        "missing_key": payment("m", "", T0),
        "schema": payment("s", "c1", T0, -5.0),
        "oversized": big,
    }
    values = [payment("good0", "c1", T0)] + list(bad.values())
    keys = [b"c1"] + [f"k{i}".encode() for i in range(len(bad))]
    recs = [dataclasses.replace(r, partition=3)
            for r in records(values, keys=keys, first_offset=100)]
    store = MemoryStore()
    (res,) = feed(new_pipeline(store), store, recs, 100)
    assert len(res.decisions) == 1
    assert res.dlq_reasons == list(bad)
    assert res.commit_offset == 100 + len(values)
    for i, (reason, value) in enumerate(bad.items()):
        side = res.dlq[i]
        headers = dict(side.headers)
        assert [h for h, _ in side.headers] == [
            "streamwise.reason", "streamwise.detail", "streamwise.topic",
            "streamwise.partition", "streamwise.offset", "streamwise.received_at_ms",
            "streamwise.size"]
        assert headers["streamwise.reason"] == reason.encode()
        assert headers["streamwise.detail"]
        assert headers["streamwise.topic"] == TOPIC.encode()
        assert headers["streamwise.partition"] == b"3"
        assert headers["streamwise.offset"] == str(101 + i).encode()
        assert headers["streamwise.received_at_ms"] == str(NOW_MS).encode()
        assert headers["streamwise.size"] == str(len(value)).encode()
        assert side.key == f"k{i}".encode()
        assert side.value == value[:DLQ_TRUNCATE_BYTES]
    # Undecodable records leave no state behind them.
    assert not any(k.startswith(b"d/") and k != b"d/good0" for k, _ in store.items())


def test_dlq_of_a_none_value() -> None:
    (res,) = run(records([None], keys=[b"k"]), 1)[1]
    assert res.dlq_reasons == ["empty"]
    assert res.dlq[0].value == b""
    assert dict(res.dlq[0].headers)["streamwise.size"] == b"0"


# --------------------------------------------------------------------------- (f) event time


def event_time_topology(capacity: int = 10_000) -> Topology:
    t = TOPOLOGY.time
    return dataclasses.replace(TOPOLOGY, time=TimeSettings(
        t.max_out_of_orderness_ms, t.allowed_lateness_ms, ordering="event_time",
        reorder_capacity=capacity))


def check_commit_offsets(recs: Sequence[Record], results: Sequence[BatchResult],
                         batch: int) -> None:
    """commit_offset is the smallest offset still held (or the batch end), never beyond it."""
    offset_of = {doc(r.value)["event_id"]: r.offset for r in recs}
    decided: set[str] = set()
    previous = 0
    for i, res in enumerate(results):
        chunk = recs[i * batch:(i + 1) * batch]
        decided |= {doc(v)["event_id"] for _, v in res.decisions}
        seen_so_far = recs[:(i + 1) * batch]
        held = [offset_of[doc(r.value)["event_id"]] for r in seen_so_far
                if doc(r.value)["event_id"] not in decided]
        end = chunk[-1].offset + 1
        assert res.commit_offset == (min(held) if held else end)
        assert all(res.commit_offset <= h for h in held)
        assert res.commit_offset >= previous
        previous = res.commit_offset


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_event_time_releases_in_timestamp_order(batch: int) -> None:
    recs = make_stream(6, n=400, late=0.0, dup=0.0, bad=0.0,
                       disorder_ms=TOPOLOGY.time.max_out_of_orderness_ms)
    topo = event_time_topology()
    store, res = run(recs, batch, topo)
    released = [doc(v)["event_ts_ms"] for _, v in decisions(res)]
    assert released == sorted(released)
    assert len(released) > 300
    final_max = max(doc(r.value)["ts_ms"] for r in recs)
    watermark = final_max - topo.time.max_out_of_orderness_ms
    # Exactly the events at or before the watermark are out; the others are still held.
    assert sorted(released) == sorted(doc(r.value)["ts_ms"] for r in recs
                                      if doc(r.value)["ts_ms"] <= watermark)
    check_commit_offsets(recs, res, batch)


def test_flush_decides_what_the_reorder_buffer_holds_oldest_first() -> None:
    recs = make_stream(8, n=300, late=0.0, dup=0.0, bad=0.0, disorder_ms=2_000)
    topo = event_time_topology()
    store = MemoryStore()
    pipe = new_pipeline(store, topo)
    res = feed(pipe, store, recs, 50)
    tail = pipe.flush(PROFILES)
    store.apply(tail.changes)
    held = [doc(v)["event_ts_ms"] for _, v in tail.decisions]
    assert held and held == sorted(held)
    decided = [doc(v)["event_id"] for _, v in decisions([*res, tail])]
    assert sorted(decided) == sorted(doc(r.value)["event_id"] for r in recs)
    assert pipe.flush({}).decisions == []  # nothing left to release
    # Arrival ordering holds nothing back: flush is empty.
    arrival = new_pipeline(MemoryStore(), TOPOLOGY)
    feed(arrival, MemoryStore(), recs, 50)
    assert arrival.flush({}).decisions == []


def test_event_time_decisions_do_not_depend_on_batch_size() -> None:
    recs = make_stream(7, n=400, late=0.0, dup=0.0, bad=0.0, disorder_ms=2_000)
    topo = event_time_topology()
    outs = {b: run(recs, b, topo) for b in (1, 7, 1000)}
    want = [(k, stable(v)) for k, v in decisions(outs[1][1])]
    for b, (store, res) in outs.items():
        assert [(k, stable(v)) for k, v in decisions(res)] == want, b
        assert stable_state(store) == stable_state(outs[1][0]), b


def test_event_time_example_holds_then_releases_and_commit_waits() -> None:
    topo = event_time_topology()
    store = MemoryStore()
    pipe = new_pipeline(store, topo)
    (r1,) = feed(pipe, store, records([payment("a", "c1", T0 + 5_000),
                                       payment("b", "c1", T0 + 4_000)]), 10)
    assert r1.decisions == [] and r1.accepted == 2
    assert r1.commit_offset == 0  # both held: nothing may be committed
    # A duplicate of a held event waits for it.
    (r2,) = feed(pipe, store, records([payment("a", "c1", T0 + 5_000)], first_offset=2), 10)
    assert r2.decisions == [] and r2.duplicates == 1 and r2.commit_offset == 0
    # Watermark T0 + 4_500 releases b (offset 1) only; a (offset 0) is still held.
    (r3,) = feed(pipe, store, records([payment("c", "c2", T0 + 6_500)], first_offset=3), 10)
    assert [doc(v)["event_id"] for _, v in r3.decisions] == ["b"]
    assert r3.commit_offset == 0
    # Watermark T0 + 8_000 releases a (and its waiting duplicate) and c.
    (r4,) = feed(pipe, store, records([payment("d", "c2", T0 + 10_000)], first_offset=4), 10)
    assert [doc(v)["event_id"] for _, v in r4.decisions] == ["a", "a", "c"]
    assert r4.decisions[0] == r4.decisions[1]
    assert r4.commit_offset == 4  # d is held
    a = doc(r4.decisions[0][1])
    assert a["features"]["count_10m"] == 2  # b was folded in before a


def test_event_time_duplicate_after_its_originals_release_in_the_same_poll() -> None:
    """An event held over from an earlier poll, released by this poll, and then re-sent later
    in this same poll: the copy is a duplicate (found among the poll's released rows), folds
    nothing and re-emits the original's decision, as it does one record per poll."""
    topo = event_time_topology()
    values = [payment("a", "c1", T0 + 5_000),   # held
              payment("b", "c2", T0 + 9_000),   # watermark T0 + 7_000: releases a
              payment("a", "c1", T0 + 5_000),   # a's copy, after a's release
              payment("c", "c1", T0 + 12_000)]  # watermark T0 + 10_000
    recs = records(values)
    outs = {}
    for cut in (1, 2):  # [a] [b a c] ... and one record per poll
        store = MemoryStore()
        pipe = new_pipeline(store, topo)
        res = feed(pipe, store, recs[:1], 10) + feed(pipe, store, recs[1:], 10 if cut == 1 else 1)
        tail = pipe.flush(PROFILES)
        outs[cut] = [(k, stable(v)) for k, v in decisions([*res, tail])]
        assert sum(r.duplicates for r in res) == 1
    assert outs[1] == outs[2]
    ids = [doc(v)["event_id"] for _, v in outs[1]]
    assert ids == ["a", "a", "b", "c"]
    assert outs[1][0] == outs[1][1]  # the copy re-emits the original's decision
    c = doc(outs[1][3][1])
    assert c["features"]["count_10m"] == 2  # a once, and c itself


def test_event_time_late_events_are_scored_not_buffered() -> None:
    topo = event_time_topology()
    store = MemoryStore()
    pipe = new_pipeline(store, topo)
    feed(pipe, store, records([payment("a", "c1", T0 + 10 * MINUTE)]), 10)
    (res,) = feed(pipe, store, records([payment("old", "c1", T0)], first_offset=1), 10)
    assert [doc(v)["event_id"] for _, v in res.decisions] == ["old"]
    assert doc(res.decisions[0][1])["reasons"][0] == "late_event"
    assert len(res.late) == 1
    assert res.commit_offset == 0  # "a" is still held


def test_event_time_capacity_overflow_releases_oldest() -> None:
    topo = event_time_topology(capacity=2)
    store = MemoryStore()
    pipe = new_pipeline(store, topo)
    values = [payment(f"e{i}", "c1", T0 + ts) for i, ts in enumerate([500, 400, 300, 200])]
    (res,) = feed(pipe, store, records(values), 10)
    # The buffer overflows at each push past capacity, releasing its oldest event then, so the
    # order does not depend on batch boundaries: e2 is released when e2 arrives, then e3.
    assert [doc(v)["event_id"] for _, v in res.decisions] == ["e2", "e3"]
    assert res.commit_offset == 0


def test_event_time_late_event_decision_does_not_depend_on_batch_boundaries() -> None:
    """A late event is decided the same whether the stream came one record at a time or not."""
    values = [
        payment("a", "c1", T0 + 100_000),
        payment("b", "c1", T0 + 200_000),  # watermark 198 s: releases a
        payment("late", "c1", T0 + 130_000),  # below 200 s - 2 s - 58 s: late
        payment("c", "c1", T0 + 150_000),  # on time, below the watermark: released at once
    ]
    recs = records(values)
    topo = event_time_topology()
    got = {}
    for size in (1, len(recs)):
        _, res = run(recs, size, topo)
        (late,) = [stable(v) for _, v in decisions(res) if doc(v)["event_id"] == "late"]
        assert "late_event" in doc(late)["reasons"]
        got[size] = late
    one_by_one, together = (doc(got[size])["features"] for size in (1, len(recs)))
    assert (one_by_one["count_10m"], one_by_one["secs_since_last"]) == \
        (together["count_10m"], together["secs_since_last"])
    assert got[1] == got[len(recs)]


def test_redelivered_late_event_re_sends_its_late_record_but_a_duplicate_does_not() -> None:
    store = MemoryStore()
    pipe = new_pipeline(store)
    late = payment("old", "c1", T0)
    feed(pipe, store, records([payment("a", "c1", T0 + 10 * MINUTE)]), 10)
    (r1,) = feed(pipe, store, records([late], first_offset=1), 10)
    assert len(r1.late) == 1
    # A duplicate event at a new offset: the decision again, no second late record.
    (dup,) = feed(pipe, store, records([late], first_offset=2), 10)
    assert dup.duplicates == 1 and not dup.late and len(dup.decisions) == 1
    # The same record (same offset) after a crash that may have lost its late record.
    (again,) = feed(pipe, store, records([late], first_offset=1), 10)
    assert again.duplicates == 1 and len(again.late) == 1
    assert again.decisions == r1.decisions


# --------------------------------------------------------------------------- (g) online preview


def test_preview_decides_as_process_would_and_changes_nothing() -> None:
    recs = make_stream(9, n=300, late=0.03, dup=0.0, bad=0.02)
    store = MemoryStore()
    pipe = new_pipeline(store)
    feed(pipe, store, recs[:250], 50)
    decider = RulesOnly(TOPOLOGY.rules, TOPOLOGY.features.versioned_name)
    before = dict(store.items_between(b"", b"\xff"))
    watermark = pipe.watermark.watermark_ms
    decoder = EventDecoder(TOPOLOGY.schema, ("card_id", "event_id"), TOPOLOGY.max_record_bytes)
    valid = [(r, ev) for r in recs[250:] if type(ev := decoder.decode(r.value)) is not Rejection]
    assert valid  # (rejections are answered by the caller, before any preview)
    previews = [pipe.preview([ev], PROFILES, decider)[0] for _, ev in valid]
    assert dict(store.items_between(b"", b"\xff")) == before
    assert pipe.watermark.watermark_ms == watermark
    # Each preview equals what the stream decides for that event if it comes next.
    for (r, _), prev in zip(valid, previews, strict=True):
        probe = MemoryStore()
        for k, v in before.items():
            probe.apply({k: v})
        again = new_pipeline(probe)
        (res,) = feed(again, probe, [r], 1)
        assert stable(prev.decision) == stable(res.decisions[0][1])
    # An event id already decided gives back its stored decision.
    seen = pipe.preview([decoder.decode(recs[0].value)], PROFILES, decider)[0]
    stored = store.get(layout.seen_key(doc(recs[0].value)["event_id"]))
    assert seen.duplicate and seen.decision == layout.unpack_seen(stored).decision


# --------------------------------------------------------------------------- sweeps


def test_expiry_sweeps_are_spread_over_batches_and_finish() -> None:
    """Old event ids expire a bounded number per batch, until none is left: no batch stalls
    on a whole partition's dedup state. Idle cards' tiles go as the horizon passes them (the
    kernel indexes tiles by time: a batch touches only the tiles that expire)."""
    topo = dataclasses.replace(TOPOLOGY, dedup_ttl_ms=10 * MINUTE)
    store = MemoryStore()
    pipe = new_pipeline(store, topo)
    pipe.state.dedup_sweep_ids = 5
    idle = [payment(f"old{i}", f"c{i}", T0 + i) for i in range(30)]
    feed(pipe, store, records(idle), 30)
    assert all(tiles(store, f"c{i}") for i in range(30))
    # One busy card, 3 h later and on: every idle card's tiles and every old id are due.
    busy = [payment(f"new{i}", "c99", T0 + 3 * HOUR + i * 1_000) for i in range(40)]
    results = feed(pipe, store, records(busy, first_offset=30), 1)

    for r in results:
        ids_deleted = sum(1 for k, v in r.changes.items() if k.startswith(b"d/") and v is None)
        assert ids_deleted <= 5  # the budget
    assert sum(1 for r in results if any(k.startswith(b"d/") and v is None
                                         for k, v in r.changes.items())) >= 30 // 5
    assert not any(tiles(store, f"c{i}") for i in range(30))
    assert not any(store.get(layout.seen_key(f"old{i}")) for i in range(30))


def tiles(store: MemoryStore, card: str) -> list:
    return entity(store, card)
