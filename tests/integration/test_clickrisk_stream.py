"""End to end against a real broker: the clickrisk topology (the second reference topology,
#17 item 4) equals its oracle, survives SIGKILLs, replays byte for byte and serves its own
OpenAPI document.

The worker runs as a subprocess (``python -m engine worker topologies.clickrisk:TOPOLOGY``,
by module path: it needs no reinstall) and the test only talks to it through Kafka and HTTP.
Expected results come from `clickrisk_oracle`, an independent recomputation over the input
topic as consumed back from the broker: event-time release order, tumbling and hopping
windows, dedup, lateness, dead letters.

clickrisk orders by event time: a live worker holds the newest 5 s of each partition until
the watermark passes them. Each stream here ends with one *flush* event per partition, 5 s
after the newest workload event, so every workload event is released and decided; the flush
events themselves stay held (the oracle says so), and each partition's committed offset stops
at its flush event (offsets are committed only up to the oldest held record).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.integration.clickrisk_oracle import (
    ALLOWED_LATENESS_MS,
    FEATURE_NAMES,
    INT_FEATURES,
    MAX_OUT_OF_ORDERNESS_MS,
    OracleResult,
    parse,
    run_oracle,
)
from tests.integration.fraud_oracle import card_partition
from tests.integration.worker_checks import (
    DECISION_FIELDS,
    DLQ_TRUNCATE,
    assert_clean,
    run_schemathesis,
)
from tests.integration.worker_harness import (
    INPUT_MAX_MESSAGE_BYTES,
    REPO,
    WorkerProcess,
    committed_offsets,
    consume_all,
    create_topics,
    end_offsets,
    fetch_json,
    produce,
)
from topologies.clickrisk.workload import generate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SPEC = "topologies.clickrisk:TOPOLOGY"
PARTITIONS = 4
N_EVENTS = 12_000
TOKEN = "test-token-" + os.urandom(6).hex()
UNSTABLE = ("stage_ms", "decided_at_ms")  # timings and wall time: differ between runs


@dataclass(frozen=True)
class Topics:
    """Topic and group names of the clickrisk topology under a test prefix."""

    prefix: str

    def __getattr__(self, name: str) -> str:
        if name == "group":
            return f"{self.prefix}streamwise-clickrisk"
        if name in ("events", "decisions", "dlq", "late", "changelog", "repartition"):
            return f"{self.prefix}clickrisk.{name}"
        raise AttributeError(name)


# -- the stream ----------------------------------------------------------------------------------


def _event(eid: str, user: str, ts: int, **over: object) -> dict:
    ev: dict = {"event_id": eid, "user_id": user, "session_id": "s-test", "action": "view",
                "ip_country": "US", "device_id": "d-test", "dwell_ms": 1_000, "value": 0.0,
                "ts_ms": ts}
    ev.update(over)
    return ev


def bad_records(ts: int) -> list[tuple[bytes | None, bytes, str]]:
    """One record per rejection reason: ``(kafka key, raw value, expected DLQ reason)``."""
    key = b"u999001"

    def raw(reason: str, **over: object) -> bytes:
        return orjson.dumps(_event(f"bad-{reason}", "u999001", ts, **over))

    filler = 2 * 1024 * 1024 - len(raw("oversized", pad=""))
    return [
        (key, raw("invalid_json")[:-20], "invalid_json"),
        (key, raw("schema", action="hack"), "schema"),
        (key, raw("schema2", dwell_ms=1.5), "schema"),  # strict: 1.5 is not an integer
        (key, raw("oversized", pad="x" * filler), "oversized"),
        (key, raw("not_utf8", device_id="d-PLACEHOLDER").replace(b"PLACEHOLDER", b"\xff\xfe"),
         "not_utf8"),
        (key, raw("non_finite").replace(b'"value":0.0', b'"value":NaN'), "non_finite"),
        (None, raw("missing_key", user_id=""), "missing_key"),
    ]


def flush_events(events: Iterable[dict]) -> list[dict]:
    """One event per partition (its user found by the default partitioner, bounded search),
    `MAX_OUT_OF_ORDERNESS_MS` after the newest event: the watermark then passes them all."""
    ts = max(e["ts_ms"] for e in events) + MAX_OUT_OF_ORDERNESS_MS
    users: dict[int, str] = {}
    for k in range(10_000):
        users.setdefault(card_partition(f"zz-flush-{k}", PARTITIONS), f"zz-flush-{k}")
        if len(users) == PARTITIONS:
            break
    assert len(users) == PARTITIONS
    return [_event(f"flush-{p}", user, ts) for p, user in sorted(users.items())]


def stream(events: list[dict]) -> tuple[list[tuple[bytes | None, bytes]], list[dict]]:
    """Kafka (key, value) pairs: the events keyed by user with the bad records spread among
    them, then the flush events; and the flush events."""
    bad = bad_records(events[len(events) // 2]["ts_ms"])
    step = len(events) // (len(bad) + 1)
    at = {step * (i + 1): rec for i, rec in enumerate(bad)}
    out: list[tuple[bytes | None, bytes]] = []
    for i, ev in enumerate(events):
        if i in at:
            out.append(at[i][:2])
        out.append((ev["user_id"].encode(), orjson.dumps(ev)))
    flush = flush_events(events)
    out += [(e["user_id"].encode(), orjson.dumps(e)) for e in flush]
    return out, flush


async def prepare(broker: str, prefix: str) -> Topics:
    """The input topic (8 MiB records: the oversized one must reach the worker)."""
    topics = Topics(prefix)
    await create_topics(broker, [(topics.events, PARTITIONS,
                                  {"max.message.bytes": str(INPUT_MAX_MESSAGE_BYTES)})])
    return topics


async def wait_released(broker: str, topics: Topics, oracle: OracleResult,
                        worker: WorkerProcess, timeout_s: float = 240.0) -> list:
    """Until every event the oracle decides has a decision and each partition's committed
    offset is its held flush event's (the oldest held record). Returns the decision records."""
    held_at = {oracle.first_seen[e][0]: oracle.first_seen[e][1] for e in oracle.held}
    deadline = time.monotonic() + timeout_s
    status = "nothing checked yet"
    while True:
        worker.check_alive("while draining")
        committed = await committed_offsets(broker, topics.group, topics.events)
        if all(committed.get(p) == off for p, off in held_at.items()):
            decisions = await consume_all(broker, topics.decisions)
            missing = oracle.decided - {orjson.loads(r.value)["event_id"] for r in decisions}
            if not missing:
                return decisions
            status = f"{len(missing)} events without a decision, e.g. {sorted(missing)[:5]}"
        else:
            status = f"committed {committed}, held flush events at {held_at}"
        if time.monotonic() > deadline:
            raise AssertionError(f"not drained after {timeout_s:.0f}s: {status}\n"
                                 f"{worker.log_tail()}")
        await asyncio.sleep(0.5)


