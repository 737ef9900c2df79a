"""engine.features: feature sets compiled over tile tables, computed from tiles and the event."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.features import (
    PROFILE_TS_FIELD,
    EventFeature,
    FeatureSet,
    ProfileFeature,
    SinceLastFeature,
    WindowFeature,
)
from engine.windows import EntityTiles, Hopping, Sliding, TileTable, Tumbling

MINUTE = 60_000
T0 = 472_222 * 60 * MINUTE  # hour aligned, ~2023-11
TABLE = TileTable("velocity", MINUTE, "amount", 60 * MINUTE, "merchant_id")
TABLES = {"velocity": TABLE}

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
    return FeatureSet("test", 3, tuple(feats), critical).compile(TABLES)


def event(amount: float = 10.0) -> SimpleNamespace:
    return SimpleNamespace(amount=amount)


def test_names_version_and_tables() -> None:
    fs = make_set()
    assert fs.names[0] == "amount"
    assert fs.versioned_name == "test:v3"
    assert fs.tables_used() == {"velocity"}
    assert len(fs.names) == len(set(fs.names)) == 3 * len(AGGS) + 3


@settings(max_examples=60)
@given(events=st.lists(st.tuples(st.integers(-20 * MINUTE, 20 * MINUTE),
                                 st.floats(0.01, 1e5), st.sampled_from("abcde")), max_size=25),
       offset=st.integers(-15 * MINUTE, 15 * MINUTE))
def test_window_features_equal_tile_aggregates(events, offset: int) -> None:
    fs = make_set()
    ent = EntityTiles()
    for ts, v, m in events:
        ent.add(T0 + ts, v, m, MINUTE)
    ts = T0 + offset
    vec = fs.compute(event(), ts, {"velocity": ent}, {"velocity": ent.last_ts_ms}, None)
    assert list(vec) == list(fs.names)
    for w, win in WINDOWS.items():
        start, end = win.bounds(ts, MINUTE)
        agg = ent.aggregate(start, end)
        for a in AGGS:
            got, want = vec[f"{a}_{w}"], (agg.mean if a == "mean" else getattr(agg, a))
            if a in ("sum", "mean") and want is not None:
                # The pivot-tile cache may add the tiles in another order.
                assert math.isclose(got, want, rel_tol=1e-12), (a, w)
            else:
                assert got == want, (a, w)


def test_example_vector() -> None:
    fs = make_set()
    ent = EntityTiles()
    ent.add(T0 + 1_000, 10.0, "a", MINUTE)
    ent.add(T0 + MINUTE + 1_000, 30.0, "b", MINUTE)
    ent.add(T0 + 9 * MINUTE, 99.0, "c", MINUTE)  # a later tile: outside the sliding window
    ts = T0 + MINUTE + 2_000
    vec = fs.compute(event(40.0), ts, {"velocity": ent}, {"velocity": T0 + MINUTE + 1_000},
                     {"avg": 20.0})
    assert vec["count_s10"] == 2
    assert vec["sum_s10"] == 40.0
    assert vec["mean_s10"] == 20.0
    assert vec["last_s10"] == 30.0
    assert vec["distinct_count_s10"] == 2
    # Tumbling [T0, T0 + 5m) sees the whole window as it stands.
    assert vec["count_t5"] == 2
    assert vec["secs_since_last"] == 1.0
    assert vec["over_avg"] == 2.0
    assert vec["amount"] == 40.0


def test_empty_entity_and_first_event() -> None:
    fs = make_set()
    vec = fs.compute(event(), T0, {"velocity": EntityTiles()}, {"velocity": None}, None)
    assert vec["count_s10"] == 0
    assert vec["sum_s10"] == 0.0
    assert vec["mean_s10"] is None
    assert vec["min_s10"] is None and vec["max_s10"] is None and vec["last_s10"] is None
    assert vec["secs_since_last"] == -1.0
    assert vec["over_avg"] is None  # no profile


def test_since_last_negative_for_out_of_order_event() -> None:
    fs = make_set()
    vec = fs.compute(event(), T0, {"velocity": EntityTiles()}, {"velocity": T0 + 1_500}, None)
    assert vec["secs_since_last"] == -1.5


def test_profile_feature_sees_profile_and_may_return_none() -> None:
    fs = make_set()
    ent = {"velocity": EntityTiles()}
    assert fs.compute(event(5.0), T0, ent, {}, {"avg": 0})["over_avg"] is None
    assert fs.compute(event(5.0), T0, ent, {}, {"avg": 2.0})["over_avg"] == 2.5


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
