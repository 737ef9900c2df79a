"""Window aggregates of the tile kernel, both of them (the compiled `TileState` and its Python
reference), against recomputations from the raw events and numbers worked out by hand.

A window is read with `read(entity, lo)` through a hopping window of step 1 and duration
``hi - lo``, which is exactly the range ``[lo, hi)``: tiles whose *start* lies in it count.
Restores go through the store's encoding (`engine.state.layout`), as after a restart.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.kernel import (
    HOPPING,
    NO_TS,
    SLIDING,
    TUMBLING,
    ReferenceTileState,
    TileState,
    WindowSpec,
)
from engine.state import layout

MINUTE = 60_000
NAN = math.nan
KERNELS = [pytest.param(TileState, id="compiled"), pytest.param(ReferenceTileState,
                                                                 id="reference")]
PREFIX = layout.table_prefix("velocity", 1, MINUTE)

values = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)
Event = tuple[int, float, str | None]


def range_spec(lo: int, hi: int, distinct: bool = True) -> WindowSpec:
    """The window ``[lo, hi)`` when read at `lo`."""
    return WindowSpec(HOPPING, hi - lo, 1, distinct)


def kernel(Kernel, windows, has_distinct: bool = True, tile_ms: int = MINUTE):
    k = Kernel(tile_ms, list(windows), has_distinct)
    k.load("e", None, ())
    return k


def fold(k, events: list[Event], entity: str = "e", has_distinct: bool = True,
         keep: list[bool] | None = None, horizon: list[int] | None = None):
    """Fold `events` in order (all of them unless `keep` says not); each event's window row
    (read right after its own fold) and the entity's newest time before it."""
    for e in k.missing([entity]):
        k.load(e, None, ())
    n = len(events)
    out = np.full((n, k.width), -7.25)
    prev = np.full(n, 3, dtype=np.int64)
    k.fold_read([entity] * n, np.array([ts for ts, _, _ in events], dtype=np.int64),
                np.array([v for _, v, _ in events], dtype=np.float64),
                [d for _, _, d in events] if has_distinct else None,
                np.ones(n, bool) if keep is None else np.array(keep, bool),
                np.full(n, NO_TS, np.int64) if horizon is None else np.array(horizon, np.int64),
                out, prev)
    return out, prev


def row(k, at: int, entity: str = "e") -> tuple:
    """The entity's window row read at `at` as a plain tuple (count and distinct as int)."""
    r = k.read(entity, at)[0]
    return tuple(int(v) if i % 6 in (0, 5) else float(v) for i, v in enumerate(r))


def recompute(events: list[Event], selected: list[int], distinct: bool) -> tuple:
    """count, sum, min, max, last (value at the newest time; ties: the later arrival),
    distinct count; an empty window has NaN for min, max and last."""
    if not selected:
        return (0, 0.0, NAN, NAN, NAN, 0)
    vals = [events[i][1] for i in selected]
    best = max(selected, key=lambda i: (events[i][0], i))
    n_distinct = len({events[i][2] for i in selected} - {None}) if distinct else 0
    return (len(vals), math.fsum(vals), min(vals), max(vals), events[best][1], n_distinct)


def exact(t: tuple) -> tuple:
    return tuple("nan" if v != v else v for v in t)


def assert_same(got: tuple, want: tuple) -> None:
    """Equal, NaN equal to NaN; sums within 1e-9 (tile sums add in arrival order)."""
    assert got[0] == want[0]
    assert math.isclose(got[1], want[1], rel_tol=1e-9, abs_tol=0.0), (got, want)
    for g, w in zip(got[2:], want[2:], strict=True):
        assert g == w or (g != g and w != w), (got, want)