# -- checks: each returns problems by category ---------------------------------------------------


def _feature_problems(expected: dict, got: object) -> list[str]:
    if not isinstance(got, dict) or set(got) != set(FEATURE_NAMES):
        return [f"feature names: {sorted(got) if isinstance(got, dict) else got!r}"]
    out = []
    for name in FEATURE_NAMES:
        e, g = expected[name], got[name]
        if e is None:
            ok = g is None
        elif name in INT_FEATURES:
            ok = type(g) is int and g == e
        else:
            ok = (type(g) in (int, float) and math.isfinite(g)
                  and math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-9))
        if not ok:
            out.append(f"{name}: expected {e!r}, got {g!r}")
    return out


def check_decisions(oracle: OracleResult, decisions: list, *, exact: bool
                    ) -> dict[str, list[str]]:
    """Every decided event has decisions with the oracle's features, one decision_id, the
    user as key; held events have none; with `exact`, one record per copy in the input and
    each partition's first decisions in the oracle's (event-time release) order."""
    problems: dict[str, list[str]] = defaultdict(list)
    by_event: dict[str, list[tuple[object, dict]]] = defaultdict(list)
    order: dict[int, list[str]] = defaultdict(list)
    for r in decisions:
        d = orjson.loads(r.value)
        missing = DECISION_FIELDS - set(d)
        if missing:
            problems["decision fields missing"].append(f"{d.get('event_id')}: {sorted(missing)}")
        eid = d.get("event_id")
        if not by_event[eid]:
            order[r.partition].append(eid)
        by_event[eid].append((r, d))
    copies = Counter(eid for _, _, eid in oracle.duplicates)
    for eid in sorted(oracle.decided - set(by_event)):
        problems["decided event without a decision"].append(f"{eid} ({oracle.outcome[eid]})")
    for eid in sorted(set(by_event) - oracle.decided, key=str):
        problems["decision for an event the oracle does not decide"].append(
            f"{eid} ({oracle.outcome.get(eid, 'not a valid event')})")
    for eid, items in by_event.items():
        if eid not in oracle.decided:
            continue
        ev = oracle.events[eid]
        if len({d["decision_id"] for _, d in items}) != 1:
            problems["decision_id differs between copies"].append(eid)
        if exact and len(items) != 1 + copies[eid]:
            problems["decision records != 1 + duplicates"].append(
                f"{eid}: {len(items)} records, {copies[eid]} copies in the input")
        stable = {orjson.dumps({k: v for k, v in d.items() if k not in UNSTABLE},
                               option=orjson.OPT_SORT_KEYS) for _, d in items}
        if exact and len(stable) != 1:
            problems["a duplicate's decision is not its original's"].append(eid)
        # After a crash an event may be decided again from the same state: the same decision,
        # unless its scoring path changed in between (a cold model timing out after a restart).
        by_path: dict[str, set[bytes]] = defaultdict(set)
        for _, d in items:
            by_path[d["path"]].add(orjson.dumps({k: v for k, v in d.items()
                                                 if k not in UNSTABLE},
                                                option=orjson.OPT_SORT_KEYS))
        if any(len(docs) > 1 for docs in by_path.values()):
            problems["decided twice differently on one path"].append(eid)
        for r, d in items:
            if r.key != ev["user_id"].encode() or d["key"] != ev["user_id"]:
                problems["decision key"].append(f"{eid}: {r.key!r} / {d['key']!r}")
            if d["event_ts_ms"] != ev["ts_ms"]:
                problems["event_ts_ms"].append(eid)
            if ("late_event" in d["reasons"]) != (oracle.outcome[eid] == "late"):
                problems["late_event reason vs the oracle"].append(
                    f"{eid}: {d['reasons']} ({oracle.outcome[eid]})")
            if d["decision"] not in ("approve", "review", "decline"):
                problems["decision value"].append(f"{eid}: {d['decision']!r}")
        for bad in {tuple(_feature_problems(oracle.features[eid], d["features"]))
                    for _, d in items}:
            if bad:
                problems["features differ from the oracle"].append(
                    f"{eid} ({oracle.outcome[eid]}, user {ev['user_id']}, ts {ev['ts_ms']}): "
                    + "; ".join(bad))
    if exact:
        for p, want in oracle.order.items():
            if order.get(p, []) != want:
                first = next((i for i, (a, b) in enumerate(zip(order.get(p, []), want,
                                                               strict=False)) if a != b), None)
                problems["release order differs from the oracle's"].append(
                    f"p{p}: first difference at {first} of {len(want)}")
    return problems


