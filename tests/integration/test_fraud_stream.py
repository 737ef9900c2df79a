"""End to end against a real broker: the fraud worker's outputs and state equal the oracle's.

The worker runs as a subprocess (`python -m engine worker fraud ...`); the test only talks to
it through Kafka topics and HTTP. Expected results come from `fraud_oracle`, an independent
recomputation over the input topic as consumed back from the broker.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import sys
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

try:  # tests/ as a package, or rootdir-relative imports
    from .fraud_oracle import (
        AGENT_FEATURES,
        FEATURE_NAMES,
        TILE_MS,
        OracleResult,
        card_partition,
        parse,
        run_in_decided_order,
        run_oracle,
    )
    from .worker_checks import DECISION_FIELDS, DLQ_TRUNCATE, assert_clean
    from .worker_harness import (
        INPUT_MAX_MESSAGE_BYTES,
        REPO,
        FraudTopics,
        WorkerProcess,
        committed_offsets,
        consume_all,
        create_topics,
        end_offsets,
        fetch_json,
        produce,
        wait_drained,
    )
except ImportError:
    from fraud_oracle import (
        AGENT_FEATURES,
        FEATURE_NAMES,
        TILE_MS,
        OracleResult,
        card_partition,
        parse,
        run_in_decided_order,
        run_oracle,
    )
    from worker_checks import DECISION_FIELDS, DLQ_TRUNCATE, assert_clean
    from worker_harness import (
        INPUT_MAX_MESSAGE_BYTES,
        REPO,
        FraudTopics,
        WorkerProcess,
        committed_offsets,
        consume_all,
        create_topics,
        end_offsets,
        fetch_json,
        produce,
        wait_drained,
    )

from topologies.fraud.workload import bad_records, generate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

PARTITIONS = 4
WITH_CARD_RISK = "topologies.fraud:WITH_CARD_RISK"  # fraud with every opt-in anomaly agent
WITH_MERCHANT_RISK = "topologies.fraud:WITH_MERCHANT_RISK"  # fraud with the merchant features
DLQ_HEADERS = ("streamwise.reason", "streamwise.detail", "streamwise.topic",
               "streamwise.partition", "streamwise.offset", "streamwise.received_at_ms")


# -- setup --------------------------------------------------------------------------------------


@pytest.fixture
def workers(tmp_path: Path, kafka_bootstrap: str):
    """Factory of worker processes; every one is SIGKILLed by PID at teardown if still alive."""
    made: list[WorkerProcess] = []

    def make(prefix: str, name: str = "w1", topology: str = "fraud") -> WorkerProcess:
        w = WorkerProcess(kafka_bootstrap, prefix, tmp_path / f"data-{name}",
                          tmp_path / f"worker-{name}.log", partitions=PARTITIONS,
                          topology=topology)
        made.append(w)
        return w

    yield make
    for w in made:
        w.kill()


async def _prepare(broker: str, prefix: str, profiles: dict[str, dict]) -> FraudTopics:
    """Input topic (accepts 8 MiB records) and profiles, before any worker starts."""
    topics = FraudTopics(prefix)
    await create_topics(broker, [
        (topics.events, PARTITIONS, {"max.message.bytes": str(INPUT_MAX_MESSAGE_BYTES)}),
        (topics.profiles, PARTITIONS, {"cleanup.policy": "compact"}),
    ])
    await produce(broker, topics.profiles,
                  ((card.encode(), orjson.dumps(p)) for card, p in sorted(profiles.items())))
    return topics


def _stream(events: list[dict], bad_at: dict[int, tuple[bytes | None, bytes, str]] | None = None,
            ) -> list[tuple[bytes | None, bytes]]:
    """Kafka (key, value) pairs: events keyed by card, bad records inserted before positions."""
    out: list[tuple[bytes | None, bytes]] = []
    bad_at = bad_at or {}
    for i, ev in enumerate(events):
        if i in bad_at:
            key, value, _ = bad_at[i]
            out.append((key, value))
        out.append((ev["card_id"].encode(), orjson.dumps(ev)))
    return out


def _spread_bad_records(n_events: int) -> dict[int, tuple[bytes | None, bytes, str]]:
    bad = bad_records()
    step = n_events // (len(bad) + 1)
    return {step * (i + 1): rec for i, rec in enumerate(bad)}


async def _oracle(broker: str, topics: FraudTopics, profiles: dict) -> OracleResult:
    consumed = await consume_all(broker, topics.events)
    return run_oracle([(r.partition, r.offset, r.value) for r in consumed], profiles)


# -- checks: each returns a list of human-readable problems ------------------------------------


def _feature_problems(expected: dict, got: object) -> list[str]:
    if not isinstance(got, dict):
        return [f"features is {type(got).__name__}, not an object"]
    out = []
    # the merchant features only with topologies.fraud:WITH_MERCHANT_RISK (and WITH_CARD_RISK)
    names = {*FEATURE_NAMES, *AGENT_FEATURES} if AGENT_FEATURES[0] in got else set(FEATURE_NAMES)
    if set(got) != names:
        out.append(f"feature names differ: missing {sorted(names - set(got))}, "
                   f"extra {sorted(set(got) - names)}")
    out += [f"{name}: {got[name]!r} is not a finite number" for name in AGENT_FEATURES
            if name in got and not (type(got[name]) in (int, float)
                                    and math.isfinite(got[name]))]
    for name in FEATURE_NAMES:
        if name not in got:
            continue
        e, g = expected[name], got[name]
        if e is None:
            ok = g is None
        elif isinstance(e, int):
            ok = type(g) is int and g == e
        else:
            ok = (type(g) in (int, float) and math.isfinite(g)
                  and math.isclose(g, e, rel_tol=1e-9, abs_tol=0.0))
        if not ok:
            out.append(f"{name}: expected {e!r}, got {g!r}")
    return out


def _check_decisions(oracle: OracleResult, decisions: list, *, exact_counts: bool,
                     ) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = defaultdict(list)
    by_event: dict[str, list[tuple[object, dict]]] = defaultdict(list)
    owners: dict[str, set[str]] = defaultdict(set)
    for r in decisions:
        try:
            d = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            problems["decision not JSON"].append(f"p{r.partition}@{r.offset}: {r.value[:100]!r}")
            continue
        missing = DECISION_FIELDS - set(d)
        if missing:
            problems["decision fields missing"].append(f"{d.get('event_id')}: {sorted(missing)}")
        by_event[d.get("event_id")].append((r, d))
        owners[d.get("decision_id")].add(d.get("event_id"))
    dup_counts = Counter(eid for _, _, eid in oracle.duplicates)

    for eid in sorted(set(oracle.outcome) - set(by_event)):
        ev = oracle.events[eid]
        problems["valid event without decision"].append(
            f"{eid} ({oracle.outcome[eid]}, card {ev['card_id']}, at "
            f"p{oracle.first_seen[eid][0]}@{oracle.first_seen[eid][1]})")
    for eid in sorted(set(by_event) - set(oracle.outcome), key=str):
        problems["decision for an unknown or invalid event id"].append(repr(eid))
    for did, eids in owners.items():
        if len(eids) > 1:
            problems["one decision_id for several events"].append(f"{did}: {sorted(eids)}")

    for eid, items in by_event.items():
        if eid not in oracle.outcome:
            continue
        ev = oracle.events[eid]
        ids = {d.get("decision_id") for _, d in items}
        if len(ids) != 1:
            problems["decision_id differs between re-emissions"].append(f"{eid}: {sorted(ids)}")
        if exact_counts and len(items) != 1 + dup_counts[eid]:
            problems["decision records != 1 + duplicates"].append(
                f"{eid}: {len(items)} records, {dup_counts[eid]} duplicate(s) in the input")
        seen_features: list[object] = []
        for r, d in items:
            if r.key != ev["card_id"].encode() or d.get("key") != ev["card_id"]:
                problems["decision key"].append(
                    f"{eid}: kafka key {r.key!r}, key {d.get('key')!r}, card {ev['card_id']}")
            if d.get("event_ts_ms") != ev["ts_ms"]:
                problems["event_ts_ms"].append(f"{eid}: {d.get('event_ts_ms')} != {ev['ts_ms']}")
            if d.get("decision") not in ("approve", "review", "decline"):
                problems["decision value"].append(f"{eid}: {d.get('decision')!r}")
            if d.get("features") in seen_features:
                continue
            seen_features.append(d.get("features"))
            bad = _feature_problems(oracle.features[eid], d.get("features"))
            if bad:
                problems["features differ from the oracle"].append(
                    f"{eid} ({oracle.outcome[eid]}, card {ev['card_id']}, ts {ev['ts_ms']}, "
                    f"amount {ev['amount']}): " + "; ".join(bad))
    return problems


def _check_late(oracle: OracleResult, late_records: list, *, exactly_once: bool,
                ) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = defaultdict(list)
    counts: Counter[str] = Counter()
    for r in late_records:
        headers = {k: v for k, v in r.headers}
        try:
            eid = orjson.loads(r.value)["event_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            problems["late record is not the raw event"].append(repr(r.value[:100]))
            continue
        counts[eid] += 1
        wm = headers.get("streamwise.watermark_ms")
        if wm is None:
            problems["late header streamwise.watermark_ms missing"].append(eid)
        elif eid in oracle.events:
            ts = oracle.events[eid]["ts_ms"]
            if not ts < int(wm) - 58_000:
                problems["late event not late against its stated watermark"].append(
                    f"{eid}: ts {ts}, watermark header {wm.decode()}")
    expected = oracle.late
    for eid in sorted(expected - set(counts)):
        p, o = oracle.first_seen[eid]
        problems["late event missing from the late topic"].append(
            f"{eid} (input p{p}@{o}, ts {oracle.events[eid]['ts_ms']}, "
            f"partition watermark at the end {oracle.watermark_ms[p]})")
    for eid in sorted(set(counts) - expected):
        problems["not a late event, but in the late topic"].append(
            f"{eid} (oracle: {oracle.outcome.get(eid, 'not a valid event')})")
    if exactly_once:
        for eid, n in sorted(counts.items()):
            if n != 1 and eid in expected:
                problems["late event not exactly once"].append(f"{eid}: {n} times")
    return problems


def _check_dlq(oracle: OracleResult, dlq_records: list, raw_by_location: dict,
               events_topic: str, *, exactly_once: bool) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = defaultdict(list)
    expected = {(p, o): reason for p, o, reason in oracle.dlq}
    counts: Counter[tuple[int, int]] = Counter()
    for r in dlq_records:
        headers = {k: v.decode("utf-8", "replace") for k, v in r.headers}
        missing = [h for h in DLQ_HEADERS if h not in headers]
        if missing:
            problems["DLQ headers missing"].append(f"p{r.partition}@{r.offset}: {missing}")
            continue
        loc = (int(headers["streamwise.partition"]), int(headers["streamwise.offset"]))
        counts[loc] += 1
        if headers["streamwise.topic"] != events_topic:
            problems["DLQ topic header"].append(f"{loc}: {headers['streamwise.topic']}")
        if not headers["streamwise.received_at_ms"].isdigit():
            problems["DLQ received_at_ms"].append(f"{loc}: {headers['streamwise.received_at_ms']}")
        if loc not in expected:
            problems["DLQ record for a valid input record"].append(
                f"{loc}: reason {headers['streamwise.reason']}, detail "
                f"{headers['streamwise.detail']!r}")
            continue
        if headers["streamwise.reason"] != expected[loc]:
            problems["DLQ reason"].append(f"{loc}: expected {expected[loc]}, got "
                                          f"{headers['streamwise.reason']} "
                                          f"({headers['streamwise.detail']!r})")
        raw = raw_by_location[loc] or b""
        if r.value != raw[:DLQ_TRUNCATE]:
            problems["DLQ value is not the raw bytes (64 KiB max)"].append(
                f"{loc}: {len(r.value or b'')} bytes vs {len(raw)} raw")
    for loc, reason in sorted(expected.items()):
        if loc not in counts:
            problems["bad record missing from the DLQ"].append(f"{loc}: {reason}")
        elif exactly_once and counts[loc] != 1:
            problems["DLQ record not exactly once"].append(f"{loc} ({reason}): {counts[loc]}")
    return problems


async def check_tables(oracle: OracleResult, base_url: str, cards: list[str] | None = None,
                       headers: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Problems of GET /v1/tables/velocity/{card} against the oracle (all cards by default)."""
    problems: dict[str, list[str]] = defaultdict(list)
    cards = sorted(oracle.card_partition) if cards is None else cards
    unknown = "zz-never-seen-card"
    answers = await fetch_json(base_url, [f"/v1/tables/velocity/{c}" for c in [*cards, unknown]],
                               headers=headers)
    status, body = answers[f"/v1/tables/velocity/{unknown}"]
    if status != 404:
        problems["unknown key is not 404"].append(f"{status}: {str(body)[:200]}")
    for card in cards:
        status, body = answers[f"/v1/tables/velocity/{card}"]
        expected = oracle.tile_dicts(card)
        if not expected:  # only late events: nothing to hold
            if status == 200 and isinstance(body, dict) and body.get("windows"):
                problems["tiles for a card without accepted events"].append(
                    f"{card}: {body['windows'][:2]}")
            elif status not in (200, 404):
                problems["table lookup status"].append(f"{card}: {status} {str(body)[:200]}")
            continue
        if status != 200 or not isinstance(body, dict):
            problems["table lookup status"].append(f"{card}: {status} {str(body)[:200]}")
            continue
        for field, want in (("table", "velocity"), ("key", card), ("stale", False)):
            if body.get(field) != want:
                problems[f"table response {field}"].append(f"{card}: {body.get(field)!r}")
        if not isinstance(body.get("served_by"), str):
            problems["table response served_by"].append(f"{card}: {body.get('served_by')!r}")
        want_wm = oracle.watermark_ms[oracle.card_partition[card]]
        if body.get("watermark_ms") != want_wm:
            problems["watermark_ms"].append(f"{card} (p{oracle.card_partition[card]}): "
                                            f"expected {want_wm}, got {body.get('watermark_ms')}")
        last = (body.get("value") or {}).get("last_ts_ms")
        if last != oracle.last_ts_ms[card]:
            problems["last_ts_ms"].append(f"{card}: expected {oracle.last_ts_ms[card]}, "
                                          f"got {last}")
        got = {w.get("start_ms"): w for w in body.get("windows") or []}
        horizon = oracle.expiry_horizon_ms(card)
        for start, want in expected.items():
            if start not in got:
                if horizon is None or start + TILE_MS > horizon:
                    problems["tile missing"].append(f"{card} tile {start}: {want}")
                continue
            w = got[start]
            v = w.get("value") or {}
            diffs = []
            if w.get("end_ms") != start + TILE_MS:
                diffs.append(f"end_ms {w.get('end_ms')}")
            for name in ("count", "min", "max", "distinct_count"):
                if v.get(name) != want[name]:
                    diffs.append(f"{name} {v.get(name)!r} != {want[name]!r}")
            for name, e in (("sum", want["sum"]), ("mean", want["sum"] / want["count"])):
                g = v.get(name)
                if not isinstance(g, int | float) or not math.isclose(g, e, rel_tol=1e-9):
                    diffs.append(f"{name} {g!r} != {e!r}")
            if diffs:
                problems["tile differs from the oracle"].append(f"{card} tile {start}: "
                                                               + "; ".join(diffs))
        for start in sorted(set(got) - set(expected), key=str):
            problems["tile the oracle does not have"].append(f"{card} tile {start}: "
                                                             f"{got[start].get('value')}")
    return problems


