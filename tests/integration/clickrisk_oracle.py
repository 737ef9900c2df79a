"""An independent, pure-Python recomputation of the clickrisk topology: the spec in code.

Imports nothing from `engine` or `topologies`. Feed it the input topic as consumed back from
Kafka, ``(partition, offset, raw value)``; it says what every record must become. Semantics
(times are integer epoch ms, windows ``[start, end)``):

* **Validate.** At most 1 MiB of UTF-8 JSON holding an object with ``event_id, user_id,
  session_id, device_id`` (strings of 1..128 characters), ``ip_country`` (2 characters),
  ``action`` (one of `ACTIONS`), ``dwell_ms`` (integer, 0 <= d < 86,400,000), ``value``
  (finite number, 0 <= v < 1e7) and ``ts_ms`` (integer, 0 <= ts < 2**53); extra fields are
  ignored. Otherwise a dead letter whose reason is the first that applies of ``empty``,
  ``oversized``, ``not_utf8``, ``invalid_json``, ``non_finite``, ``missing_key`` (empty or
  absent user_id or event_id), ``schema``.
* **Per partition, in offset order.** *Dedup* first: an event id already seen valid in this
  partition is a duplicate (the streams here stay far inside the 6 h TTL). Then *lateness*:
  ``watermark = max ts of earlier accepted events − 5000``; late when ``ts < watermark −
  10000``. A late event is decided at once against the tables as they stand, without tiles
  ending at or before ``watermark − 10000 − 3,600,000``, and changes nothing. An accepted event
  raises the watermark and waits in the *reorder buffer*; after each accepted event the buffer
  releases, oldest first (ties: arrival order), every event with ``ts <= watermark``. A
  released event is folded into its user's tiles, then decided with windows that include it.
  Events still held at the end are not decided (a live worker waits for the watermark).
* **Tiles**: ``activity`` of 10 s (dwell_ms; devices), ``geo`` of 60 s (value; countries).
  Tumbling windows are ``[ts − ts % size, +size)``; hopping ones (size, step) read the newest
  window holding ts, ``[ts − ts % step, +size)``; both see the window as it stands.
* ``secs_since_last = (ts − newest earlier folded ts of the user) / 1000``, −1.0 for none.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

try:  # tests/ as a package, or this folder on sys.path
    from .oracle_common import Tile, by_partition, decode, strings_fit
except ImportError:
    from oracle_common import Tile, by_partition, decode, strings_fit

__all__ = ["ACTIONS", "ALLOWED_LATENESS_MS", "FEATURE_NAMES", "INT_FEATURES", "MAX_OUT_OF_ORDERNESS_MS",
           "OracleResult", "parse", "run_oracle"]

MAX_OUT_OF_ORDERNESS_MS = 5_000
ALLOWED_LATENESS_MS = 10_000
RETAIN_MS = 3_600_000
ACTIVITY_TILE_MS = 10_000
GEO_TILE_MS = 60_000
ACTIONS = ("view", "search", "login", "login_failed", "add_to_cart", "checkout",
           "password_reset")
FEATURE_NAMES = ("clicks_1m", "min_dwell_1m", "clicks_10m", "mean_dwell_10m", "devices_10m",
                 "countries_1h", "spend_1h", "max_value_15m", "secs_since_last",
                 "is_login_failed", "is_password_reset", "is_checkout", "value", "dwell_ms")
INT_FEATURES = frozenset({"clicks_1m", "clicks_10m", "devices_10m", "countries_1h",
                          "is_login_failed", "is_password_reset", "is_checkout", "dwell_ms"})
_STR_LEN = {"event_id": (1, 128), "user_id": (1, 128), "session_id": (1, 128),
            "device_id": (1, 128), "ip_country": (2, 2)}


@dataclass
class OracleResult:
    """What the input topic must turn into.

    `outcome[eid]` is ``accepted`` (decided on release), ``late`` or ``held`` (still in the
    reorder buffer at the end: no decision yet). `features` has the decided events'. `order`
    lists, per partition, the decided event ids in decision order (first decisions only).
    `duplicates` lists ``(partition, offset, event_id)``, `dlq` ``(partition, offset,
    reason)``; `late_watermark[eid]` is the watermark a late event was judged against.
    At the end: `tiles[table][user][start_ms]` ``{count, sum, min, max, distinct_count}`` of
    the folded events, `last_ts_ms[user]`, `watermark_ms[partition]` and each user's partition.
    """

    outcome: dict[str, str] = field(default_factory=dict)
    features: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    events: dict[str, dict] = field(default_factory=dict)
    first_seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    order: dict[int, list[str]] = field(default_factory=dict)
    duplicates: list[tuple[int, int, str]] = field(default_factory=list)
    dlq: list[tuple[int, int, str]] = field(default_factory=list)
    late_watermark: dict[str, int] = field(default_factory=dict)
    tiles: dict[str, dict[str, dict[int, dict]]] = field(default_factory=dict)
    last_ts_ms: dict[str, int] = field(default_factory=dict)
    watermark_ms: dict[int, int | None] = field(default_factory=dict)
    user_partition: dict[str, int] = field(default_factory=dict)

    @property
    def decided(self) -> set[str]:
        return {e for e, o in self.outcome.items() if o != "held"}

    @property
    def late(self) -> set[str]:
        return {e for e, o in self.outcome.items() if o == "late"}

    @property
    def held(self) -> set[str]:
        return {e for e, o in self.outcome.items() if o == "held"}


def parse(raw: bytes | None) -> dict | str:
    """The event dict of a valid record, or the DLQ reason (a str) of an invalid one."""
    doc = decode(raw, numbers=("value", "dwell_ms", "ts_ms"), keys=("user_id", "event_id"))
    if isinstance(doc, str):
        return doc
    if not strings_fit(doc, _STR_LEN) or doc.get("action") not in ACTIONS:
        return "schema"
    value, dwell, ts = doc.get("value"), doc.get("dwell_ms"), doc.get("ts_ms")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e7:
        return "schema"
    if isinstance(dwell, bool) or not isinstance(dwell, int) or not 0 <= dwell < 86_400_000:
        return "schema"
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 1 << 53:
        return "schema"
    ev = {name: doc[name] for name in (*_STR_LEN, "action")}
    ev.update(value=float(value), dwell_ms=dwell, ts_ms=ts)
    return ev


def run_oracle(records: Iterable[tuple[int, int, bytes | None]]) -> OracleResult:
    """Recompute outcomes, features and dead letters from the input records (any order; each
    partition is processed in offset order)."""
    res = OracleResult()
    for partition, in_order in by_partition(records).items():
        _Partition(partition, res).run(in_order)
    return res


class _Partition:
    def __init__(self, partition: int, res: OracleResult) -> None:
        self.p = partition
        self.res = res
        self.max_ts: int | None = None
        self.heap: list[tuple[int, int, str]] = []
        self.activity: dict[str, dict[int, Tile]] = {}
        self.geo: dict[str, dict[int, Tile]] = {}
        self.last_ts: dict[str, int] = {}
        res.order[partition] = []

    def run(self, records: list[tuple[int, bytes | None]]) -> None:
        res = self.res
        for seq, (offset, raw) in enumerate(records):
            ev = parse(raw)
            if isinstance(ev, str):
                res.dlq.append((self.p, offset, ev))
                continue
            eid = ev["event_id"]
            if eid in res.events:
                res.duplicates.append((self.p, offset, eid))
                continue
            res.events[eid] = ev
            res.first_seen[eid] = (self.p, offset)
            res.user_partition.setdefault(ev["user_id"], self.p)
            ts = ev["ts_ms"]
            if self.max_ts is not None:
                watermark = self.max_ts - MAX_OUT_OF_ORDERNESS_MS
                if ts < watermark - ALLOWED_LATENESS_MS:
                    res.outcome[eid] = "late"
                    res.late_watermark[eid] = watermark
                    horizon = watermark - ALLOWED_LATENESS_MS - RETAIN_MS
                    self._decide(ev, horizon)
                    continue
            self.max_ts = ts if self.max_ts is None else max(self.max_ts, ts)
            res.outcome[eid] = "held"
            heapq.heappush(self.heap, (ts, seq, eid))
            watermark = self.max_ts - MAX_OUT_OF_ORDERNESS_MS
            while self.heap and self.heap[0][0] <= watermark:
                released = res.events[heapq.heappop(self.heap)[2]]
                res.outcome[released["event_id"]] = "accepted"
                self._fold(released)
                self._decide(released, None)
        res.watermark_ms[self.p] = (None if self.max_ts is None
                                    else self.max_ts - MAX_OUT_OF_ORDERNESS_MS)
        for name, tables in (("activity", self.activity), ("geo", self.geo)):
            for user, tiles in tables.items():
                res.tiles.setdefault(name, {})[user] = {
                    start: t.as_dict() for start, t in sorted(tiles.items())}
        res.last_ts_ms.update(self.last_ts)

    def _fold(self, ev: dict) -> None:
        user, ts = ev["user_id"], ev["ts_ms"]
        a = self.activity.setdefault(user, {})
        a.setdefault(ts - ts % ACTIVITY_TILE_MS, Tile()).add(float(ev["dwell_ms"]),
                                                                ev["device_id"])
        g = self.geo.setdefault(user, {})
        g.setdefault(ts - ts % GEO_TILE_MS, Tile()).add(ev["value"], ev["ip_country"])

    def _decide(self, ev: dict, horizon: int | None) -> None:
        """Features from the tables as they stand (tiles ending at or before `horizon` gone)."""
        user, ts = ev["user_id"], ev["ts_ms"]
        previous = self.last_ts.get(user)
        if horizon is None:  # a released event, folded just now (a late one never is)
            self.last_ts[user] = ts if previous is None else max(previous, ts)
        act, geo = self.activity.get(user, {}), self.geo.get(user, {})
        t1m = _window(act, ts - ts % 60_000, 60_000, ACTIVITY_TILE_MS, horizon)
        h10 = _window(act, ts - ts % 120_000, 600_000, ACTIVITY_TILE_MS, horizon)
        t1h = _window(geo, ts - ts % 3_600_000, 3_600_000, GEO_TILE_MS, horizon)
        h15 = _window(geo, ts - ts % 300_000, 900_000, GEO_TILE_MS, horizon)
        action = ev["action"]
        self.res.features[ev["event_id"]] = {
            "clicks_1m": t1m.count, "min_dwell_1m": t1m.min,
            "clicks_10m": h10.count, "mean_dwell_10m": h10.sum / h10.count if h10.count else None,
            "devices_10m": len(h10.distinct),
            "countries_1h": len(t1h.distinct), "spend_1h": t1h.sum, "max_value_15m": h15.max,
            "secs_since_last": -1.0 if previous is None else (ts - previous) / 1000,
            "is_login_failed": int(action == "login_failed"),
            "is_password_reset": int(action == "password_reset"),
            "is_checkout": int(action == "checkout"),
            "value": ev["value"], "dwell_ms": ev["dwell_ms"],
        }
        self.res.order[self.p].append(ev["event_id"])


def _window(tiles: dict[int, Tile], start: int, size: int, tile_ms: int,
            horizon: int | None) -> Tile:
    """The merge of the tiles starting in ``[start, start + size)``, without those ending at or
    before `horizon`."""
    out = Tile()
    parts: list[float] = []
    for t in range(start, start + size, tile_ms):
        tile = tiles.get(t)
        if tile is None or (horizon is not None and t + tile_ms <= horizon):
            continue
        out.count += tile.count
        parts.append(tile.sum)
        out.min = tile.min if out.min is None else min(out.min, tile.min)
        out.max = tile.max if out.max is None else max(out.max, tile.max)
        out.distinct |= tile.distinct
    out.sum = math.fsum(parts)
    return out
