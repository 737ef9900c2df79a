"""Feature sets: a named, versioned mapping from windows, profiles and the event to numbers."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .windows import EntityTiles, TileTable, Window

__all__ = [
    "PROFILE_TS_FIELD",
    "EventFeature",
    "FeatureSet",
    "FeatureVector",
    "ProfileFeature",
    "SinceLastFeature",
    "WindowFeature",
]

Aggregation = Literal["count", "sum", "mean", "min", "max", "last", "distinct_count"]
FeatureVector = dict[str, float | int | None]
PROFILE_TS_FIELD = "_ts_ms"  # set by the adapter that reads profiles: the record's time


@dataclass(frozen=True)
class WindowFeature:
    """An aggregation of a table over a window placed relative to the event's time."""

    name: str
    table: str
    agg: Aggregation
    window: Window


@dataclass(frozen=True)
class SinceLastFeature:
    """Seconds from the entity's newest *earlier* accepted event to this one; -1 for the first.

    Negative when this event is older than that one (out-of-order arrival).
    """

    name: str
    table: str


@dataclass(frozen=True)
class ProfileFeature:
    """A value from the entity's batch-precomputed profile; None when there is no profile."""

    name: str
    compute: Callable[[Any, Mapping[str, Any]], float | int | None]


@dataclass(frozen=True)
class EventFeature:
    """A value computed from the event alone (request features)."""

    name: str
    compute: Callable[[Any], float | int | None]


Feature = WindowFeature | SinceLastFeature | ProfileFeature | EventFeature


@dataclass(frozen=True)
class FeatureSet:
    """Named, versioned features in model input order.

    `critical` names the features without which the model must not be trusted: a missing (None)
    or non-finite critical feature sends the event down the fallback chain.
    `profile_max_age_ms`: a profile older than this (its record time vs the event's time) is
    stale, and its features are None, as if there were no profile.
    """

    name: str
    version: int
    features: tuple[Feature, ...]
    critical: tuple[str, ...] = ()
    profile_max_age_ms: int | None = None
    _plan: tuple = field(default=(), init=False, repr=False, compare=False)
    _names: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def versioned_name(self) -> str:
        return f"{self.name}:v{self.version}"

    def tables_used(self) -> set[str]:
        return {f.table for f in self.features if isinstance(f, WindowFeature | SinceLastFeature)}

    def compile(self, tables: Mapping[str, TileTable]) -> FeatureSet:
        """Group window features by (table, window) so each window is merged once per event."""
        groups: dict[tuple[str, Window], list[tuple[str, str]]] = {}
        others = []
        for f in self.features:
            if isinstance(f, WindowFeature):
                groups.setdefault((f.table, f.window), []).append((f.name, f.agg))
            else:
                others.append(f)
        plan = (tuple((tables[t], w, tuple(aggs), any(a == "distinct_count" for _, a in aggs))
                      for (t, w), aggs in groups.items()),
                tuple(others))
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "_names", self.names)
        return self

    def compute(self, event: Any, ts_ms: int, entities: Mapping[str, EntityTiles],
                previous_ts_ms: Mapping[str, int | None],
                profile: Mapping[str, Any] | None) -> FeatureVector:
        """The feature vector for `event` given its entities' tiles as they stand now.

        `previous_ts_ms[table]` is the entity's newest accepted event time *before* this event
        was folded in. Names are in model order; missing values are None.
        """
        values: dict[str, float | int | None] = {}
        self._window_values(values, ts_ms, entities)
        for f in self._plan[1]:
            if isinstance(f, SinceLastFeature):
                prev = previous_ts_ms.get(f.table)
                values[f.name] = -1.0 if prev is None else (ts_ms - prev) / 1000
            elif isinstance(f, ProfileFeature):
                values[f.name] = None if profile is None else f.compute(event, profile)
            else:
                values[f.name] = f.compute(event)
        return {name: values[name] for name in self._names}

    def stored_values(self, ts_ms: int, entities: Mapping[str, EntityTiles],
                      previous_ts_ms: Mapping[str, int | None]) -> FeatureVector:
        """The features that need no event, at time `ts_ms`: window aggregates and time
        since the last event; profile and event features are None (they read the event)."""
        values: FeatureVector = dict.fromkeys(self._names)
        self._window_values(values, ts_ms, entities)
        for f in self._plan[1]:
            if isinstance(f, SinceLastFeature):
                prev = previous_ts_ms.get(f.table)
                values[f.name] = None if prev is None else (ts_ms - prev) / 1000
        return values

    def _window_values(self, values: dict[str, float | int | None], ts_ms: int,
                       entities: Mapping[str, EntityTiles]) -> None:
        for table, window, aggs, distinct in self._plan[0]:
            start, end = window.bounds(ts_ms, table.tile_ms)
            agg = entities[table.name].aggregate(start, end, distinct,
                                                 ts_ms - ts_ms % table.tile_ms)
            for name, how in aggs:
                values[name] = agg.mean if how == "mean" else getattr(agg, how)

    def ages(self, ts_ms: int, entities: Mapping[str, EntityTiles],
             profile: Mapping[str, Any] | None) -> dict[str, int | None]:
        """Age in ms of each feature's freshest input, seen from event time `ts_ms`.

        Window and since-last features: time since the entity's newest accepted event (None
        when it has none); profile features: time since the profile was written (None without
        a profile or its record time); event features: 0.
        """
        ages: dict[str, int | None] = {}
        written = profile.get(PROFILE_TS_FIELD) if profile is not None else None
        for f in self.features:
            if isinstance(f, WindowFeature | SinceLastFeature):
                last = entities[f.table].last_ts_ms if f.table in entities else None
                ages[f.name] = None if last is None else ts_ms - last
            elif isinstance(f, ProfileFeature):
                ages[f.name] = None if written is None else ts_ms - written
            else:
                ages[f.name] = 0
        return ages

    def profile_is_stale(self, profile: Mapping[str, Any] | None, ts_ms: int) -> bool:
        """True when `profile` carries a record time (``_ts_ms``) older than the max age."""
        if profile is None or self.profile_max_age_ms is None:
            return False
        written = profile.get(PROFILE_TS_FIELD)
        return written is not None and ts_ms - written > self.profile_max_age_ms

    def missing_critical(self, vector: FeatureVector) -> list[str]:
        """Critical features that are None, NaN or infinite."""
        bad = []
        for name in self.critical:
            v = vector.get(name)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                bad.append(name)
        return bad
