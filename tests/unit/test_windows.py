"""engine.windows: window bounds, tiles and their aggregates, snapshots and expiry."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.windows import (
    EntityTiles,
    Hopping,
    Sliding,
    TileTable,
    Tumbling,
    WindowAggregate,
    tile_start,
)

MINUTE = 60_000

timestamps = st.integers(min_value=-10**13, max_value=10**13)
sizes = st.integers(min_value=1, max_value=10**7)
tiles_ms = st.sampled_from([1, 7, 1_000, 60_000, 3_600_000]) | st.integers(1, 10**6)


# --------------------------------------------------------------------------- tile_start


@pytest.mark.parametrize("tile", [1, 1_000, 60_000])
def test_tile_start_at_boundaries(tile: int) -> None:
    k = 28_333_334
    assert tile_start(k * tile, tile) == k * tile
    assert tile_start(k * tile - 1, tile) == (k - 1) * tile
    assert tile_start(k * tile + tile - 1, tile) == k * tile
    assert tile_start(0, tile) == 0


def test_tile_start_negative_times_floor() -> None:
    assert tile_start(-1, 60_000) == -60_000
    assert tile_start(-60_000, 60_000) == -60_000
    assert tile_start(-60_001, 60_000) == -120_000


@given(ts=timestamps, tile=tiles_ms)
def test_tile_start_is_aligned_floor(ts: int, tile: int) -> None:
    s = tile_start(ts, tile)
    assert s % tile == 0
    assert s <= ts < s + tile


# --------------------------------------------------------------------------- tumbling


@given(ts=timestamps, duration=sizes)
def test_tumbling_window_contains_ts_and_is_aligned(ts: int, duration: int) -> None:
    start, end = Tumbling(duration).bounds(ts, 1)
    assert start % duration == 0
    assert end - start == duration
    assert start <= ts < end


@given(ts=timestamps, other=timestamps, duration=sizes)
def test_tumbling_every_ts_in_exactly_one_window(ts: int, other: int, duration: int) -> None:
    w = Tumbling(duration)
    start, end = w.bounds(ts, 1)
    # Two times share a window iff the second lies in the first's [start, end).
    assert (w.bounds(other, 1) == (start, end)) == (start <= other < end)


@given(ts=timestamps, duration=sizes)
def test_tumbling_end_is_exclusive(ts: int, duration: int) -> None:
    w = Tumbling(duration)
    start, end = w.bounds(ts, 1)
    assert w.bounds(end - 1, 1) == (start, end)
    assert w.bounds(end, 1) == (end, end + duration)
    assert w.bounds(start - 1, 1) == (start - duration, start)


def test_tumbling_examples() -> None:
    w = Tumbling(MINUTE)
    assert w.bounds(0, 1) == (0, MINUTE)
    assert w.bounds(MINUTE - 1, 1) == (0, MINUTE)
    assert w.bounds(MINUTE, 1) == (MINUTE, 2 * MINUTE)


# --------------------------------------------------------------------------- hopping


def _brute_hopping(ts: int, duration: int, step: int) -> list[tuple[int, int]]:
    """Every window [k*step, k*step + duration) that contains ts, oldest first."""
    last = ts - ts % step
    out = []
    s = last - (duration // step + 1) * step
    while s <= last:
        if s <= ts < s + duration:
            out.append((s, s + duration))
        s += step
    return out


@given(ts=timestamps, step=st.integers(1, 10**6), k=st.integers(1, 30))
def test_hopping_all_bounds_multiple_of_step(ts: int, step: int, k: int) -> None:
    duration = k * step
    bounds = Hopping(duration, step).all_bounds(ts)
    assert len(bounds) == duration // step
    starts = [s for s, _ in bounds]
    assert starts == sorted(starts)
    for s, e in bounds:
        assert s % step == 0
        assert e - s == duration
        assert s <= ts < e  # end exclusive
    assert all(b - a == step for a, b in zip(starts, starts[1:], strict=False))
    assert bounds == _brute_hopping(ts, duration, step)


@given(ts=timestamps, step=st.integers(1, 10**5), k=st.integers(1, 30))
def test_hopping_window_ending_at_ts_is_excluded(ts: int, step: int, k: int) -> None:
    duration = k * step
    bounds = Hopping(duration, step).all_bounds(ts)
    assert all(e != ts for _, e in bounds)
    assert all(s <= ts for s, _ in bounds)
    # The oldest window ends just after ts: one step earlier would end at or before ts.
    assert bounds[0][1] - step <= ts


@given(ts=timestamps, step=st.integers(1, 10**5), extra=st.integers(0, 10**6))
def test_hopping_all_bounds_any_duration_matches_brute_force(ts: int, step: int,
                                                             extra: int) -> None:
    duration = step + extra  # at least one step, not necessarily a multiple of it
    assert Hopping(duration, step).all_bounds(ts) == _brute_hopping(ts, duration, step)


def test_hopping_all_bounds_duration_not_multiple_of_step_example() -> None:
    # Hopping windows start at multiples of the step: 0, 3, 6, 9 all contain 9.
    assert Hopping(10, 3).all_bounds(9) == [(0, 10), (3, 13), (6, 16), (9, 19)]


@given(ts=timestamps, step=st.integers(1, 10**5), k=st.integers(1, 30))
def test_hopping_bounds_is_latest_window(ts: int, step: int, k: int) -> None:
    w = Hopping(k * step, step)
    assert w.bounds(ts, 1) == w.all_bounds(ts)[-1]


def test_hopping_examples() -> None:
    w = Hopping(10 * MINUTE, 5 * MINUTE)
    assert w.all_bounds(7 * MINUTE) == [(0, 10 * MINUTE), (5 * MINUTE, 15 * MINUTE)]
    assert w.all_bounds(10 * MINUTE) == [(5 * MINUTE, 15 * MINUTE), (10 * MINUTE, 20 * MINUTE)]
    assert w.all_bounds(10 * MINUTE - 1) == [(0, 10 * MINUTE), (5 * MINUTE, 15 * MINUTE)]


# --------------------------------------------------------------------------- sliding


@given(ts=timestamps, tile=st.integers(1, 10**6), k=st.integers(1, 100))
def test_sliding_bounds_cover_k_tiles_up_to_own_tile(ts: int, tile: int, k: int) -> None:
    start, end = Sliding(k * tile).bounds(ts, tile)
    assert end == tile_start(ts, tile) + tile
    assert end - start == k * tile
    assert start <= ts < end
    assert start % tile == 0


def test_sliding_example() -> None:
    assert Sliding(10 * MINUTE).bounds(10 * MINUTE + 5, MINUTE) == (MINUTE, 11 * MINUTE)


# --------------------------------------------------------------------------- tile table


def test_tile_table_state_prefix_changes_with_tiling_and_version() -> None:
    t = TileTable("velocity", MINUTE, "amount", 3_600_000, "merchant_id")
    assert t.state_prefix == b"t/velocity.v1.60000/"
    assert TileTable("velocity", 30_000, "amount", 3_600_000).state_prefix != t.state_prefix
    assert TileTable("velocity", MINUTE, "amount", 3_600_000, version=2).state_prefix \
        != t.state_prefix


# --------------------------------------------------------------------------- entity tiles

values = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)
Event = tuple[int, float, str | None]


@st.composite
def event_lists(draw: st.DrawFn) -> tuple[int, list[Event]]:
    tile = draw(st.sampled_from([1, 10, 1_000, MINUTE]))
    span = tile * draw(st.integers(1, 40))
    base = draw(st.integers(-10**12, 10**12))
    with_distinct = draw(st.booleans())
    n = draw(st.integers(0, 60))
    events = []
    for _ in range(n):
        ts = base + draw(st.integers(0, span))
        v = draw(values)
        d = draw(st.sampled_from(["a", "b", "c", "d", "e"])) if with_distinct else None
        events.append((ts, v, d))
    return tile, events


def _build(events: list[Event], tile: int) -> EntityTiles:
    ent = EntityTiles()
    for ts, v, d in events:
        ent.add(ts, v, d, tile)
    return ent


def _recompute(events: list[Event], selected: list[int]) -> WindowAggregate:
    if not selected:
        return WindowAggregate(0, 0.0, None, None, None, 0)
    vals = [events[i][1] for i in selected]
    best = max(selected, key=lambda i: (events[i][0], i))  # greatest ts, ties: latest added
    distinct = {events[i][2] for i in selected} - {None}
    return WindowAggregate(len(vals), math.fsum(vals), min(vals), max(vals),
                           events[best][1], len(distinct))


def _assert_same(got: WindowAggregate, want: WindowAggregate) -> None:
    assert got.count == want.count
    assert math.isclose(got.sum, want.sum, rel_tol=1e-9, abs_tol=0.0)
    assert (got.min, got.max, got.last, got.distinct_count) == \
        (want.min, want.max, want.last, want.distinct_count)


@settings(max_examples=300)
@given(data=event_lists(), lo=st.integers(-50, 50), width=st.integers(0, 60))
def test_aggregate_equals_recomputation_over_any_range(data, lo: int, width: int) -> None:
    tile, events = data
    ent = _build(events, tile)
    base = min((ts for ts, _, _ in events), default=0)
    # A range in raw ms, not necessarily tile aligned: tiles whose *start* lies in it count.
    start = base + lo * tile // 3
    end = start + width * tile // 2
    selected = [i for i, (ts, _, _) in enumerate(events) if start <= tile_start(ts, tile) < end]
    _assert_same(ent.aggregate(start, end), _recompute(events, selected))
    no_distinct = ent.aggregate(start, end, distinct=False)
    assert no_distinct.distinct_count == 0
    assert no_distinct[:5] == ent.aggregate(start, end)[:5]


@settings(max_examples=200)
@given(data=event_lists(), a=st.integers(-5, 45), b=st.integers(-5, 45))
def test_aggregate_over_tile_aligned_range_selects_events_by_time(data, a: int, b: int) -> None:
    tile, events = data
    ent = _build(events, tile)
    base = tile_start(min((ts for ts, _, _ in events), default=0), tile)
    start, end = base + min(a, b) * tile, base + max(a, b) * tile
    selected = [i for i, (ts, _, _) in enumerate(events) if start <= ts < end]
    agg = ent.aggregate(start, end)
    _assert_same(agg, _recompute(events, selected))
    if agg.count:
        assert math.isclose(agg.mean, agg.sum / agg.count)
    else:
        assert agg.mean is None


@given(data=event_lists())
def test_last_ts_is_max_ts(data) -> None:
    tile, events = data
    ent = _build(events, tile)
    assert ent.last_ts_ms == max((ts for ts, _, _ in events), default=None)


def test_last_ties_go_to_latest_added_and_older_events_do_not_replace_last() -> None:
    ent = EntityTiles()
    ent.add(1_000, 1.0, None, MINUTE)
    ent.add(1_000, 2.0, None, MINUTE)
    ent.add(500, 3.0, None, MINUTE)
    agg = ent.aggregate(0, MINUTE)
    assert agg.last == 2.0
    assert (agg.count, agg.sum, agg.min, agg.max) == (3, 6.0, 1.0, 3.0)
    ent.add(MINUTE + 1, 9.0, None, MINUTE)
    ent.add(5, 7.0, None, MINUTE)  # older tile added later: still not the last
    assert ent.aggregate(0, 2 * MINUTE).last == 9.0


def test_empty_aggregate() -> None:
    agg = EntityTiles().aggregate(0, 10 * MINUTE)
    assert agg == WindowAggregate(0, 0.0, None, None, None, 0)
    assert agg.mean is None


def test_distinct_counts_union_across_tiles() -> None:
    ent = EntityTiles()
    for ts, m in [(0, "a"), (1, "b"), (MINUTE, "a"), (MINUTE + 1, "c"), (2 * MINUTE, "a")]:
        ent.add(ts, 1.0, m, MINUTE)
    assert ent.aggregate(0, 3 * MINUTE).distinct_count == 3
    assert ent.aggregate(MINUTE, 2 * MINUTE).distinct_count == 2
    assert ent.aggregate(2 * MINUTE, 3 * MINUTE).distinct_count == 1


# --------------------------------------------------------------------------- snapshots


@given(data=event_lists())
def test_json_round_trip(data) -> None:
    tile, events = data
    ent = _build(events, tile)
    encoded = orjson.dumps(ent.to_json())
    back = EntityTiles.from_json(orjson.loads(encoded))
    assert back == ent
    assert orjson.dumps(back.to_json()) == encoded
    assert back.windows(tile) == ent.windows(tile)


@settings(max_examples=200)
@given(data=event_lists(), lo=st.integers(-5, 45), width=st.integers(0, 45))
def test_aggregate_after_round_trip_is_identical(data, lo: int, width: int) -> None:
    """A restored entity (as after a restart) must answer exactly as the live one."""
    tile, events = data
    ent = _build(events, tile)
    back = EntityTiles.from_json(orjson.loads(orjson.dumps(ent.to_json())))
    base = tile_start(min((ts for ts, _, _ in events), default=0), tile)
    start, end = base + lo * tile, base + (lo + width) * tile
    assert back.aggregate(start, end) == ent.aggregate(start, end)


def test_aggregate_sum_independent_of_tile_insertion_order_example() -> None:
    # Tiles created out of order (minute 0, 2, then 1), as an out-of-order event does.
    live = EntityTiles()
    live.add(0, 0.1, None, MINUTE)
    live.add(2 * MINUTE, 2.3, None, MINUTE)
    live.add(MINUTE, 0.2, None, MINUTE)
    restored = EntityTiles.from_json(orjson.loads(orjson.dumps(live.to_json())))
    assert restored.aggregate(0, 3 * MINUTE).sum == live.aggregate(0, 3 * MINUTE).sum


def test_encoding_is_deterministic_sets_sorted_tiles_sorted() -> None:
    a, b = EntityTiles(), EntityTiles()
    for m in ["z", "b", "m", "a"]:
        a.add(10, 1.0, m, MINUTE)
    for m in ["a", "m", "z", "b"]:
        b.add(10, 1.0, m, MINUTE)
    assert orjson.dumps(a.to_json()) == orjson.dumps(b.to_json())
    assert a.to_json()["t"][0][-1] == ["a", "b", "m", "z"]
    c, d = EntityTiles(), EntityTiles()
    for ts in (3 * MINUTE, 0, 2 * MINUTE):
        c.add(ts, 1.0, None, MINUTE)
    for ts in (0, 2 * MINUTE, 3 * MINUTE):
        d.add(ts, 1.0, None, MINUTE)
    assert orjson.dumps(c.to_json()) == orjson.dumps(d.to_json())
    assert [row[0] for row in c.to_json()["t"]] == [0, 2 * MINUTE, 3 * MINUTE]
    assert c.to_json()["t"][0][-1] is None


def test_windows_listing() -> None:
    ent = EntityTiles()
    ent.add(MINUTE + 5, 4.0, "a", MINUTE)
    ent.add(5, 1.0, "a", MINUTE)
    ent.add(7, 3.0, "b", MINUTE)
    assert ent.windows(MINUTE) == [
        {"start_ms": 0, "end_ms": MINUTE,
         "value": {"count": 2, "sum": 4.0, "min": 1.0, "max": 3.0, "mean": 2.0, "last": 3.0,
                   "distinct_count": 2}},
        {"start_ms": MINUTE, "end_ms": 2 * MINUTE,
         "value": {"count": 1, "sum": 4.0, "min": 4.0, "max": 4.0, "mean": 4.0, "last": 4.0,
                   "distinct_count": 1}},
    ]


# --------------------------------------------------------------------------- expiry


@given(data=event_lists(), k=st.integers(-3, 45), off=st.integers(-2, 2))
def test_expire_drops_exactly_tiles_ending_at_or_before_horizon(data, k: int, off: int) -> None:
    tile, events = data
    assume(events)
    ent = _build(events, tile)
    before = dict(ent.tiles)
    base = tile_start(min(ts for ts, _, _ in events), tile)
    horizon = base + k * tile + off
    dropped = ent.expire(horizon, tile)
    assert set(ent.tiles) == {s for s in before if s + tile > horizon}
    assert all(ent.tiles[s] == before[s] for s in ent.tiles)
    assert dropped == (len(ent.tiles) < len(before))


def test_expire_boundary_example() -> None:
    ent = EntityTiles()
    for ts in (0, MINUTE, 2 * MINUTE):
        ent.add(ts, 1.0, None, MINUTE)
    assert ent.expire(MINUTE - 1, MINUTE) is False
    assert set(ent.tiles) == {0, MINUTE, 2 * MINUTE}
    assert ent.expire(MINUTE, MINUTE) is True  # tile [0, 1m) ends exactly at the horizon
    assert set(ent.tiles) == {MINUTE, 2 * MINUTE}
    assert ent.expire(2 * MINUTE + 1, MINUTE) is True
    assert set(ent.tiles) == {2 * MINUTE}
    assert ent.last_ts_ms == 2 * MINUTE  # the entity's newest time survives expiry
