"""A circuit breaker on an injected clock: closed → open → half-open → closed."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from enum import Enum

from ..clock import Clock

__all__ = ["BreakerSettings", "BreakerState", "CircuitBreaker"]

log = logging.getLogger("streamwise.breaker")


class BreakerState(Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerSettings:
    """Open after `consecutive_failures` in a row, or when the failure rate of the calls in the
    last `window_ms` reaches `failure_rate` (with at least `min_calls` of them). After
    `cool_down_ms` one probe call is let through (half-open): success closes, failure re-opens.
    """

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window_ms: int = 10_000
    min_calls: int = 20
    cool_down_ms: int = 5_000


class CircuitBreaker:
    """One model's breaker. Every state change is logged (``circuit breaker NAME: open ->
    half_open``): the half-open state lasts one probe call, too short for a metric scrape."""

    def __init__(self, settings: BreakerSettings, clock: Clock, name: str = "") -> None:
        self.settings = settings
        self.name = name
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._calls: deque[tuple[int, bool]] = deque()  # (time ms, failed)
        self._failed = 0  # failures among `_calls`, kept as calls come and go (O(1) per call)
        self._opened_at = 0
        self.transitions = 0

    def allow(self) -> bool:
        """May a call go through now? In half-open exactly one probe is allowed at a time."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock.now_ms() - self._opened_at >= self.settings.cool_down_ms:
                self._move(BreakerState.HALF_OPEN)
                return True
            return False
        return False  # half-open: the probe is in flight

    def record(self, ok: bool) -> None:
        now = self._clock.now_ms()
        s = self.settings
        if self.state is BreakerState.HALF_OPEN:
            if ok:
                self._move(BreakerState.CLOSED)
            else:
                self._open(now)
            return
        self._consecutive = 0 if ok else self._consecutive + 1
        self._calls.append((now, not ok))
        self._failed += not ok
        while self._calls and self._calls[0][0] <= now - s.window_ms:
            self._failed -= self._calls.popleft()[1]
        n = len(self._calls)
        if self.state is BreakerState.CLOSED and (
                self._consecutive >= s.consecutive_failures
                or (n >= s.min_calls and self._failed / n >= s.failure_rate)):
            self._open(now)

    def _open(self, now: int) -> None:
        self._opened_at = now
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        if state is not self.state:
            log.log(logging.WARNING if state is BreakerState.OPEN else logging.INFO,
                    "circuit breaker %s: %s -> %s", self.name, self.state.name.lower(),
                    state.name.lower())
            self.state = state
            self.transitions += 1
        if state is BreakerState.CLOSED:
            self._consecutive = 0
            self._calls.clear()
            self._failed = 0
