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
* **Repartitioning.** A valid event produced to another partition than its card's (a null
  key, another partitioner; `card_partition` says which is its card's) is decided on its
  card's partition, where it arrives through the repartition topic, so its place among that
  partition's own records depends on timing: `run_in_decided_order` reads that place back
  from the decisions and recomputes everything in that order.
* ``secs_since_last = (ts − newest earlier accepted ts of the card) / 1000`` or −1.0 when none;
  ``amount_over_avg`` and ``is_foreign`` are None without a profile;
  ``hour_of_day = (ts // 3_600_000) % 24``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

try:  # tests/ as a package, or this folder on sys.path
    from .oracle_common import MAX_RECORD_BYTES, Tile, by_partition, decode, strings_fit
except ImportError:
    from oracle_common import MAX_RECORD_BYTES, Tile, by_partition, decode, strings_fit

__all__ = [
    "AGENT_FEATURES",
    "FEATURE_NAMES",
    "LATE_REASON",
    "MAX_RECORD_BYTES",
    "DecidedOrder",
    "OracleResult",
    "Tile",
    "card_partition",
    "murmur2",
    "parse",
    "run_in_decided_order",
    "run_oracle",
]

TILE_MS = 60_000
MAX_OUT_OF_ORDERNESS_MS = 2_000
ALLOWED_LATENESS_MS = 58_000
RETAIN_MS = 3_600_000
HOUR_MS = 3_600_000
FEATURE_NAMES = ("count_10m", "sum_10m", "max_10m", "count_1h", "sum_1h", "mean_1h",
                 "distinct_merchants_1h", "secs_since_last", "amount_over_avg", "is_foreign",
                 "amount", "hour_of_day")
# With topologies.fraud:WITH_MERCHANT_RISK: read from the merchant agents' tables, they depend
# on where the worker's polls ended, which no oracle of the input alone can know. Replay
# reproduces them from the worker's progress records
# (test_replay_reproduces_the_decisions_that_read_the_agents_tables); here they are only
# checked to be numbers.
AGENT_FEATURES = ("merchant_amount_z", "merchant_risk")

_STR_LEN = {"event_id": (1, 128), "card_id": (1, 128), "merchant_id": (1, 128),
            "currency": (3, 3), "country": (2, 2)}


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
    doc = decode(raw, numbers=("amount", "ts_ms"), keys=("card_id", "event_id"))
    if isinstance(doc, str):
        return doc
    if not strings_fit(doc, _STR_LEN):
        return "schema"
    amount, ts = doc.get("amount"), doc.get("ts_ms")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 < amount < 1e9:
        return "schema"
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 1 << 53:
        return "schema"
    ev = {name: doc[name] for name in _STR_LEN}
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
    for partition, in_order in by_partition(records).items():
        _run_partition(partition, in_order, profiles, res)
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
        merchants |= tile.distinct
    return count, total, hi, merchants


# -- events decided on their card's partition (repartitioning) -------------------------------

LATE_REASON = "late_event"  # among a decision's reasons when its event was decided late
_UNSTABLE = ("stage_ms", "decided_at_ms")  # differ between re-emissions of one decision
_AFTER = 1 << 40  # synthetic offsets, above every real one: placed events follow dead letters
_END = 1 << 62  # the place of an undecided event with nothing decided after it


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``, seed 0x9747b28c) of `data`, as
    an unsigned 32-bit integer."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    whole = len(data) & ~3
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i:i + 4], "little") * m) & mask
        k = ((k ^ (k >> 24)) * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & mask
    h = ((h ^ (h >> 13)) * m) & mask
    return h ^ (h >> 15)


def card_partition(card: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (the fraud topology's) gives the key `card`:
    murmur2 of its UTF-8 bytes with the sign bit cleared, modulo `partitions` (>= 1)."""
    return (murmur2(card.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class DecidedOrder:
    """`run_in_decided_order`'s answer: the oracle over the order the worker decided in (its
    `first_seen` and `duplicates` are where the copies landed in the input topic), that order
    (valid event ids, each card partition's in processing order), the problems of that order
    (category -> examples; each one is a wrong output), and the events some decision, of any
    generation, called late (``late_event`` among its reasons)."""

    oracle: OracleResult
    order: list[str]
    problems: dict[str, list[str]]
    decided_late: set[str]


@dataclass
class _Landed:
    """The input topic as it landed: valid events (first copy) and the rest."""

    raw: dict[str, bytes] = field(default_factory=dict)      # event id -> first copy's bytes
    at: dict[str, tuple[int, int]] = field(default_factory=dict)  # -> first copy's place
    card: dict[str, str] = field(default_factory=dict)
    copies: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # every copy's
    dead: list[tuple[int, int, bytes | None]] = field(default_factory=list)


def _landed(records: Iterable[tuple[int, int, bytes | None]]) -> _Landed:
    out = _Landed()
    for p, off, raw in sorted(records, key=lambda r: (r[0], r[1])):
        ev = parse(raw)
        if isinstance(ev, str):
            out.dead.append((p, off, raw))
            continue
        eid = ev["event_id"]
        out.copies.setdefault(eid, []).append((p, off))
        if eid not in out.raw:
            out.raw[eid], out.at[eid], out.card[eid] = raw or b"", (p, off), ev["card_id"]
    return out


def _says_late(decision: dict) -> bool:
    """Whether a decision's reasons (a list; anything else says nothing) hold LATE_REASON."""
    reasons = decision.get("reasons")
    return isinstance(reasons, list) and LATE_REASON in reasons


def _decision_places(decisions: Iterable[tuple[int, int, bytes | None]], partitions: int,
                     problems: defaultdict[str, list[str]]
                     ) -> tuple[dict[str, tuple[int, int]], dict[str, dict], set[str]]:
    """Where each event was decided: ``(partition, offset)`` of the first appearance of its
    last distinct decision (a crash may make a later generation decide it again from other
    state: that decision is the one the state went on from; a re-emission of the same
    decision, timings aside, keeps the first place). Also each event's last decision and the
    events some decision called late. Records that are not decisions are skipped (the
    verifiers count them)."""
    first_at: dict[tuple[str, str], tuple[int, int]] = {}
    last: dict[str, tuple[str, dict]] = {}
    decided_late: set[str] = set()
    for p, off, raw in sorted(decisions, key=lambda r: (r[0], r[1])):
        try:
            d = json.loads(raw or b"")
        except ValueError:
            continue
        eid = d.get("event_id") if isinstance(d, dict) else None
        if not isinstance(eid, str):
            continue
        content = json.dumps({k: v for k, v in d.items() if k not in _UNSTABLE},
                             sort_keys=True)
        first_at.setdefault((eid, content), (p, off))
        last[eid] = (content, d)
        if _says_late(d):
            decided_late.add(eid)
        card = d.get("key")
        if isinstance(card, str) and card_partition(card, partitions) != p:
            problems["decided on another partition than its card's"].append(
                f"{eid}: card {card} (partition {card_partition(card, partitions)}) on p{p}")
    places = {eid: first_at[(eid, content)] for eid, (content, _) in last.items()}
    return places, {eid: d for eid, (_, d) in last.items()}, decided_late


def _order_keys(landed: _Landed, places: Mapping[str, tuple[int, int]], partitions: int
                ) -> dict[str, tuple[int, int, int, int]]:
    """A sort key per valid event, its place in its card partition's processing order. An
    event without a decision (lost: the verifiers count it) goes just before the first
    decided event of its card's partition that landed after it on the same partition (so a
    correct worker's neighbours keep their features), or after everything."""
    keys: dict[str, tuple[int, int, int, int]] = {}
    decided: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]] = {}
    for eid, (p, off) in places.items():
        if eid in landed.raw:
            keys[eid] = (p, off, 0, 0)
            cp = card_partition(landed.card[eid], partitions)
            decided.setdefault((cp, landed.at[eid][0]), []).append((landed.at[eid][1],
                                                                    keys[eid]))
    for eid in landed.raw.keys() - keys.keys():
        cp = card_partition(landed.card[eid], partitions)
        src, loff = landed.at[eid]
        after = [k for o, k in decided.get((cp, src), ()) if o > loff]
        keys[eid] = (*min(after)[:2], -1, loff) if after else (cp, _END, src, loff)
    return keys


def _source_order_problems(landed: _Landed, order: list[str], partitions: int,
                           problems: defaultdict[str, list[str]]) -> None:
    """Each source partition's events must be decided in the order they landed there (per
    card partition). Events with several copies are skipped: which copy came first?"""
    last: dict[tuple[int, int], int] = {}
    for eid in order:
        if len(landed.copies[eid]) > 1:
            continue
        cp = card_partition(landed.card[eid], partitions)
        src, off = landed.at[eid]
        if off < last.get((cp, src), -1):
            problems["a source partition's order not kept"].append(
                f"{eid} from p{src}@{off} decided on p{cp} after p{src}@{last[(cp, src)]}")
        last[(cp, src)] = max(off, last.get((cp, src), -1))


def run_in_decided_order(landed: Iterable[tuple[int, int, bytes | None]],
                         decisions: Iterable[tuple[int, int, bytes | None]],
                         profiles: Mapping[str, Mapping], partitions: int, *,
                         check_source_order: bool = False) -> DecidedOrder:
    """The oracle over each card partition's input in the order the worker decided it.

    A record produced to another partition than its card's reaches the card's partition
    through the repartition topic, so its place among that partition's own records depends on
    timing; any place is right as long as each source partition's records keep their order.
    The order is read back from the decisions (each partition's, in offset order, see
    `_decision_places`); the oracle then recomputes every feature, lateness and table from
    that order, every valid event on its card's partition (`card_partition`), re-sent copies
    as duplicates, and the records the worker dead-letters where they landed keep their place.

    `landed`: the input topic as consumed, ``(partition, offset, raw value)``, without the
    records the caller dead-letters itself (future_time, which needs record timestamps).
    `decisions`: the decision topic the same way. Problems found (each a wrong output): a
    decision on another partition than its card's, a decision whose ``late_event`` reason
    disagrees with the recomputed lateness, and with `check_source_order` a source
    partition's order not kept (only meaningful without crashes).
    """
    problems: defaultdict[str, list[str]] = defaultdict(list)
    inputs = _landed(landed)
    places, last, decided_late = _decision_places(decisions, partitions, problems)
    keys = _order_keys(inputs, places, partitions)
    order = sorted(keys, key=keys.__getitem__)
    records: list[tuple[int, int, bytes | None]] = list(inputs.dead)
    for i, eid in enumerate(order):
        cp = card_partition(inputs.card[eid], partitions)
        records.append((cp, _AFTER + i, inputs.raw[eid]))
        records += [(cp, 2 * _AFTER + i, inputs.raw[eid])] * (len(inputs.copies[eid]) - 1)
    oracle = run_oracle(records, profiles)
    oracle.first_seen = dict(inputs.at)  # the synthetic places above mean nothing outside
    oracle.duplicates = [(p, off, eid) for eid, at in inputs.copies.items() for p, off in at[1:]]
    for eid, d in last.items():
        if eid in oracle.outcome and _says_late(d) != (oracle.outcome[eid] == "late"):
            problems["decision's lateness differs from the recomputation"].append(
                f"{eid}: reasons {d.get('reasons')!r}, recomputed {oracle.outcome[eid]}")
    if check_source_order:
        _source_order_problems(inputs, [e for e in order if e in places], partitions,
                               problems)
    return DecidedOrder(oracle, order, dict(problems), decided_late)

