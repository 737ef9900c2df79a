"""An independent, pure-Python recomputation of the fraud topology: the spec in code.

Imports nothing from `engine` or `topologies`. Feed it the input topic as consumed back from
Kafka, ``(partition, offset, raw value)``, and the card profiles; it says what every record must
become and what the state must hold. Semantics (times are integer epoch ms):

* **Validate.** A record must be at most 1 MiB of UTF-8 JSON holding an object with
  ``event_id, card_id, merchant_id, currency, country`` (strings), ``amount`` (finite number,
  0 < amount < 1e9) and ``ts_ms`` (integer, 0 <= ts < 2**53); ids 1..128 characters, currency 3
  and country 2 characters; extra fields are ignored. Otherwise it is a dead letter whose reason
  is the first that applies of: ``empty`` (no bytes), ``oversized``, ``not_utf8``,
  ``invalid_json``, ``non_finite`` (NaN/Infinity), ``missing_key`` (empty or absent card_id or
  event_id), ``schema``.
* **Per partition, in offset order.** *Dedup* first: an event id already seen valid in this
  partition is a duplicate (no state change; it re-emits the original's decision). Then
  *lateness*: ``watermark = max ts of earlier accepted events − 2000``; the event is late when
  ``ts < watermark − 58000`` (nothing is late before the first accepted event). Late events
  change nothing but are scored with the state as it stands. Accepted events raise the
  watermark and fold into their card's tile.
* **Tiles** of 60,000 ms start at ``ts − ts % 60000``. For an event in tile t: the 10-minute
  features merge tiles t−9..t, the 1-hour ones tiles t−59..t (the event itself included when
  accepted); tiles after t are never included.
* ``secs_since_last = (ts − newest earlier accepted ts of the card) / 1000`` or −1.0 when none;
  ``amount_over_avg`` and ``is_foreign`` are None without a profile;
  ``hour_of_day = (ts // 3_600_000) % 24``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "FEATURE_NAMES",
    "MAX_RECORD_BYTES",
    "OracleResult",
    "Tile",
    "parse",
    "run_oracle",
]

TILE_MS = 60_000
MAX_OUT_OF_ORDERNESS_MS = 2_000
ALLOWED_LATENESS_MS = 58_000
RETAIN_MS = 3_600_000
MAX_RECORD_BYTES = 1 << 20
HOUR_MS = 3_600_000
FEATURE_NAMES = ("count_10m", "sum_10m", "max_10m", "count_1h", "sum_1h", "mean_1h",
                 "distinct_merchants_1h", "secs_since_last", "amount_over_avg", "is_foreign",
                 "amount", "hour_of_day")
_STR_FIELDS = ("event_id", "card_id", "merchant_id", "currency", "country")
_STR_LEN = {"event_id": (1, 128), "card_id": (1, 128), "merchant_id": (1, 128),
            "currency": (3, 3), "country": (2, 2)}


@dataclass
class Tile:
    """One card's accepted events in one 60 s tile."""

    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    merchants: set[str] = field(default_factory=set)

    @property
    def distinct_count(self) -> int:
        return len(self.merchants)

    def add(self, amount: float, merchant: str) -> None:
        self.count += 1
        self.sum += amount
        self.min = amount if self.min is None else min(self.min, amount)
        self.max = amount if self.max is None else max(self.max, amount)
        self.merchants.add(merchant)

    def as_dict(self) -> dict:
        return {"count": self.count, "sum": self.sum, "min": self.min, "max": self.max,
                "distinct_count": self.distinct_count}


@dataclass
class OracleResult:
    """What the input topic must turn into.

    Keys of `outcome`, `features`, `events`, `first_seen` are the valid event ids (first
    occurrence). `duplicates` lists ``(partition, offset, event_id)`` of re-deliveries, `dlq`
    lists ``(partition, offset, reason)``. `tiles[card][tile_start_ms]` and `last_ts_ms[card]`
    describe accepted events only; `watermark_ms[partition]` is max accepted ts − 2000
    (None when the partition accepted nothing).
    """

    outcome: dict[str, str] = field(default_factory=dict)
    features: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    events: dict[str, dict] = field(default_factory=dict)
    first_seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[int, int, str]] = field(default_factory=list)
    dlq: list[tuple[int, int, str]] = field(default_factory=list)
    tiles: dict[str, dict[int, Tile]] = field(default_factory=dict)
    last_ts_ms: dict[str, int] = field(default_factory=dict)
    watermark_ms: dict[int, int | None] = field(default_factory=dict)
    card_partition: dict[str, int] = field(default_factory=dict)

    @property
    def late(self) -> set[str]:
        return {eid for eid, o in self.outcome.items() if o == "late"}

    @property
    def accepted(self) -> set[str]:
        return {eid for eid, o in self.outcome.items() if o == "accepted"}

    def tile_dicts(self, card: str) -> dict[int, dict]:
        """The card's tiles as plain dicts ``{count, sum, min, max, distinct_count}``."""
        return {start: t.as_dict() for start, t in sorted(self.tiles.get(card, {}).items())}

    def expiry_horizon_ms(self, card: str) -> int | None:
        """Tiles ending at or before this may have been expired by the worker."""
        wm = self.watermark_ms.get(self.card_partition.get(card, -1))
        return None if wm is None else wm - ALLOWED_LATENESS_MS - RETAIN_MS


