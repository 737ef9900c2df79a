"""Event-id dedup within a TTL measured in event time, over a key-value state."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Dedup"]

_SEEN = b"d/"
_INDEX = b"x/"


@dataclass(frozen=True)
class Dedup:
    """Keys and expiry rule of the seen-ids table.

    ``d/<event_id>`` holds the encoded original decision, so a re-delivered event re-emits
    exactly what was emitted the first time. ``x/<ts_ms:015d>/<event_id>`` is a time index, so
    expiry deletes a key range instead of scanning every id. An id expires once the partition
    watermark has passed its event time by `ttl_ms`.
    """

    ttl_ms: int

    @staticmethod
    def seen_key(event_id: str) -> bytes:
        return _SEEN + event_id.encode()

    @staticmethod
    def index_key(ts_ms: int, event_id: str) -> bytes:
        return b"%s%016d/%s" % (_INDEX, max(ts_ms, 0), event_id.encode())

    def expired(self, ts_ms: int, watermark_ms: int | None) -> bool:
        """Has the id of an event at `ts_ms` expired at this watermark? Exactly the ids that
        `expiry_range` lists, whether or not a sweep has deleted them yet."""
        return watermark_ms is not None and max(ts_ms, 0) < watermark_ms - self.ttl_ms

    def expiry_range(self, watermark_ms: int) -> tuple[bytes, bytes]:
        """Index keys in ``[lo, hi)`` belong to expired ids."""
        return _INDEX, b"%s%016d" % (_INDEX, max(watermark_ms - self.ttl_ms, 0))

    @staticmethod
    def event_id_of_index(index_key: bytes) -> str:
        return index_key[len(_INDEX) + 17:].decode()