def check_late(oracle: OracleResult, late_records: list, *, exact: bool
               ) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = defaultdict(list)
    counts: Counter[str] = Counter()
    for r in late_records:
        eid = orjson.loads(r.value)["event_id"]
        counts[eid] += 1
        wm = dict(r.headers).get("streamwise.watermark_ms")
        if eid not in oracle.late_watermark:
            continue
        want, ts = oracle.late_watermark[eid], oracle.events[eid]["ts_ms"]
        # Exactly the watermark it was judged against; a record re-sent after a crash carries
        # the restored watermark (never lower), against which the event is late too.
        if wm is None or (int(wm) != want if exact else
                          int(wm) < want or not ts < int(wm) - ALLOWED_LATENESS_MS):
            problems["late record's watermark"].append(f"{eid}: header {wm!r}, oracle {want}")
    for eid in sorted(oracle.late - set(counts)):
        problems["late event missing from the late topic"].append(eid)
    for eid in sorted(set(counts) - oracle.late):
        problems["in the late topic, not late"].append(eid)
    if exact:
        problems["late record not exactly once"] += [e for e, n in counts.items() if n != 1]
    return problems


def check_dlq(oracle: OracleResult, dlq_records: list, raw_at: dict, events_topic: str, *,
              exact: bool) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = defaultdict(list)
    expected = {(p, o): reason for p, o, reason in oracle.dlq}
    counts: Counter[tuple[int, int]] = Counter()
    for r in dlq_records:
        h = {k: v.decode("utf-8", "replace") for k, v in r.headers}
        loc = (int(h["streamwise.partition"]), int(h["streamwise.offset"]))
        counts[loc] += 1
        if h["streamwise.topic"] != events_topic:
            problems["DLQ topic header"].append(f"{loc}: {h['streamwise.topic']}")
        if expected.get(loc) != h["streamwise.reason"]:
            problems["DLQ reason"].append(f"{loc}: expected {expected.get(loc)}, got "
                                          f"{h['streamwise.reason']} ({h['streamwise.detail']})")
        if r.value != (raw_at[loc] or b"")[:DLQ_TRUNCATE]:
            problems["DLQ value is not the raw bytes (64 KiB max)"].append(str(loc))
    for loc, reason in sorted(expected.items()):
        if loc not in counts:
            problems["bad record missing from the DLQ"].append(f"{loc}: {reason}")
        elif exact and counts[loc] != 1:
            problems["DLQ record not exactly once"].append(f"{loc}: {counts[loc]}")
    return problems


