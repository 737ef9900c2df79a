"""The compiled tile kernel against its Python reference: the same operations on both, the
same outputs bit for bit (NaN payloads aside), the same drains, snapshots and errors."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import engine.kernel as kernel
from engine.kernel import _tiles, reference
from engine.kernel.reference import HOPPING, NO_TS, SLIDING, TUMBLING, WindowSpec
from engine.state import layout

Compiled = _tiles.TileState
Reference = reference.TileState

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
MINUTE, HOUR = 60_000, 3_600_000


# -- comparing ----------------------------------------------------------------------------


def canon(x: Any) -> Any:
    """A value with its exact type and bits, NaN payloads aside (``-0.0`` is not ``0.0``)."""
    if x is None:
        return None
    if type(x) is float:
        return ("float", "nan" if x != x else x.hex())
    if type(x) is int:
        return ("int", x)
    if type(x) is str:
        return ("str", x)
    if type(x) in (tuple, list):
        return (type(x).__name__, tuple(canon(v) for v in x))
    if type(x) is np.ndarray:
        a = x.copy()
        if a.dtype.kind == "f":
            a[np.isnan(a)] = np.nan
        return ("ndarray", str(a.dtype), a.shape, a.tobytes())
    raise TypeError(f"canon: {type(x).__name__}")


def outcome(call, *args) -> tuple[Any, Any]:
    """(canonical result, None) or (None, (exception type, message))."""
    try:
        return canon(call(*args)), None
    except (KeyError, OverflowError, ValueError, TypeError, UnicodeEncodeError) as e:
        return None, (type(e), str(e))


def same(call_ref, call_c, *args) -> Any:
    r, c = outcome(call_ref, *args), outcome(call_c, *args)
    assert c == r
    return r


# -- fsum -----------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
scaled = st.builds(math.ldexp, st.floats(-1.0, 1.0, allow_nan=False), st.integers(-1074, 1023))
edgy = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.1, 1e16, 1e-16, 2.0 ** 53, 2.0 ** -1074,
                        -(2.0 ** -1074), 1e308, -1e308, 1.7976931348623157e308, 1e-308])
adversarial = st.one_of(finite, scaled, edgy)


def fsum_outcome(f, xs) -> tuple:
    try:
        return ("ok", canon(f(xs)))
    except (OverflowError, ValueError) as e:
        return (type(e), str(e))


@settings(max_examples=1500, deadline=None)
@given(st.lists(adversarial, max_size=80))
def test_fsum_port_is_math_fsum(xs: list[float]) -> None:
    assert fsum_outcome(_tiles.fsum, xs) == fsum_outcome(math.fsum, xs)


@settings(max_examples=800, deadline=None)
@given(st.lists(adversarial, min_size=1, max_size=40), st.lists(scaled, max_size=5),
       st.randoms(use_true_random=False))
def test_fsum_port_on_cancellation(xs: list[float], tiny: list[float], rnd) -> None:
    """Values and their negations shuffled with a few small ones: the exact sum is the
    small ones' sum, which naive summation loses."""
    mixed = xs + [-x for x in xs] + tiny + [x * 2.0 ** -60 for x in xs]
    rnd.shuffle(mixed)
    assert fsum_outcome(_tiles.fsum, mixed) == fsum_outcome(math.fsum, mixed)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(finite, st.sampled_from([math.inf, -math.inf, math.nan])),
                max_size=12))
def test_fsum_port_with_special_values(xs: list[float]) -> None:
    assert fsum_outcome(_tiles.fsum, xs) == fsum_outcome(math.fsum, xs)


def test_fsum_port_known_values() -> None:
    assert _tiles.fsum([1e-16, 1.0, 1e16]) == 1.0000000000000002e16  # the half-even fix-up
    assert _tiles.fsum([0.1] * 10) == 1.0
    assert math.copysign(1.0, _tiles.fsum([-0.0, -0.0])) == 1.0  # fsum gives +0.0 as CPython
    with pytest.raises(OverflowError, match="intermediate overflow in fsum"):
        _tiles.fsum([1e308, 1e308])
    with pytest.raises(ValueError, match=r"-inf \+ inf in fsum"):
        _tiles.fsum([math.inf, -math.inf])
    many = [2.0 ** e for e in range(-1074, 1000, 40)]  # more partials than the stack array
    assert _tiles.fsum(many) == math.fsum(many)