@st.composite
def event_lists(draw: st.DrawFn) -> tuple[int, list[Event], bool]:
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
    return tile, events, with_distinct


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("Kernel", KERNELS)
@settings(max_examples=150, deadline=None)
@given(data=event_lists(), lo=st.integers(-50, 50), width=st.integers(1, 60))
def test_aggregate_equals_recomputation_over_any_range(Kernel, data, lo: int,
                                                       width: int) -> None:
    tile, events, with_distinct = data
    base = min((ts for ts, _, _ in events), default=0)
    # A range in raw ms, not necessarily tile aligned: tiles whose *start* lies in it count.
    start = base + lo * tile // 3
    end = start + max(1, width * tile // 2)
    k = kernel(Kernel, [range_spec(start, end), range_spec(start, end, False)], with_distinct,
               tile)
    fold(k, events, has_distinct=with_distinct)
    selected = [i for i, (ts, _, _) in enumerate(events)
                if start <= (ts // tile) * tile < end]
    got = row(k, start)
    assert_same(got[:6], recompute(events, selected, with_distinct))
    assert got[11] == 0  # the window that does not ask for its distinct count reports 0
    assert exact(got[6:11]) == exact(got[:5])


@pytest.mark.parametrize("Kernel", KERNELS)
@settings(max_examples=100, deadline=None)
@given(data=event_lists(), a=st.integers(-5, 45), width=st.integers(1, 45))
def test_aggregate_over_tile_aligned_range_selects_events_by_time(Kernel, data, a: int,
                                                                   width: int) -> None:
    tile, events, with_distinct = data
    first = min((ts for ts, _, _ in events), default=0)
    base = (first // tile) * tile
    start, end = base + a * tile, base + (a + width) * tile
    k = kernel(Kernel, [range_spec(start, end)], with_distinct, tile)
    fold(k, events, has_distinct=with_distinct)
    selected = [i for i, (ts, _, _) in enumerate(events) if start <= ts < end]
    assert_same(row(k, start), recompute(events, selected, with_distinct))


@pytest.mark.parametrize("Kernel", KERNELS)
@given(data=event_lists())
@settings(deadline=None)
def test_last_ts_is_max_ts(Kernel, data) -> None:
    tile, events, with_distinct = data
    k = kernel(Kernel, [], with_distinct, tile)
    _, prev = fold(k, events, has_distinct=with_distinct)
    assert k.last_ts("e") == max((ts for ts, _, _ in events), default=NO_TS)
    # each event sees the newest time before it (NO_TS for the first)
    assert list(prev) == [max((ts for ts, _, _ in events[:i]), default=NO_TS)
                          for i in range(len(events))]


@pytest.mark.parametrize("Kernel", KERNELS)
def test_last_ties_go_to_latest_added_and_older_events_do_not_replace_last(Kernel) -> None:
    k = kernel(Kernel, [range_spec(0, MINUTE), range_spec(0, 2 * MINUTE)], False)
    fold(k, [(1_000, 1.0, None), (1_000, 2.0, None), (500, 3.0, None)], has_distinct=False)
    assert row(k, 0)[:6] == (3, 6.0, 1.0, 3.0, 2.0, 0)
    fold(k, [(MINUTE + 1, 9.0, None), (5, 7.0, None)], has_distinct=False)
    assert row(k, 0)[6:] == (5, 22.0, 1.0, 9.0, 9.0, 0)  # an older tile added later: not last


@pytest.mark.parametrize("Kernel", KERNELS)
def test_empty_aggregate(Kernel) -> None:
    k = kernel(Kernel, [range_spec(0, 10 * MINUTE)])
    got = row(k, 0)
    assert got[:2] == (0, 0.0) and got[5] == 0
    assert all(math.isnan(v) for v in got[2:5])  # min, max, last: NaN (None in a decision)
    # an entity the kernel does not hold reads the same
    assert row(k, 0, "unknown")[:2] == (0, 0.0)


@pytest.mark.parametrize("Kernel", KERNELS)
def test_distinct_counts_union_across_tiles(Kernel) -> None:
    k = kernel(Kernel, [range_spec(0, 3 * MINUTE), range_spec(MINUTE, 2 * MINUTE),
                        range_spec(2 * MINUTE, 3 * MINUTE)])
    fold(k, [(0, 1.0, "a"), (1, 1.0, "b"), (MINUTE, 1.0, "a"), (MINUTE + 1, 1.0, "c"),
             (2 * MINUTE, 1.0, "a")])
    assert row(k, 0)[5] == 3
    assert row(k, MINUTE)[11] == 2
    assert row(k, 2 * MINUTE)[17] == 1


@pytest.mark.parametrize("Kernel", KERNELS)
def test_window_sum_is_the_exactly_rounded_sum_of_its_tiles(Kernel) -> None:
    # 0.1 + 2.3 + 0.2 in arrival order is 2.6; the exact sum of those doubles rounds to
    # 2.5999999999999996, whatever order the tiles were made or restored in.
    k = kernel(Kernel, [range_spec(0, 3 * MINUTE)], False)
    fold(k, [(0, 0.1, None), (2 * MINUTE, 2.3, None), (MINUTE, 0.2, None)], has_distinct=False)
    assert row(k, 0)[1] == 2.5999999999999996
    assert restored(Kernel, k, [range_spec(0, 3 * MINUTE)], False)[0].read("e", 0)[0][1] == \
        2.5999999999999996


# --------------------------------------------------------------------------- interleaved


@pytest.mark.parametrize("Kernel", KERNELS)
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40 * MINUTE), st.floats(0.01, 1000, allow_nan=False),
                          st.sampled_from("abcdefg"), st.booleans()), min_size=1, max_size=80))
