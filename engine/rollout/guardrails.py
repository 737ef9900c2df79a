"""Guardrails: canary against serving over a sliding window, and the verdict on a breach.

The rollout decider records, per batch, what each side did (rows a model should have scored,
rows it could not, declines, the score histogram, model call times) into one-second buckets;
`GuardWindow.judge` merges the buckets of the last `window_s` seconds and compares the sides.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .settings import Guardrails

__all__ = ["Breach", "GuardWindow", "SideStats", "psi"]


@dataclass
class SideStats:
    """One side (canary or serving) over some time."""

    rows: int = 0  # rows decided
    eligible: int = 0  # rows with every feature present: a model should have scored them
    errors: int = 0  # eligible rows the side's model did not score (timeout, error, ...)
    # batches with eligible rows, and those where the side's model failed them: a failure
    # is a whole call (a timeout fails the batch), so the rate is counted in calls
    batches: int = 0
    failed_batches: int = 0
    declines: int = 0
    hist: list[int] = field(default_factory=list)  # model scores per PSI bin
    call_s: list[float] = field(default_factory=list)  # batched model call durations

    def add(self, other: SideStats) -> None:
        self.rows += other.rows
        self.eligible += other.eligible
        self.errors += other.errors
        self.batches += other.batches
        self.failed_batches += other.failed_batches
        self.declines += other.declines
        if other.hist:
            self.hist = [a + b for a, b in zip(self.hist or [0] * len(other.hist), other.hist,
                                               strict=True)]
        self.call_s += other.call_s

    @property
    def error_rate(self) -> float:
        """Share of the side's model calls (batches with complete rows) that failed."""
        return self.failed_batches / self.batches if self.batches else 0.0

    @property
    def decline_rate(self) -> float:
        return self.declines / self.rows if self.rows else 0.0

    def p99_ms(self) -> float:
        return float(np.percentile(self.call_s, 99)) * 1000 if self.call_s else 0.0


@dataclass(frozen=True)
class Breach:
    guardrail: str  # error_rate | p99_latency | decline_rate | score_psi
    detail: str


def _z(p1: float, n1: int, p2: float, n2: int) -> float:
    """Two-proportion z statistic: how many standard errors apart two shares are (a share's
    difference must be both large, the threshold, and not noise, this)."""
    if not n1 or not n2:
        return 0.0
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return abs(p1 - p2) / se if se > 0 else (math.inf if p1 != p2 else 0.0)


def psi(expected: list[int], actual: list[int]) -> float:
    """Population stability index of two histograms over the same bins (a floor of 1e-4 per
    bin share keeps empty bins finite)."""
    e_total, a_total = sum(expected), sum(actual)
    if not e_total or not a_total:
        return 0.0
    out = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / e_total, 1e-4), max(a / a_total, 1e-4)
        out += (pa - pe) * math.log(pa / pe)
    return out


class GuardWindow:
    """One-second buckets of (canary, serving) statistics for one candidate; thread-safe
    (the pipeline thread records, the control task judges)."""

    def __init__(self, settings: Guardrails, candidate: str) -> None:
        self.settings = settings
        self.candidate = candidate  # "slot:version"
        self._edges = list(settings.psi_edges)
        self._buckets: deque[tuple[int, SideStats, SideStats]] = deque()
        self._lock = threading.Lock()
        self.candidate_rows_total = 0  # since this window began (a ramp step's event count)

    def hist(self, scores: np.ndarray) -> list[int]:
        idx = np.clip(np.searchsorted(self._edges, scores, side="right") - 1, 0,
                      len(self._edges) - 2)
        return np.bincount(idx, minlength=len(self._edges) - 1).tolist()

    def record(self, now_s: float, canary: SideStats, serving: SideStats) -> None:
        second = int(now_s)
        with self._lock:
            self.candidate_rows_total += canary.rows
            if not self._buckets or self._buckets[-1][0] != second:
                self._buckets.append((second, SideStats(), SideStats()))
            _, c, s = self._buckets[-1]
            c.add(canary)
            s.add(serving)
            horizon = second - math.ceil(self.settings.window_s)
            while self._buckets and self._buckets[0][0] <= horizon:
                self._buckets.popleft()

    def sides(self, now_s: float) -> tuple[SideStats, SideStats]:
        lo = now_s - self.settings.window_s
        canary, serving = SideStats(), SideStats()
        with self._lock:
            for second, c, s in self._buckets:
                if second >= lo:
                    canary.add(c)
                    serving.add(s)
        return canary, serving

    def judge(self, now_s: float) -> tuple[Breach | None, SideStats, SideStats]:
        """The first guardrail breached over the window (None: all hold, or too few rows
        on a side to tell), and the two sides it compared."""
        g = self.settings
        canary, serving = self.sides(now_s)
        if canary.rows < g.min_rows or serving.rows < g.min_rows:
            return None, canary, serving
        n = f"(canary {canary.rows} rows, serving {serving.rows} rows, {g.window_s:g} s window)"
        delta = canary.error_rate - serving.error_rate
        if delta > g.max_error_rate_delta and _z(canary.error_rate, canary.batches,
                                                  serving.error_rate, serving.batches) >= g.min_z:
            return Breach("error_rate", f"error rate {canary.error_rate:.3f} vs "
                          f"{serving.error_rate:.3f}: +{delta:.3f} > {g.max_error_rate_delta} "
                          f"{n}"), canary, serving
        c99, s99 = canary.p99_ms(), serving.p99_ms()
        if min(len(canary.call_s), len(serving.call_s)) >= g.p99_min_calls \
                and c99 > s99 * g.max_p99_ratio + g.p99_slack_ms:
            return Breach("p99_latency", f"p99 model call {c99:.2f} ms vs {s99:.2f} ms > "
                          f"{g.max_p99_ratio:g}x + {g.p99_slack_ms:g} ms {n}"), canary, serving
        d = abs(canary.decline_rate - serving.decline_rate)
        if d > g.max_decline_rate_delta and _z(canary.decline_rate, canary.rows,
                                                serving.decline_rate, serving.rows) >= g.min_z:
            return Breach("decline_rate", f"decline rate {canary.decline_rate:.3f} vs "
                          f"{serving.decline_rate:.3f}: |delta| {d:.3f} > "
                          f"{g.max_decline_rate_delta} {n}"), canary, serving
        if canary.hist and serving.hist and sum(canary.hist) >= g.psi_min_rows \
                and sum(serving.hist) >= g.psi_min_rows:
            value = psi(serving.hist, canary.hist)
            if value > g.max_psi:
                return Breach("score_psi", f"score PSI {value:.3f} > {g.max_psi} {n}"), \
                    canary, serving
        return None, canary, serving
