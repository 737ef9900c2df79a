from __future__ import annotations

import logging

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


def test_shipped_defaults() -> None:
    assert BreakerSettings() == BreakerSettings(consecutive_failures=5, failure_rate=0.5,
                                                window_ms=10_000, min_calls=20,
                                                cool_down_ms=5_000)


def test_error_rate_exactly_at_the_threshold_opens_and_just_below_does_not() -> None:
    at, _ = _breaker(consecutive_failures=100, failure_rate=0.5, min_calls=20)
    below, _ = _breaker(consecutive_failures=100, failure_rate=0.5, min_calls=20)
    for i in range(20):  # alternate: 10 failures of 20 = 0.5
        at.record(i % 2 == 0)
    assert at.state is BreakerState.OPEN
    for i in range(19):  # 9 failures of 19, then a success: 9 of 20 = 0.45
        below.record(i % 2 == 0)
    below.record(True)
    assert below.state is BreakerState.CLOSED


def test_error_rate_needs_min_calls_in_the_window() -> None:
    b, _ = _breaker(consecutive_failures=100, failure_rate=0.5, min_calls=20)
    for _ in range(10):
        b.record(True)
    for _ in range(9):
        b.record(False)
    assert b.state is BreakerState.CLOSED  # 9 of 19: too few calls to judge
    b.record(False)
    assert b.state is BreakerState.OPEN  # 10 of 20


def test_a_call_exactly_window_ms_old_has_left_the_window() -> None:
    b, clock = _breaker(consecutive_failures=100, failure_rate=0.5, window_ms=1_000, min_calls=2)
    b.record(False)
    clock.advance(1_000)
    b.record(True)  # the failure is 1,000 ms old: out; 0 of 1, too few calls
    b.record(True)
    assert b.state is BreakerState.CLOSED
    c, clock = _breaker(consecutive_failures=100, failure_rate=0.5, window_ms=1_000, min_calls=2)
    c.record(False)
    clock.advance(999)
    c.record(True)  # 999 ms old: still in; 1 of 2 failed
    assert c.state is BreakerState.OPEN


def test_open_lets_nothing_through_until_the_whole_cool_down_has_passed() -> None:
    b, clock = _breaker(consecutive_failures=1, cool_down_ms=5_000)
    b.record(False)
    for _ in range(3):
        clock.advance(1_666)
        assert not b.allow() and b.state is BreakerState.OPEN
    clock.advance(2)  # 5,000 ms after opening
    assert b.allow() and b.state is BreakerState.HALF_OPEN


def test_closing_after_a_probe_forgets_the_earlier_failures() -> None:
    b, clock = _breaker(consecutive_failures=2, failure_rate=0.5, window_ms=60_000, min_calls=3)
    b.record(False)
    b.record(False)
    assert b.state is BreakerState.OPEN
    clock.advance(5_000)
    assert b.allow()
    b.record(True)
    assert b.state is BreakerState.CLOSED
    b.record(False)  # with the old two failures this would be 3 in a row, and 3 of 3 calls
    assert b.state is BreakerState.CLOSED


def test_every_state_change_is_counted_and_logged_with_the_models_name(caplog) -> None:
    clock = ManualClock(0)
    b = CircuitBreaker(BreakerSettings(consecutive_failures=1, cool_down_ms=100), clock,
                       name="primary")
    with caplog.at_level(logging.INFO, logger="streamwise.breaker"):
        b.record(False)
        clock.advance(100)
        assert b.allow()
        b.record(False)  # the probe fails: open again
        clock.advance(100)
        assert b.allow()
        b.record(True)
        b.record(True)  # closed stays closed: no transition
    assert b.transitions == 5
    assert [r.getMessage() for r in caplog.records] == [
        "circuit breaker primary: closed -> open",
        "circuit breaker primary: open -> half_open",
        "circuit breaker primary: half_open -> open",
        "circuit breaker primary: open -> half_open",
        "circuit breaker primary: half_open -> closed",
    ]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO,
                                                   logging.WARNING, logging.INFO, logging.INFO]


def test_a_late_failure_while_open_is_forgotten_once_a_probe_closes() -> None:
    b, clock = _breaker(consecutive_failures=2, failure_rate=0.5, window_ms=60_000, min_calls=2)
    b.record(False)
    b.record(False)
    assert b.state is BreakerState.OPEN
    b.record(False)  # a call let through before opening ends late, as a failure
    clock.advance(5_000)
    assert b.allow()
    b.record(True)
    assert b.state is BreakerState.CLOSED
    b.record(True)
    b.record(False)  # 1 in a row, 1 of 2 calls since closing: the rate rule needs 0.5 of 2
    assert b.state is BreakerState.OPEN  # 1 of 2 = 0.5: opens on the rate, as it should
    c, clock = _breaker(consecutive_failures=2, failure_rate=0.5, window_ms=60_000, min_calls=2)
    c.record(False)
    c.record(False)
    c.record(False)  # the late failure again
    clock.advance(5_000)
    assert c.allow()
    c.record(True)
    c.record(True)
    c.record(True)  # 0 of 2, then 0 of 3 failures since closing
    c.record(False)  # one failure: not 2 in a row, 1 of 4 < 0.5
    assert c.state is BreakerState.CLOSED