def _assert_clean(*reports: dict[str, list[str]]) -> None:
    assert_clean(*reports, title="clickrisk worker differs from the oracle")


def summary(oracle: OracleResult) -> str:
    return (f"{len(oracle.decided)} decided events ({len(oracle.late)} late, "
            f"{len(oracle.held)} held), {len(oracle.duplicates)} duplicates, "
            f"{len(oracle.dlq)} DLQ")


# -- one live run, shared: oracle, replay parity, OpenAPI ----------------------------------------


@dataclass
class LiveRun:
    broker: str
    topics: Topics
    tmp: Path
    oracle: OracleResult
    flush: list[dict]
    decisions: list  # ConsumerRecords of the decision topic, (partition, offset) order
    late: list
    dlq: list
    raw_at: dict[tuple[int, int], bytes | None]
    committed: dict[int, int]
    worker: WorkerProcess


async def _live(broker: str, prefix: str, tmp: Path) -> LiveRun:
    w = generate(N_EVENTS, seed=7)
    topics = await prepare(broker, prefix)
    records, flush = stream(w.events)
    worker = WorkerProcess(broker, prefix, tmp / "live-state", tmp / "live-worker.log",
                           partitions=PARTITIONS, topology=SPEC,
                           extra_args=["--api-token", TOKEN])
    worker.start()
    try:
        await worker.wait_ready()
        await produce(broker, topics.events, records)
        consumed = await consume_all(broker, topics.events)
        oracle = run_oracle([(r.partition, r.offset, r.value) for r in consumed])
        decisions = await wait_released(broker, topics, oracle, worker)
        late = await consume_all(broker, topics.late)
        dlq = await consume_all(broker, topics.dlq)
        committed = await committed_offsets(broker, topics.group, topics.events)
    except BaseException:
        worker.stop()
        raise
    raw_at = {(r.partition, r.offset): r.value for r in consumed}
    return LiveRun(broker, topics, tmp, oracle, flush, decisions, late, dlq, raw_at,
                   committed, worker)


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    prefix = f"t{secrets.token_hex(4)}."
    run = asyncio.run(_live(kafka_bootstrap, prefix, tmp_path_factory.mktemp("clickrisk")))
    yield run
    run.worker.stop()


async def test_worker_matches_the_oracle(live: LiveRun) -> None:
    o = live.oracle
    print(summary(o), f"; {len(live.decisions)} decision records")
    # The stream really has the shape the oracle is about.
    assert len(o.late) >= 20 and len(o.duplicates) >= 100 and len(o.dlq) == 7, summary(o)
    assert o.held == {e["event_id"] for e in live.flush}  # only the flush events wait
    assert {o.first_seen[e][0] for e in o.held} == set(range(PARTITIONS))
    # Offsets are committed up to the oldest held record: each partition's flush event.
    assert live.committed == {o.first_seen[e][0]: o.first_seen[e][1] for e in o.held}
    _assert_clean(
        check_decisions(o, live.decisions, exact=True),
        check_late(o, live.late, exact=True),
        check_dlq(o, live.dlq, live.raw_at, live.topics.events, exact=True),
    )
    paths = Counter(orjson.loads(r.value)["path"] for r in live.decisions)
    assert paths["model"] > 0.9 * len(live.decisions), paths  # the clickrisk models scored


