"""Where a replay writes its decisions in files: a training set in Parquet, or JSONL lines.

A sink receives, per partition, lists of decisions; each item is indexable as
``(key, decision JSON, offset, raw event)`` (`replay.Decided`).

Parquet columns, in order (the README's "Replay and batch" lists them too):
``decision_id, event_id, key`` (string), ``partition`` (int32), ``offset`` (int64: the input
record's), ``event_timestamp, decided_at`` (timestamp[ms, UTC]), ``score`` (double),
``decision, model, path`` (string), ``reasons`` (list<string>), ``feature_<name>`` per feature
(int64 for window counts, double otherwise), ``event_<field>`` per field of the event contract
other than its id and time (the event's own values, typed as the contract types them), and with
labels ``label`` (the label file's type) and ``label_timestamp`` (timestamp[ms, UTC]).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..features import WindowFeature
from ..labels import Labels
from ..topology import Topology

__all__ = ["JsonlSink", "ParquetSink", "Sink", "parquet_schema"]

_TS = pa.timestamp("ms", tz="UTC")
_INTEGER_AGGS = ("count", "distinct_count")


class Sink:
    """A replay's output: `write` a partition's decisions, `flush` (async), `close`."""

    def write(self, partition: int, decisions: Sequence[Any]) -> None: ...

    async def flush(self) -> None: ...

    def close(self) -> None: ...


def _row(raw: bytes, partition: int) -> dict:
    d = orjson.loads(raw)
    d.pop("stage_ms", None)  # wall-clock timings: in the summary, not in the file
    d["partition"] = partition
    return d


def _label(labels: Labels | None, d: dict) -> tuple[Any, int | None]:
    if labels is None:
        return None, None
    return labels.at(str(d["event_id"]), d["event_ts_ms"])


class JsonlSink(Sink):
    """The decision documents, one per line, keys sorted; with labels, ``label`` and
    ``label_ts_ms`` too."""

    def __init__(self, path: Path, labels: Labels | None = None) -> None:
        self._fh = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._labels = labels

    def write(self, partition: int, decisions: Sequence[Any]) -> None:
        for item in decisions:
            d = _row(item[1], partition)
            if self._labels is not None:
                d["label"], d["label_ts_ms"] = _label(self._labels, d)
            self._fh.write(orjson.dumps(d, option=orjson.OPT_SORT_KEYS))
            self._fh.write(b"\n")

    def close(self) -> None:
        self._fh.close()


def _arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type of an event field from its pydantic annotation (Optional unwrapped);
    anything but str, int, float and bool is kept as its JSON text."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _arrow_type(args[0])
    return {str: pa.string(), int: pa.int64(), float: pa.float64(),
            bool: pa.bool_()}.get(annotation, pa.string())


def _event_fields(topology: Topology) -> list[tuple[str, pa.DataType]]:
    skip = {topology.event_id_field, topology.time_field}
    return [(name, _arrow_type(f.annotation))
            for name, f in topology.schema.model_fields.items() if name not in skip]


def parquet_schema(topology: Topology, labels: Labels | None = None,
                   metadata: dict[str, str] | None = None) -> pa.Schema:
    """The training-set schema of a topology's replay (see the module docstring)."""
    fields = [("decision_id", pa.string()), ("event_id", pa.string()), ("key", pa.string()),
              ("partition", pa.int32()), ("offset", pa.int64()),
              ("event_timestamp", _TS), ("decided_at", _TS),
              ("score", pa.float64()), ("decision", pa.string()), ("model", pa.string()),
              ("path", pa.string()), ("reasons", pa.list_(pa.string()))]
    for f in topology.features.features:
        integer = isinstance(f, WindowFeature) and f.agg in _INTEGER_AGGS
        fields.append((f"feature_{f.name}", pa.int64() if integer else pa.float64()))
    fields += [(f"event_{name}", t) for name, t in _event_fields(topology)]
    if labels is not None:
        fields += [("label", labels.arrow_type), ("label_timestamp", _TS)]
    return pa.schema(fields, metadata=metadata)


class ParquetSink(Sink):
    """The training set; row groups of `chunk_rows` keep memory bounded. `metadata` goes into
    the file's key-value metadata (what produced it)."""

    def __init__(self, path: Path, topology: Topology, metadata: dict[str, str] | None = None,
                 labels: Labels | None = None, chunk_rows: int = 20_000) -> None:
        self._schema = parquet_schema(topology, labels, metadata)
        self._features = [(f.name, isinstance(f, WindowFeature) and f.agg in _INTEGER_AGGS)
                          for f in topology.features.features]
        self._fields = [name for name, _ in _event_fields(topology)]
        self._json_fields = {name for name, t in _event_fields(topology)
                             if t == pa.string() and topology.schema.model_fields[name]
                             .annotation is not str}
        self._labels = labels
        self._writer = pq.ParquetWriter(path, self._schema, compression="zstd")
        self._rows: list[dict] = []
        self._chunk = chunk_rows

    def write(self, partition: int, decisions: Sequence[Any]) -> None:
        for item in decisions:
            d = _row(item[1], partition)
            feats = d.pop("features")
            row = {"decision_id": d["decision_id"], "event_id": d["event_id"], "key": d["key"],
                   "partition": item[4] if len(item) > 4 and item[4] >= 0 else partition,
                   "offset": item[2] if len(item) > 2 else None,
                   "event_timestamp": d["event_ts_ms"], "decided_at": d["decided_at_ms"],
                   "score": d["score"], "decision": d["decision"], "model": d["model"],
                   "path": d["path"], "reasons": d["reasons"]}
            for name, integer in self._features:
                v = feats.get(name)
                row[f"feature_{name}"] = None if v is None else int(v) if integer else float(v)
            event = orjson.loads(item[3]) if len(item) > 3 and item[3] is not None else {}
            for name in self._fields:
                v = event.get(name)
                row[f"event_{name}"] = orjson.dumps(v).decode() if (
                    name in self._json_fields and v is not None) else v
            if self._labels is not None:
                row["label"], row["label_timestamp"] = _label(self._labels, d)
            self._rows.append(row)
        if len(self._rows) >= self._chunk:
            self._write_rows()

    def _write_rows(self) -> None:
        if self._rows:
            table = pa.Table.from_pylist(self._rows, schema=self._schema)
            self._writer.write_table(table)
            self._rows = []

    def close(self) -> None:
        self._write_rows()
        self._writer.close()
