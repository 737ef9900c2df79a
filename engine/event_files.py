"""Event files (JSONL, Parquet) as keyed raw records, for `produce --file` and `replay --input`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from .errors import ConfigError

__all__ = ["keyed_events"]


def keyed_events(path: Path, key_field: str) -> Iterator[tuple[bytes | None, bytes]]:
    """(entity key, raw JSON bytes) per event. A line that is not a JSON object still comes
    through, with key None: the pipeline sends it to the DLQ with the reason."""
    if not path.exists():
        raise ConfigError(f"no such input file: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for row in pq.read_table(path).to_pylist():
            yield str(row.get(key_field, "")).encode() or None, orjson.dumps(row)
        return
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below; the generator owns it)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            try:
                key = str(orjson.loads(line).get(key_field, "")).encode() or None
            except (orjson.JSONDecodeError, AttributeError):
                key = None
            yield key, line
