"""The encoders of every record Streamwise writes besides state: dead-letter and late records
(headers as DESIGN.md §3 and the README give them). Live workers and replay share them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DLQ_TRUNCATE_BYTES", "SideRecord", "dead_letter", "late_record"]

DLQ_TRUNCATE_BYTES = 64 * 1024  # the raw value kept in a dead-letter record


@dataclass(slots=True)
class SideRecord:
    """A record for the dead-letter or late topic: raw bytes plus string headers."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def dead_letter(topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None, reason: str, detail: str,
                received_at_ms: int) -> SideRecord:
    """The dead-letter record of an input record that cannot become an event."""
    raw = value or b""
    return SideRecord(key, raw[:DLQ_TRUNCATE_BYTES], [
        ("streamwise.reason", reason.encode()),
        ("streamwise.detail", detail.encode()),
        ("streamwise.topic", topic.encode()),
        ("streamwise.partition", b"%d" % partition),
        ("streamwise.offset", b"%d" % offset),
        ("streamwise.received_at_ms", b"%d" % received_at_ms),
        ("streamwise.size", b"%d" % len(raw)),
    ])


def late_record(topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None, watermark_ms: int | None, event_ts_ms: int) -> SideRecord:
    """The late-topic record of an event behind the watermark by more than the lateness."""
    return SideRecord(key, value or b"", [
        ("streamwise.watermark_ms", str(watermark_ms).encode()),
        ("streamwise.event_ts_ms", b"%d" % event_ts_ms),
        ("streamwise.topic", topic.encode()),
        ("streamwise.partition", b"%d" % partition),
        ("streamwise.offset", b"%d" % offset),
    ])
