"""The chaos suite's verifier: what a fraud run must have produced, recomputed from its input.

Independent of the engine: it imports nothing from `engine` or `topologies`. It reads the
input topic from offset 0 as the broker holds it (a record re-sent during an outage is there
twice) and the profiles topic, recomputes every record's fate with `fraud_oracle` (plus the
event-time guard: an event more than 10 minutes ahead of its record's Kafka timestamp is a
dead letter, reason ``future_time``), then reads the decisions, DLQ and late topics and the
tables over HTTP and counts, in the terms Kafka Streams' and Jepsen's checkers use.

Events whose Kafka key is not their card (null keys) are decided on their card's murmur2
partition after a hop through the repartition topic, so their place among that partition's
own records depends on timing: the recomputation runs in the order the decisions topic shows
(`fraud_oracle.run_in_decided_order`), and a decision on another partition than its card's
is wrong. The counts:

* **lost**: a valid event without a decision, a bad record without its DLQ record, a late
  event without its late record;
* **duplicate**: after deduplication by ``decision_id``, a second different decision for one
  event (and **raw_duplicate**: every output record beyond one per input record, what a
  consumer that does not deduplicate would see twice);
* **unexpected**: an output for no input: a decision for an unknown event id, a DLQ record for
  a valid record, a late record for an event that was not late;
* **wrong_value**: an output with the wrong content: features that differ from the
  recomputation, a wrong key, event time or decision field, a decision on another partition
  than its card's or whose ``late_event`` reason disagrees with the recomputed lateness, a
  wrong DLQ reason or payload, a late record against the wrong watermark, a table that
  differs from the recomputed state;
* **unaccounted**: input records not accounted for exactly once as decided, dead-lettered or
  dropped as a duplicate of a decided event.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
import orjson

from tests.integration.fraud_oracle import (
    FEATURE_NAMES,
    TILE_MS,
    OracleResult,
    Tile,
    card_partition,
    parse,
    run_in_decided_order,
)

__all__ = ["MAX_FUTURE_MS", "CardHistory", "Expected", "Report", "expected_outcomes",
           "valid_event_ids", "verify"]

MAX_FUTURE_MS = 600_000  # fraud: an event may be at most 10 minutes ahead of its record
DECISIONS = {"approve", "review", "decline"}
PATHS = {"model", "canary", "fallback:last_score", "fallback:backup_model", "fallback:rules",
         "abstain"}
DLQ_TRUNCATE = 64 * 1024
EXAMPLES = 5


@dataclass
class Expected:
    """The recomputation: the oracle's result over the order the worker decided in, plus the
    records refused as future_time; the problems of that order (each a wrong output, see
    `fraud_oracle.run_in_decided_order`) and the events some decision called late."""

    oracle: OracleResult
    inputs: int
    locations: dict[tuple[int, int], bytes | None]
    order: dict[str, int] = field(default_factory=dict)  # event id -> place in processing
    problems: dict[str, list[str]] = field(default_factory=dict)
    decided_late: set[str] = field(default_factory=set)
    null_keyed: int = 0  # valid event records in the input topic without a key
    moved: int = 0  # valid event records that landed on another partition than their card's

    @property
    def valid(self) -> set[str]:
        return set(self.oracle.outcome)


def _is_future(r, ev: dict | str) -> bool:
    """A valid event more than MAX_FUTURE_MS ahead of its record's Kafka timestamp (a record
    without a timestamp is never refused)."""
    return isinstance(ev, dict) and r.timestamp is not None and r.timestamp >= 0 \
        and ev["ts_ms"] - r.timestamp > MAX_FUTURE_MS


def valid_event_ids(records: Iterable) -> set[str]:
    """The event ids the worker must decide, from the input topic as consumed (objects with
    value and timestamp): valid events that are not refused as future_time."""
    out = set()
    for r in records:
        ev = parse(r.value)
        if isinstance(ev, dict) and not _is_future(r, ev):
            out.add(ev["event_id"])
    return out


def expected_outcomes(records: Iterable, profiles: Mapping[str, Mapping], decisions: Iterable,
                      partitions: int) -> Expected:
    """`records`: the input topic as consumed (objects with partition, offset, key, value,
    timestamp), in any order; `decisions`: the decision topic as consumed (partition, offset,
    value); `partitions`: the input topic's partition count (the cards' murmur2 partitions).
    Events whose key is not their card are expected on their card's partition, in the order
    the decisions show (an event without a decision is lost, and placed by its neighbours)."""
    kept, future, locations = [], [], {}
    null_keyed = moved = 0
    for r in records:
        locations[(r.partition, r.offset)] = r.value
        ev = parse(r.value)
        if _is_future(r, ev):
            future.append((r.partition, r.offset, "future_time"))  # never reaches state
            continue
        kept.append((r.partition, r.offset, r.value))
        if isinstance(ev, dict):
            null_keyed += r.key is None
            moved += card_partition(ev["card_id"], partitions) != r.partition
    placed = run_in_decided_order(kept, [(r.partition, r.offset, r.value) for r in decisions],
                                  profiles, partitions)
    placed.oracle.dlq.extend(future)
    order = {eid: i for i, eid in enumerate(placed.order)}
    return Expected(placed.oracle, len(locations), locations, order, placed.problems,
                    placed.decided_late, null_keyed, moved)


def profiles_of(records: Iterable) -> dict[str, dict]:
    """The profiles topic, compacted by hand: the newest value per key, tombstones delete."""
    out: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        key = r.key.decode()
        if r.value is None:
            out.pop(key, None)
        else:
            out[key] = orjson.loads(r.value)
    return out


@dataclass
class Report:
    """One scenario's counts (see the module docstring) and examples of each problem."""

    scenario: str
    inputs: int = 0
    valid: int = 0
    dlq_expected: int = 0
    input_duplicates: int = 0
    late_expected: int = 0
    decision_records: int = 0
    null_keyed: int = 0
    moved: int = 0
    lost: int = 0
    duplicate: int = 0
    raw_duplicate: int = 0
    unexpected: int = 0
    wrong_value: int = 0
    unaccounted: int = 0
    tables_checked: int = 0
    recovery_s: float | None = None
    extra: dict[str, object] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def problem(self, counter: str, kind: str, example: str, n: int = 1) -> None:
        setattr(self, counter, getattr(self, counter) + n)
        if len(self.examples[f"{counter}: {kind}"]) < EXAMPLES:
            self.examples[f"{counter}: {kind}"].append(example)

    @property
    def ok(self) -> bool:
        return self.lost == self.unexpected == self.wrong_value == self.unaccounted == 0

    def row(self) -> dict[str, object]:
        return {"scenario": self.scenario, "inputs": self.inputs,
                "null_keyed": self.null_keyed, "moved": self.moved, "lost": self.lost,
                "duplicate": self.duplicate, "raw_duplicate": self.raw_duplicate,
                "unexpected": self.unexpected, "wrong_value": self.wrong_value,
                "unaccounted": self.unaccounted, "tables_checked": self.tables_checked,
                "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 1),
                **self.extra}

    def explain(self) -> str:
        lines = [f"{self.scenario}: {self.row()}"]
        for kind, examples in sorted(self.examples.items()):
            lines.append(f"  * {kind}")
            lines += [f"      {e}" for e in examples]
        return "\n".join(lines)


