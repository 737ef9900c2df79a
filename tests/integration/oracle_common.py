"""What the topologies' test oracles (`fraud_oracle`, `clickrisk_oracle`) share.

Decoding a raw input record up to its topology's own schema checks, the tile a window is
merged from, and the input grouped by partition in offset order. Like the oracles it serves,
this imports nothing from `engine` or `topologies`: the oracles stay independent
recomputations of the spec.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["MAX_RECORD_BYTES", "Tile", "by_partition", "decode", "strings_fit"]

MAX_RECORD_BYTES = 1 << 20


def decode(raw: bytes | None, *, numbers: Iterable[str], keys: Iterable[str]) -> dict | str:
    """The JSON object of a record, or the DLQ reason (a str) of the first check it fails:
    ``empty`` (no bytes), ``oversized`` (over 1 MiB), ``not_utf8``, ``invalid_json``,
    ``schema`` (not an object), ``non_finite`` (NaN/Infinity in one of `numbers`),
    ``missing_key`` (one of `keys` empty or absent). The topology's schema checks follow."""
    if not raw:
        return "empty"
    if len(raw) > MAX_RECORD_BYTES:
        return "oversized"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    try:
        doc = json.loads(text)  # accepts NaN/Infinity literals, refused just below
    except ValueError:
        return "invalid_json"
    if not isinstance(doc, dict):
        return "schema"
    for name in numbers:
        v = doc.get(name)
        if isinstance(v, float) and not math.isfinite(v):
            return "non_finite"
    for name in keys:
        if name not in doc or doc[name] == "":
            return "missing_key"
    return doc


def strings_fit(doc: Mapping, lengths: Mapping[str, tuple[int, int]]) -> bool:
    """Whether each field of `lengths` is a string of ``lo..hi`` characters (both included)."""
    for name, (lo, hi) in lengths.items():
        v = doc.get(name)
        if not isinstance(v, str) or not lo <= len(v) <= hi:
            return False
    return True


@dataclass
class Tile:
    """One key's folded events in one tile: count, sum, min and max of a value, and the
    distinct strings seen with it (merchants, devices, countries)."""

    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    distinct: set[str] = field(default_factory=set)

    @property
    def distinct_count(self) -> int:
        return len(self.distinct)

    def add(self, value: float, distinct: str) -> None:
        self.count += 1
        self.sum += value
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)
        self.distinct.add(distinct)

    def as_dict(self) -> dict:
        """``{count, sum, min, max, distinct_count}``, as the worker's table lookup shows it."""
        return {"count": self.count, "sum": self.sum, "min": self.min, "max": self.max,
                "distinct_count": self.distinct_count}


def by_partition(records: Iterable[tuple[int, int, bytes | None]],
                 ) -> dict[int, list[tuple[int, bytes | None]]]:
    """``(partition, offset, raw)`` records (any order) as partition -> ``(offset, raw)`` in
    offset order, partitions in ascending order."""
    grouped: dict[int, list[tuple[int, bytes | None]]] = {}
    for partition, offset, raw in records:
        grouped.setdefault(partition, []).append((offset, raw))
    return {p: sorted(grouped[p], key=lambda r: r[0]) for p in sorted(grouped)}
