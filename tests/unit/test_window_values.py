"""Window bounds and window aggregates against numbers worked out by hand.

Nothing here computes its expectation with `Window.bounds` or the tile kernel: every expected
value is a literal, derived in the comments from hand-built event lists. Aggregates are read
from both kernels (compiled and reference) and mapped to features by the pipeline's
`FeaturePlan`.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from engine.clock import ManualClock
from engine.features import FeatureSet, WindowFeature
from engine.kernel import NO_TS, ReferenceTileState, TileState
from engine.kernel.specs import window_of
from engine.pipeline import PartitionPipeline, Record
from engine.pipeline.fold import FeaturePlan
from engine.policy import RulesOnly
from engine.state import MemoryStore
from engine.windows import Hopping, Sliding, Tumbling, Window
from topologies.fraud import TOPOLOGY

S = 1_000
M = 60_000
H = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a multiple of the hour, so of every tile


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(("ts", "bounds"), [
    (0, (0, M)),
    (M - 1, (0, M)),
    (M, (M, 2 * M)),             # the end is exclusive: M starts the next window
    (-1, (-M, 0)),               # negative times floor, never round towards zero
    (-M, (-M, 0)),
    (-M - 1, (-2 * M, -M)),
    (T0 + 59 * S, (T0, T0 + M)),
])
def test_tumbling_minute_bounds(ts: int, bounds: tuple[int, int]) -> None:
    assert Tumbling(M).bounds(ts, M) == bounds


def test_tumbling_hour_bounds() -> None:
    assert Tumbling(H).bounds(T0 + 1_234_567, M) == (T0, T0 + H)
    assert Tumbling(H).bounds(T0 - 1, M) == (T0 - H, T0)


@pytest.mark.parametrize(("ts", "bounds"), [
    (T0 + 125 * S, (T0 + 2 * M, T0 + 12 * M)),  # the newest 10-minute window holding ts
    (T0 + 2 * M, (T0 + 2 * M, T0 + 12 * M)),
    (T0 + 2 * M - 1, (T0 + M, T0 + 11 * M)),
    (-1, (-M, 9 * M)),
])
def test_hopping_bounds_is_the_newest_window_holding_ts(ts: int,
                                                        bounds: tuple[int, int]) -> None:
    assert Hopping(10 * M, M).bounds(ts, M) == bounds


def test_hopping_all_bounds_lists_every_window_holding_ts_oldest_first() -> None:
    # 10-minute windows every 2 minutes; ts = T0 + 5 min: starts T0 - 4 min ... T0 + 4 min
    assert Hopping(10 * M, 2 * M).all_bounds(T0 + 5 * M) == [
        (T0 - 4 * M, T0 + 6 * M), (T0 - 2 * M, T0 + 8 * M), (T0, T0 + 10 * M),
        (T0 + 2 * M, T0 + 12 * M), (T0 + 4 * M, T0 + 14 * M)]
    # ts = T0 + 6 min: the window [T0 - 4 min, T0 + 6 min) ends at ts, so it is left out
    assert Hopping(10 * M, 2 * M).all_bounds(T0 + 6 * M)[0] == (T0 - 2 * M, T0 + 8 * M)


@pytest.mark.parametrize(("duration", "ts", "bounds"), [
    # 10 minutes: the event's tile and the 9 before it
    (10 * M, T0 + 125 * S, (T0 - 7 * M, T0 + 3 * M)),
    (10 * M, T0 + 2 * M, (T0 - 7 * M, T0 + 3 * M)),       # first ms of a tile
    (10 * M, T0 + 2 * M - 1, (T0 - 8 * M, T0 + 2 * M)),   # last ms of the tile before
    (10 * M, 0, (-9 * M, M)),
    (10 * M, -1, (-10 * M, 0)),
    # 1 hour: the event's tile and the 59 before it
    (H, T0 + 125 * S, (T0 + 3 * M - H, T0 + 3 * M)),
    (H, T0 + H - 1, (T0, T0 + H)),
])
def test_sliding_bounds_over_minute_tiles(duration: int, ts: int,
                                          bounds: tuple[int, int]) -> None:
    assert Sliding(duration).bounds(ts, M) == bounds


# --------------------------------------------------------------------------- aggregates

# Tile 0 (T0): 10.0 m1 @ 5 s, 30.0 m2 @ 50 s, 99.0 m9 @ 40 s (arrives last, older than 50 s)
# Tile 1 (T0 + 1 min): 5.0 m1 @ 65 s
# Tile 10 (T0 + 10 min): 7.0 m3 @ 600 s, 100.0 m4 @ 659.999 s
EVENTS = [(T0 + 5 * S, 10.0, "m1"), (T0 + 50 * S, 30.0, "m2"), (T0 + 65 * S, 5.0, "m1"),
          (T0 + 600 * S, 7.0, "m3"), (T0 + 659_999, 100.0, "m4"), (T0 + 40 * S, 99.0, "m9")]
KERNELS = [pytest.param(TileState, id="compiled"), pytest.param(ReferenceTileState,
                                                                 id="reference")]
AGGS = ("count", "sum", "mean", "min", "max", "last", "distinct_count")


def fold_events(kernel, events, entity: str = "c1") -> np.ndarray:
    """Fold `events` (ts, value, distinct) in order; the row each read right after its fold."""
    for e in kernel.missing([entity]):
        kernel.load(e, None, ())
    n = len(events)
    out = np.empty((n, kernel.width))
    kernel.fold_read([entity] * n, np.array([t for t, _, _ in events], np.int64),
                     np.array([v for _, v, _ in events], np.float64),
                     [d for _, _, d in events] if kernel.has_distinct else None,
                     np.ones(n, bool), np.full(n, NO_TS, np.int64), out, np.empty(n, np.int64))
    return out


def window_features(Kernel, events, window: Window, at: int, distinct: bool = True) -> dict:
    """Every aggregate of `window` over `events`, read at `at` (the event not folded in), as a
    decision would carry them: counts int, mean sum/count, None where there is no value."""
    fs = FeatureSet("w", 1, tuple(WindowFeature(a, "t", a, window) for a in AGGS))
    spec = window_of(window, distinct)
    kernel = Kernel(M, [spec], True)
    fold_events(kernel, events)
    return FeaturePlan.of(fs, [("t", [spec])]).stored_vector([kernel.read("c1", at)[0]], None)


@pytest.mark.parametrize("Kernel", KERNELS)
@pytest.mark.parametrize(("lo", "hi", "count", "total", "low", "high", "last", "distinct"), [
    # tile 0 alone; `last` is the value at the newest time (30.0 @ 50 s), not the last added
    (T0, T0 + M, 3, 139.0, 10.0, 99.0, 30.0, 3),
    # tiles 0 and 1; tile 10 starts at the end, which is exclusive
    (T0, T0 + 10 * M, 4, 144.0, 5.0, 99.0, 5.0, 3),
    # tiles 1 .. 10
    (T0 + M, T0 + 11 * M, 3, 112.0, 5.0, 100.0, 100.0, 3),
    # only tiles whose *start* lies in the range: [T0 + 1 ms, T0 + 1 min + 1 ms) holds tile 1
    (T0 + 1, T0 + M + 1, 1, 5.0, 5.0, 5.0, 5.0, 1),
    (T0 + 11 * M, T0 + 20 * M, 0, 0.0, None, None, None, 0),
])
def test_aggregate_of_hand_built_tiles(Kernel, lo: int, hi: int, count: int, total: float,
                                       low, high, last, distinct: int) -> None:
    # A hopping window of step 1 read at `lo` is exactly [lo, hi).
    got = window_features(Kernel, EVENTS, Hopping(hi - lo, 1), lo)
    assert got == {"count": count, "sum": total, "mean": total / count if count else None,
                   "min": low, "max": high, "last": last, "distinct_count": distinct}


@pytest.mark.parametrize("Kernel", KERNELS)
def test_aggregate_without_distinct_reports_zero(Kernel) -> None:
    assert window_features(Kernel, EVENTS, Hopping(H, 1), T0,
                           distinct=False)["distinct_count"] == 0
    assert window_features(Kernel, EVENTS, Hopping(H, 1), T0)["distinct_count"] == 5  # m1-4, m9


@pytest.mark.parametrize("Kernel", KERNELS)
def test_last_ties_go_to_the_event_added_last(Kernel) -> None:
    kernel = Kernel(M, [window_of(Hopping(M, 1), False), window_of(Hopping(2 * M, 1), False)],
                    False)
    fold_events(kernel, [(T0 + S, 1.0, None), (T0 + S, 2.0, None), (T0 + M + S, 3.0, None),
                         (T0 + M + S, 4.0, None)])
    row = kernel.read("c1", T0)[0]
    assert (row[4], row[6 + 4]) == (2.0, 4.0)  # `last` of [T0, +1 min) and of [T0, +2 min)
    assert kernel.last_ts("c1") == T0 + M + S


@pytest.mark.parametrize("Kernel", KERNELS)
def test_window_reads_around_the_writing_tile_match_hand_counts(Kernel) -> None:
    # The row read right after an event's fold (its own tile being written) gives the hand
    # numbers: 10 minutes at T0 + 10 min are tiles 1 .. 10.
    kernel = Kernel(M, [window_of(Sliding(10 * M), True)], True)
    fold_events(kernel, EVENTS)
    a = kernel.read("c1", T0 + 10 * M)[0]
    assert (a[0], a[1], a[3], a[4], a[5]) == (3, 112.0, 100.0, 100.0, 3)
    (a,) = fold_events(kernel, [(T0 + 601 * S, 1.0, "m5")])  # into tile 10
    assert (a[0], a[1], a[3], a[4], a[5]) == (4, 113.0, 100.0, 100.0, 4)


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("Kernel", KERNELS)
def test_tumbling_and_hopping_features_from_hand_built_events(Kernel) -> None:
    fs = FeatureSet("f", 1, (
        WindowFeature("count_t5", "t", "count", Tumbling(5 * M)),
        WindowFeature("sum_t5", "t", "sum", Tumbling(5 * M)),
        WindowFeature("count_h6", "t", "count", Hopping(6 * M, 2 * M)),
        WindowFeature("sum_h6", "t", "sum", Hopping(6 * M, 2 * M)),
    ))
    windows = [window_of(Tumbling(5 * M), False), window_of(Hopping(6 * M, 2 * M), False)]
    kernel = Kernel(M, windows, False)
    fold_events(kernel, [(ts, amount, None) for ts, amount in (
        (T0 + 30 * S, 1.0), (T0 + 2 * M, 2.0), (T0 + 270 * S, 4.0), (T0 + 5 * M, 8.0),
        (T0 + 8 * M, 16.0))])
    plan = FeaturePlan.of(fs, [("t", windows)])

    def at(ts: int) -> dict:  # an event at ts, over the tiles as they stand (not folded in)
        return plan.stored_vector([kernel.read("c1", ts)[0]], None)

    # ts = T0 + 1 min: tumbling [T0, T0 + 5 min) as it stands holds 1 + 2 + 4 (also the
    # tiles after the event's own); hopping [T0, T0 + 6 min) holds 1 + 2 + 4 + 8
    assert at(T0 + M) == {"count_t5": 3, "sum_t5": 7.0, "count_h6": 4, "sum_h6": 15.0}
    # ts = T0 + 3 min: hopping [T0 + 2 min, T0 + 8 min) holds 2 + 4 + 8 (16 @ 8 min is out)
    assert at(T0 + 3 * M) == {"count_t5": 3, "sum_t5": 7.0, "count_h6": 3, "sum_h6": 14.0}
    # ts = T0 + 5 min: tumbling [T0 + 5, T0 + 10 min) holds 8 + 16; hopping [4, 10 min) holds
    # 4 (@ 4.5 min) + 8 + 16
    assert at(T0 + 5 * M) == {"count_t5": 2, "sum_t5": 24.0, "count_h6": 3, "sum_h6": 28.0}


def _payment(eid: str, ts: int, amount: float, merchant: str) -> bytes:
    return orjson.dumps({"event_id": eid, "card_id": "c1", "merchant_id": merchant,
                         "amount": amount, "currency": "USD", "country": "US", "ts_ms": ts})


# Card c1 of the fraud topology, in arrival order: (event id, ts, amount, merchant).
STREAM = [
    ("e1", T0 + 5 * S, 10.0, "m1"),     # tile 0
    ("e2", T0 + 50 * S, 30.0, "m2"),    # tile 0
    ("e3", T0 + 65 * S, 5.0, "m1"),     # tile 1
    ("e4", T0 + 541 * S, 7.0, "m3"),    # tile 9
    ("e5", T0 + 600 * S, 100.0, "m4"),  # tile 10
    ("e6", T0 + 590 * S, 2.0, "m5"),    # tile 9, arrives after tile 10 (2 s disorder: on time)
    ("e7", T0 + 100 * S, 50.0, "m6"),   # tile 1, below the cutoff 600 - 2 - 58 = 540 s: late
]
# Hand-computed: 10 min = the event's tile and the 9 before; 1 h = its tile and the 59 before;
# both include the event itself unless it is late; never a tile after the event's own.
WANT = {
    #     count_10m sum_10m max_10m count_1h sum_1h mean_1h distinct secs_since_last
    "e1": (1, 10.0, 10.0, 1, 10.0, 10.0, 1, -1),
    "e2": (2, 40.0, 30.0, 2, 40.0, 20.0, 2, 45.0),
    "e3": (3, 45.0, 30.0, 3, 45.0, 15.0, 2, 15.0),
    "e4": (4, 52.0, 30.0, 4, 52.0, 13.0, 3, 476.0),     # tiles 0..9
    "e5": (3, 112.0, 100.0, 5, 152.0, 30.4, 4, 59.0),   # 10 min = tiles 1..10: e1, e2 left
    "e6": (5, 54.0, 30.0, 5, 54.0, 10.8, 4, -10.0),     # tiles 0..9: e5 (tile 10) unseen
    "e7": (3, 45.0, 30.0, 3, 45.0, 15.0, 2, -500.0),    # late: tiles ..1 without itself
}
NAMES = ("count_10m", "sum_10m", "max_10m", "count_1h", "sum_1h", "mean_1h",
         "distinct_merchants_1h", "secs_since_last")


@pytest.mark.parametrize("batch", [1, 3, len(STREAM)])
def test_fraud_window_features_through_the_pipeline_equal_hand_counts(batch: int) -> None:
    store = MemoryStore()
    pipe = PartitionPipeline(TOPOLOGY, 0, store, RulesOnly(TOPOLOGY.rules, "fraud:v1"),
                             ManualClock(0))
    recs = [Record("fraud.events", 0, i, b"c1", _payment(eid, ts, amount, merchant), 0)
            for i, (eid, ts, amount, merchant) in enumerate(STREAM)]
    got: dict[str, dict] = {}
    for i in range(0, len(recs), batch):
        res = pipe.process(recs[i:i + batch], {"c1": {"avg_amount_90d": 20.0,
                                                      "home_country": "US"}})
        store.apply(res.changes)
        for _, body in res.decisions:
            d = orjson.loads(body)
            got[d["event_id"]] = d
    assert list(got) == [eid for eid, *_ in STREAM]
    for eid, want in WANT.items():
        assert tuple(got[eid]["features"][n] for n in NAMES) == want, eid
    assert got["e5"]["features"]["amount_over_avg"] == 5.0  # 100 / 20
    assert got["e5"]["features"]["hour_of_day"] == 0
    assert got["e7"]["reasons"][0] == "late_event"
    assert all("late_event" not in got[e]["reasons"] for e in WANT if e != "e7")