def test_rows_read_while_folding_equal_recomputation_with_expiry_interleaved(Kernel,
                                                                             steps) -> None:
    """Each event's row, read right after its fold (or, when not folded, over the state as it
    stands), equals the windows recomputed from the events kept so far, with expiry of old
    tiles interleaved (what the pivot-tile cache of the old `EntityTiles` had to match)."""
    windows = [WindowSpec(SLIDING, 10 * MINUTE, 0, True), WindowSpec(SLIDING, 60 * MINUTE, 0,
                                                                     False),
               WindowSpec(TUMBLING, 5 * MINUTE, 0, True)]
    k = kernel(Kernel, windows)
    kept: list[Event] = []
    for ts, value, merchant, write in steps:
        out, _ = fold(k, [(ts, value, merchant)], keep=[write])
        if write:
            kept.append((ts, value, merchant))
        tile = ts - ts % MINUTE
        for w, (lo, hi) in enumerate([(tile - 9 * MINUTE, tile + MINUTE),
                                      (tile - 59 * MINUTE, tile + MINUTE),
                                      (ts - ts % (5 * MINUTE), ts - ts % (5 * MINUTE)
                                       + 5 * MINUTE)]):
            selected = [i for i, (t, _, _) in enumerate(kept) if lo <= t < hi]
            got = tuple(out[0, 6 * w:6 * w + 6])
            assert_same((int(got[0]), *got[1:5], int(got[5])),
                        recompute(kept, selected, windows[w].distinct))
        if write and ts % 7 == 0:
            horizon = ts - 30 * MINUTE
            k.expire(horizon)
            kept = [e for e in kept if e[0] - e[0] % MINUTE + MINUTE > horizon]


# --------------------------------------------------------------------------- restore


def restored(Kernel, live, windows, has_distinct: bool, entity: str = "e"):
    """A kernel holding `entity` as the store holds it after `live`'s tiles were written
    (`drain_packed`) and read back (`layout`), with the stored tile values."""
    store = dict(live.drain_packed(PREFIX))
    lo, hi = layout.tile_range(PREFIX, entity.encode())
    stored = sorted((k, v) for k, v in store.items() if lo <= k < hi and v is not None)
    back = Kernel(live.tile_ms, list(windows), has_distinct)
    back.load(entity, None if live.last_ts(entity) == NO_TS else live.last_ts(entity),
              [(layout.tile_start_of(k), *layout.unpack_tile(v, has_distinct))
               for k, v in stored])
    return back, [v for _, v in stored]


@pytest.mark.parametrize("Kernel", KERNELS)
@settings(max_examples=100, deadline=None)
@given(data=event_lists())
def test_round_trip_through_the_store_encoding(Kernel, data) -> None:
    tile, events, with_distinct = data
    live = kernel(Kernel, [], with_distinct, tile)
    fold(live, events, has_distinct=with_distinct)
    back, encoded = restored(Kernel, live, [], with_distinct)
    assert back.snapshot("e") == live.snapshot("e")
    # encoding the restored tiles again gives the stored bytes
    assert [layout.pack_tile(t[1:]) for t in back.snapshot("e")[1]] == encoded


@pytest.mark.parametrize("Kernel", KERNELS)
@settings(max_examples=100, deadline=None)
@given(data=event_lists(), lo=st.integers(-5, 45), width=st.integers(1, 45))
def test_aggregate_after_round_trip_is_identical(Kernel, data, lo: int, width: int) -> None:
    """A restored entity (as after a restart) must answer exactly as the live one."""
    tile, events, with_distinct = data
    base = min((ts for ts, _, _ in events), default=0)
    start = base - base % tile + lo * tile
    windows = [range_spec(start, start + width * tile)]
    live = kernel(Kernel, windows, with_distinct, tile)
    fold(live, events, has_distinct=with_distinct)
    back, _ = restored(Kernel, live, windows, with_distinct)
    assert live.read("e", start)[0].tobytes() == back.read("e", start)[0].tobytes()


@pytest.mark.parametrize("Kernel", KERNELS)
def test_encoding_is_deterministic_sets_sorted_tiles_sorted(Kernel) -> None:
    a, b = kernel(Kernel, []), kernel(Kernel, [])
    fold(a, [(10, 1.0, m) for m in ["z", "b", "m", "a"]])
    fold(b, [(10, 1.0, m) for m in ["a", "m", "z", "b"]])
    da, db = a.drain_packed(PREFIX), b.drain_packed(PREFIX)
    assert da == db
    assert layout.unpack_tile(da[0][1], True).distinct == ("a", "b", "m", "z")
    c, d = kernel(Kernel, [], False), kernel(Kernel, [], False)
    fold(c, [(ts, 1.0, None) for ts in (3 * MINUTE, 0, 2 * MINUTE)], has_distinct=False)
    fold(d, [(ts, 1.0, None) for ts in (0, 2 * MINUTE, 3 * MINUTE)], has_distinct=False)
    dc = c.drain_packed(PREFIX)
    assert dc == d.drain_packed(PREFIX)
    assert [layout.tile_start_of(key) for key, _ in dc] == [0, 2 * MINUTE, 3 * MINUTE]
    assert layout.unpack_tile(dc[0][1], False).distinct is None
    assert [s for s, *_ in c.snapshot("e")[1]] == [0, 2 * MINUTE, 3 * MINUTE]