def _outcome_records(outcomes: list[dict]) -> list[tuple[bytes, bytes]]:
    """The outcome reports, keyed by card like the payments (so co-partitioned with them)."""
    return [(o["card_id"].encode(), orjson.dumps(o)) for o in outcomes]


async def check_agent_tables(decisions: list, outcomes: list[dict], base_url: str,
                             timeout_s: float = 120.0) -> dict[str, list[str]]:
    """The anomaly agents' rows, recomputed here from what reached their topics: per card,
    each distinct decision counted once by its outcome and each distinct report once by its
    kind; per merchant and partition (HTTP serves the row of the partition the merchant's key
    routes to), each event decided there counted once, and the times of the distinct reports
    of that partition's cards. Agents on Kafka topics apply them after the decisions are
    written, so this waits (bounded) until every row checked agrees, then reports what still
    differs."""
    by_card: dict[str, dict[str, str]] = defaultdict(dict)
    merchant_events: dict[tuple[int, str], set[str]] = defaultdict(set)
    for r in decisions:
        d = orjson.loads(r.value)
        by_card[d["key"]][d["decision_id"]] = d["decision"]
        merchant_events[r.partition, d["context"]["merchant_id"]].add(d["event_id"])
    want_risk = {card: Counter(ids.values()) for card, ids in by_card.items()}
    reports: dict[str, set[tuple[str, str]]] = defaultdict(set)
    merchant_reports: dict[tuple[int, str], dict[tuple[str, str], int]] = defaultdict(dict)
    for o in outcomes:
        reports[o["card_id"]].add((o["kind"], o["event_id"]))
        merchant_reports[card_partition(o["card_id"], PARTITIONS), o["merchant_id"]][
            o["kind"], o["event_id"]] = o["reported_ms"]
    want_outcomes = {card: Counter(kind for kind, _ in seen) for card, seen in reports.items()}
    # the busiest cards and merchants, every 7th, and every card and merchant with a report
    cards = sorted(want_risk, key=lambda c: (-sum(want_risk[c].values()), c))
    checked = sorted(set(cards[:100]) | set(cards[::7]))
    want_payments = {m: len(merchant_events[card_partition(m, PARTITIONS), m])
                     for m in {m for _, m in merchant_events}}
    merchants = sorted(want_payments, key=lambda m: (-want_payments[m], m))
    checked_merchants = sorted(set(merchants[:100]) | set(merchants[::7]))
    want_times = {m: sorted(merchant_reports.get((card_partition(m, PARTITIONS), m), {})
                            .values())
                  for m in {m for _, m in merchant_reports}}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        problems: dict[str, list[str]] = {"agent card_risk": [], "agent card_outcomes": [],
                                          "agent merchant_stats": [],
                                          "agent merchant_reports": []}
        paths = [f"/v1/tables/card_risk/{c}" for c in checked] + \
            [f"/v1/tables/card_outcomes/{c}" for c in sorted(want_outcomes)] + \
            [f"/v1/tables/merchant_stats/{m}" for m in checked_merchants] + \
            [f"/v1/tables/merchant_reports/{m}" for m in sorted(want_times)]
        got = await fetch_json(base_url, paths)
        for c in checked:
            status, body = got[f"/v1/tables/card_risk/{c}"]
            want = want_risk[c]
            if status != 200:
                problems["agent card_risk"].append(f"{c}: HTTP {status} {body}")
                continue
            row = body["value"]
            have = {k: row.get(k, 0) for k in ("approve", "review", "decline")}
            if have != {k: want.get(k, 0) for k in have} or \
                    row["decisions"] != sum(want.values()):
                problems["agent card_risk"].append(
                    f"{c}: row {have} of {row['decisions']} vs {dict(want)}")
        for c, want in want_outcomes.items():
            status, body = got[f"/v1/tables/card_outcomes/{c}"]
            if status != 200:
                problems["agent card_outcomes"].append(f"{c}: HTTP {status} {body}")
                continue
            row = body["value"]
            have = {k: row[k] for k in ("confirmed_fraud", "chargeback")}
            if have != {k: want.get(k, 0) for k in have} or \
                    row["compromised"] != (want.get("confirmed_fraud", 0) > 0):
                problems["agent card_outcomes"].append(f"{c}: row {row} vs {dict(want)}")
        for m in checked_merchants:
            status, body = got[f"/v1/tables/merchant_stats/{m}"]
            want_n = want_payments[m]
            have_n = body["value"]["payments"] if status == 200 else 0
            if have_n != want_n and not (status == 404 and want_n == 0):
                problems["agent merchant_stats"].append(
                    f"{m}: HTTP {status}, {have_n} payments counted vs {want_n} decided")
        for m, times in want_times.items():
            status, body = got[f"/v1/tables/merchant_reports/{m}"]
            have_t = body["value"]["reports"] if status == 200 else []
            if have_t != times:
                problems["agent merchant_reports"].append(
                    f"{m}: HTTP {status}, report times {have_t} vs {times}")
        if not any(problems.values()) or loop.time() > deadline:
            print(f"agent tables: {len(checked)} card_risk, {len(want_outcomes)} "
                  f"card_outcomes, {len(checked_merchants)} merchant_stats and "
                  f"{len(want_times)} merchant_reports rows checked")
            return {k: v for k, v in problems.items() if v}
        await asyncio.sleep(0.5)


