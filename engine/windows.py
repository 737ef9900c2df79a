"""Windows over fine tiles: specs in integer ms (end-exclusive) and mergeable tile aggregates.

Every windowed table stores, per entity, *tiles*: fixed `tile_ms` buckets ``[start, start +
tile_ms)`` holding count, sum, min, max, last and a distinct set. Tumbling, hopping and sliding
windows are all answered by merging the tiles that fall inside the window at read time, so one
write per event serves every window size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "EntityTiles",
    "Hopping",
    "Sliding",
    "TileTable",
    "Tumbling",
    "Window",
    "WindowAggregate",
    "tile_start",
]


def tile_start(ts_ms: int, tile_ms: int) -> int:
    """Start of the tile holding `ts_ms` (floor division, so negative times work too)."""
    return ts_ms - ts_ms % tile_ms


@dataclass(frozen=True)
class Tumbling:
    """Fixed, non-overlapping windows ``[ts - ts % duration, +duration)``.

    A feature over a tumbling window sees the whole window *as it stands*, including tiles after
    the event's own tile that arrived earlier out of order.
    """

    duration_ms: int

    def bounds(self, ts_ms: int, tile_ms: int) -> tuple[int, int]:
        start = ts_ms - ts_ms % self.duration_ms
        return start, start + self.duration_ms


@dataclass(frozen=True)
class Hopping:
    """Overlapping windows of `duration_ms` starting every `step_ms`.

    A feature reads the most recent window that contains the event: start = ts - ts % step.
    """

    duration_ms: int
    step_ms: int

    def bounds(self, ts_ms: int, tile_ms: int) -> tuple[int, int]:
        start = ts_ms - ts_ms % self.step_ms
        return start, start + self.duration_ms

    def all_bounds(self, ts_ms: int) -> list[tuple[int, int]]:
        """Every hopping window ``[start, end)`` that contains `ts_ms`, oldest first."""
        last = ts_ms - ts_ms % self.step_ms
        lo = ts_ms - self.duration_ms + 1  # the earliest start whose window still holds ts
        first = lo + (-lo) % self.step_ms
        return [(s, s + self.duration_ms) for s in range(first, last + 1, self.step_ms)]


@dataclass(frozen=True)
class Sliding:
    """The last `duration_ms` up to and including the event's tile.

    Served at tile granularity: tiles ``t - (duration/tile - 1) .. t`` where t is the event's
    tile, so a 10-minute window over 1-minute tiles is the event's minute and the 9 before it.
    Tiles after t (out-of-order arrivals from the future) are not included.
    """

    duration_ms: int

    def bounds(self, ts_ms: int, tile_ms: int) -> tuple[int, int]:
        end = tile_start(ts_ms, tile_ms) + tile_ms
        return end - self.duration_ms, end


Window = Tumbling | Hopping | Sliding


@dataclass(frozen=True)
class TileTable:
    """A windowed table: per entity, tiles of one numeric field and an optional distinct field.

    `retain_ms` is how far behind (watermark - allowed lateness) tiles are kept; it must cover
    the largest window read from this table. `version` goes into state keys so that changing
    the table's parameters never misreads old state.
    """

    name: str
    tile_ms: int
    value_field: str
    retain_ms: int
    distinct_field: str | None = None
    version: int = 1

    @property
    def state_prefix(self) -> bytes:
        """Key prefix of this table's entities; changes whenever the tiling changes."""
        return _state_prefix(self.name, self.version, self.tile_ms)


@functools.cache
def _state_prefix(name: str, version: int, tile_ms: int) -> bytes:
    return f"t/{name}.v{version}.{tile_ms}/".encode()


class WindowAggregate(NamedTuple):
    """Merged aggregates of the tiles inside one window; min/max/mean/last are None when empty."""

    count: int
    sum: float
    min: float | None
    max: float | None
    last: float | None
    distinct_count: int

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None


# A tile is a list for speed: [count, sum, min, max, last_ts_ms, last_value, distinct_set|None].
_C, _S, _MIN, _MAX, _LTS, _LV, _D = range(7)


