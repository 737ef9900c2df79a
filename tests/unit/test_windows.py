"""engine.windows: window bounds and tile starts. The aggregates the tile kernel computes over
these windows are tested in test_window_aggregates.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.windows import Hopping, Sliding, Tumbling, tile_start

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