def parse(raw: bytes | None) -> dict | str:
    """The event dict of a valid record, or the DLQ reason (a str) of an invalid one."""
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
    for name in ("amount", "ts_ms"):
        v = doc.get(name)
        if isinstance(v, float) and not math.isfinite(v):
            return "non_finite"
    for name in ("card_id", "event_id"):
        if name not in doc or doc[name] == "":
            return "missing_key"
    for name in _STR_FIELDS:
        v = doc.get(name)
        lo, hi = _STR_LEN[name]
        if not isinstance(v, str) or not lo <= len(v) <= hi:
            return "schema"
    amount, ts = doc.get("amount"), doc.get("ts_ms")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 < amount < 1e9:
        return "schema"
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 1 << 53:
        return "schema"
    ev = {name: doc[name] for name in _STR_FIELDS}
    ev["amount"] = float(amount)
    ev["ts_ms"] = ts
    return ev


def run_oracle(records: Iterable[tuple[int, int, bytes | None]],
               profiles: Mapping[str, Mapping]) -> OracleResult:
    """Recompute outcomes, features, dead letters and final state from the input records.

    `records` may come in any order; each partition is processed in offset order.
    Raises ValueError when one card's events sit in two partitions (the topic must be keyed by
    card_id, which makes the per-partition state of the worker comparable card by card).
    """
    res = OracleResult()
    by_partition: dict[int, list[tuple[int, bytes | None]]] = {}
    for partition, offset, raw in records:
        by_partition.setdefault(partition, []).append((offset, raw))
    for partition in sorted(by_partition):
        _run_partition(partition, sorted(by_partition[partition], key=lambda r: r[0]),
                       profiles, res)
    return res


def _run_partition(partition: int, records: list[tuple[int, bytes | None]],
                   profiles: Mapping[str, Mapping], res: OracleResult) -> None:
    max_ts: int | None = None
    seen: set[str] = set()
    for offset, raw in records:
        ev = parse(raw)
        if isinstance(ev, str):
            res.dlq.append((partition, offset, ev))
            continue
        eid = ev["event_id"]
        if eid in seen:
            res.duplicates.append((partition, offset, eid))
            continue
        seen.add(eid)
        res.first_seen[eid] = (partition, offset)
        res.events[eid] = ev
        card, ts = ev["card_id"], ev["ts_ms"]
        owner = res.card_partition.setdefault(card, partition)
        if owner != partition:
            raise ValueError(f"card {card} in partitions {owner} and {partition}")
        late = (max_ts is not None
                and ts < max_ts - MAX_OUT_OF_ORDERNESS_MS - ALLOWED_LATENESS_MS)
        tiles = res.tiles.setdefault(card, {})
        previous = res.last_ts_ms.get(card)
        if late:
            res.outcome[eid] = "late"
        else:
            res.outcome[eid] = "accepted"
            max_ts = ts if max_ts is None else max(max_ts, ts)
            start = ts - ts % TILE_MS
            tiles.setdefault(start, Tile()).add(ev["amount"], ev["merchant_id"])
            res.last_ts_ms[card] = ts if previous is None else max(previous, ts)
        res.features[eid] = _features(ev, tiles, previous, profiles.get(card))
        if not tiles:
            del res.tiles[card]
    res.watermark_ms[partition] = None if max_ts is None else max_ts - MAX_OUT_OF_ORDERNESS_MS


def _features(ev: dict, tiles: dict[int, Tile], previous_ts: int | None,
              profile: Mapping | None) -> dict[str, float | int | None]:
    ts, amount = ev["ts_ms"], ev["amount"]
    t = ts - ts % TILE_MS
    c10, s10, m10 = _window(tiles, t, 10)[:3]
    c1h, s1h, _, merchants = _window(tiles, t, 60)
    if profile is None:
        over_avg = foreign = None
    else:
        avg = profile.get("avg_amount_90d")
        home = profile.get("home_country")
        over_avg = amount / avg if avg else None
        foreign = int(ev["country"] != home) if home else None
    return {
        "count_10m": c10, "sum_10m": s10, "max_10m": m10,
        "count_1h": c1h, "sum_1h": s1h, "mean_1h": s1h / c1h if c1h else None,
        "distinct_merchants_1h": len(merchants),
        "secs_since_last": -1.0 if previous_ts is None else (ts - previous_ts) / 1000,
        "amount_over_avg": over_avg, "is_foreign": foreign,
        "amount": amount, "hour_of_day": (ts // HOUR_MS) % 24,
    }


def _window(tiles: dict[int, Tile], t: int, n_tiles: int,
            ) -> tuple[int, float, float | None, set[str]]:
    """Count, sum, max and merchants of tiles t-(n-1)..t."""
    count, total, hi = 0, 0.0, None
    merchants: set[str] = set()
    for k in range(n_tiles):
        tile = tiles.get(t - k * TILE_MS)
        if tile is None:
            continue
        count += tile.count
        total += tile.sum
        hi = tile.max if hi is None else max(hi, tile.max)
        merchants |= tile.merchants
    return count, total, hi, merchants
