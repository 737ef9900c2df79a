from __future__ import annotations

from engine.clock import ManualClock
from engine.scoring.breaker import BreakerSettings, BreakerState, CircuitBreaker


def _breaker(**kw) -> tuple[CircuitBreaker, ManualClock]:
    clock = ManualClock(1_000)
    return CircuitBreaker(BreakerSettings(**kw), clock), clock


def test_opens_after_consecutive_failures_and_half_opens_after_cool_down():
    b, clock = _breaker(consecutive_failures=3, cool_down_ms=1_000, min_calls=100)
    for _ in range(2):
        assert b.allow()
        b.record(False)
    assert b.state is BreakerState.CLOSED
    b.record(False)
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    clock.advance(999)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()  # the one probe
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # no second probe while the first is in flight
    b.record(True)
    assert b.state is BreakerState.CLOSED
    assert b.allow()


def test_failed_probe_reopens_for_a_full_cool_down():
    b, clock = _breaker(consecutive_failures=1, cool_down_ms=500)
    b.record(False)
    clock.advance(500)
    assert b.allow()
    b.record(False)
    assert b.state is BreakerState.OPEN
    clock.advance(499)
    assert not b.allow()


def test_opens_on_error_rate_within_window_only():
    b, clock = _breaker(consecutive_failures=100, failure_rate=0.5, window_ms=1_000, min_calls=4)
    for ok in (True, False, True, False):
        b.record(ok)
    assert b.state is BreakerState.OPEN

    b2, clock2 = _breaker(consecutive_failures=100, failure_rate=0.5, window_ms=1_000,
                          min_calls=4)
    b2.record(False)
    b2.record(False)
    clock2.advance(1_000)  # the two failures leave the window
    for _ in range(3):
        b2.record(True)
    b2.record(False)
    assert b2.state is BreakerState.CLOSED


def test_success_resets_consecutive_count():
    b, _ = _breaker(consecutive_failures=3, min_calls=100)
    for ok in (False, False, True, False, False):
        b.record(ok)
    assert b.state is BreakerState.CLOSED
