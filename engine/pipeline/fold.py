"""Features of a batch's rows as one matrix: the tile kernels fold and read the windows, the
feature set's plan maps their columns to features, and the event and profile features are
computed per row by the topology's functions.

A feature matrix is float64, one row per event in processing order and one column per feature
in model order; NaN stands for a missing value (None in a decision). `FeatureColumns` keeps
what the matrix cannot say: which columns hold counts (integers in a decision) and the values
the topology's own functions returned (their type as returned).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..features import (
    FeatureSet,
    FeatureVector,
    ProfileFeature,
    SinceLastFeature,
    TableFeature,
    WindowFeature,
)
from ..kernel import AGGREGATES, NO_TS
from ..kernel.specs import window_of
from ..state import layout
from .partition import Row

__all__ = ["FeatureColumns", "FeaturePlan", "fold"]

_COUNT, _SUM, _MIN, _MAX, _LAST, _DISTINCT = range(len(AGGREGATES))
_AGG_COLUMN = {"count": _COUNT, "sum": _SUM, "min": _MIN, "max": _MAX, "last": _LAST,
               "distinct_count": _DISTINCT}


@dataclass(frozen=True)
class FeaturePlan:
    """Where each feature comes from, compiled once per topology."""

    names: tuple[str, ...]
    window: tuple[tuple[int, int, int, str], ...]  # (feature col, table index, kernel col, agg)
    since_last: tuple[int, ...]                    # feature columns
    functions: tuple[tuple[int, Any], ...]         # (feature col, Event/ProfileFeature)
    integer: tuple[int, ...]                       # columns holding counts

    @classmethod
    def of(cls, fs: FeatureSet, tables: Sequence[tuple[str, Sequence]]) -> FeaturePlan:
        """`tables`: (table name, the kernel's window list) per table, in kernel order."""
        index = {name: (t, list(windows)) for t, (name, windows) in enumerate(tables)}
        window, since, functions, integer = [], [], [], []
        for col, f in enumerate(fs.features):
            if isinstance(f, WindowFeature):
                t, windows = index[f.table]
                w = [x[:3] for x in windows].index(window_of(f.window, False)[:3])
                agg = "sum" if f.agg == "mean" else f.agg
                window.append((col, t, w * len(AGGREGATES) + _AGG_COLUMN[agg], f.agg))
                if f.agg in ("count", "distinct_count"):
                    integer.append(col)
            elif isinstance(f, SinceLastFeature):
                since.append(col)
            else:
                functions.append((col, f))
        return cls(fs.names, tuple(window), tuple(since), tuple(functions), tuple(integer))

    def stored_vector(self, reads: Sequence[np.ndarray], since_s: float | None) -> FeatureVector:
        """The features that need no event, from each table's window row (`reads`, kernel
        order) and the seconds since the entity's newest event; the others are None."""
        row: list[Any] = [None] * len(self.names)
        for col, table, kcol, agg in self.window:
            r = reads[table]
            if agg == "mean":
                count = r[kcol - _SUM + _COUNT]
                row[col] = float(r[kcol] / count) if count else None
            elif col in self.integer:
                row[col] = int(r[kcol])
            else:
                v = float(r[kcol])
                row[col] = None if v != v else v
        for col in self.since_last:
            row[col] = since_s
        return dict(zip(self.names, row, strict=True))


@dataclass
class FeatureColumns:
    """A batch's features: the matrix and what a decision needs beyond it."""

    plan: FeaturePlan
    matrix: np.ndarray          # (n, features) float64, NaN = missing
    values: list[list[Any]]     # per function feature (plan.functions order): value per row

    def vector(self, i: int) -> FeatureVector:
        """Row i as a decision's features: counts as int, missing as None, the topology's
        functions' values as they returned them."""
        row: list[Any] = self.matrix[i].tolist()
        for col in self.plan.integer:
            row[col] = int(row[col])
        for j, (col, _) in enumerate(self.plan.functions):
            row[col] = self.values[j][i]
        return {name: (None if v != v else v) for name, v in zip(self.plan.names, row,
                                                                 strict=True)}


def fold(spans: Sequence[tuple[Any, int, int]], plan: FeaturePlan, rows: Sequence[Row],
         profiles: Mapping[str, Mapping[str, Any]], matrix: np.ndarray,
         values: list[list[Any]]) -> None:
    """Fold a poll's `rows` into their tables and write their features to `matrix` and
    `values` (row i of the poll to row i of both).

    `spans` are ``(partition state, lo, hi)``: ``rows[lo:hi]`` are that partition's rows in
    processing order. The poll's columns are built once; each partition's tables then fold
    their slice (a kernel holds one partition's entities)."""
    n = len(rows)
    if n == 0:
        return
    fs = spans[0][0].topology.features
    keys = [r.key for r in rows]
    events = [r.event for r in rows]
    ts = np.fromiter((r.ts_ms for r in rows), np.int64, n)
    fold_mask = np.fromiter((not r.late for r in rows), np.bool_, n)
    horizon = np.fromiter((r.horizon_ms for r in rows), np.int64, n)
    prev = np.empty(n, np.int64)
    tables = spans[0][0].tables
    for t, (tb, _prefix, kernel) in enumerate(tables):
        values_in = np.fromiter((getattr(e, tb.value_field) for e in events), np.float64, n)
        distinct = [getattr(e, tb.distinct_field) for e in events] if tb.distinct_field \
            else None
        out = np.empty((n, kernel.width))
        for state, lo, hi in spans:
            if hi > lo:
                if t == 0:
                    state.hold(keys[lo:hi])
                state.tables[t][2].fold_read(
                    keys[lo:hi], ts[lo:hi], values_in[lo:hi],
                    distinct[lo:hi] if distinct is not None else None, fold_mask[lo:hi],
                    horizon[lo:hi], out[lo:hi], prev[lo:hi])
        for col, table, kcol, agg in plan.window:
            if table == t:
                if agg == "mean":
                    count = out[:, kcol - _SUM + _COUNT]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        matrix[:, col] = np.where(count > 0, out[:, kcol] / count, np.nan)
                else:
                    matrix[:, col] = out[:, kcol]
    if plan.since_last:
        since = np.where(prev == NO_TS, -1.0, (ts - prev) / 1000)
        for col in plan.since_last:
            matrix[:, col] = since
    profile_of = [_profile(fs, r, profiles) for r in rows]  # notes stale profiles too
    agent_rows: dict[tuple[str, str], list[Any]] = {}
    for j, (col, f) in enumerate(plan.functions):
        if isinstance(f, ProfileFeature):
            compute = f.compute
            column = [None if p is None else compute(e, p)
                      for e, p in zip(events, profile_of, strict=True)]
        elif isinstance(f, TableFeature):
            column = _table_feature(f, spans, rows, agent_rows)
        else:
            column = [f.compute(e) for e in events]
        values[j][:] = column
        matrix[:, col] = [np.nan if v is None else v for v in column]


def _table_feature(f: TableFeature, spans: Sequence[tuple[Any, int, int]], rows: Sequence[Row],
                   cache: dict[tuple[str, str], list[Any]]) -> list[Any]:
    """Feature `f` of each row, from its tables' rows (read once per table and key field,
    whatever the features reading them); a stale row is given as None and noted."""
    stored = []
    for table in f.tables:
        if (table, f.key_field) not in cache:
            cache[table, f.key_field] = _agent_rows(spans, rows, table, f.key_field)
        stored.append(cache[table, f.key_field])
    compute = f.compute
    if f.max_age_ms is None:  # nothing goes stale
        return [compute(r.event, *(docs[i] for docs in stored)) for i, r in enumerate(rows)]
    column = []
    for i, r in enumerate(rows):
        given = []
        for table, docs in zip(f.tables, stored, strict=True):
            doc = docs[i]
            fresh = f.fresh(doc, r.ts_ms)
            if fresh is None and doc is not None and f"stale_{table}" not in r.notes:
                r.notes = (*r.notes, f"stale_{table}")
            given.append(fresh)
        column.append(compute(r.event, *given))
    return column


def _agent_rows(spans: Sequence[tuple[Any, int, int]], rows: Sequence[Row], table: str,
                key_field: str) -> list[Any]:
    """Each row's agent-table row (None: none), keyed by the event's `key_field`, as its
    partition's store holds it; read once per key and partition."""
    out: list[Any] = [None] * len(rows)
    prefix = layout.agent_key(table, b"")
    loads = orjson.loads
    for state, lo, hi in spans:
        get, cache = state.store.get, {}
        for i in range(lo, hi):
            key = getattr(rows[i].event, key_field)
            if key not in cache:
                raw = get(prefix + str(key).encode())
                cache[key] = None if raw is None else loads(raw)
            out[i] = cache[key]
    return out


def _profile(fs: FeatureSet, r: Row, profiles: Mapping[str, Mapping[str, Any]]
             ) -> Mapping[str, Any] | None:
    profile = profiles.get(r.key)
    if profile is not None and fs.profile_is_stale(profile, r.ts_ms):
        r.notes = (*r.notes, "stale_profile")
        return None
    return profile
