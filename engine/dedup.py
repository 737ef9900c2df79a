"""Event-id dedup within a TTL measured in event time."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Dedup"]


@dataclass(frozen=True)
class Dedup:
    """The TTL rule of the seen-ids table (its keys are in `engine.state.layout`).

    An event id is remembered with its event time, so a re-delivered event re-emits exactly
    what was emitted the first time; it expires once the partition watermark has passed its
    event time (negative times count as 0) by `ttl_ms`. Expiry is a rule, not a deletion: an
    expired id counts as unseen whether or not a sweep has deleted it yet.
    """

    ttl_ms: int

    def expired(self, ts_ms: int, watermark_ms: int | None) -> bool:
        """Has the id of an event at `ts_ms` expired at this watermark?"""
        return watermark_ms is not None and max(ts_ms, 0) < watermark_ms - self.ttl_ms

    def cutoff(self, watermark_ms: int) -> int:
        """Ids of events before this time (and the batches holding only such) have expired."""
        return watermark_ms - self.ttl_ms
