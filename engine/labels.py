"""Labels for a replayed training set, joined by event id, point in time.

A label file (JSONL, CSV or Parquet) has one row per label with three columns:

* ``event_id``: the event it labels (string);
* ``label``: its value (a number, a boolean or a string; one type for the whole file);
* ``label_time``: when the label became known: ISO-8601 with a zone
  (``2026-01-03T10:00:00Z``), epoch milliseconds, or a Parquet timestamp.

Point in time: a label is attached to an event only when the event happened *before* the
label's time (event time < label time): a label known before its event cannot be about it,
and a training row must not see it. When an event has several such labels (a label revised
later: a chargeback, a dispute won), the newest one is attached. Events without one get null.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import ConfigError

__all__ = ["Labels", "load_labels", "parse_time"]

_COLUMNS = ("event_id", "label", "label_time")


def parse_time(text: str) -> int:
    """ISO-8601 with a zone (``2026-01-01T00:00:00Z``) or epoch ms → epoch ms."""
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"not an ISO time or epoch ms: {text!r}") from None
    if dt.tzinfo is None:
        raise ConfigError(f"{text!r} has no time zone; add Z or +00:00")
    return int(dt.timestamp() * 1000)


@dataclass(frozen=True)
class Labels:
    """Labels by event id: (label times in ms, ascending; their values)."""

    by_event: dict[str, tuple[list[int], list[Any]]]
    arrow_type: pa.DataType
    source: str

    def at(self, event_id: str, event_ts_ms: int) -> tuple[Any, int] | tuple[None, None]:
        """(value, label time ms) of the newest label of `event_id` whose time is after
        `event_ts_ms`; (None, None) when there is none."""
        found = self.by_event.get(event_id)
        if found is None:
            return None, None
        times, values = found
        if not times or times[-1] <= event_ts_ms:
            return None, None
        return values[-1], times[-1]

    def __len__(self) -> int:
        return sum(len(t) for t, _ in self.by_event.values())


def _read(path: Path) -> pa.Table:
    if not path.is_file():
        raise ConfigError(f"no such labels file: {path}")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_table(path)
        if path.suffix == ".csv":
            import pyarrow.csv as pcsv
            return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={"event_id": pa.string()}))
        if path.suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise ConfigError(f"cannot read --labels {path}: {str(exc).splitlines()[0]}") from None
    raise ConfigError(f"--labels must be .jsonl, .csv or .parquet, not {path.name}")


def _read_jsonl(path: Path) -> pa.Table:
    """One JSON object per line; `label_time` may mix epoch ms and ISO text."""
    import orjson
    columns: dict[str, list[Any]] = {c: [] for c in _COLUMNS}
    with open(path, "rb") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"cannot read --labels {path}, line {i}: {exc}") from None
            if not isinstance(doc, dict):
                raise ConfigError(f"--labels {path}, line {i}: not a JSON object")
            for c in _COLUMNS:
                columns[c].append(doc.get(c, _ABSENT))
    present = [c for c in _COLUMNS if any(v is not _ABSENT for v in columns[c])]
    times = [None if v is _ABSENT else v for v in columns["label_time"]]
    table = {c: [None if v is _ABSENT else v for v in columns[c]] for c in present
             if c != "label_time"}
    if "label_time" in present:
        table["label_time"] = [v if v is None or isinstance(v, str) else str(v) for v in times]
    return pa.table(table)


_ABSENT = object()


def _times(column: pa.ChunkedArray, path: Path) -> list[int | None]:
    if pa.types.is_timestamp(column.type):
        ms = column.cast(pa.timestamp("ms", tz=column.type.tz)).cast(pa.int64())
        return ms.to_pylist()
    if pa.types.is_integer(column.type):
        return column.to_pylist()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        out: list[int | None] = []
        for i, text in enumerate(column.to_pylist()):
            try:
                out.append(None if text is None else parse_time(text))
            except ConfigError as exc:
                raise ConfigError(f"--labels {path}, row {i + 1}: label_time {exc}") from None
        return out
    raise ConfigError(f"--labels {path}: label_time must be ISO-8601 text, epoch ms or a "
                      f"timestamp, not {column.type}")


def load_labels(path: Path) -> Labels:
    """Read and index a label file; one line (ConfigError) for anything wrong with it."""
    table = _read(path)
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigError(f"--labels {path} needs columns {', '.join(_COLUMNS)} "
                          f"(missing {', '.join(missing)}; has {', '.join(table.column_names)})")
    label_type = table.column("label").type
    if not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)
            or pa.types.is_boolean(label_type) or pa.types.is_string(label_type)
            or pa.types.is_null(label_type)):
        raise ConfigError(f"--labels {path}: label must be a number, a boolean or a string, "
                          f"not {label_type}")
    if pa.types.is_integer(label_type):
        label_type = pa.int64()
    elif pa.types.is_null(label_type):
        label_type = pa.float64()
    ids = table.column("event_id").cast(pa.string()).to_pylist()
    values = table.column("label").to_pylist()
    times = _times(table.column("label_time"), path)
    rows = sorted((eid, t, i) for i, (eid, t) in enumerate(zip(ids, times, strict=True))
                  if eid is not None and t is not None)
    by_event: dict[str, tuple[list[int], list[Any]]] = {}
    for eid, t, i in rows:
        ts, vs = by_event.setdefault(eid, ([], []))
        at = bisect.bisect_right(ts, t)  # equal times: file order
        ts.insert(at, t)
        vs.insert(at, values[i])
    return Labels(by_event, label_type, path.name)
