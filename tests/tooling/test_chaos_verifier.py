"""The chaos suite's verifier can fail: given the outputs a correct worker would write it counts
nothing, and each kind of damage to them is counted where it belongs (lost, duplicate,
raw_duplicate, unexpected, wrong_value, unaccounted), a decision on another partition than its
card's or in another place than its features say included. The input holds null-keyed events
on other partitions than their cards', as the chaos streams do. Pure: no broker, no engine."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import orjson
import pytest
from aiokafka.partitioner import murmur2 as aiokafkas_murmur2

from tests.integration.chaos_harness import far_future_events, mix, poison_records
from tests.integration.chaos_verifier import (
    CardHistory,
    Expected,
    expected_outcomes,
    verify,
)
from tests.integration.fraud_oracle import card_partition, murmur2
from topologies.fraud.workload import generate

PARTITIONS = 4
RECORD_TS = 1_767_225_600_000 + 3_600_000  # the produce time of every record


@dataclass
class Rec:
    """What aiokafka's ConsumerRecord offers the verifier."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = RECORD_TS
    headers: list = field(default_factory=list)


def _input() -> list[Rec]:
    w = generate(600, seed=3, cards=60)
    cards = sorted({ev["card_id"] for ev in w.events})
    stream = mix(w.events, poison_records(14, 3, cards) + far_future_events(3, 3, cards), 3)
    offsets = [0] * PARTITIONS
    out = []
    for i, (key, value) in enumerate(stream):
        p = card_partition(key.decode(), PARTITIONS) if key is not None else i % PARTITIONS
        out.append(Rec(p, offsets[p], key, value))
        offsets[p] += 1
    return out


def _outputs(expected: Expected) -> tuple[list[Rec], list[Rec], list[Rec]]:
    """What a correct worker writes, deciding in `expected`'s order: one decision per valid
    event (on its card's partition) plus one per re-delivered duplicate, one DLQ record per bad
    record, one late record per late event. Offsets are spaced by 10 (room for damage)."""
    o = expected.oracle
    decisions, dlq, late = [], [], []
    for eid in sorted(o.outcome, key=expected.order.__getitem__):
        ev = o.events[eid]
        p = card_partition(ev["card_id"], PARTITIONS)
        doc = {"decision_id": f"d-{eid}", "event_id": eid, "key": ev["card_id"],
               "score": 0.1, "decision": "approve", "model": "primary:1", "path": "model",
               "reasons": ["late_event"] if o.outcome[eid] == "late" else [],
               "features": o.features[eid], "stage_ms": {},
               "event_ts_ms": ev["ts_ms"], "decided_at_ms": 0}
        value = orjson.dumps(doc)
        for _ in range(1 + sum(1 for *_, d in o.duplicates if d == eid)):
            decisions.append(Rec(p, 10 * len(decisions), ev["card_id"].encode(), value))
        if o.outcome[eid] == "late":
            late.append(Rec(p, len(late), ev["card_id"].encode(), orjson.dumps(ev),
                            headers=[("streamwise.watermark_ms",
                                      str(o.watermark_ms[p]).encode())]))
    for p, off, reason in o.dlq:
        raw = expected.locations[(p, off)] or b""
        dlq.append(Rec(p, len(dlq), None, raw[:64 * 1024], headers=[
            ("streamwise.reason", reason.encode()), ("streamwise.partition", b"%d" % p),
            ("streamwise.offset", b"%d" % off)]))
    return decisions, dlq, late


@dataclass
class Run:
    inputs: list[Rec]
    profiles: dict
    expected: Expected
    outputs: tuple[list[Rec], list[Rec], list[Rec]]

    def expect(self, decisions: list[Rec]) -> Expected:
        return expected_outcomes(self.inputs, self.profiles, decisions, PARTITIONS)