# --------------------------------------------------------------------------- expiry


@pytest.mark.parametrize("Kernel", KERNELS)
@settings(deadline=None)
@given(data=event_lists(), k=st.integers(-3, 45), off=st.integers(-2, 2))
def test_expire_drops_exactly_tiles_ending_at_or_before_horizon(Kernel, data, k: int,
                                                               off: int) -> None:
    tile, events, with_distinct = data
    assume(events)
    kern = kernel(Kernel, [], with_distinct, tile)
    fold(kern, events, has_distinct=with_distinct)
    kern.drain()
    before = {t[0]: t for t in kern.snapshot("e")[1]}
    first = min(ts for ts, _, _ in events)
    horizon = first - first % tile + k * tile + off
    kern.expire(horizon)
    kept = {s for s in before if s + tile > horizon}
    dropped = sorted(set(before) - kept)
    assert kern.drain() == [("e", s, None) for s in dropped]
    if kept:
        assert {t[0]: t for t in kern.snapshot("e")[1]} == {s: before[s] for s in kept}
        assert kern.last_ts("e") == max(ts for ts, _, _ in events)
    else:  # an entity left with no tile is forgotten (its newest time stays in the store)
        assert "e" not in kern and kern.snapshot("e") is None


@pytest.mark.parametrize("Kernel", KERNELS)
def test_expire_boundary_example(Kernel) -> None:
    k = kernel(Kernel, [], False)
    fold(k, [(ts, 1.0, None) for ts in (0, MINUTE, 2 * MINUTE)], has_distinct=False)
    k.drain()

    def starts() -> list[int]:
        return [t[0] for t in k.snapshot("e")[1]]

    k.expire(MINUTE - 1)
    assert starts() == [0, MINUTE, 2 * MINUTE] and k.drain() == []
    k.expire(MINUTE)  # tile [0, 1m) ends exactly at the horizon
    assert starts() == [MINUTE, 2 * MINUTE] and k.drain() == [("e", 0, None)]
    k.expire(2 * MINUTE + 1)
    assert starts() == [2 * MINUTE] and k.drain() == [("e", MINUTE, None)]
    assert k.last_ts("e") == 2 * MINUTE  # the entity's newest time survives expiry


# --------------------------------------------------------------------------- listing


def test_stored_tiles_listing() -> None:
    """An entity's stored tiles as lookups list them (`table_view`), oldest first."""
    from engine.clock import ManualClock
    from engine.pipeline import PartitionPipeline, Record, table_view
    from engine.policy import RulesOnly
    from engine.state import MemoryStore
    from topologies.fraud import TOPOLOGY

    t0 = 1_767_225_600_000
    store = MemoryStore()
    pipe = PartitionPipeline(TOPOLOGY, 0, store, RulesOnly(TOPOLOGY.rules, "fraud:v1"),
                             ManualClock(0))
    recs = [Record("fraud.events", 0, i, None, orjson.dumps(
        {"event_id": f"e{i}", "card_id": "c1", "merchant_id": m, "amount": amount,
         "currency": "USD", "country": "US", "ts_ms": t0 + ts}), None)
            for i, (ts, amount, m) in enumerate([(MINUTE + 5, 4.0, "a"), (10_000, 1.0, "a"),
                                                  (10_002, 3.0, "b")])]
    store.apply(pipe.process(recs, {}).changes)
    assert table_view(pipe.state, "velocity", "c1") == (t0 + MINUTE + 5, [
        {"start_ms": t0, "end_ms": t0 + MINUTE,
         "value": {"count": 2, "sum": 4.0, "min": 1.0, "max": 3.0, "mean": 2.0, "last": 3.0,
                   "distinct_count": 2}},
        {"start_ms": t0 + MINUTE, "end_ms": t0 + 2 * MINUTE,
         "value": {"count": 1, "sum": 4.0, "min": 4.0, "max": 4.0, "mean": 4.0, "last": 4.0,
                   "distinct_count": 1}},
    ])
    assert table_view(pipe.state, "velocity", "nobody") is None
