"""engine.ordering: watermark, lateness verdict and the reorder buffer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.ordering import Lateness, ReorderBuffer, Watermark

times = st.integers(min_value=0, max_value=10**13)
delays = st.integers(min_value=0, max_value=10**6)


# --------------------------------------------------------------------------- watermark


def test_nothing_is_late_before_the_first_event() -> None:
    wm = Watermark(2_000, 58_000)
    assert wm.watermark_ms is None
    assert wm.late_before_ms is None
    assert wm.verdict(0) is Lateness.ON_TIME
    assert wm.verdict(-10**12) is Lateness.ON_TIME


def test_watermark_example() -> None:
    wm = Watermark(2_000, 58_000)
    wm.observe(100_000)
    assert wm.watermark_ms == 98_000
    assert wm.late_before_ms == 40_000
    assert wm.verdict(40_000) is Lateness.ON_TIME  # exactly at the cutoff: not late
    assert wm.verdict(39_999) is Lateness.LATE
    wm.observe(50_000)  # an older event never moves the watermark back
    assert wm.watermark_ms == 98_000


def test_watermark_restored_from_persisted_max() -> None:
    wm = Watermark(2_000, 58_000, max_ts_ms=100_000)
    assert wm.watermark_ms == 98_000
    assert wm.verdict(39_999) is Lateness.LATE


@given(ooo=delays, lateness=delays, seq=st.lists(times, max_size=60))
def test_watermark_never_decreases(ooo: int, lateness: int, seq: list[int]) -> None:
    wm = Watermark(ooo, lateness)
    previous = None
    for ts in seq:
        wm.observe(ts)
        assert wm.watermark_ms is not None
        if previous is not None:
            assert wm.watermark_ms >= previous
        previous = wm.watermark_ms
    if seq:
        assert wm.max_ts_ms == max(seq)
        assert wm.watermark_ms == max(seq) - ooo


@given(ooo=delays, lateness=delays, seq=st.lists(times, min_size=1, max_size=30), probe=times)
def test_late_iff_below_max_minus_ooo_minus_lateness(ooo: int, lateness: int, seq: list[int],
                                                     probe: int) -> None:
    wm = Watermark(ooo, lateness)
    for ts in seq:
        wm.observe(ts)
    cutoff = max(seq) - ooo - lateness
    assert (wm.verdict(probe) is Lateness.LATE) == (probe < cutoff)
    assert wm.verdict(cutoff) is Lateness.ON_TIME
    assert wm.verdict(cutoff - 1) is Lateness.LATE


# --------------------------------------------------------------------------- reorder buffer


def test_reorder_buffer_example() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(capacity=10)
    buf.push(30, 0, "c")
    buf.push(10, 1, "a")
    buf.push(20, 2, "b")
    buf.push(10, 3, "a2")  # same time as "a", arrived later
    assert buf.release(None) == []
    assert buf.min_offset == 0
    assert buf.release(9) == []
    assert buf.release(10) == ["a", "a2"]  # watermark equal to the time releases it
    assert buf.min_offset == 0
    assert buf.release(25) == ["b"]
    assert buf.min_offset == 0
    assert len(buf) == 1
    assert buf.drain() == ["c"]
    assert buf.min_offset is None
    assert len(buf) == 0


def test_reorder_buffer_overflow_releases_oldest_first() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(capacity=2)
    for off, ts in enumerate([50, 40, 30, 20]):
        buf.push(ts, off, ts)
    assert buf.release(None) == [20, 30]
    assert len(buf) == 2
    assert buf.min_offset == 0


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 1_000)),
        st.tuples(st.just("release"), st.none() | st.integers(-10, 1_100)),
    ),
    max_size=80,
)


@given(capacity=st.integers(0, 12), script=ops)
def test_reorder_buffer_model(capacity: int, script: list) -> None:
    """Against a plain sorted-list model: order, capacity bound and min_offset."""
    buf: ReorderBuffer[tuple[int, int]] = ReorderBuffer(capacity=capacity)
    held: list[tuple[int, int]] = []  # (ts, arrival) == (ts, offset) here
    offset = 0
    for op, arg in script:
        if op == "push":
            buf.push(arg, offset, (arg, offset))
            held.append((arg, offset))
            offset += 1
        else:
            out = buf.release(arg)
            held.sort()
            n = 0
            while n < len(held) and (len(held) - n > capacity
                                     or (arg is not None and held[n][0] <= arg)):
                n += 1
            expected, held = held[:n], held[n:]
            assert out == expected  # (ts, arrival) order
            assert len(buf) <= capacity
            if held and arg is not None:
                assert held[0][0] > arg
        assert len(buf) == len(held)
        assert buf.min_offset == min((o for _, o in held), default=None)
        assert buf.min_offset_in(3, 9) == min((o for _, o in held if 3 <= o < 9), default=None)
    assert buf.drain() == sorted(held)


@given(stream=st.lists(st.integers(0, 10**6), max_size=60), ooo=st.integers(0, 5_000),
       capacity=st.integers(1, 100))
def test_reorder_buffer_releases_a_bounded_disorder_stream_sorted(stream: list[int], ooo: int,
                                                                  capacity: int) -> None:
    """With disorder within out-of-orderness and no overflow, all releases concatenate sorted."""
    # Make the stream's disorder at most `ooo`: each time is >= running max - ooo.
    fixed, top = [], None
    for ts in stream:
        if top is not None and ts < top - ooo:
            ts = top - ooo
        fixed.append(ts)
        top = ts if top is None else max(top, ts)
    buf: ReorderBuffer[tuple[int, int]] = ReorderBuffer(capacity=len(fixed) + capacity)
    wm = None
    released: list[tuple[int, int]] = []
    for i, ts in enumerate(fixed):
        buf.push(ts, i, (ts, i))
        wm = ts - ooo if wm is None else max(wm, ts - ooo)
        released += buf.release(wm)
    released += buf.drain()
    assert released == sorted(released)
    assert sorted(released) == sorted((ts, i) for i, ts in enumerate(fixed))


def test_reorder_buffer_ties_keep_arrival_order_not_offset_order() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(capacity=10)
    buf.push(5, 9, "first")  # same event time; the later offset arrived first
    buf.push(5, 3, "second")
    buf.push(5, 1, "third")
    assert buf.release(5) == ["first", "second", "third"]
