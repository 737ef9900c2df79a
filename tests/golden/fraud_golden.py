"""Golden decisions of the fraud topology: a committed input, a committed output, one driver.

The input (`fraud-input.jsonl.xz`, `fraud-profiles.json`) is a seeded reference stream of
about 22,000 Kafka records over 8 partitions and ~27 hours of event time: a dense burst and a
long sparse stretch over the same 300 cards (so tiles expire and event ids outlive the 24 h
dedup TTL), duplicates near and far, disorder, late events, re-sends after the TTL, bad
records of every DLQ reason, null and foreign Kafka keys, cards without a profile and stale
profiles. The outputs (`fraud-<variant>.golden.xz`) hold every decision (all fields but
`stage_ms`), every dead-letter and late record, and the final tables, one canonical JSON line
each, as the engine produced them when the file was last regenerated.

`tests/golden/test_golden.py` reproduces them byte for byte. Regenerating is a deliberate
command whose diff is reviewed, never a side effect of a test run:

    scripts/golden            # show how today's engine differs from the committed files
    scripts/golden --write    # rewrite them (commit with the reason in the message)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import lzma
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import orjson

from engine.clock import ManualClock
from engine.features import PROFILE_TS_FIELD
from engine.kafka_io import partition_for
from engine.pipeline import Record
from engine.scoring.chain import FallbackChain
from engine.scoring.registry import ModelRegistry
from engine.testing import FeedResult, feed
from topologies.fraud import TOPOLOGY
from topologies.fraud.workload import generate

HERE = Path(__file__).resolve().parent
INPUT = HERE / "fraud-input.jsonl.xz"
PROFILES = HERE / "fraud-profiles.json"
PARTITIONS = 8
TOPIC = "fraud.events"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NOW_MS = 1_800_000_000_000    # the ManualClock: decided_at_ms and DLQ received_at_ms
POLL_RECORDS = 1000
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Variant:
    """One golden run: which records, which models."""

    name: str
    records: int | None  # the first N input records; None: all
    without: tuple[str, ...] = ()  # model slots that are unavailable

    @property
    def path(self) -> Path:
        return HERE / f"fraud-{self.name}.golden.xz"


VARIANTS = (Variant("full", None), Variant("no-primary", 6000, without=("primary",)))


# -- the input: built once by `scripts/golden --write-input`, then committed ----------------


def build_input() -> tuple[list[Record], dict[str, dict]]:
    """The reference records (partition, offset, key, value, record time) and profiles."""
    rng = np.random.default_rng(19)
    dense = generate(9000, seed=101, cards=300, duplicates=0.03, disorder=0.08, late=0.01,
                     start_ms=START_MS, mean_gap_ms=30.0)
    sparse = generate(10000, seed=202, cards=300, duplicates=0.02, disorder=0.05, late=0.005,
                      start_ms=START_MS + 600_000, mean_gap_ms=9_500.0)
    events: list[dict | None] = [*dense.events, *sparse.events]
    # Re-sends: some of the sparse stretch's first events ~26 h later (past the dedup TTL,
    # and late), and some of its last events again (duplicates within the TTL).
    early = sparse.events[:400:10]
    events += [dict(e) for e in early] + [dict(e) for e in sparse.events[-300::15]]
    values: list[bytes | None] = [orjson.dumps(e) for e in events]
    keys: list[bytes | None] = [e["card_id"].encode() for e in events]  # type: ignore[index]
    for i in rng.choice(len(values), 1 + len(values) // 100, replace=False).tolist():
        keys[i] = None  # a producer that sends no key: partitioned by the card all the same
    foreign = set(rng.choice(len(values), len(values) // 200, replace=False).tolist())
    # Bad records of every kind, spread over the stream.
    for pos, (key, value) in zip(rng.choice(len(values), len(_BAD), replace=False).tolist(),
                                 _BAD, strict=True):
        values.insert(pos, value)
        keys.insert(pos, key)
    records: list[Record] = []
    offsets = [0] * PARTITIONS
    arrival = START_MS
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        card = _card(value)
        if i in foreign and card is not None:
            key = b"m-" + card.encode()  # keyed by something else: lands where that key hashes,
            # and is decided on its card's partition all the same (routed there)
        route = key if key is not None and i in foreign else (card or "").encode() or key
        p = partition_for(route, PARTITIONS) if route else 0
        ts = _ts(value)
        if ts is not None:
            arrival = max(arrival, ts)
        arrival += 20
        records.append(Record(TOPIC, p, offsets[p], key, value, arrival))
        offsets[p] += 1
    profiles = {}
    stale = set(rng.choice(300, 30, replace=False).tolist())
    for card, prof in dense.profiles.items():
        written = START_MS - (int(7.6 * 24 * HOUR_MS) if int(card[1:]) in stale else HOUR_MS)
        profiles[card] = {**prof, PROFILE_TS_FIELD: written}
    return records, profiles


def _event(eid: str, **over: object) -> dict:
    ev: dict = {"event_id": eid, "card_id": "c000007", "merchant_id": "m00001", "amount": 12.5,
                "currency": "USD", "country": "US", "ts_ms": START_MS + 60_000}
    ev.update(over)
    return ev


def _bad() -> list[tuple[bytes | None, bytes | None]]:
    j = orjson.dumps
    big = j(_event("bad-oversized", pad="x" * (1 << 20)))
    return [
        (b"c000007", b""), (b"c000007", None),
        (b"c000007", big),
        (b"c000007", j(_event("bad-utf8", merchant_id="m-PH")).replace(b"PH", b"\xff\xfe")),
        (b"c000007", j(_event("bad-json"))[:-7]), (b"c000007", b"[1, 2, 3]"),
        (b"c000007", b'"just a string"'), (b"c000007", b"{}"),
        (b"c000007", j(_event("bad-nan")).replace(b"12.5", b"NaN")),
        (b"c000007", j(_event("bad-inf")).replace(b"12.5", b"Infinity")),
        (b"c000007", j(_event("bad-big")).replace(b"12.5", b"1e400")),
        (None, j(_event("bad-nocard", card_id=""))),
        (b"c000007", j(_event(""))),
        (b"c000007", j({k: v for k, v in _event("bad-absent").items() if k != "card_id"})),
        (b"c000007", j({k: v for k, v in _event("bad-noid").items() if k != "event_id"})),
        (b"c000007", j(_event("bad-str", amount="12.5"))),
        (b"c000007", j(_event("bad-bool", amount=True))),
        (b"c000007", j(_event("bad-float-ts", ts_ms=float(START_MS)))),
        (b"c000007", j(_event("bad-zero", amount=0))),
        (b"c000007", j(_event("bad-currency", currency="US"))),
        (b"c000007", j(_event("bad-2p53", ts_ms=1 << 53))),
        (b"c000007", j(_event("bad-negative-ts", ts_ms=-1))),
        (b"c000007", j(_event("bad-long-id", event_id="e" * 129))),
        (b"c000007", j(_event("dup-keys")).replace(b'"amount":12.5', b'"amount":1.0,"amount":2.5')),
    ]


_BAD = _bad()


def _card(value: bytes | None) -> str | None:
    try:
        card = orjson.loads(value or b"").get("card_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return card if isinstance(card, str) and card else None


def _ts(value: bytes | None) -> int | None:
    try:
        ts = orjson.loads(value or b"").get("ts_ms")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return ts if type(ts) is int and 0 <= ts < 1 << 53 else None


def write_input(records: list[Record], profiles: dict[str, dict]) -> None:
    lines = []
    for r in records:
        row: dict = {"p": r.partition, "o": r.offset, "ts": r.timestamp_ms,
                     "key": None if r.key is None else r.key.decode()}
        if r.value is None:
            row["value"] = None
        else:
            try:
                row["value"] = r.value.decode("utf-8")
            except UnicodeDecodeError:
                row["value_b64"] = base64.b64encode(r.value).decode()
        lines.append(orjson.dumps(row))
    INPUT.write_bytes(lzma.compress(b"\n".join(lines) + b"\n", preset=9))
    PROFILES.write_bytes(orjson.dumps(profiles, option=orjson.OPT_SORT_KEYS
                                      | orjson.OPT_INDENT_2) + b"\n")


# -- the committed input and the canonical output ------------------------------------------


def load_input() -> tuple[list[Record], dict[str, dict]]:
    records = []
    for line in lzma.decompress(INPUT.read_bytes()).splitlines():
        row = orjson.loads(line)
        if "value_b64" in row:
            value = base64.b64decode(row["value_b64"])
        else:
            value = None if row["value"] is None else row["value"].encode()
        key = None if row["key"] is None else row["key"].encode()
        records.append(Record(TOPIC, row["p"], row["o"], key, value, row["ts"]))
    return records, orjson.loads(PROFILES.read_bytes())


def decider(without: tuple[str, ...] = ()) -> FallbackChain:
    """The fraud topology's fallback chain over its shipped models, as replay builds it
    (no latency timeouts, so the path never depends on machine load)."""
    fs = TOPOLOGY.features.versioned_name
    registry = ModelRegistry(TOPOLOGY.models_dir, TOPOLOGY.features.names, fs)
    registry.refresh()
    settings = replace(TOPOLOGY.scoring, timeout_ms=60_000, backup_timeout_ms=60_000)

    def models(name: str):
        return None if name in without else registry.get(name)

    return FallbackChain(settings, TOPOLOGY.rules, fs, models, ManualClock(NOW_MS))


def run(variant: Variant, records: list[Record] | None = None,
        profiles: dict[str, dict] | None = None) -> FeedResult:
    if records is None or profiles is None:
        records, profiles = load_input()
    if variant.records is not None:
        records = records[:variant.records]
    chain = decider(variant.without)
    try:
        return feed(TOPOLOGY, records, profiles=profiles, decider=chain,
                    clock=ManualClock(NOW_MS), poll_records=POLL_RECORDS,
                    partitions=PARTITIONS)
    finally:
        chain.close()


def decision_line(partition: int, body: bytes) -> bytes:
    """A decision as the golden file holds it: sorted keys, without `stage_ms`."""
    doc = orjson.loads(body)
    doc.pop("stage_ms", None)
    return orjson.dumps({"kind": "decision", "partition": partition, **doc},
                        option=orjson.OPT_SORT_KEYS)


def side_line(kind: str, partition: int, key: bytes | None, value: bytes,
              headers: dict[str, str]) -> bytes:
    """A dead-letter or late record: its headers (but the wall-clock receive time), its key
    and a digest of its value."""
    fields = {k.removeprefix("streamwise."): v for k, v in headers.items()
              if k != "streamwise.received_at_ms"}
    return orjson.dumps({"kind": kind, "partition": partition,
                         "key": None if key is None else key.decode("utf-8", "replace"),
                         "value_sha256": hashlib.sha256(value).hexdigest(), **fields},
                        option=orjson.OPT_SORT_KEYS)


def canonical(result: FeedResult) -> bytes:
    """The golden text of one run: decisions, DLQ, late (each by partition, in order), then
    the tables by partition and entity key."""
    lines: list[bytes] = []
    for p in sorted(result.decisions):
        lines += [decision_line(p, body) for body in result.decisions[p]]
    for kind, per_partition in (("dlq", result.dlq), ("late", result.late)):
        for p in sorted(per_partition):
            lines += [side_line(kind, p, r.key, r.value,
                                {k: v.decode() for k, v in r.headers}) for r in per_partition[p]]
    for name in sorted(result.tables):
        for p in sorted(result.tables[name]):
            for key in sorted(result.tables[name][p]):
                row = result.tables[name][p][key]
                lines.append(orjson.dumps({"kind": "table", "table": name, "partition": p,
                                           "key": key, "last_ts_ms": row.last_ts_ms,
                                           "tiles": [list(t) for t in row.tiles]}))
    return b"\n".join(lines) + b"\n"


def read_golden(variant: Variant) -> bytes:
    return lzma.decompress(variant.path.read_bytes())


def differences(want: bytes, got: bytes, limit: int = 5) -> list[str]:
    """A reviewer's summary: line counts per kind, then the first differing lines."""
    w, g = want.splitlines(), got.splitlines()
    out = []
    for kind in (b"decision", b"dlq", b"late", b"table"):
        tag = b'"kind":"' + kind + b'"'
        nw, ng = sum(tag in x for x in w), sum(tag in x for x in g)
        changed = len({x for x in w if tag in x} ^ {x for x in g if tag in x}) // 2
        out.append(f"{kind.decode()}: {nw} golden, {ng} now, ~{changed} differ")
    shown = 0
    for i, (a, b) in enumerate(zip(w, g, strict=False)):
        if a != b:
            out += [f"line {i + 1}:", f"  golden {a[:400].decode(errors='replace')}",
                    f"  now    {b[:400].decode(errors='replace')}"]
            shown += 1
            if shown >= limit:
                break
    if len(w) != len(g):
        out.append(f"{len(w)} lines golden, {len(g)} now")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/golden", description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the golden outputs")
    ap.add_argument("--write-input", action="store_true",
                    help="rebuild the input from the generator too (changes every golden)")
    args = ap.parse_args(argv)
    if args.write_input:
        write_input(*build_input())
    records, profiles = load_input()
    differ = 0
    for variant in VARIANTS:
        got = canonical(run(variant, records, profiles))
        if variant.path.exists() and read_golden(variant) == got:
            print(f"{variant.name}: identical ({len(got.splitlines()):,} lines)")
            continue
        differ += 1
        if variant.path.exists():
            print(f"{variant.name}: differs")
            print("\n".join(f"  {line}" for line in differences(read_golden(variant), got)))
        else:
            print(f"{variant.name}: no golden file yet")
        if args.write:
            variant.path.write_bytes(lzma.compress(got, preset=9))
            print(f"  wrote {variant.path.name} ({variant.path.stat().st_size:,} bytes)")
    return 1 if differ and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