@dataclass
class EntityTiles:
    """Mutable tile state of one entity in one table: `last_ts_ms` and tiles by start ms.

    Window reads around a *pivot* tile (the event's own) are split into the pivot tile and a
    cached partial aggregate of the window's other tiles. The cache holds while only the pivot
    tile changes, so a busy entity's events within one tile each cost one merge, not a scan of
    every tile in the window; touching any other tile, or expiry, clears it.
    """

    last_ts_ms: int | None = None
    tiles: dict[int, list] = field(default_factory=dict)
    _pivot: int | None = field(default=None, repr=False, compare=False)
    _partials: dict = field(default_factory=dict, repr=False, compare=False)

    def add(self, ts_ms: int, value: float, distinct: object, tile_ms: int) -> None:
        """Fold one accepted event into its tile."""
        start = ts_ms - ts_ms % tile_ms
        if start != self._pivot and self._partials:
            self._partials.clear()
        tile = self.tiles.get(start)
        if tile is None:
            self.tiles[start] = [1, value, value, value, ts_ms, value,
                                 None if distinct is None else {distinct}]
        else:
            tile[_C] += 1
            tile[_S] += value
            if value < tile[_MIN]:
                tile[_MIN] = value
            if value > tile[_MAX]:
                tile[_MAX] = value
            if ts_ms >= tile[_LTS]:
                tile[_LTS] = ts_ms
                tile[_LV] = value
            if distinct is not None:
                tile[_D].add(distinct)
        if self.last_ts_ms is None or ts_ms > self.last_ts_ms:
            self.last_ts_ms = ts_ms

    def aggregate(self, start_ms: int, end_ms: int, distinct: bool = True,
                  pivot_ms: int | None = None) -> WindowAggregate:
        """Merge the tiles whose start lies in ``[start_ms, end_ms)``.

        `distinct=False` skips the set union (the costly part) and reports distinct_count 0.
        `pivot_ms`, the start of the tile being written, enables the partial-aggregate cache.
        """
        if pivot_ms is None or not start_ms <= pivot_ms < end_ms:
            part = self._scan(start_ms, end_ms, distinct, None)
            sets = part[_D]
            return WindowAggregate(part[_C], math.fsum(part[_S]), part[_MIN], part[_MAX],
                                   part[_LV], len(sets) if sets else 0)
        if self._pivot != pivot_ms:
            self._partials.clear()
            self._pivot = pivot_ms
        key = (start_ms, end_ms, distinct)
        part = self._partials.get(key)
        if part is None:
            part = self._partials[key] = self._scan(start_ms, end_ms, distinct, pivot_ms)
        count, sums, lo, hi, last_ts, last, pset = part
        tile = self.tiles.get(pivot_ms)
        n_distinct = len(pset) if pset else 0
        total = math.fsum(sums)
        if tile is not None:
            count += tile[_C]
            total = math.fsum((*sums, tile[_S]))
            if lo is None or tile[_MIN] < lo:
                lo = tile[_MIN]
            if hi is None or tile[_MAX] > hi:
                hi = tile[_MAX]
            if last_ts is None or tile[_LTS] >= last_ts:
                last = tile[_LV]
            if distinct and tile[_D]:
                n_distinct += len(tile[_D]) if not pset else sum(
                    1 for x in tile[_D] if x not in pset)
        return WindowAggregate(count, total, lo, hi, last, n_distinct)

    def _scan(self, start_ms: int, end_ms: int, distinct: bool, skip: int | None) -> list:
        """[count, tile sums, min, max, last_ts, last, distinct set or None] over the tiles in
        ``[start_ms, end_ms)`` other than `skip`. The set may be a tile's own (not copied).

        Sums are kept per tile and added with `math.fsum` (exactly rounded), so a window's
        sum does not depend on the order tiles were created or restored in.
        """
        count = 0
        sums: list[float] = []
        lo = hi = last = None
        last_ts = None
        sets: list[set] = []
        for start, tile in self.tiles.items():
            if start_ms <= start < end_ms and start != skip:
                count += tile[_C]
                sums.append(tile[_S])
                if lo is None or tile[_MIN] < lo:
                    lo = tile[_MIN]
                if hi is None or tile[_MAX] > hi:
                    hi = tile[_MAX]
                if last_ts is None or tile[_LTS] >= last_ts:
                    last_ts, last = tile[_LTS], tile[_LV]
                if distinct and tile[_D] is not None:
                    sets.append(tile[_D])
        union = None if not sets else sets[0] if len(sets) == 1 else set().union(*sets)
        return [count, sums, lo, hi, last_ts, last, union]

    def expire(self, horizon_ms: int, tile_ms: int) -> bool:
        """Drop tiles that end at or before `horizon_ms`; True when something was dropped."""
        old = [s for s in self.tiles if s + tile_ms <= horizon_ms]
        for start in old:
            del self.tiles[start]
        if old:
            self._partials.clear()
        return bool(old)

    def windows(self, tile_ms: int) -> list[dict]:
        """Every tile as ``{start_ms, end_ms, value}``, oldest first (for lookups and audits)."""
        out = []
        for start in sorted(self.tiles):
            t = self.tiles[start]
            out.append({
                "start_ms": start,
                "end_ms": start + tile_ms,
                "value": {"count": t[_C], "sum": t[_S], "min": t[_MIN], "max": t[_MAX],
                          "mean": t[_S] / t[_C], "last": t[_LV],
                          "distinct_count": len(t[_D]) if t[_D] is not None else 0},
            })
        return out

    def to_json(self) -> dict:
        """A JSON-ready snapshot; distinct sets are sorted so encodings are deterministic."""
        return {
            "l": self.last_ts_ms,
            "t": [[s, *t[:_D], None if t[_D] is None else sorted(t[_D])]
                  for s, t in sorted(self.tiles.items())],
        }

    @classmethod
    def from_json(cls, data: dict) -> EntityTiles:
        tiles = {}
        for row in data["t"]:
            tiles[row[0]] = [*row[1:7], None if row[7] is None else set(row[7])]
        return cls(last_ts_ms=data["l"], tiles=tiles)