def _features_differ(expected: Mapping, got: object) -> list[str]:
    if not isinstance(got, dict) or set(got) != set(FEATURE_NAMES):
        return [f"feature names {sorted(got) if isinstance(got, dict) else got!r}"]
    out = []
    for name in FEATURE_NAMES:
        e, g = expected[name], got[name]
        if e is None:
            ok = g is None
        elif isinstance(e, int):
            ok = type(g) is int and g == e
        else:
            ok = type(g) in (int, float) and math.isfinite(g) and \
                math.isclose(g, e, rel_tol=1e-9, abs_tol=0.0)
        if not ok:
            out.append(f"{name}: expected {e!r}, got {g!r}")
    return out


def verify(scenario: str, expected: Expected, decisions: list, dlq: list, late: list
           ) -> Report:
    """Count lost, duplicate, unexpected and wrong outputs and unaccounted inputs."""
    o = expected.oracle
    rep = Report(scenario, inputs=expected.inputs, valid=len(o.outcome),
                 dlq_expected=len(o.dlq), input_duplicates=len(o.duplicates),
                 late_expected=len(o.late), decision_records=len(decisions),
                 null_keyed=expected.null_keyed, moved=expected.moved)
    if len(o.first_seen) + len(o.duplicates) + len(o.dlq) != expected.inputs:
        raise AssertionError("verifier bug: input records not partitioned into decided, "
                             "duplicate and dead-lettered")

    # decisions ----------------------------------------------------------------------------
    by_event: dict[str, list[tuple[object, dict]]] = defaultdict(list)
    ids_of_decision: dict[str, set[str]] = defaultdict(set)
    for r in decisions:
        try:
            d = orjson.loads(r.value)
            eid = d["event_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            rep.problem("unexpected", "decision record is not a decision",
                        f"p{r.partition}@{r.offset}: {r.value[:80]!r}")
            continue
        by_event[eid].append((r, d))
        ids_of_decision[d.get("decision_id")].add(eid)
    input_dups = Counter(eid for _, _, eid in o.duplicates)
    for eid in sorted(o.outcome.keys() - by_event.keys()):
        p, off = o.first_seen[eid]
        rep.problem("lost", "valid event without a decision",
                    f"{eid} ({o.outcome[eid]}) at p{p}@{off}")
    for eid in sorted(by_event.keys() - o.outcome.keys(), key=str):
        rep.problem("unexpected", "decision for an unknown or invalid event id", repr(eid),
                    len(by_event[eid]))
    for did, eids in ids_of_decision.items():
        if len(eids) > 1:
            rep.problem("wrong_value", "one decision_id for several events",
                        f"{did}: {sorted(eids)[:4]}")
    for eid, items in by_event.items():
        if eid not in o.outcome:
            continue
        ev = o.events[eid]
        distinct = {d.get("decision_id") for _, d in items}
        if len(distinct) > 1:
            rep.problem("duplicate", "a second, different decision for one event",
                        f"{eid}: {len(distinct)} decision ids "
                        f"{sorted({d.get('path') for _, d in items})}", len(distinct) - 1)
        extra = len(items) - 1 - input_dups[eid]
        if extra > 0:
            rep.raw_duplicate += extra
        problems: list[str] = []
        checked: list[object] = []
        for r, d in items:
            if r.key != ev["card_id"].encode() or d.get("key") != ev["card_id"]:
                problems.append(f"key {r.key!r}/{d.get('key')!r}")
            if d.get("event_ts_ms") != ev["ts_ms"]:
                problems.append(f"event_ts_ms {d.get('event_ts_ms')}")
            if d.get("decision") not in DECISIONS or d.get("path") not in PATHS:
                problems.append(f"decision {d.get('decision')!r} path {d.get('path')!r}")
            score = d.get("score")
            if score is not None and not (isinstance(score, int | float)
                                          and 0.0 <= score <= 1.0):
                problems.append(f"score {score!r}")
            if d.get("features") not in checked:
                checked.append(d.get("features"))
                problems += _features_differ(o.features[eid], d.get("features"))
        if problems:
            rep.problem("wrong_value", "decision differs from the recomputation",
                        f"{eid} ({o.outcome[eid]}, card {ev['card_id']}): "
                        + "; ".join(problems[:4]))

    for kind, examples in sorted(expected.problems.items()):  # of the order decided in
        for example in examples:
            rep.problem("wrong_value", kind, example)

    # late records ---------------------------------------------------------------------------
    late_counts: Counter[str] = Counter()
    for r in late:
        try:
            eid = orjson.loads(r.value)["event_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            rep.problem("unexpected", "late record is not the raw event", repr(r.value[:80]))
            continue
        late_counts[eid] += 1
        if late_counts[eid] > 1:
            rep.raw_duplicate += 1
            continue
        wm = dict(r.headers).get("streamwise.watermark_ms")
        if eid in o.events and (wm is None or not o.events[eid]["ts_ms"] < int(wm) - 58_000):
            rep.problem("wrong_value", "late record against a watermark it is not late for",
                        f"{eid}: ts {o.events[eid]['ts_ms']}, watermark {wm!r}")
    for eid in sorted(o.late - late_counts.keys()):
        rep.problem("lost", "late event missing from the late topic", eid)
    for eid in sorted(late_counts.keys() - o.late, key=str):
        if eid in expected.decided_late and eid in o.outcome:
            # A generation a crash cut short decided it late, a later one (in another order
            # of forwarded records) on time: the abandoned decision is counted as a
            # duplicate above, its late record is one more output beyond one per input.
            rep.raw_duplicate += late_counts[eid]
            continue
        rep.problem("unexpected", "late record for an event that was not late",
                    f"{eid} ({o.outcome.get(eid, 'not a valid event')})")

    # dead letters ---------------------------------------------------------------------------
    want = {(p, off): reason for p, off, reason in o.dlq}
    got: Counter[tuple[int, int]] = Counter()
    for r in dlq:
        h = {k: v.decode("utf-8", "replace") for k, v in r.headers}
        try:
            loc = (int(h["streamwise.partition"]), int(h["streamwise.offset"]))
        except (KeyError, ValueError):
            rep.problem("unexpected", "DLQ record without its location headers",
                        f"p{r.partition}@{r.offset}: {sorted(h)}")
            continue
        got[loc] += 1
        if got[loc] > 1:
            rep.raw_duplicate += 1
            continue
        if loc not in want:
            rep.problem("unexpected", "DLQ record for a valid input record",
                        f"{loc}: {h.get('streamwise.reason')} {h.get('streamwise.detail')!r}")
            continue
        raw = expected.locations.get(loc) or b""
        if h.get("streamwise.reason") != want[loc] or r.value != raw[:DLQ_TRUNCATE]:
            rep.problem("wrong_value", "DLQ reason or payload",
                        f"{loc}: expected {want[loc]}, got {h.get('streamwise.reason')} "
                        f"({len(r.value or b'')} of {len(raw)} bytes)")
    for loc in sorted(want.keys() - got.keys()):
        rep.problem("lost", "bad record missing from the DLQ", f"{loc}: {want[loc]}")

    # every input record exactly once --------------------------------------------------------
    decided = by_event.keys()
    for loc, raw in expected.locations.items():
        dead = loc in want
        evidence = [dead and loc in got]
        eid = None
        if not dead:
            ev = parse(raw)
            eid = ev["event_id"] if isinstance(ev, dict) else None
            evidence.append(eid in decided)
        conflicting = (not dead) and loc in got
        if sum(evidence) != 1 or conflicting:
            rep.problem("unaccounted", "input record not accounted for exactly once",
                        f"p{loc[0]}@{loc[1]} ({'dlq ' + want[loc] if dead else eid})")
    return rep


# -- tables over HTTP -------------------------------------------------------------------------


def _tile_dicts(tiles: Mapping[int, Tile]) -> dict[int, dict]:
    return {start: t.as_dict() for start, t in sorted(tiles.items())}


def _window_diffs(want: Mapping[int, dict], body: Mapping) -> list[str]:
    got = {w.get("start_ms"): w for w in body.get("windows") or []}
    diffs = []
    for start in sorted(set(want) | set(got), key=str):
        if start not in got or start not in want:
            diffs.append(f"tile {start}: {'missing' if start not in got else 'extra'}")
            continue
        v, e = got[start].get("value") or {}, want[start]
        for name in ("count", "min", "max", "distinct_count"):
            if v.get(name) != e[name]:
                diffs.append(f"tile {start} {name} {v.get(name)!r} != {e[name]!r}")
        g = v.get("sum")
        if not isinstance(g, int | float) or not math.isclose(g, e["sum"], rel_tol=1e-9):
            diffs.append(f"tile {start} sum {g!r} != {e['sum']!r}")
    return diffs


async def check_tables(rep: Report, expected: Expected, urls: list[str],
                       headers: Mapping[str, str] | None = None, sample: int | None = None,
                       seed: int = 1) -> None:
    """GET /v1/tables/velocity/{card} (spread over `urls`, so most are forwarded) for every
    card, or a seeded sample: windows, last_ts_ms and watermark as recomputed."""
    o = expected.oracle
    cards = sorted(o.card_partition)
    if sample is not None and len(cards) > sample:
        cards = sorted(random.Random(seed).sample(cards, sample))
    sem = asyncio.Semaphore(16)

    async def one(http: aiohttp.ClientSession, i: int, card: str) -> None:
        # the owner's answer (forwarded), never a standby replica's: this is the exact check
        url = f"{urls[i % len(urls)]}/v1/tables/velocity/{card}?consistency=owner"
        async with sem:
            for _ in range(20):  # bounded: a rebalance answers 503 with Retry-After
                async with http.get(url) as resp:
                    status, body = resp.status, await resp.read()
                if status != 503:
                    break
                await asyncio.sleep(0.5)
        want = _tile_dicts(o.tiles.get(card, {}))
        if not want:
            if status == 200 and orjson.loads(body).get("windows"):
                rep.problem("wrong_value", "table", f"{card}: tiles without accepted events")
            elif status not in (200, 404):
                rep.problem("wrong_value", "table", f"{card}: status {status}")
            return
        if status != 200:
            rep.problem("wrong_value", "table", f"{card}: status {status} {body[:120]!r}")
            return
        doc = orjson.loads(body)
        diffs = _window_diffs(want, doc)
        if (doc.get("value") or {}).get("last_ts_ms") != o.last_ts_ms[card]:
            diffs.append(f"last_ts_ms {(doc.get('value') or {}).get('last_ts_ms')} != "
                         f"{o.last_ts_ms[card]}")
        wm = o.watermark_ms[o.card_partition[card]]
        if doc.get("watermark_ms") != wm:
            diffs.append(f"watermark_ms {doc.get('watermark_ms')} != {wm}")
        if diffs:
            rep.problem("wrong_value", "table", f"{card}: " + "; ".join(diffs[:3]))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                     headers=dict(headers or {})) as http:
        await asyncio.gather(*(one(http, i, c) for i, c in enumerate(cards)))
    rep.tables_checked += len(cards)


