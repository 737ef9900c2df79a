"""The tile kernel in plain Python: the reference the compiled kernel is tested against.

One `TileState` holds, for one windowed table of one partition, every entity that has a live
tile: its newest accepted event time and its tiles (fixed `tile_ms` buckets ``[start, start +
tile_ms)`` of count, sum, min, max, last and a distinct set). `fold_read` folds a batch of
events into their tiles, one after the other, and reads every window of the table for each
event right after its own fold, so window features include the event itself.

Semantics both kernels share, bit for bit:
- a tile's sum adds values in arrival order; a window's sum is the exactly rounded sum of its
  tiles' sums (`math.fsum`), so it does not depend on the order tiles were made or restored;
- ``last`` is the value of the newest event time in the window (ties in one tile: the later
  arrival); empty windows give count 0, sum 0.0, and NaN for min, max and last;
- an event with a horizon (a late event) first drops the entity's tiles that end at or before
  it; `expire` drops every entity's tiles that end at or before a horizon and forgets entities
  left with no tile (their newest event time stays in the store);
- times are integer ms; tile starts are ``ts - ts % tile_ms`` (floor, so negative times work).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["AGGREGATES", "HOPPING", "NO_TS", "SLIDING", "TUMBLING", "TileState", "WindowSpec"]

NO_TS = -(1 << 63)
TUMBLING, HOPPING, SLIDING = 0, 1, 2
AGGREGATES = ("count", "sum", "min", "max", "last", "distinct_count")  # output columns per window
NAN = float("nan")

# A tile is a list: [count, sum, min, max, last_ts, last, distinct set | None].
_C, _S, _MIN, _MAX, _LTS, _LV, _D = range(7)


class WindowSpec(NamedTuple):
    """One window read per event: `kind` (TUMBLING, HOPPING, SLIDING) and sizes in ms;
    `distinct` says whether its distinct count is needed (the costly part)."""

    kind: int
    duration_ms: int
    step_ms: int = 0
    distinct: bool = False

    def bounds(self, ts_ms: int, tile_ms: int) -> tuple[int, int]:
        """``[start, end)`` of the window read for an event at `ts_ms`."""
        if self.kind == TUMBLING:
            start = ts_ms - ts_ms % self.duration_ms
            return start, start + self.duration_ms
        if self.kind == HOPPING:
            start = ts_ms - ts_ms % self.step_ms
            return start, start + self.duration_ms
        end = ts_ms - ts_ms % tile_ms + tile_ms
        return end - self.duration_ms, end


class _Entity:
    __slots__ = ("last_ts", "tiles")

    def __init__(self, last_ts: int) -> None:
        self.last_ts = last_ts  # NO_TS: no accepted event yet
        self.tiles: dict[int, list] = {}


class TileState:
    """Every live entity of one table in one partition (see the module docstring)."""

    def __init__(self, tile_ms: int, windows: Sequence[WindowSpec], has_distinct: bool) -> None:
        if tile_ms <= 0:
            raise ValueError("tile_ms must be > 0")
        self.tile_ms = tile_ms
        self.windows = tuple(windows)
        self.has_distinct = has_distinct
        self._entities: dict[str, _Entity] = {}
        self._dirty: set[tuple[str, int]] = set()  # tiles changed or deleted since drain

    @property
    def width(self) -> int:
        """Columns `fold_read` writes per event."""
        return len(self.windows) * len(AGGREGATES)

    def __len__(self) -> int:
        return len(self._entities)

    def __contains__(self, entity: str) -> bool:
        return entity in self._entities

    def missing(self, entities: Iterable[str]) -> list[str]:
        """The entities of a batch not held (to be loaded from the store first), once each."""
        held = self._entities
        return list(dict.fromkeys(e for e in entities if e not in held))

    def load(self, entity: str, last_ts_ms: int | None,
             tiles: Iterable[tuple[int, int, float, float, float, int, float,
                                   Sequence[str] | None]]) -> None:
        """Hold `entity` as stored: its newest event time and its tiles
        ``(start, count, sum, min, max, last_ts, last, distinct)``. Marks nothing dirty."""
        ent = self._entities[entity] = _Entity(NO_TS if last_ts_ms is None else last_ts_ms)
        for start, count, total, lo, hi, last_ts, last, distinct in tiles:
            ent.tiles[start] = [count, total, lo, hi, last_ts, last,
                                set(distinct) if self.has_distinct else None]

    # -- the batch ----------------------------------------------------------------------------

    def fold_read(self, entities: Sequence[str], ts_ms: np.ndarray, values: np.ndarray,
                  distinct: Sequence[str] | None, fold: np.ndarray, horizon_ms: np.ndarray,
                  out: np.ndarray, prev_ts: np.ndarray) -> None:
        """For each event i in order: drop the entity's tiles ending at or before
        ``horizon_ms[i]`` (NO_TS: none), ``prev_ts[i]`` = its newest event time before this
        event (NO_TS: none), fold it when ``fold[i]``, then write every window's aggregates to
        ``out[i]``. Every entity must be held (see `missing`/`load`)."""
        ents = self._entities
        for i, e in enumerate(entities):
            ent = ents[e]
            ts = int(ts_ms[i])
            h = int(horizon_ms[i])
            if h != NO_TS:
                for s in self._drop(ent, h):
                    self._dirty.add((e, s))
            prev_ts[i] = ent.last_ts
            if fold[i]:
                d = distinct[i] if distinct is not None else None
                self._dirty.add((e, self._fold(ent, ts, float(values[i]), d)))
            self._read(ent, ts, out, i)

    def _fold(self, ent: _Entity, ts: int, value: float, d: str | None) -> int:
        start = ts - ts % self.tile_ms
        tile = ent.tiles.get(start)
        if tile is None:
            ent.tiles[start] = [1, value, value, value, ts, value,
                                {d} if self.has_distinct else None]
        else:
            tile[_C] += 1
            tile[_S] += value
            if value < tile[_MIN]:
                tile[_MIN] = value
            if value > tile[_MAX]:
                tile[_MAX] = value
            if ts >= tile[_LTS]:
                tile[_LTS] = ts
                tile[_LV] = value
            if self.has_distinct:
                tile[_D].add(d)
        if ts > ent.last_ts:
            ent.last_ts = ts
        return start

    def _read(self, ent: _Entity, ts: int, out: np.ndarray, row: int) -> None:
        col = 0
        for w in self.windows:
            lo, hi = w.bounds(ts, self.tile_ms)
            count, sums, mn, mx, last_ts, last = 0, [], NAN, NAN, NO_TS, NAN
            union: set = set()
            for start, t in ent.tiles.items():
                if lo <= start < hi:
                    first = count == 0
                    count += t[_C]
                    sums.append(t[_S])
                    if first or t[_MIN] < mn:
                        mn = t[_MIN]
                    if first or t[_MAX] > mx:
                        mx = t[_MAX]
                    if t[_LTS] > last_ts:
                        last_ts, last = t[_LTS], t[_LV]
                    if w.distinct and t[_D] is not None:
                        union |= t[_D]
            out[row, col:col + 6] = (count, math.fsum(sums), mn, mx, last, len(union))
            col += 6

    def read(self, entity: str, ts_ms: int, event: tuple[float, str | None] | None = None,
             horizon_ms: int = NO_TS) -> tuple[np.ndarray, int]:
        """One event's window row and the entity's previous event time, changing nothing:
        the entity as held (or empty), without its tiles ending at or before `horizon_ms`,
        with `event` ``(value, distinct)`` folded in at `ts_ms` when given (online scoring)."""
        ent = _Entity(NO_TS)
        held = self._entities.get(entity)
        if held is not None:
            ent.last_ts = held.last_ts
            ent.tiles = {s: [*t[:_D], None if t[_D] is None else set(t[_D])]
                         for s, t in held.tiles.items() if s + self.tile_ms > horizon_ms}
        prev = ent.last_ts
        if event is not None:
            self._fold(ent, ts_ms, float(event[0]), event[1])
        out = np.empty((1, self.width))
        self._read(ent, ts_ms, out, 0)
        return out[0], prev

    def last_ts(self, entity: str) -> int:
        ent = self._entities.get(entity)
        return NO_TS if ent is None else ent.last_ts

    def _drop(self, ent: _Entity, horizon_ms: int) -> list[int]:
        old = [s for s in ent.tiles if s + self.tile_ms <= horizon_ms]
        for s in old:
            del ent.tiles[s]
        return old

    def expire(self, horizon_ms: int) -> None:
        """Drop every tile ending at or before `horizon_ms`; forget entities with none left."""
        for e in list(self._entities):
            ent = self._entities[e]
            for s in self._drop(ent, horizon_ms):
                self._dirty.add((e, s))
            if not ent.tiles:
                del self._entities[e]

    def drain(self) -> list[tuple[str, int, tuple | None]]:
        """Tiles changed since the last drain, sorted: ``(entity, start, tile)`` where tile is
        ``(count, sum, min, max, last_ts, last, sorted distinct tuple | None)``, or None for a
        dropped one."""
        out = []
        for e, s in sorted(self._dirty):
            ent = self._entities.get(e)
            t = None if ent is None else ent.tiles.get(s)
            out.append((e, s, None if t is None else (
                *t[:_D], None if t[_D] is None else tuple(sorted(t[_D])))))
        self._dirty = set()
        return out

    def drain_packed(self, table_prefix: bytes) -> list[tuple[bytes, bytes | None]]:
        """`drain` as store writes: ``(layout.tile_key, layout.pack_tile or None)``."""
        from ..state import layout
        return [(layout.tile_key(table_prefix, e.encode(), s),
                 None if t is None else layout.pack_tile(t)) for e, s, t in self.drain()]

    def snapshot(self, entity: str) -> tuple[int, list[tuple]] | None:
        """The entity's newest event time and tiles (as `drain` gives them), oldest first."""
        ent = self._entities.get(entity)
        if ent is None:
            return None
        return ent.last_ts, [(s, *t[:_D], None if t[_D] is None else tuple(sorted(t[_D])))
                             for s, t in sorted(ent.tiles.items())]