@pytest.fixture(scope="module")
def run() -> Run:
    """A correct worker's outputs, deciding in the order records landed (each card's events
    as their source partitions hold them, those of partition 0 first): what the verifier
    places an undecided event by, so nothing decided yet gives that order."""
    inputs, profiles = _input(), generate(600, seed=3, cards=60).profiles
    outputs = _outputs(expected_outcomes(inputs, profiles, [], PARTITIONS))
    return Run(inputs, profiles, expected_outcomes(inputs, profiles, outputs[0], PARTITIONS),
               outputs)


def _counts(rep) -> dict[str, int]:
    return {k: getattr(rep, k) for k in ("lost", "duplicate", "raw_duplicate", "unexpected",
                                         "wrong_value", "unaccounted")}


ZERO = dict.fromkeys(("lost", "duplicate", "raw_duplicate", "unexpected", "wrong_value",
                      "unaccounted"), 0)


def test_the_outputs_of_a_correct_worker_count_nothing(run: Run) -> None:
    expected, (decisions, dlq, late) = run.expected, run.outputs
    o = expected.oracle
    assert o.dlq and o.duplicates and o.late  # the input exercises every path
    assert expected.null_keyed >= 20 and expected.moved >= 15  # and the repartition topic
    assert {r for *_, r in o.dlq} >= {"empty", "not_utf8", "invalid_json", "non_finite",
                                      "missing_key", "schema", "future_time"}
    rep = verify("clean", expected, decisions, dlq, late)
    assert _counts(rep) == ZERO and rep.ok, rep.explain()


def _damaged(run: Run, how: str):
    expected, outputs = run.expected, run.outputs
    decisions, dlq, late = copy.deepcopy(outputs)
    o = expected.oracle
    first_accepted = next(i for i, r in enumerate(decisions)
                          if o.outcome[orjson.loads(r.value)["event_id"]] == "accepted")
    if how == "drop a decision":
        eid = orjson.loads(decisions[first_accepted].value)["event_id"]
        decisions = [r for r in decisions if orjson.loads(r.value)["event_id"] != eid]
    elif how == "wrong feature":
        doc = orjson.loads(decisions[first_accepted].value)
        doc["features"]["count_1h"] += 1
        decisions[first_accepted].value = orjson.dumps(doc)
    elif how == "decision for an unknown event":
        doc = orjson.loads(decisions[0].value)
        doc["event_id"] = doc["decision_id"] = "never-sent"
        decisions.append(Rec(decisions[0].partition, 10**6, decisions[0].key, orjson.dumps(doc)))
    elif how == "second decision":  # right after the first: the same place in the order
        r = decisions[first_accepted]
        doc = orjson.loads(r.value)
        doc["decision_id"] += "-again"
        decisions.append(Rec(r.partition, r.offset + 1, r.key, orjson.dumps(doc)))
    elif how == "decision on another partition":
        r = decisions[first_accepted]
        r.partition, r.offset = (r.partition + 1) % PARTITIONS, 10**6
    elif how == "two decisions of one card swapped":
        r, other = _same_card_pair(decisions)
        r.value, other.value = other.value, r.value
    elif how == "late decision without its late reason":
        i = next(i for i, r in enumerate(decisions)
                 if o.outcome[orjson.loads(r.value)["event_id"]] == "late")
        doc = orjson.loads(decisions[i].value)
        doc["reasons"] = []
        decisions[i].value = orjson.dumps(doc)
    elif how == "repeated decision":
        decisions.append(copy.deepcopy(decisions[first_accepted]))
    elif how == "drop a dead letter":
        dlq = dlq[1:]
    elif how == "dead letter for a valid record":
        p, off = o.first_seen[orjson.loads(decisions[first_accepted].value)["event_id"]]
        dlq.append(Rec(p, 10**6, None, b"x", headers=[
            ("streamwise.reason", b"schema"), ("streamwise.partition", b"%d" % p),
            ("streamwise.offset", b"%d" % off)]))
    elif how == "wrong dead-letter reason":
        dlq[0].headers[0] = ("streamwise.reason", b"oversized")
    elif how == "future event decided":
        p, off, _ = next(d for d in o.dlq if d[2] == "future_time")
        raw = orjson.loads(expected.locations[(p, off)])
        dlq = [r for r in dlq if dict(r.headers)["streamwise.offset"] != b"%d" % off
               or dict(r.headers)["streamwise.partition"] != b"%d" % p]
        decisions.append(Rec(p, 10**6, raw["card_id"].encode(), orjson.dumps(
            {**orjson.loads(decisions[0].value), "event_id": raw["event_id"],
             "key": raw["card_id"], "decision_id": "d-future"})))
    elif how == "drop a late record":
        late = late[1:]
    return verify(how, run.expect(decisions), decisions, dlq, late)


