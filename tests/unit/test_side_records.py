"""engine.sinks.records: the dead-letter and late records, header by header."""

from __future__ import annotations

import subprocess
import sys

from engine.pipeline import SideRecord
from engine.sinks.records import DLQ_TRUNCATE_BYTES, dead_letter, late_record


def test_the_side_record_encoders_import_on_their_own() -> None:
    # in a fresh interpreter: imported before engine.pipeline, they once met an import cycle
    done = subprocess.run([sys.executable, "-c", "import engine.sinks.records"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-400:]


def test_a_late_record_carries_the_input_record_and_where_it_came_from() -> None:
    r = late_record("fraud.events", 3, 41, b"c1", b'{"a":1}', 1_000, 900)
    assert type(r) is SideRecord
    assert (r.key, r.value) == (b"c1", b'{"a":1}')
    assert r.headers == [("streamwise.watermark_ms", b"1000"),
                         ("streamwise.event_ts_ms", b"900"),
                         ("streamwise.topic", b"fraud.events"),
                         ("streamwise.partition", b"3"),
                         ("streamwise.offset", b"41")]


def test_a_record_without_a_value_has_an_empty_value_in_either_side_topic() -> None:
    assert late_record("t", 0, 0, None, None, 5, 1).value == b""
    d = dead_letter("t", 0, 0, None, None, "schema", "no value", 7)
    assert (d.key, d.value) == (None, b"")
    assert ("streamwise.size", b"0") in d.headers


def test_a_dead_letter_keeps_at_most_64_kib_of_the_value_and_says_how_big_it_was() -> None:
    raw = b"x" * (DLQ_TRUNCATE_BYTES + 5)
    d = dead_letter("fraud.events", 1, 2, b"k", raw, "too_large", "detail", 123)
    assert DLQ_TRUNCATE_BYTES == 65_536
    assert d.value == b"x" * 65_536
    assert d.headers == [("streamwise.reason", b"too_large"),
                         ("streamwise.detail", b"detail"),
                         ("streamwise.topic", b"fraud.events"),
                         ("streamwise.partition", b"1"),
                         ("streamwise.offset", b"2"),
                         ("streamwise.received_at_ms", b"123"),
                         ("streamwise.size", b"65541")]