TILE_MS = {"activity": 10_000, "geo": 60_000}


async def test_tables_over_http_equal_the_oracles_fold(live: LiveRun) -> None:
    """GET /v1/tables/{activity,geo}/{user} for 150 users (the busiest among them): every
    tile, the user's newest folded time and the partition's watermark are the oracle's; a
    user the stream never saw is 404."""
    o = live.oracle
    users = sorted(o.tiles["activity"])
    busiest = Counter(e["user_id"] for e in o.events.values()
                      if o.outcome[e["event_id"]] == "accepted").most_common(1)[0][0]
    sample = sorted({busiest, *users[::max(1, len(users) // 150)]})
    paths = [f"/v1/tables/{t}/{u}" for u in sample for t in TILE_MS]
    got = await fetch_json(live.worker.url, [*paths, "/v1/tables/activity/zz-never-seen"],
                           headers={"Authorization": f"Bearer {TOKEN}"})
    problems: dict[str, list[str]] = defaultdict(list)
    assert got["/v1/tables/activity/zz-never-seen"][0] == 404
    for user in sample:
        for table, tile_ms in TILE_MS.items():
            status, body = got[f"/v1/tables/{table}/{user}"]
            if status != 200 or not isinstance(body, dict):
                problems["status"].append(f"{table}/{user}: {status} {str(body)[:200]}")
                continue
            if body.get("watermark_ms") != o.watermark_ms[o.user_partition[user]]:
                problems["watermark_ms"].append(f"{user}: {body.get('watermark_ms')}")
            if (body.get("value") or {}).get("last_ts_ms") != o.last_ts_ms[user]:
                problems["last_ts_ms"].append(f"{user}: {body.get('value')}")
            want = o.tiles[table][user]
            windows = {w["start_ms"]: w for w in body.get("windows") or []}
            if set(windows) != set(want):
                problems["tile starts"].append(f"{table}/{user}: {sorted(windows)} vs "
                                               f"{sorted(want)}")
                continue
            for start, tile in want.items():
                w = windows[start]
                v = w["value"]
                same = (w["end_ms"] == start + tile_ms
                        and all(v[k] == tile[k] for k in ("count", "min", "max",
                                                           "distinct_count"))
                        and math.isclose(v["sum"], tile["sum"], rel_tol=1e-9, abs_tol=1e-9))
                if not same:
                    problems["tile differs"].append(f"{table}/{user}@{start}: {w} vs {tile}")
    _assert_clean(problems)
    assert len(o.tiles["activity"][busiest]) > 3  # the check saw real state


def _jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def _canonical(d: dict, drop: Iterable[str]) -> bytes:
    return orjson.dumps({k: v for k, v in d.items() if k not in set(drop)},
                        option=orjson.OPT_SORT_KEYS)


async def test_replay_reproduces_the_live_decisions(live: LiveRun) -> None:
    """`streamwise replay --from-beginning` over the same offsets: every live decision again,
    byte for byte apart from the wall-clock fields (stage_ms, decided_at_ms), in the same
    per-partition order; the flush events the live worker still holds are decided too."""
    out = live.tmp / "replay.jsonl"
    cmd = [sys.executable, "-m", "engine", "replay", SPEC, "--broker", live.broker,
           "--topic-prefix", live.topics.prefix, "--partitions", str(PARTITIONS),
           "--from-beginning", "--output", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWISE_")}
    proc = await asyncio.to_thread(subprocess.run, cmd, cwd=REPO, env=env, capture_output=True,
                                   text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("replayed "), proc.stderr[-2000:]
    rows = _jsonl(out)
    live_by_id: dict[str, tuple[int, dict]] = {}
    live_order: dict[int, list[str]] = defaultdict(list)
    for r in live.decisions:
        d = orjson.loads(r.value)
        if d["event_id"] not in live_by_id:
            live_by_id[d["event_id"]] = (r.partition, d)
            live_order[r.partition].append(d["event_id"])
    replay_by_id: dict[str, dict] = {}
    replay_order: dict[int, list[str]] = defaultdict(list)
    for d in rows:
        if d["event_id"] not in replay_by_id:
            replay_by_id[d["event_id"]] = d
            replay_order[d["partition"]].append(d["event_id"])
    flush_ids = {e["event_id"] for e in live.flush}
    assert set(replay_by_id) == set(live_by_id) | flush_ids
    assert len(rows) == sum(1 for _ in live.decisions) + len(flush_ids)
    different = [eid for eid, (p, d) in live_by_id.items()
                 if _canonical(d, UNSTABLE) != _canonical(replay_by_id[eid],
                                                          ("decided_at_ms", "partition"))
                 or replay_by_id[eid]["partition"] != p]
    assert not different, (len(different), [(live_by_id[e][1], replay_by_id[e])
                                             for e in different[:2]])
    for p, ids in live_order.items():
        assert replay_order[p][:len(ids)] == ids, p
        assert set(replay_order[p][len(ids):]) <= flush_ids


def test_schemathesis_finds_no_server_error_in_its_document(live: LiveRun, tmp_path: Path):
    """#17 item 5: the worker serves clickrisk's own document (ClickriskEvent, its tables
    and features), and schemathesis finds no 5xx and no response off it."""
    doc = asyncio.run(fetch_json(live.worker.url, ["/openapi.json"]))["/openapi.json"][1]
    assert isinstance(doc, dict) and "ClickriskEvent" in doc["components"]["schemas"]
    run_schemathesis(live.worker.url, TOKEN, tmp_path)


# -- crashes -------------------------------------------------------------------------------------


async def test_sigkills_and_a_lost_disk_lose_nothing(kafka_bootstrap: str, unique_prefix: str,
                                                     tmp_path: Path) -> None:
    """The worker SIGKILLed three times mid-stream (its data directory deleted once): every
    event is still decided with the oracle's features, never two different decision ids for
    one event; late and DLQ records at least once."""
    w = generate(8_000, seed=29)
    topics = await prepare(kafka_bootstrap, unique_prefix)
    records, _ = stream(w.events)
    chunks = [records[k * 2_000:(k + 1) * 2_000] for k in range(3)] + [records[6_000:]]
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=PARTITIONS, topology=SPEC)
    worker.start()
    try:
        await worker.wait_ready()
        for k, chunk in enumerate(chunks):
            sending = asyncio.create_task(produce(kafka_bootstrap, topics.events, chunk,
                                                  rate_eps=3_000))
            if k < 3:
                await asyncio.sleep(0.4)  # mid-chunk: the worker is consuming and writing
                worker.kill()
                done = await committed_offsets(kafka_bootstrap, topics.group, topics.events)
                ends = await end_offsets(kafka_bootstrap, topics.events)
                print(f"kill {k + 1}: committed {done} of {ends}")
            await sending
            if k < 3:
                if k == 1:  # the disk is gone: state comes back from the changelog
                    shutil.rmtree(worker.data_dir, ignore_errors=True)
                worker.start()
                await worker.wait_ready()
        consumed = await consume_all(kafka_bootstrap, topics.events)
        oracle = run_oracle([(r.partition, r.offset, r.value) for r in consumed])
        decisions = await wait_released(kafka_bootstrap, topics, oracle, worker)
        late = await consume_all(kafka_bootstrap, topics.late)
        dlq = await consume_all(kafka_bootstrap, topics.dlq)
    finally:
        worker.kill()
    raw_at = {(r.partition, r.offset): r.value for r in consumed}
    assert sum(1 for r in consumed if isinstance(parse(r.value), dict)) == len(records) - 7
    print(summary(oracle), f"; {len(decisions)} decision records after 3 kills")
    assert worker.starts == 4
    _assert_clean(
        check_decisions(oracle, decisions, exact=False),
        check_late(oracle, late, exact=False),
        check_dlq(oracle, dlq, raw_at, topics.events, exact=False),
    )