# -- the two kernels side by side -------------------------------------------------------------

ENTITY_NAMES = ["c000001", "c000002", "", "é", "€uro", "\U0001d11e", "a/b", "z" * 40,
                "\ud800lone", "c000001 ", "C000001", "\x00"]
DISTINCT_NAMES = ["m00001", "m00002", "m00003", "", "ü", "\U0001f600", "\udfff", "m00001x",
                  "M00001", "m" * 30]
SPECIAL = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 1e16, 1e-16]


@st.composite
def configs(draw) -> tuple[int, list[WindowSpec], bool]:
    tile_ms = draw(st.sampled_from([1, 7, 1_000, MINUTE]) | st.integers(1, 10 ** 6))

    def size(unit: int) -> int:
        return draw(st.integers(1, 12).map(lambda k: k * unit) | st.integers(1, 15 * unit))

    windows = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from([TUMBLING, HOPPING, SLIDING]))
        distinct = draw(st.booleans())
        if kind == HOPPING:
            step = size(tile_ms)
            windows.append(WindowSpec(kind, draw(st.integers(1, 6)) * step
                                      if draw(st.booleans()) else size(tile_ms), step, distinct))
        else:
            windows.append(WindowSpec(kind, size(tile_ms), 0, distinct))
    return tile_ms, windows, draw(st.booleans())


