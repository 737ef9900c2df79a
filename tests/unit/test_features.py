"""engine.features: feature sets, their vectors as the pipeline computes them (windows, time
since the last event, profile and event features) against recomputations and hand numbers,
critical features and stale profiles."""

from __future__ import annotations

import dataclasses
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.features import (
    PROFILE_TS_FIELD,
    EventFeature,
    FeatureSet,
    ProfileFeature,
    SinceLastFeature,
    WindowFeature,
)
from engine.pipeline import PartitionPipeline, Record
from engine.policy import RulesOnly
from engine.state import MemoryStore
from engine.testing import feed
from engine.topology import TimeSettings
from engine.windows import Hopping, Sliding, TileTable, Tumbling
from topologies.fraud import TOPOLOGY as FRAUD

MINUTE = 60_000
T0 = 472_222 * 60 * MINUTE  # hour aligned, ~2023-11
TABLE = TileTable("velocity", MINUTE, "amount", 60 * MINUTE, "merchant_id")

AGGS = ("count", "sum", "mean", "min", "max", "last", "distinct_count")
WINDOWS = {"s10": Sliding(10 * MINUTE), "t5": Tumbling(5 * MINUTE),
           "h6": Hopping(6 * MINUTE, 2 * MINUTE)}


def make_set(critical: tuple[str, ...] = ()) -> FeatureSet:
    feats: list = [WindowFeature(f"{agg}_{w}", "velocity", agg, win)
                   for w, win in WINDOWS.items() for agg in AGGS]
    feats += [
        SinceLastFeature("secs_since_last", "velocity"),
        ProfileFeature("over_avg", lambda e, p: e.amount / p["avg"] if p.get("avg") else None),
        EventFeature("amount", lambda e: e.amount),
    ]
    # Interleave kinds so model order differs from evaluation order.
    feats = [feats[-1], *feats[:-1]]
    return FeatureSet("test", 3, tuple(feats), critical)


# The fraud topology with these features over its velocity table, and an out-of-orderness of
# two hours: no event of these tests is late, and no tile expires.
TOPOLOGY = dataclasses.replace(FRAUD, tables=(TABLE,), features=make_set(),
                               time=TimeSettings(2 * 60 * MINUTE, 0))


def decide(events: list[tuple[int, float, str]], profiles: dict | None = None,
           cards: list[str] | None = None) -> list[dict]:
    """The decisions of `events` ``(ts, amount, merchant)``, fed in this order (card c1 unless
    `cards` says otherwise), in input order."""
    recs = [Record("fraud.events", 0, i, None, orjson.dumps(
        {"event_id": f"e{i}", "card_id": cards[i] if cards else "c1", "merchant_id": m,
         "amount": amount, "currency": "USD", "country": "US", "ts_ms": ts}), None)
            for i, (ts, amount, m) in enumerate(events)]
    out = feed(TOPOLOGY, recs, profiles=profiles, poll_records=7)
    return [orjson.loads(b) for b in out.decisions.get(0, [])]


def test_names_version_and_tables() -> None:
    fs = make_set()
    assert fs.names[0] == "amount"
    assert fs.versioned_name == "test:v3"
    assert fs.tables_used() == {"velocity"}
    assert len(fs.names) == len(set(fs.names)) == 3 * len(AGGS) + 3