def _summary(oracle: OracleResult) -> str:
    return (f"{len(oracle.outcome)} valid events ({len(oracle.late)} late), "
            f"{len(oracle.duplicates)} duplicates, {len(oracle.dlq)} DLQ, "
            f"{len(oracle.card_partition)} cards")


# -- tests --------------------------------------------------------------------------------------


async def test_worker_matches_the_oracle(kafka_bootstrap: str, unique_prefix: str,
                                         workers) -> None:
    w = generate(20_000, seed=7)
    topics = await _prepare(kafka_bootstrap, unique_prefix, w.profiles)
    stream = _stream(w.events, _spread_bad_records(len(w.events)))
    worker = workers(unique_prefix, topology=WITH_CARD_RISK)
    worker.start()
    await worker.wait_ready()  # it has made the outcomes topic
    await produce(kafka_bootstrap, topics.events, stream)
    await produce(kafka_bootstrap, topics.outcomes, _outcome_records(w.side["outcomes"]))

    oracle = await _oracle(kafka_bootstrap, topics, w.profiles)
    assert sorted(r for _, _, r in oracle.dlq) == sorted(r for _, _, r in bad_records())
    decisions = await wait_drained(kafka_bootstrap, topics, set(oracle.outcome), worker)
    late = await consume_all(kafka_bootstrap, topics.late)
    dlq = await consume_all(kafka_bootstrap, topics.dlq)
    raw = {(r.partition, r.offset): r.value
           for r in await consume_all(kafka_bootstrap, topics.events)}
    print(_summary(oracle), f"; {len(decisions)} decision records")

    assert_clean(
        _check_decisions(oracle, decisions, exact_counts=True),
        _check_late(oracle, late, exactly_once=True),
        _check_dlq(oracle, dlq, raw, topics.events, exactly_once=True),
        await check_tables(oracle, worker.url),
        await check_agent_tables(decisions, w.side["outcomes"], worker.url),
    )
    assert worker.stop() == 0, worker.log_tail()


