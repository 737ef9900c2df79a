"""The encoders of every record Streamwise writes besides state, shared by live and replay:
dead-letter and late records (`records`, pure), decisions to Kafka (`kafka`) and a replay's
files (`files`: Parquet, JSONL). Submodules load on first use, so the pure core can use
`records` alone."""

from __future__ import annotations

from typing import Any

__all__ = ["DLQ_TRUNCATE_BYTES", "JsonlSink", "ParquetSink", "Sink", "TopicSink",
           "dead_letter", "late_record", "parquet_schema", "queue_outputs"]

_WHERE = {"DLQ_TRUNCATE_BYTES": "records", "dead_letter": "records", "late_record": "records",
          "JsonlSink": "files", "ParquetSink": "files", "Sink": "files",
          "parquet_schema": "files", "TopicSink": "kafka", "queue_outputs": "kafka"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