class SideBySide(RuleBasedStateMachine):
    """Random operations on a compiled and a reference kernel; every answer compared."""

    @initialize(config=configs(), data=st.data())
    def setup(self, config, data) -> None:
        self.tile_ms, self.windows, self.has_distinct = config
        self.ref = Reference(self.tile_ms, self.windows, self.has_distinct)
        self.c = Compiled(self.tile_ms, self.windows, self.has_distinct)
        self.data = data
        draw = data.draw
        many = draw(st.booleans())
        self.entities = draw(st.lists(st.sampled_from(ENTITY_NAMES) | st.text(max_size=4),
                                      min_size=1, max_size=40 if many else 3, unique=True))
        self.values = draw(st.lists(st.sampled_from(DISTINCT_NAMES) | st.text(max_size=3),
                                    min_size=1, max_size=8, unique=True))
        span = max([self.tile_ms, *(w.duration_ms for w in self.windows),
                    *(w.step_ms for w in self.windows)])
        self.span = span
        # times around 0, far in the past or future, or next to the int64 ends (bounds and
        # window ends past int64 must round as Python's ints do)
        self.base = draw(st.sampled_from([0, -10 ** 15, 1_767_225_600_000,
                                          I64_MAX - 20 * span - 64, I64_MIN + 30 * span + 64]))
        self.profile = draw(st.sampled_from(["plain", "adversarial", "special"]))
        note(f"config {config} base {self.base} profile {self.profile}")

    # strategies bound to this machine's configuration

    def ts(self) -> int:
        return self.data.draw(st.integers(-8 * self.span, 8 * self.span).map(
            lambda d: self.base + d) | st.integers(0, 30).map(lambda k: self.base + k))

    def value(self) -> float:
        plain = st.floats(-1000.0, 1000.0).map(lambda v: round(v, 2))
        if self.profile == "plain":
            return self.data.draw(plain)
        if self.profile == "adversarial":
            return self.data.draw(plain | adversarial)
        return self.data.draw(plain | st.sampled_from(SPECIAL))

    def horizon(self) -> int:
        return self.data.draw(st.just(NO_TS) | st.integers(-10 * self.span, 10 * self.span).map(
            lambda d: self.base + d))

    def entity(self) -> str:
        return self.data.draw(st.sampled_from(self.entities))

    def tiles(self) -> list[tuple]:
        out = []
        for _ in range(self.data.draw(st.integers(0, 4))):
            t = self.ts()
            start = t - t % self.tile_ms if self.data.draw(st.integers(0, 4)) else t
            distinct = tuple(self.data.draw(st.lists(st.sampled_from(self.values), max_size=4)))
            out.append((start, self.data.draw(st.integers(0, 5)), self.value(), self.value(),
                        self.value(), self.ts(), self.value(), distinct))
        return out

    # operations

    @rule()
    def batch(self) -> None:
        draw = self.data.draw
        n = draw(st.integers(0, 25))
        ents = [self.entity() for _ in range(n)]
        ts = np.array([self.ts() for _ in range(n)], dtype=np.int64)
        values = np.array([self.value() for _ in range(n)], dtype=np.float64)
        distinct = [draw(st.sampled_from(self.values)) for _ in range(n)]
        fold = np.array([draw(st.integers(0, 5)) > 0 for _ in range(n)], dtype=bool)
        horizon = np.array([NO_TS if draw(st.integers(0, 3)) else self.horizon()
                            for _ in range(n)], dtype=np.int64)
        how = draw(st.sampled_from(["missing", "missing", "restored", "none"]))
        if how != "none":
            assert self.c.missing(ents) == self.ref.missing(ents)
            for e in self.ref.missing(ents):
                last, tiles = (None, []) if how == "missing" else (
                    draw(st.none() | st.integers(I64_MIN, I64_MAX)), self.tiles())
                self.ref.load(e, last, tiles)
                self.c.load(e, last, tiles)
        results = []
        for k in (self.ref, self.c):
            out = np.full((n, k.width), -7.25)
            prev = np.full(n, 3, dtype=np.int64)
            err = outcome(k.fold_read, ents, ts, values, distinct if self.has_distinct else None,
                          fold, horizon, out, prev)[1]
            results.append((err, canon(out), canon(prev)))
        assert results[1] == results[0]

    @rule()
    def load(self) -> None:
        e, tiles = self.entity(), self.tiles()
        last = self.data.draw(st.none() | st.integers(I64_MIN, I64_MAX))
        self.ref.load(e, last, tiles)
        self.c.load(e, last, tiles)

    @rule()
    def expire(self) -> None:
        h = self.data.draw(st.integers(-10 * self.span, 10 * self.span).map(
            lambda d: self.base + d) | st.sampled_from([I64_MIN, I64_MAX]))
        self.ref.expire(h)
        self.c.expire(h)

    @rule()
    def read(self) -> None:
        event = None
        if self.data.draw(st.booleans()):
            event = (self.value(), self.data.draw(st.sampled_from(self.values + ["unseen"])))
        args = (self.entity(), self.ts(), event, self.horizon())
        same(self.ref.read, self.c.read, *args)

    @rule()
    def drain(self) -> None:
        same(self.ref.drain, self.c.drain)

    @precondition(lambda self: not any("\ud800" <= ch <= "\udfff"
                                       for e in self.entities for ch in e))
    @rule()
    def drain_packed(self) -> None:
        prefix = layout.table_prefix("velocity", 3, self.tile_ms)

        def packed_by_layout() -> list[tuple[bytes, bytes | None]]:
            return [(layout.tile_key(prefix, e.encode(), s),
                     None if t is None else layout.pack_tile(t)) for e, s, t in self.ref.drain()]

        expected = outcome(packed_by_layout)
        got = outcome(self.c.drain_packed, prefix)
        if expected[1] is not None and expected[1][0] is UnicodeEncodeError:
            assert got[1] is not None and got[1][0] is UnicodeEncodeError
        else:
            assert got == expected

    @invariant()
    def held_alike(self) -> None:
        if not hasattr(self, "c"):
            return
        assert len(self.c) == len(self.ref)
        for e in self.entities:
            assert (e in self.c) == (e in self.ref)
            assert canon(self.c.last_ts(e)) == canon(self.ref.last_ts(e))
            assert canon(self.c.snapshot(e)) == canon(self.ref.snapshot(e))
        assert self.c.missing(self.entities) == self.ref.missing(self.entities)