async def test_crashes_and_lost_state_change_nothing(kafka_bootstrap: str, unique_prefix: str,
                                                    workers) -> None:
    w = generate(20_000, seed=29)
    topics = await _prepare(kafka_bootstrap, unique_prefix, w.profiles)
    stream = _stream(w.events, _spread_bad_records(len(w.events)))
    chunks = [stream[k * 5_000:(k + 1) * 5_000] for k in range(3)] + [stream[15_000:]]
    worker = workers(unique_prefix, topology=WITH_CARD_RISK)
    worker.start()
    await worker.wait_ready()
    outcomes = w.side["outcomes"]  # reported while the worker is killed three times
    reporting = asyncio.create_task(produce(kafka_bootstrap, topics.outcomes,
                                            _outcome_records(outcomes), rate_eps=100))

    for k, chunk in enumerate(chunks):
        sending = asyncio.create_task(produce(kafka_bootstrap, topics.events, chunk,
                                              rate_eps=5_000))
        if k < 3:
            await asyncio.sleep(0.7)  # mid-chunk: the worker is consuming and writing
            worker.kill()
            ends = await end_offsets(kafka_bootstrap, topics.events)
            done = await committed_offsets(kafka_bootstrap, topics.group, topics.events)
            print(f"kill {k + 1}: committed {done} of end offsets {ends} (so far)")
        await sending
        if k < 3:
            if k == 1:  # the disk is gone: state must come back from the changelog
                shutil.rmtree(worker.data_dir, ignore_errors=True)
            worker.start()
            await worker.wait_ready()

    await reporting
    oracle = await _oracle(kafka_bootstrap, topics, w.profiles)
    decisions = await wait_drained(kafka_bootstrap, topics, set(oracle.outcome), worker,
                                   timeout_s=240)
    late = await consume_all(kafka_bootstrap, topics.late)
    dlq = await consume_all(kafka_bootstrap, topics.dlq)
    raw = {(r.partition, r.offset): r.value
           for r in await consume_all(kafka_bootstrap, topics.events)}
    print(_summary(oracle), f"; {len(decisions)} decision records after 3 kills")

    assert_clean(
        _check_decisions(oracle, decisions, exact_counts=False),
        _check_late(oracle, late, exactly_once=False),
        _check_dlq(oracle, dlq, raw, topics.events, exactly_once=False),
        await check_tables(oracle, worker.url),
        await check_agent_tables(decisions, outcomes, worker.url),
    )


