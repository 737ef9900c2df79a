"""Window specs in integer ms (end-exclusive), read over fine tiles.

Every windowed table stores, per entity, *tiles*: fixed `tile_ms` buckets ``[start, start +
tile_ms)`` holding count, sum, min, max, last and a distinct set (the tile kernel,
`engine.kernel`, folds and reads them; `engine.state.layout` stores them). Tumbling, hopping
and sliding windows are all answered by merging the tiles that fall inside the window at read
time, so one write per event serves every window size.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Hopping",
    "Sliding",
    "TileTable",
    "Tumbling",
    "Window",
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
