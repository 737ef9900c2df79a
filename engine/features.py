"""Feature sets: a named, versioned mapping from windows, profiles and the event to numbers."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .windows import Window

__all__ = [
    "PROFILE_TS_FIELD",
    "EventFeature",
    "FeatureSet",
    "FeatureVector",
    "ProfileFeature",
    "SinceLastFeature",
    "TableFeature",
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


@dataclass(frozen=True)
class TableFeature:
    """A value from rows of agent tables (`engine.agents`), looked up by one of the event's
    fields: ``compute(event, row, ...)``, one row per table of `tables` (None: no row, or a
    stale one).

    Rows are read as the partition's store holds them when the event's poll starts (an
    agent's updates of a poll are seen from the next one; replay re-applies them at the same
    input positions). `max_age_ms`: a row whose `as_of_field` (an epoch-ms event time the
    agent writes) is more than this before the event's time is stale, and the decision notes
    ``stale_<table>``; rows without that field, and all rows when it is None, never go stale.
    `compute` must return a number for None rows too when the feature is not critical: a
    model gets no missing values.
    """

    name: str
    tables: tuple[str, ...]
    key_field: str
    compute: Callable[..., float | int | None]
    max_age_ms: int | None = None
    as_of_field: str = "as_of_ms"

    def fresh(self, row: Mapping[str, Any] | None, ts_ms: int) -> Mapping[str, Any] | None:
        """`row` unless it is stale at event time `ts_ms`."""
        if row is None or self.max_age_ms is None:
            return row
        as_of = row.get(self.as_of_field)
        return row if not isinstance(as_of, int) or ts_ms - as_of <= self.max_age_ms else None


Feature = WindowFeature | SinceLastFeature | ProfileFeature | EventFeature | TableFeature


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

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def versioned_name(self) -> str:
        return f"{self.name}:v{self.version}"

    def tables_used(self) -> set[str]:
        return {f.table for f in self.features if isinstance(f, WindowFeature | SinceLastFeature)}

    def agent_tables_read(self) -> set[str]:
        """The agent tables that table features read."""
        return {t for f in self.features if isinstance(f, TableFeature) for t in f.tables}

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