async def _wait_committed(broker: str, group: str, topic: str, worker: WorkerProcess,
                          timeout_s: float = 120.0) -> None:
    """Until the worker's group has committed every record of `topic` (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        worker.check_alive(f"while it reads {topic}")
        ends = await end_offsets(broker, topic)
        done = await committed_offsets(broker, group, topic)
        if all(done.get(p, 0) >= end for p, end in ends.items()):
            return
        assert asyncio.get_running_loop().time() < deadline, (topic, done, ends)
        await asyncio.sleep(0.2)


async def test_replay_reproduces_the_decisions_that_read_the_agents_tables(
        kafka_bootstrap: str, unique_prefix: str, workers, tmp_path: Path) -> None:
    """#17: the merchant features are read from the agents' tables, which change where the
    worker's polls end and as reports arrive. A replay from the beginning decides every event
    byte for byte as the worker did (scores, features, paths), from its progress records."""
    w = generate(30_000, seed=41, mean_gap_ms=200.0)  # 100 minutes: reports come 5-60 min in
    topics = await _prepare(kafka_bootstrap, unique_prefix, w.profiles)
    stream = _stream(w.events)
    worker = workers(unique_prefix, topology=WITH_MERCHANT_RISK)
    worker.start()
    await worker.wait_ready()  # it has made the outcomes and progress topics
    # Payments in six bursts; before each, the reports made by then (by event time), so the
    # outcomes agent applies them between bursts, mid-stream (agents wait while the input has
    # a backlog: each burst is decided, and the reports read, before the next).
    reports = sorted(w.side["outcomes"], key=lambda o: o["reported_ms"])
    cut = len(stream) // 6 + 1
    sent = 0
    for k in range(6):
        burst = stream[k * cut:(k + 1) * cut]
        newest = max(orjson.loads(v)["ts_ms"] for _, v in stream[:k * cut]) if k else 0
        due = [o for o in reports[sent:] if o["reported_ms"] <= newest]
        await produce(kafka_bootstrap, topics.outcomes, _outcome_records(due))
        sent += len(due)
        await _wait_committed(kafka_bootstrap, topics.group, topics.outcomes, worker)
        await produce(kafka_bootstrap, topics.events, burst, rate_eps=20_000)
        await _wait_committed(kafka_bootstrap, topics.group, topics.events, worker)
    ids = {e["event_id"] for e in w.events}
    decisions = await wait_drained(kafka_bootstrap, topics, ids, worker, timeout_s=240)
    assert worker.stop() == 0, worker.log_tail()

    out = tmp_path / "replay.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "replay", WITH_MERCHANT_RISK, "--broker", kafka_bootstrap,
         "--topic-prefix", unique_prefix, "--partitions", str(PARTITIONS), "--from-beginning",
         "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "no agent progress recorded" not in proc.stderr, proc.stderr[-4000:]

    def same(d: dict) -> bytes:  # what replay must reproduce: all but the wall-clock times
        return orjson.dumps({k: v for k, v in d.items()
                             if k not in ("stage_ms", "decided_at_ms", "partition")},
                            option=orjson.OPT_SORT_KEYS)

    live: dict[str, dict] = {}
    for r in decisions:  # no crash: each event decided once, duplicates re-emit it
        d = orjson.loads(r.value)
        live.setdefault(d["event_id"], d)
    replayed: dict[str, dict] = {}
    for line in out.read_bytes().splitlines():
        d = orjson.loads(line)
        replayed.setdefault(d["event_id"], d)
    assert set(replayed) == set(live) == ids
    differ = [eid for eid in ids if same(live[eid]) != same(replayed[eid])]
    examples = [(same(live[e]), same(replayed[e])) for e in differ[:2]]
    assert not differ, f"{len(differ)} of {len(ids)} decisions differ, e.g. {examples}"
    # ... and the features replayed were the agents': reports counted, amounts compared
    risky = sum(d["features"]["merchant_risk"] > 0 for d in live.values())
    unusual = sum(d["features"]["merchant_amount_z"] != 0 for d in live.values())
    print(f"{len(ids)} decisions replayed byte for byte; merchant_risk > 0 in {risky}, "
          f"merchant_amount_z != 0 in {unusual}; {sent} reports")
    assert risky > 20 and unusual > len(ids) // 3, (risky, unusual)


# -- producers that do not key by card (#13 item 2) -------------------------------------------


def _misrouting_partitioner(key: bytes | None, value: bytes | None) -> int | None:
    """Where the test's mixed producers put a record: null keys anywhere (aiokafka's default
    picks a random partition), half of the keyed records where librdkafka's CRC32 partitioner
    would (kcat -K, confluent-kafka), the other half where the Java client would."""
    if key is None or zlib.crc32(value or b"") % 2:
        return None
    return zlib.crc32(key) % PARTITIONS


def _mixed_keys(stream: list[tuple[bytes | None, bytes]]) -> list[tuple[bytes | None, bytes]]:
    """Every third event without a key; bad records keep theirs."""
    return [(None if i % 3 == 0 and isinstance(parse(value), dict) else key, value)
            for i, (key, value) in enumerate(stream)]


def _order_oracle(landed: list, decisions: list, profiles: dict, check_order: bool,
                  ) -> tuple[OracleResult, dict[str, list[str]]]:
    """The oracle over each card partition's input in the order the worker decided it
    (`fraud_oracle.run_in_decided_order`, which the chaos verifier uses too), and the problems
    of that order: decisions on a partition that is not the card's, a lateness the decision
    states against the recomputed one, and (`check_order`) sources whose order was not kept."""
    placed = run_in_decided_order([(r.partition, r.offset, r.value) for r in landed],
                                  [(r.partition, r.offset, r.value) for r in decisions],
                                  profiles, PARTITIONS, check_source_order=check_order)
    return placed.oracle, placed.problems


async def _misrouted_run(broker: str, prefix: str, workers, seed: int, kills: int) -> None:
    w = generate(12_000, seed=seed)
    topics = await _prepare(broker, prefix, w.profiles)
    stream = _mixed_keys(_stream(w.events, _spread_bad_records(len(w.events))))
    expected = {e["event_id"] for e in w.events}
    worker = workers(prefix)
    worker.start()
    await worker.wait_ready()
    size = len(stream) // (kills + 1) + 1
    for k in range(kills + 1):
        sending = asyncio.create_task(produce(broker, topics.events, stream[k * size:
                                                                           (k + 1) * size],
                                              rate_eps=5_000 if kills else 0.0,
                                              partition_of=_misrouting_partitioner))
        if k < kills:
            await asyncio.sleep(0.7)  # mid-chunk: records are being forwarded and decided
            worker.kill()
        await sending
        if k < kills:
            worker.start()
            await worker.wait_ready()
    decisions = await wait_drained(broker, topics, expected, worker, timeout_s=240)
    landed = await consume_all(broker, topics.events)
    forwarded = await consume_all(broker, topics.repartition)
    oracle, order = _order_oracle(landed, decisions, w.profiles, check_order=not kills)
    late = await consume_all(broker, topics.late)
    dlq = await consume_all(broker, topics.dlq)
    raw = {(r.partition, r.offset): r.value for r in landed}
    moved = sum(1 for r in landed if isinstance(parse(r.value), dict)
                and card_partition(parse(r.value)["card_id"], PARTITIONS) != r.partition)
    print(_summary(oracle), f"; {moved} events produced to another partition than their "
          f"card's, {len(forwarded)} forwarded records, {len(decisions)} decision records, "
          f"{kills} kills")
    assert moved > len(w.events) // 3  # the producers really did not key by card
    assert len(forwarded) >= moved
    exact = kills == 0
    assert_clean(
        order,
        _check_decisions(oracle, decisions, exact_counts=exact),
        _check_late(oracle, late, exactly_once=exact),
        _check_dlq(oracle, dlq, raw, topics.events, exactly_once=exact),
        await check_tables(oracle, worker.url),
    )
    assert worker.stop() == 0, worker.log_tail()


async def test_events_not_keyed_by_card_are_decided_on_the_cards_partition(
        kafka_bootstrap: str, unique_prefix: str, workers) -> None:
    """#13 item 2: null keys and CRC32-placed keys (librdkafka's default) mixed with the
    topology's own murmur2; every card's state stays whole and equals the oracle's."""
    await _misrouted_run(kafka_bootstrap, unique_prefix, workers, seed=43, kills=0)