# -- states a lookup may see while the stream runs ----------------------------------------------


@dataclass
class CardHistory:
    """Every state a card's table went through: (last_ts_ms, tiles) after each of its
    accepted events, in the order the partition accepted them."""

    states: dict[str, list[tuple[int, dict[int, dict]]]]

    @classmethod
    def of(cls, expected: Expected, cards: Iterable[str]) -> CardHistory:
        o = expected.oracle
        wanted = set(cards)
        accepted = sorted((expected.order[eid], eid) for eid, out in o.outcome.items()
                          if out == "accepted" and o.events[eid]["card_id"] in wanted)
        tiles: dict[str, dict[int, Tile]] = defaultdict(dict)
        last: dict[str, int] = {}
        states: dict[str, list] = defaultdict(list)
        for _, eid in accepted:
            ev = o.events[eid]
            card, ts = ev["card_id"], ev["ts_ms"]
            t = tiles[card].setdefault(ts - ts % TILE_MS, Tile())
            t.add(ev["amount"], ev["merchant_id"])
            last[card] = max(last.get(card, ts), ts)
            states[card].append((last[card], _tile_dicts(tiles[card])))
        return cls(dict(states))

    def nearest(self, card: str, body: Mapping) -> str:
        """How an answer differs from the card's state with the same last_ts_ms (or its
        states' last_ts_ms when none has it): for the report."""
        last = (body.get("value") or {}).get("last_ts_ms")
        states = self.states.get(card, [])
        same = [(i, tiles) for i, (ts, tiles) in enumerate(states) if ts == last]
        if not same:
            return f"no state with last_ts_ms {last} (states: {[ts for ts, _ in states][:8]})"
        i, tiles = same[-1]
        return (f"state {i + 1}/{len(states)} ({body.get('served_by')}, p{body.get('partition')}"
                f"): {'; '.join(_window_diffs(tiles, body)[:3])}")

    def matches(self, card: str, body: Mapping) -> bool:
        """Whether a 200 answer of GET /v1/tables/velocity/{card} is one of the card's
        states (tiles and last_ts_ms)."""
        last = (body.get("value") or {}).get("last_ts_ms")
        return any(last == ts and not _window_diffs(tiles, body)
                   for ts, tiles in self.states.get(card, ()))
