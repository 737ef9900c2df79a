"""The pivot-tile partial-aggregate cache must answer exactly what a full scan answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.windows import EntityTiles, Sliding, Tumbling

TILE = 60_000

ops = st.lists(st.tuples(st.integers(0, 40 * TILE), st.floats(0.01, 1000, allow_nan=False),
                         st.sampled_from("abcdefg"), st.booleans()), min_size=1, max_size=120)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_cached_window_reads_equal_full_scans(steps):
    cached, plain = EntityTiles(), EntityTiles()
    windows = (Sliding(10 * TILE), Sliding(60 * TILE), Tumbling(5 * TILE))
    for ts, value, merchant, write in steps:
        if write:
            cached.add(ts, value, merchant, TILE)
            plain.add(ts, value, merchant, TILE)
        pivot = ts - ts % TILE
        for w in windows:
            start, end = w.bounds(ts, TILE)
            for distinct in (True, False):
                got = cached.aggregate(start, end, distinct, pivot)
                want = plain.aggregate(start, end, distinct)
                assert got.count == want.count
                assert abs(got.sum - want.sum) <= 1e-9 * max(1.0, abs(want.sum))
                assert (got.min, got.max, got.last, got.distinct_count) == (
                    want.min, want.max, want.last, want.distinct_count)
        if write and ts % 7 == 0:
            cached.expire(ts - 30 * TILE, TILE)
            plain.expire(ts - 30 * TILE, TILE)