async def test_crashes_with_events_not_keyed_by_card_change_nothing(
        kafka_bootstrap: str, unique_prefix: str, workers) -> None:
    """The same producers, the worker SIGKILLed twice while it forwards and decides."""
    await _misrouted_run(kafka_bootstrap, unique_prefix, workers, seed=47, kills=2)


async def test_bad_input_goes_to_the_dlq_without_stalling(kafka_bootstrap: str,
                                                          unique_prefix: str, workers) -> None:
    w = generate(3_000, seed=31)
    topics = await _prepare(kafka_bootstrap, unique_prefix, w.profiles)
    bad = bad_records()
    # all bad records in the first half, each between good events; the second half must flow
    stream = _stream(w.events, {200 + 150 * i: rec for i, rec in enumerate(bad)})
    worker = workers(unique_prefix)
    worker.start()
    await worker.wait_ready()
    await produce(kafka_bootstrap, topics.events, stream)

    oracle = await _oracle(kafka_bootstrap, topics, w.profiles)
    assert len(oracle.dlq) == len(bad)
    decisions = await wait_drained(kafka_bootstrap, topics, set(oracle.outcome), worker,
                                   timeout_s=120)
    dlq = await consume_all(kafka_bootstrap, topics.dlq)
    raw = {(r.partition, r.offset): r.value
           for r in await consume_all(kafka_bootstrap, topics.events)}
    reasons = sorted(dict(r.headers)["streamwise.reason"].decode() for r in dlq)
    assert reasons == sorted(reason for _, _, reason in bad), reasons
    assert_clean(_check_dlq(oracle, dlq, raw, topics.events, exactly_once=True),
                 _check_decisions(oracle, decisions, exact_counts=True))
    assert worker.alive, worker.log_tail()
    health = await fetch_json(worker.url, ["/healthz", "/readyz"])
    assert health["/healthz"][0] == 200 and health["/readyz"][0] == 200, health