SideBySide.TestCase.settings = settings(
    max_examples=300, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_compiled_kernel_matches_reference = SideBySide.TestCase


# -- the fraud topology's windows over its reference workload -----------------------------------


def stream(n: int, batch: int, lateness_ms: int, retain_ms: int):
    """(entities, ts, amounts, merchants, fold, horizon) per batch of the fraud workload,
    duplicates dropped; an event older than the newest time less the lateness is late: not
    folded, its horizon the newest time less lateness and retention; then that batch's
    expiry horizon."""
    from topologies.fraud.workload import generate

    events, seen = [], set()
    for e in generate(n, seed=7).events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            events.append(e)
    max_ts = NO_TS
    for lo in range(0, len(events), batch):
        chunk = events[lo:lo + batch]
        horizon = np.full(len(chunk), NO_TS, dtype=np.int64)
        fold = np.ones(len(chunk), dtype=bool)
        for i, e in enumerate(chunk):
            if e["ts_ms"] < max_ts - lateness_ms:
                fold[i] = False
                horizon[i] = max_ts - lateness_ms - retain_ms
            max_ts = max(max_ts, e["ts_ms"])
        yield ([e["card_id"] for e in chunk], np.array([e["ts_ms"] for e in chunk]),
               np.array([e["amount"] for e in chunk], dtype=np.float64),
               [e["merchant_id"] for e in chunk], fold, horizon,
               max_ts - lateness_ms - retain_ms)


def test_fraud_windows_over_the_reference_workload() -> None:
    from engine.kernel.specs import window_specs
    from topologies.fraud import TOPOLOGY, VELOCITY

    windows = window_specs(TOPOLOGY, VELOCITY)
    assert windows == [WindowSpec(SLIDING, 10 * MINUTE, 0, False),
                       WindowSpec(SLIDING, HOUR, 0, True)]
    lateness = TOPOLOGY.time.max_out_of_orderness_ms + TOPOLOGY.time.allowed_lateness_ms
    assert lateness == MINUTE
    kernels = [K(VELOCITY.tile_ms, windows, True) for K in (Reference, Compiled)]
    late = 0
    for ents, ts, amounts, merchants, fold, horizon, expiry in stream(
            12_000, 500, lateness, VELOCITY.retain_ms):
        late += int((~fold).sum())
        results = []
        for k in kernels:
            for e in k.missing(ents):
                k.load(e, None, ())
            out = np.full((len(ents), k.width), -1.0)
            prev = np.zeros(len(ents), dtype=np.int64)
            k.fold_read(ents, ts, amounts, merchants, fold, horizon, out, prev)
            k.expire(expiry)
            results.append((canon(out), canon(prev), canon(k.drain()), len(k)))
        assert results[1] == results[0]
    assert late > 0  # the stream exercised the late path
    for e in ("c000042", "c002532"):
        assert canon(kernels[1].snapshot(e)) == canon(kernels[0].snapshot(e))


# -- examples ---------------------------------------------------------------------------------


def test_the_package_exports_the_compiled_kernel() -> None:
    assert kernel.TileState is _tiles.TileState
    assert kernel.KERNEL == "compiled"
    assert kernel.ReferenceTileState is reference.TileState


SLIDING_10M = (WindowSpec(SLIDING, 10 * MINUTE, 0, True),)


def fresh(windows=SLIDING_10M, has_distinct=True):
    return [K(MINUTE, list(windows), has_distinct) for K in (Reference, Compiled)]


def run(k, ents, ts, values, distinct=None, fold=None, horizon=None):
    n = len(ents)
    out = np.full((n, k.width), -1.0)
    prev = np.zeros(n, dtype=np.int64)
    k.fold_read(ents, np.array(ts, dtype=np.int64), np.array(values, dtype=np.float64),
                distinct, np.ones(n, bool) if fold is None else np.array(fold),
                np.full(n, NO_TS, np.int64) if horizon is None else np.array(horizon), out,
                prev)
    return out, prev


def test_min_max_ties_resolve_in_tile_insertion_order() -> None:
    """-0.0 and 0.0 compare equal: the first tile in the reference's dict order wins, and a
    late event's tile comes after the newer ones."""
    for k in fresh():
        k.load("a", None, ())
        out, _ = run(k, ["a", "a", "a"], [5 * MINUTE, MINUTE, 5 * MINUTE + 1],
                     [0.0, -0.0, 3.0], ["m", "m", "n"])
        # tile 5 min came first, so its 0.0 is the min (sorted by start, -0.0 would be)
        assert math.copysign(1.0, out[2, 2]) == 1.0
        assert list(out[2]) == [3.0, 3.0, 0.0, 3.0, 3.0, 2.0]


@pytest.mark.xfail(strict=True, reason="reference.py: min/max keep the first of equal values in "
                   "tile insertion order, so -0.0 vs 0.0 (and NaN) depend on the order tiles were "
                   "made or restored, which the docstring rules out for sums only: a kernel "
                   "restored from the store (oldest tile first) reads differently from the live "
                   "one. Reported to the lead; the compiled kernel follows the reference.")
@pytest.mark.parametrize("Kernel", [Reference, Compiled], ids=["reference", "compiled"])
def test_window_min_does_not_depend_on_how_the_tiles_were_made(Kernel) -> None:
    windows = [WindowSpec(SLIDING, 10 * MINUTE, 0, False)]
    live = Kernel(MINUTE, windows, False)
    live.load("a", None, ())
    run(live, ["a", "a"], [5 * MINUTE, MINUTE], [0.0, -0.0])  # the late one, tile 1 min, last
    restored = Kernel(MINUTE, windows, False)
    last, tiles = live.snapshot("a")
    restored.load("a", last, [t[:7] + (None,) for t in tiles])  # as a store scan gives them
    at = 5 * MINUTE + 1
    assert canon(restored.read("a", at)) == canon(live.read("a", at))


def test_late_event_horizon_drops_tiles_then_expire_forgets() -> None:
    ref, c = fresh()
    for k in (ref, c):
        k.load("a", None, ())
        run(k, ["a"], [0], [1.0], ["m"])
        k.drain()
        out, prev = run(k, ["a"], [5], [2.0], ["m"], fold=[False], horizon=[MINUTE])
        assert out[0, 0] == 0.0 and prev[0] == 0
        assert k.drain() == [("a", 0, None)]
        assert "a" in k
        k.expire(NO_TS)
        assert "a" not in k and len(k) == 0
        assert k.last_ts("a") == NO_TS


def test_expire_skips_stale_index_entries_and_reloaded_entities() -> None:
    ref, c = fresh()
    for k in (ref, c):
        k.load("a", 10, [(0, 1, 1.0, 1.0, 1.0, 10, 1.0, ("m",))])
        run(k, ["a"], [0], [1.0], ["m"], fold=[False], horizon=[MINUTE])  # drops tile 0
        run(k, ["a"], [3 * MINUTE], [2.0], ["n"])
        k.expire(2 * MINUTE)  # the index still lists tile 0 of "a": stale, skipped
        assert "a" in k
        k.load("b", None, [(0, 1, 4.0, 4.0, 4.0, 1, 4.0, ("m",))])
        k.expire(4 * MINUTE)
        assert len(k) == 0
    assert canon(c.drain()) == canon(ref.drain())


def test_tile_start_below_int64_is_refused() -> None:
    """Python would make a tile starting below -2**63 (no store key can hold it): the
    compiled kernel refuses the event before changing anything."""
    c = Compiled(MINUTE, [WindowSpec(SLIDING, HOUR, 0, False)], False)
    c.load("a", None, ())
    with pytest.raises(OverflowError, match="before -2"):
        run(c, ["a", "a"], [0, I64_MIN + 5], [1.0, 1.0])
    assert c.drain() == [] and c.snapshot("a") == (NO_TS, [])
    out, _ = run(c, ["a"], [I64_MIN + MINUTE], [1.0])  # the first whole tile is fine
    assert out[0, 0] == 1.0


def test_fold_read_errors_stop_where_the_reference_stops() -> None:
    for windows in ([WindowSpec(SLIDING, HOUR, 0, False)],):
        ref, c = fresh(windows, False)
        for k in (ref, c):
            k.load("a", None, ())
        results = [outcome(run, k, ["a", "a", "b", "a"], [0, MINUTE, 0, 0],
                           [1e308, 1e308, 1.0, 1.0]) for k in (ref, c)]
        assert results[0][1] == (OverflowError, "intermediate overflow in fsum")
        assert results[1] == results[0]
        assert canon(c.drain()) == canon(ref.drain())
        results = [outcome(run, k, ["a", "b"], [2 * MINUTE, 0], [1.0, 1.0]) for k in (ref, c)]
        assert results[1] == results[0]


def test_inputs_the_compiled_kernel_refuses() -> None:
    c = Compiled(MINUTE, [WindowSpec(SLIDING, HOUR, 0, True)], True)
    with pytest.raises(ValueError, match="tile_ms"):
        Compiled(0, [], False)
    with pytest.raises(ValueError, match="window kind"):
        Compiled(MINUTE, [WindowSpec(7, HOUR)], False)
    with pytest.raises(ValueError, match="> 0"):
        Compiled(MINUTE, [WindowSpec(HOPPING, HOUR, 0)], False)
    with pytest.raises(TypeError):
        c.load(1, None, ())
    with pytest.raises(TypeError, match="distinct values must be str"):
        c.load("a", None, [(0, 1, 1.0, 1.0, 1.0, 0, 1.0, (None,))])
    c.load("a", None, ())
    with pytest.raises(TypeError, match="distinct"):
        run(c, ["a"], [0], [1.0], None)
    with pytest.raises(ValueError, match="shorter"):
        c.fold_read(["a"], np.zeros(0, np.int64), np.zeros(1), ["m"], np.ones(1, bool),
                    np.zeros(1, np.int64), np.zeros((1, 6)), np.zeros(1, np.int64))
    assert c.drain() == [] and c.snapshot("a") == (NO_TS, [])


def test_drain_packed_matches_layout_for_restored_and_dropped_tiles() -> None:
    prefix = layout.table_prefix("velocity", 1, MINUTE)
    ref, c = fresh([WindowSpec(SLIDING, HOUR, 0, True)])
    tiles = [(-MINUTE, 2, -3.5, -4.0, 0.5, -1, 0.5, ("zeta", "alpha", "ü"))]
    for k in (ref, c):
        k.load("é", 7, tiles)
        run(k, ["é", "é"], [-30_000, 10], [1.25, -0.0], ["m", "alpha"])
        run(k, ["é"], [0], [1.0], ["m"], fold=[False], horizon=[0])
    expected = [(layout.tile_key(prefix, e.encode(), s), None if t is None else
                 layout.pack_tile(t)) for e, s, t in ref.drain()]
    assert c.drain_packed(prefix) == expected
    assert expected[0][1] is None and expected[1][1] is not None
    assert struct.unpack_from("<q", expected[1][1])[0] == 1
    assert c.drain_packed(prefix) == []


def test_fold_read_runs_without_the_gil_and_the_kernel_refuses_other_calls_meanwhile() -> None:
    """Another thread runs while a long fold_read does (it could not if the GIL were held);
    a call on the same kernel in the meantime is refused, not raced."""
    import threading

    c = Compiled(MINUTE, [WindowSpec(SLIDING, HOUR, 0, True)], True)
    n = 400_000
    ents = [f"c{i % 50}" for i in range(n)]
    for e in set(ents):
        c.load(e, None, ())
    args = (ents, np.arange(n, dtype=np.int64) * 10, np.ones(n), [f"m{i % 7}" for i in range(n)],
            np.ones(n, bool), np.full(n, NO_TS, np.int64), np.empty((n, 6)),
            np.empty(n, np.int64))
    worker = threading.Thread(target=c.fold_read, args=args)
    refused = 0
    worker.start()
    while worker.is_alive() and not refused:
        try:
            c.last_ts("c1")
        except RuntimeError as e:
            assert "another thread" in str(e)
            refused += 1
    worker.join()
    assert refused == 1
    assert c.last_ts("c1") == (n - 49) * 10  # and usable again after


def test_memory_per_tile() -> None:
    """A tile is a 72-byte struct (two distinct ids inline); with the vectors' spare room
    and the expiry index, a tile held costs well under 100 bytes."""
    c = Compiled(MINUTE, [WindowSpec(SLIDING, HOUR, 0, True)], True)
    n_entities, per = 2_000, 60
    for i in range(n_entities):
        c.load(f"c{i:06d}", None, [(s * MINUTE, 1, 1.0, 1.0, 1.0, s * MINUTE, 1.0, ("m1",))
                                   for s in range(per)])
    assert c.memory_bytes() / (n_entities * per) < 90