def _brute(events: list[tuple[int, float, str]], ts: int) -> dict[str, list[int]]:
    """The indices of `events` inside each window read at `ts`, from the definitions: 10
    minutes = the event's 1-minute tile and the 9 before it; tumbling 5 minutes = the one
    holding ts; hopping 6 minutes every 2 = the newest one holding ts."""
    tile = (ts // MINUTE) * MINUTE
    t5 = (ts // (5 * MINUTE)) * (5 * MINUTE)
    h6 = (ts // (2 * MINUTE)) * (2 * MINUTE)
    return {
        "s10": [i for i, (t, _, _) in enumerate(events) if tile - 9 * MINUTE <= t < tile + MINUTE],
        "t5": [i for i, (t, _, _) in enumerate(events) if t5 <= t < t5 + 5 * MINUTE],
        "h6": [i for i, (t, _, _) in enumerate(events) if h6 <= t < h6 + 6 * MINUTE],
    }


@settings(max_examples=60, deadline=None)
@given(events=st.lists(st.tuples(st.integers(-20 * MINUTE, 20 * MINUTE),
                                 st.floats(0.01, 1e5), st.sampled_from("abcde")), max_size=25),
       avg=st.none() | st.floats(0.5, 100.0))
def test_window_features_equal_recomputation_from_the_events(events, avg) -> None:
    """Each event's features are its windows recomputed from the events before it and itself
    (all on time), the time since the newest earlier one, its profile and its own fields."""
    events = [(T0 + t, v, m) for t, v, m in events]
    profiles = {"c1": {"avg": avg}}
    got = decide(events, profiles)
    assert len(got) == len(events)
    for i, (ts, amount, _) in enumerate(events):
        vec = got[i]["features"]
        assert list(vec) == list(TOPOLOGY.features.names)
        seen = events[:i + 1]
        for w, selected in _brute(seen, ts).items():
            vals = [seen[j][1] for j in selected]
            newest = max(selected, key=lambda j: (seen[j][0], j))
            want = {"count": len(vals), "sum": math.fsum(vals),
                    "mean": math.fsum(vals) / len(vals), "min": min(vals), "max": max(vals),
                    "last": seen[newest][1],
                    "distinct_count": len({seen[j][2] for j in selected})}
            for a in AGGS:
                got_a = vec[f"{a}_{w}"]
                if a in ("sum", "mean"):  # tile sums add in arrival order
                    assert math.isclose(got_a, want[a], rel_tol=1e-12), (a, w)
                else:
                    assert got_a == want[a], (a, w)
                    assert type(got_a) is (int if a in ("count", "distinct_count") else float)
        earlier = [t for t, _, _ in events[:i]]
        assert vec["secs_since_last"] == ((ts - max(earlier)) / 1000 if earlier else -1.0)
        assert vec["over_avg"] == (amount / avg if avg else None)
        assert vec["amount"] == amount


def test_example_vector() -> None:
    got = decide([
        (T0 + 1_000, 10.0, "a"),
        (T0 + MINUTE + 1_000, 30.0, "b"),
        (T0 + 4 * MINUTE, 99.0, "c"),       # a later tile: in tumbling [T0, T0 + 5 min) only
        (T0 + MINUTE + 2_000, 40.0, "d"),   # out of order (on time), the event looked at
    ], {"c1": {"avg": 20.0}})
    assert got[1]["features"]["secs_since_last"] == 60.0
    vec = got[3]["features"]
    # Sliding 10 min [T0 - 8 min, T0 + 2 min): 10, 30 and the event's own 40, not 99.
    assert vec["count_s10"] == 3
    assert vec["sum_s10"] == 80.0
    assert vec["mean_s10"] == 80.0 / 3
    assert vec["min_s10"] == 10.0
    assert vec["max_s10"] == 40.0
    assert vec["last_s10"] == 40.0  # at the newest time in the window, T0 + 1 min 2 s
    assert vec["distinct_count_s10"] == 3
    # Tumbling [T0, T0 + 5 min) sees the whole window as it stands, the later 99 included.
    assert (vec["count_t5"], vec["sum_t5"], vec["max_t5"], vec["last_t5"]) == (4, 179.0, 99.0,
                                                                               99.0)
    # Hopping [T0, T0 + 6 min) (the newest 6-minute window starting on a 2-minute mark)
    assert (vec["count_h6"], vec["distinct_count_h6"]) == (4, 4)
    assert vec["secs_since_last"] == -178.0  # 2 min 58 s older than the newest earlier event
    assert vec["over_avg"] == 2.0
    assert vec["amount"] == 40.0


def test_first_event_of_an_entity() -> None:
    (d,) = decide([(T0, 10.0, "a")])
    vec = d["features"]
    assert (vec["count_s10"], vec["sum_s10"], vec["mean_s10"], vec["min_s10"], vec["max_s10"],
            vec["last_s10"], vec["distinct_count_s10"]) == (1, 10.0, 10.0, 10.0, 10.0, 10.0, 1)
    assert vec["secs_since_last"] == -1.0
    assert vec["over_avg"] is None  # no profile


def test_empty_windows_of_a_known_entity() -> None:
    """An entity whose events are all older than its windows: counts and sums 0, the rest
    None (the stored features `features_now` serves)."""
    store = MemoryStore()
    pipe = PartitionPipeline(TOPOLOGY, 0, store, RulesOnly(TOPOLOGY.rules, "test:v3"),
                             ManualClock(0))
    recs = [Record("fraud.events", 0, i, None, orjson.dumps(
        {"event_id": f"e{i}", "card_id": card, "merchant_id": "m", "amount": 5.0,
         "currency": "USD", "country": "US", "ts_ms": ts}), None)
            for i, (card, ts) in enumerate([("c1", T0), ("c2", T0 + 50 * MINUTE)])]
    store.apply(pipe.process(recs, {}).changes)
    as_of, vec, _ = pipe.features_now("c1", {})
    assert as_of == T0 + 50 * MINUTE
    for w in WINDOWS:
        assert (vec[f"count_{w}"], vec[f"sum_{w}"], vec[f"distinct_count_{w}"]) == (0, 0.0, 0)
        assert vec[f"mean_{w}"] is vec[f"min_{w}"] is vec[f"max_{w}"] is vec[f"last_{w}"] is None
    assert vec["secs_since_last"] == 3_000.0
    assert vec["over_avg"] is None and vec["amount"] is None  # they need an event


def test_since_last_negative_for_out_of_order_event() -> None:
    got = decide([(T0 + 1_500, 1.0, "a"), (T0, 1.0, "a")])
    assert got[1]["features"]["secs_since_last"] == -1.5


def test_profile_feature_sees_profile_and_may_return_none() -> None:
    got = decide([(T0, 5.0, "a"), (T0, 5.0, "a")], {"c1": {"avg": 0}, "c2": {"avg": 2.0}},
                 cards=["c1", "c2"])
    assert got[0]["features"]["over_avg"] is None
    assert got[1]["features"]["over_avg"] == 2.5


@pytest.mark.parametrize(("value", "missing"), [
    (None, True), (math.nan, True), (math.inf, True), (-math.inf, True),
    (0, False), (0.0, False), (-1.0, False), (3, False),
])
def test_missing_critical(value: object, missing: bool) -> None:
    fs = make_set(critical=("amount", "count_s10"))
    vec = {name: 1.0 for name in fs.names}
    vec["count_s10"] = value
    assert fs.missing_critical(vec) == (["count_s10"] if missing else [])
    del vec["amount"]
    assert "amount" in fs.missing_critical(vec)


def test_no_critical_features_means_nothing_missing() -> None:
    assert make_set().missing_critical({}) == []


def test_profile_is_stale() -> None:
    fs = dataclasses.replace(make_set(), profile_max_age_ms=1_000)
    assert not fs.profile_is_stale(None, T0)
    assert not fs.profile_is_stale({"avg": 1.0}, T0)  # no record time: never stale
    assert not fs.profile_is_stale({PROFILE_TS_FIELD: T0 - 1_000}, T0)
    assert fs.profile_is_stale({PROFILE_TS_FIELD: T0 - 1_001}, T0)
    assert not make_set().profile_is_stale({PROFILE_TS_FIELD: 0}, T0)  # no max age set