def _same_card_pair(decisions: list[Rec]) -> tuple[Rec, Rec]:
    """Two decisions of one card, one partition, whose features differ."""
    seen: dict[bytes, Rec] = {}
    for r in decisions:
        first = seen.setdefault(r.key, r)
        if first is not r and orjson.loads(first.value)["features"] != \
                orjson.loads(r.value)["features"]:
            return first, r
    raise AssertionError("no card with two different decisions")


@pytest.mark.parametrize("how, counted", [
    ("drop a decision", {"lost": 1, "unaccounted": None}),
    ("wrong feature", {"wrong_value": 1}),
    ("decision for an unknown event", {"unexpected": 1}),
    ("second decision", {"duplicate": 1, "raw_duplicate": 1}),
    ("decision on another partition", {"wrong_value": None}),
    ("two decisions of one card swapped", {"wrong_value": None}),
    ("late decision without its late reason", {"wrong_value": 1}),
    ("repeated decision", {"raw_duplicate": 1}),
    ("drop a dead letter", {"lost": 1, "unaccounted": 1}),
    ("dead letter for a valid record", {"unexpected": 1, "unaccounted": 1}),
    ("wrong dead-letter reason", {"wrong_value": 1}),
    ("future event decided", {"lost": 1, "unexpected": 1, "unaccounted": 1}),
    ("drop a late record", {"lost": 1}),
])
def test_each_kind_of_damage_is_counted_where_it_belongs(run: Run, how: str,
                                                         counted: dict) -> None:
    rep = _damaged(run, how)
    got = _counts(rep)
    for name, zero in ZERO.items():
        want = counted.get(name, zero)
        if want is None:  # at least one (one per input record of the dropped event)
            assert got[name] >= 1, (how, got)
        else:
            assert got[name] == want, (how, name, got, rep.explain())
    assert rep.ok == (set(counted) <= {"duplicate", "raw_duplicate"}), how


def test_a_lookup_matches_only_states_the_card_had(run: Run) -> None:
    o = run.expected.oracle
    expected = run.expected
    card = max(o.tiles, key=lambda c: sum(t.count for t in o.tiles[c].values()))
    history = CardHistory.of(expected, [card])
    states = history.states[card]
    assert len(states) >= 3
    for last, tiles in (states[0], states[len(states) // 2], states[-1]):
        body = {"value": {"last_ts_ms": last},
                "windows": [{"start_ms": s, "value": v} for s, v in tiles.items()]}
        assert history.matches(card, body)
    last, tiles = states[-1]
    start = max(tiles)
    wrong = {"value": {"last_ts_ms": last}, "windows": [
        {"start_ms": s, "value": {**v, "count": v["count"] + (s == start)}}
        for s, v in tiles.items()]}
    assert not history.matches(card, wrong)
    missing = {"value": {"last_ts_ms": last}, "windows": [
        {"start_ms": s, "value": v} for s, v in tiles.items() if s != start]}
    assert not history.matches(card, missing) or len(tiles) == 1


def test_the_verifiers_murmur2_is_kafkas() -> None:
    """The cards' partitions: murmur2 as aiokafka (and the Java client) computes it, every
    tail length."""
    rng = random.Random(5)
    keys = [bytes(rng.randrange(256) for _ in range(n)) for n in range(40) for _ in range(5)]
    for key in [*keys, b"c000123", "c\u00e9".encode()]:
        assert murmur2(key) & 0x7FFFFFFF == aiokafkas_murmur2(key) & 0x7FFFFFFF, key
