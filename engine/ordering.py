"""Event time: per-partition watermarks, the lateness verdict and the reorder buffer."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

__all__ = ["Lateness", "ReorderBuffer", "Watermark", "too_far_ahead"]

T = TypeVar("T")


class Lateness(Enum):
    ON_TIME = "on_time"
    LATE = "late"


@dataclass
class Watermark:
    """Watermark of one input partition: max accepted event time − `max_out_of_orderness_ms`.

    It never decreases. An event is LATE when its time is strictly below
    ``watermark − allowed_lateness_ms``; before any event nothing is late. Only accepted (on-time,
    non-duplicate) events move it, so a late or duplicate event can never make itself on time.
    """

    max_out_of_orderness_ms: int
    allowed_lateness_ms: int
    max_ts_ms: int | None = None

    @property
    def watermark_ms(self) -> int | None:
        if self.max_ts_ms is None:
            return None
        return self.max_ts_ms - self.max_out_of_orderness_ms

    @property
    def late_before_ms(self) -> int | None:
        """Events with a time below this are late (None: nothing is late yet)."""
        if self.max_ts_ms is None:
            return None
        return self.max_ts_ms - self.max_out_of_orderness_ms - self.allowed_lateness_ms

    def verdict(self, ts_ms: int) -> Lateness:
        cutoff = self.late_before_ms
        return Lateness.LATE if cutoff is not None and ts_ms < cutoff else Lateness.ON_TIME

    def observe(self, ts_ms: int) -> None:
        """Account for an accepted event."""
        if self.max_ts_ms is None or ts_ms > self.max_ts_ms:
            self.max_ts_ms = ts_ms


def too_far_ahead(ts_ms: int, reference_ms: int | None, max_future_ms: int | None
                  ) -> str | None:
    """Why an event at `ts_ms` is too far in the future of `reference_ms` (its record's Kafka
    timestamp, or the time an online request arrived), or None. A reference of None, 0 or below
    (a record without a timestamp: Kafka's -1, a file line, a test's 0) or no limit checks
    nothing."""
    if max_future_ms is None or reference_ms is None or reference_ms <= 0:
        return None
    ahead = ts_ms - reference_ms
    if ahead <= max_future_ms:
        return None
    return (f"event time {ts_ms} is {ahead} ms ahead of the record time {reference_ms} "
            f"(more than {max_future_ms} ms)")


@dataclass
class ReorderBuffer(Generic[T]):
    """Per-partition buffer that releases items in event-time order once the watermark passes.

    Bounded: past `capacity` items the oldest are released early (in order), so memory stays
    bounded under a stalled watermark. Ties keep arrival order. `min_offset` is the smallest
    input offset still held, i.e. the highest offset that may be committed.
    """

    capacity: int
    _heap: list[tuple[int, int, int, T]] = field(default_factory=list)
    _seq: int = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, ts_ms: int, offset: int, item: T) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (ts_ms, self._seq, offset, item))

    def release(self, watermark_ms: int | None) -> list[T]:
        """Items with time <= watermark (and any overflow beyond capacity), oldest first."""
        out: list[T] = []
        heap = self._heap
        while heap and (len(heap) > self.capacity
                        or (watermark_ms is not None and heap[0][0] <= watermark_ms)):
            out.append(heapq.heappop(heap)[3])
        return out

    def drain(self) -> list[T]:
        """Release everything, oldest first (end of a replay)."""
        return [heapq.heappop(self._heap)[3] for _ in range(len(self._heap))]

    @property
    def min_offset(self) -> int | None:
        return min((entry[2] for entry in self._heap), default=None)

    def min_offset_in(self, lo: int, hi: int) -> int | None:
        """The smallest offset held within ``[lo, hi)`` (None: none held there)."""
        return min((e[2] for e in self._heap if lo <= e[2] < hi), default=None)
