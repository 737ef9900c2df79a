"""Label files for replay's training sets: formats, the point-in-time rule, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import ConfigError
from engine.labels import load_labels


def test_a_label_is_attached_only_to_an_event_before_its_time_newest_first(tmp_path: Path):
    f = tmp_path / "l.jsonl"
    f.write_text('{"event_id": "a", "label": 0, "label_time": 1000}\n'
                 '{"event_id": "a", "label": 1, "label_time": "1970-01-01T00:00:02Z"}\n'
                 '{"event_id": "b", "label": 1, "label_time": 500}\n')
    labels = load_labels(f)
    assert len(labels) == 3 and labels.arrow_type == pa.int64()
    assert labels.at("a", 999) == (1, 2000)  # both after the event: the newest
    assert labels.at("a", 1500) == (1, 2000)
    assert labels.at("a", 2000) == (None, None)  # not strictly before: not attached
    assert labels.at("b", 500) == (None, None)
    assert labels.at("b", 499) == (1, 500)
    assert labels.at("c", 0) == (None, None)


def test_csv_and_parquet_with_timestamps(tmp_path: Path):
    csv = tmp_path / "l.csv"
    csv.write_text("event_id,label,label_time\n007,yes,2026-01-01T00:00:00+00:00\n")
    labels = load_labels(csv)
    assert labels.by_event == {"007": ([1767225600000], ["yes"])}  # ids stay strings
    pqf = tmp_path / "l.parquet"
    pq.write_table(pa.table({"event_id": ["x"], "label": [0.25],
                             "label_time": pa.array([1767225600123],
                                                    pa.timestamp("ms", tz="UTC"))}), pqf)
    labels = load_labels(pqf)
    assert labels.at("x", 0) == (0.25, 1767225600123) and labels.arrow_type == pa.float64()


@pytest.mark.parametrize("name, text, message", [
    ("l.jsonl", '{"event_id": "a", "label": 1}\n',
     "needs columns event_id, label, label_time (missing label_time; has event_id, label)"),
    ("l.jsonl", '{"event_id": "a", "label": 1, "label_time": "yesterday"}\n',
     "row 1: label_time not an ISO time or epoch ms: 'yesterday'"),
    ("l.jsonl", '{"event_id": "a", "label": 1, "label_time": "2026-01-01T00:00:00"}\n',
     "has no time zone"),
    ("l.txt", "", "--labels must be .jsonl, .csv or .parquet, not l.txt"),
    ("l.jsonl", "{not json\n", "cannot read --labels"),
])
def test_a_bad_label_file_is_one_line(tmp_path: Path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_labels(f)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="no such labels file"):
        load_labels(tmp_path / "missing.jsonl")
