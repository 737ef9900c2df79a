"""Acceptance of `streamwise replay`, run through the CLI exactly as a user would.

One live run (a real worker over the reference workload, 4 partitions) is shared by the module:
its first decision per event, the order they came out in and its HTTP answers are the
reference every replay is held to. Each replay is a `python -m engine replay fraud ...`
subprocess; its exit code is checked and its last stderr line is the one-line summary.

* parity: a replay from the beginning decides every event as the live worker did (ids,
  decisions, paths, models, scores, feature vectors), and the last decision per card (a
  function of the card's final tiles) is the same on both sides and on the live HTTP API;
* determinism: two replays of one range write byte-identical Parquet, and JSONL rows come in
  the Parquet's order;
* isolation: a replay beside a live worker that is still consuming creates no consumer group,
  leaves the live group's offsets alone and writes nothing to the topology's topics;
* backfill: a registry without the primary scores with the backup, on the same features;
  `--model` pins are checked;
* file input: the same events from a JSONL file (no Kafka) give the same decisions;
* profiles: a deleted or stale profile counts in replay as it does live.

Replay throughput (its summary line) is printed next to the live worker's drain time of the
same events (run with ``-s`` to see it); nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import filecmp
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

import topologies
from engine.kafka_io import ensure_topics
from engine.policy import RulesOnly
from engine.replay import ReplayRange, replay_kafka
from engine.schemas import decision_id
from engine.topology import TimeSettings
from engine.worker import topic_specs
from tests.integration.worker_harness import (
    REPO,
    FraudTopics,
    WorkerProcess,
    committed_offsets,
    consume_all,
    end_offsets,
    fetch_json,
    produce,
    wait_drained,
)
from topologies.fraud.workload import Workload, generate

pytestmark = pytest.mark.integration

TOPO = topologies.get("fraud")
FEATURES: tuple[str, ...] = tuple(TOPO.features.names)
FEATURE_SET = TOPO.features.versioned_name
PARTITIONS = 4
# The acceptance asks for 50,000 events. Measured on a shared 2-core machine (local broker
# started by the fixture included): the whole module in about 2m10s with 50,000 and 1m24s with
# 20,000, so it keeps 50,000.
N_EVENTS = 50_000
SEED = 7
REPLAY_TIMEOUT_S = 300.0
DRAIN_TIMEOUT_S = 300.0
SCORE_TOL = 1e-9
FEATURE_REL_TOL = 1e-9

SUMMARY_RE = re.compile(
    r"^replayed (?P<events>[\d,]+) events → (?P<decisions>[\d,]+) decisions, "
    r"(?P<duplicates>[\d,]+) duplicates, (?P<late>[\d,]+) late, (?P<dlq>[\d,]+) DLQ in "
    r"(?P<elapsed>[\d.]+)s \((?P<rate>[\d,]+) events/s\)(?:, .*)?$")


# -- running the CLI ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayRun:
    output: Path
    summary: dict[str, float]  # events, decisions, duplicates, late, dlq, elapsed, rate
    line: str
    wall_s: float  # the subprocess, start-up included


def _env() -> dict[str, str]:
    """The test's environment without STREAMWISE_* settings: only the flags count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWISE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(args: Sequence[str], timeout_s: float = REPLAY_TIMEOUT_S
         ) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "engine", "replay", "fraud", *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    return proc, time.monotonic() - t0


async def _replay(output: Path, *args: str) -> ReplayRun:
    """Run a replay to `output` in a thread (the event loop stays free); exit code 0 and a
    one-line summary as the last line of stderr."""
    proc, wall = await asyncio.to_thread(_cli, [*args, "--output", str(output)])
    assert proc.returncode == 0, (f"replay {' '.join(args)} exited {proc.returncode}\n"
                                  f"{proc.stderr[-4000:]}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    summaries = [line for line in lines if line.startswith("replayed ")]
    assert len(summaries) == 1 and lines[-1] == summaries[0], proc.stderr[-4000:]
    match = SUMMARY_RE.match(summaries[0])
    assert match, f"summary line not understood: {summaries[0]!r}"
    summary = {k: float(v.replace(",", "")) for k, v in match.groupdict().items()}
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert output.exists(), f"no output written to {output}"
    return ReplayRun(output, summary, summaries[0], wall)


def _kafka_args(live: LiveRun, *extra: str) -> list[str]:
    return ["--broker", live.bootstrap, "--topic-prefix", live.prefix,
            "--partitions", str(PARTITIONS), "--from-beginning", *extra]


# -- reading outputs and comparing decisions ---------------------------------------------------


def _parquet_rows(path: Path) -> list[dict]:
    """Rows as decision dicts: the feature_<name> columns folded back into `features`, and the
    timestamp columns (event_timestamp, decided_at: timestamp[ms, UTC]) back to the decision's
    epoch-ms fields, so they compare with the live worker's decisions."""
    table = pq.read_table(path)
    for name in ("event_timestamp", "decided_at"):
        assert str(table.schema.field(name).type) == "timestamp[ms, tz=UTC]", table.schema
    as_ms = {"event_timestamp": "event_ts_ms", "decided_at": "decided_at_ms"}
    table = table.rename_columns([as_ms.get(n, n) for n in table.column_names])
    table = table.set_column(table.schema.get_field_index("event_ts_ms"), "event_ts_ms",
                             table["event_ts_ms"].cast("int64"))
    table = table.set_column(table.schema.get_field_index("decided_at_ms"), "decided_at_ms",
                             table["decided_at_ms"].cast("int64"))
    rows = []
    for r in table.to_pylist():
        d = {k: v for k, v in r.items() if not k.startswith("feature_")}
        d["features"] = {n: r[f"feature_{n}"] for n in FEATURES}
        rows.append(d)
    return rows


def _jsonl_rows(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def _first_by_event(rows: Iterable[dict]) -> dict[str, dict]:
    """The first decision per event id (duplicates re-emit the original; later copies go)."""
    first: dict[str, dict] = {}
    for d in rows:
        first.setdefault(d["event_id"], d)
    return first


def _last_scored_by_card(rows: Iterable[dict]) -> dict[str, dict]:
    """Per card, the decision of its last scored event in output order (a re-emitted duplicate
    is not a new decision), which is what GET /v1/decisions/{card} serves."""
    seen: set[str] = set()
    last: dict[str, dict] = {}
    for d in rows:
        if d["event_id"] in seen:
            continue
        seen.add(d["event_id"])
        last[d["key"]] = d
    return last


def _same_number(a: float | None, b: float | None, *, rel: float = 0.0, abs_: float = 0.0
                 ) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def _differences(want: Mapping, got: Mapping,
                 fields: Sequence[str] = ("decision_id", "event_id", "key", "decision", "path",
                                          "model", "reasons", "event_ts_ms"),
                 score: bool = True, features: bool = True) -> list[str]:
    out = [f"{f}: {want.get(f)!r} != {got.get(f)!r}" for f in fields if want.get(f) != got.get(f)]
    if score and not _same_number(want.get("score"), got.get("score"), abs_=SCORE_TOL):
        out.append(f"score: {want.get('score')!r} != {got.get('score')!r}")
    if features:
        wf, gf = want.get("features") or {}, got.get("features") or {}
        if set(wf) != set(FEATURES) or set(gf) != set(FEATURES):
            out.append(f"feature names: {sorted(wf)} / {sorted(gf)}")
        for n in FEATURES:
            if not _same_number(wf.get(n), gf.get(n), rel=FEATURE_REL_TOL):
                out.append(f"feature {n}: {wf.get(n)!r} != {gf.get(n)!r}")
    return out


def _assert_same_decisions(want: Mapping[str, dict], got: Mapping[str, dict], ids: Iterable[str],
                           what: str, **compare) -> None:
    """Every id decided alike on both sides; the failure lists how many differ and how."""
    message = _mismatches(want, got, ids, what, **compare)
    if message:
        raise AssertionError(message)


def _mismatches(want: Mapping[str, dict], got: Mapping[str, dict], ids: Iterable[str],
                what: str, **compare) -> str:
    """'' when every id is decided alike, else how many differ and how (a few examples)."""
    ids = list(ids)
    bad = {}
    for eid in ids:
        diff = _differences(want[eid], got[eid], **compare)
        if diff:
            bad[eid] = diff
    if not bad:
        return ""
    timeouts = sum("timeout" in want[e].get("reasons", ()) for e in bad)
    examples = "\n".join(f"  {eid}: {diff}" for eid, diff in list(bad.items())[:5])
    return (f"{what}: {len(bad)} of {len(ids)} events decided differently ({timeouts} of "
            f"them timed out in the reference)\n{examples}")


def _complete(d: Mapping) -> bool:
    return all(v is not None and math.isfinite(v) for v in d["features"].values())


# -- the live reference run ---------------------------------------------------------------------


@dataclass
class LiveRun:
    bootstrap: str
    prefix: str
    tmp: Path
    workload: Workload
    decisions: dict[str, dict]  # first live decision per event id (with its partition)
    in_order: list[dict]  # every live decision record in (partition, offset) order
    api_last: dict[str, tuple[int, object]]  # GET /v1/decisions/{card} before the stop
    data_dir: Path
    drain_from_start_s: float
    drain_from_ready_s: float
    replays: dict[str, ReplayRun] = field(default_factory=dict)

    @property
    def topics(self) -> FraudTopics:
        return FraudTopics(self.prefix)

    @property
    def distinct_ids(self) -> set[str]:
        return {e["event_id"] for e in self.workload.events}


def _keyed(events: Iterable[dict]) -> list[tuple[bytes, bytes]]:
    return [(e["card_id"].encode(), orjson.dumps(e)) for e in events]


async def _topics_with_profiles(broker: str, prefix: str, w: Workload) -> FraudTopics:
    """The topology's topics with 4 partitions (created as a worker would, before anything is
    produced: auto-creation would give 1 partition), then the card profiles."""
    await ensure_topics(broker, topic_specs(TOPO.topics(prefix), PARTITIONS))
    topics = FraudTopics(prefix)
    await produce(broker, topics.profiles,
                  [(c.encode(), orjson.dumps(p)) for c, p in w.profiles.items()])
    return topics


async def _wait_committed_to_end(broker: str, topics: FraudTopics, worker: WorkerProcess,
                                 timeout_s: float = DRAIN_TIMEOUT_S, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        worker.check_alive("while draining")
        ends = await end_offsets(broker, topics.events)
        committed = await committed_offsets(broker, topics.group, topics.events)
        if all(committed.get(p) == e for p, e in ends.items() if e > 0):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"live group not at the end after {timeout_s:.0f}s: "
                                 f"committed {committed}, end {ends}\n{worker.log_tail()}")
        await asyncio.sleep(poll_s)


async def _live_run(broker: str, prefix: str, tmp: Path) -> LiveRun:
    w = generate(N_EVENTS, SEED)
    topics = await _topics_with_profiles(broker, prefix, w)
    # A backlog first, then the worker: it drains exactly what a replay will read.
    await produce(broker, topics.events, _keyed(w.events))
    data_dir = tmp / "live-state"
    worker = WorkerProcess(broker, prefix, data_dir, tmp / "live-worker.log",
                           partitions=PARTITIONS)
    t_start = time.monotonic()
    worker.start()
    try:
        await worker.wait_ready()
        t_ready = time.monotonic()
        await _wait_committed_to_end(broker, topics, worker)
        t_drained = time.monotonic()
        ids = {e["event_id"] for e in w.events}
        records = await wait_drained(broker, topics, ids, worker, timeout_s=120)
        cards = sorted({e["card_id"] for e in w.events})
        api_last = await fetch_json(worker.url, [f"/v1/decisions/{c}" for c in cards],
                                    timeout_s=30)
    finally:
        code = worker.stop()
    assert code in (0, -15), f"live worker exited {code} on SIGTERM\n{worker.log_tail()}"
    assert data_dir.is_dir() and any(data_dir.iterdir()), "the live worker's data dir is gone"
    in_order = []
    for r in records:  # consume_all returns them in (partition, offset) order
        d = orjson.loads(r.value)
        d["partition"] = r.partition
        in_order.append(d)
    return LiveRun(broker, prefix, tmp, w, _first_by_event(in_order), in_order,
                   {p.rsplit("/", 1)[1]: v for p, v in api_last.items()}, data_dir,
                   t_drained - t_start, t_drained - t_ready)


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> LiveRun:
    """The live reference: N_EVENTS reference events through a real worker (module-wide)."""
    prefix = f"t{secrets.token_hex(4)}."
    return asyncio.run(_live_run(kafka_bootstrap, prefix, tmp_path_factory.mktemp("replay")))


async def _parity_replay(live: LiveRun) -> ReplayRun:
    """`replay --from-beginning` to Parquet, run once and shared by the tests that need it."""
    if "parity" not in live.replays:
        out = live.tmp / "parity.parquet"
        live.replays["parity"] = await _replay(out, *_kafka_args(live))
    return live.replays["parity"]


# -- 1. parity ---------------------------------------------------------------------------------


async def test_replay_decides_every_event_as_the_live_worker_did(live: LiveRun):
    run = await _parity_replay(live)
    rows = _parquet_rows(run.output)
    w = live.workload
    assert len(rows) == N_EVENTS  # one row per input record: duplicates re-emit their original
    replayed = _first_by_event(rows)
    assert set(replayed) == set(live.decisions) == live.distinct_ids

    _assert_same_decisions(live.decisions, replayed, live.distinct_ids, "replay vs live",
                           fields=("decision_id", "event_id", "key", "decision", "path",
                                   "model", "reasons", "event_ts_ms", "partition"))
    paths = {d["path"] for d in replayed.values()}
    assert "model" in paths and paths <= {"model", "fallback:rules"}, paths  # sanity

    # Final state: the last event of each card is decided with features read from the card's
    # final tiles, so equal last decisions per card mean equal tables.
    live_last = _last_scored_by_card(live.in_order)
    replay_last = _last_scored_by_card(rows)
    cards = {e["card_id"] for e in w.events}
    assert set(live_last) == set(replay_last) == cards
    _assert_same_decisions(live_last, replay_last, cards, "last decision per card")
    # ... and the live worker's own table of last decisions, read over HTTP before the stop.
    api = {}
    for card, (status, body) in live.api_last.items():
        assert status == 200, (card, status, body)
        api[card] = body
    assert set(api) == cards
    _assert_same_decisions(api, replay_last, cards, "GET /v1/decisions vs replay")

    s = run.summary
    late = sum("late_event" in d["reasons"] for d in live.decisions.values())
    assert (s["events"], s["decisions"], s["duplicates"], s["late"], s["dlq"]) == (
        N_EVENTS, N_EVENTS, N_EVENTS - len(live.distinct_ids), late, 0), run.line
    print(f"\n[replay throughput] {N_EVENTS:,} events: replay {s['rate']:,.0f} events/s "
          f"({s['elapsed']:.1f}s in the summary, {run.wall_s:.1f}s for the whole command); "
          f"live worker drained the same backlog in {live.drain_from_ready_s:.1f}s after "
          f"/readyz ({N_EVENTS / live.drain_from_ready_s:,.0f} events/s), "
          f"{live.drain_from_start_s:.1f}s after its start")


async def _produce_at(broker: str, topic: str,
                      records: Sequence[tuple[bytes | None, bytes, int | None]], t0_ms: int
                      ) -> None:
    """(key, value, partition or None: the default partitioner) in order; record i gets the
    Kafka timestamp t0_ms + i."""
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k, partition=p, timestamp_ms=t0_ms + i)
                   for i, (k, v, p) in enumerate(records)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_a_replay_decides_events_not_keyed_by_card_on_the_cards_partition(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path):
    """#13 item 2 in replay: the same events produced keyed by card (the topology's murmur2)
    and produced with null keys or placed by librdkafka's CRC32 give the same decisions: a
    replay routes each record to its card's partition and merges what it routed there with
    that partition's own records by Kafka timestamp, as they would have arrived live."""
    w = generate(8_000, seed=53)
    t0 = 1_767_225_600_000
    keyed, mixed = f"{unique_prefix}k.", f"{unique_prefix}m."
    for prefix in (keyed, mixed):
        await _topics_with_profiles(kafka_bootstrap, prefix, w)
    await _produce_at(kafka_bootstrap, FraudTopics(keyed).events,
                      [(k, v, None) for k, v in _keyed(w.events)], t0)
    await _produce_at(kafka_bootstrap, FraudTopics(mixed).events, [
        (None, v, None) if i % 3 == 0 else (k, v, zlib.crc32(k) % PARTITIONS if i % 3 == 1
                                            else None)
        for i, (k, v) in enumerate(_keyed(w.events))], t0)

    runs = {}
    for name, prefix in (("keyed", keyed), ("mixed", mixed)):
        runs[name] = await _replay(tmp_path / f"{name}.parquet", "--broker", kafka_bootstrap,
                                   "--topic-prefix", prefix, "--partitions", str(PARTITIONS),
                                   "--from-beginning")
    assert "routed to their entity's partition" not in runs["keyed"].line, runs["keyed"].line
    routed = re.search(r", ([\d,]+) routed to their entity's partition$", runs["mixed"].line)
    assert routed and int(routed.group(1).replace(",", "")) > len(w.events) // 3, \
        runs["mixed"].line
    want = _first_by_event(_parquet_rows(runs["keyed"].output))
    got = _first_by_event(_parquet_rows(runs["mixed"].output))
    ids = {e["event_id"] for e in w.events}
    assert set(want) == set(got) == ids
    _assert_same_decisions(want, got, ids, "null-keyed and CRC32-placed vs keyed by card",
                           fields=("decision_id", "event_id", "key", "decision", "path",
                                   "model", "reasons", "event_ts_ms", "decided_at_ms"))
    rows = _parquet_rows(runs["mixed"].output)
    landed = {(r.partition, r.offset): orjson.loads(r.value)["event_id"]
              for r in await consume_all(kafka_bootstrap, FraudTopics(mixed).events)}
    assert all(landed[(d["partition"], d["offset"])] == d["event_id"] for d in rows), \
        "a row's partition and offset must name the input record it decided"


# -- 2. determinism ----------------------------------------------------------------------------


async def test_two_replays_of_one_range_are_byte_identical(live: LiveRun):
    first = await _parity_replay(live)
    again = await _replay(live.tmp / "again.parquet", *_kafka_args(live))
    assert filecmp.cmp(first.output, again.output, shallow=False), (
        "two replays of the same range wrote different Parquet files")
    counts = ("events", "decisions", "duplicates", "late", "dlq")
    assert [first.summary[k] for k in counts] == [again.summary[k] for k in counts]

    jsonl = await _replay(live.tmp / "again.jsonl", *_kafka_args(live))
    from_jsonl = _jsonl_rows(jsonl.output)
    from_parquet = _parquet_rows(first.output)
    assert [(d["partition"], d["event_id"], d["decision_id"]) for d in from_jsonl] == [
        (d["partition"], d["event_id"], d["decision_id"]) for d in from_parquet]
    for i, (j, p) in enumerate(zip(from_jsonl, from_parquet, strict=True)):
        diff = _differences(p, j, fields=("decision_id", "event_id", "key", "decision", "path",
                                          "model", "reasons", "event_ts_ms", "decided_at_ms",
                                          "partition"))
        assert not diff, f"row {i}: JSONL and Parquet differ: {diff}"
    assert "stage_ms" not in from_jsonl[0]  # wall-clock timings stay out of files


# -- 2b. a training set ------------------------------------------------------------------------


async def test_parquet_is_a_training_set_with_offsets_event_fields_and_metadata(live: LiveRun):
    """Each row names the input record it decided (partition, offset) and carries that event's
    own fields; times are UTC timestamps, window counts integers; the file says what made it."""
    run = await _parity_replay(live)
    table = pq.read_table(run.output)
    types = {f.name: str(f.type) for f in table.schema}
    assert types["offset"] == "int64" and types["partition"] == "int32"
    assert types["event_timestamp"] == types["decided_at"] == "timestamp[ms, tz=UTC]"
    assert "event_ts_ms" not in types and "decided_at_ms" not in types
    for name in ("count_10m", "count_1h", "distinct_merchants_1h"):
        assert types[f"feature_{name}"] == "int64", name
    assert types["feature_sum_10m"] == types["event_amount"] == "double"
    assert [n for n in types if n.startswith("event_") and n != "event_id"
            and n != "event_timestamp"] == [
        "event_card_id", "event_merchant_id", "event_amount", "event_currency", "event_country"]

    meta = {k.decode(): v.decode() for k, v in pq.read_metadata(run.output).metadata.items()
            if k.startswith(b"streamwise.")}
    assert meta["streamwise.topology"] == "fraud"
    assert meta["streamwise.feature_set"] == FEATURE_SET
    assert orjson.loads(meta["streamwise.features"]) == list(FEATURES)
    assert orjson.loads(meta["streamwise.models"]) == {"backup": "backup:1",
                                                       "primary": "primary:1"}
    inputs = await consume_all(live.bootstrap, live.topics.events)
    replayed = orjson.loads(meta["streamwise.replayed"])
    ends: dict[str, int] = {}
    for r in inputs:
        ends[str(r.partition)] = r.offset + 1
    assert replayed["topic"] == live.topics.events and replayed["from_beginning"] is True
    assert replayed["offsets"] == {p: [0, end] for p, end in ends.items()}

    by_position = {(r.partition, r.offset): orjson.loads(r.value) for r in inputs}
    rows = table.to_pylist()
    assert sorted((d["partition"], d["offset"]) for d in rows) == sorted(by_position)
    wrong = []
    for d in rows:
        event = by_position[(d["partition"], d["offset"])]
        got = (d["event_id"], int(d["event_timestamp"].timestamp() * 1000), d["event_card_id"],
               d["event_merchant_id"], d["event_amount"], d["event_currency"],
               d["event_country"])
        want = (event["event_id"], event["ts_ms"], event["card_id"], event["merchant_id"],
                event["amount"], event["currency"], event["country"])
        if got != want:
            wrong.append((d["partition"], d["offset"], got, want))
    assert not wrong, f"{len(wrong)} rows name another record than they decided: {wrong[:3]}"
    counts = [d["feature_count_1h"] for d in rows if d["feature_count_1h"] is not None]
    assert counts and all(type(c) is int for c in counts)


async def test_labels_join_by_event_id_point_in_time(live: LiveRun, tmp_path):
    """--labels FILE: a label is attached only to an event that happened before the label's
    time; of several, the newest; JSONL labels as CSV labels; the label column is typed."""
    per_partition = 300
    to = ",".join(f"{p}:{per_partition}" for p in range(PARTITIONS))
    # the events of the first 300 records of each partition
    ids = list(dict.fromkeys(d["event_id"] for d in _first_records(live, per_partition)))
    hour = 3_600_000
    ts = {e: live.decisions[e]["event_ts_ms"] for e in ids}
    after, before, revised = ids[0::3], ids[1::3], ids[2::3]
    labels = [{"event_id": e, "label": live.workload.labels[e], "label_time": ts[e] + hour}
              for e in after]
    labels += [{"event_id": e, "label": 1, "label_time": ts[e] - 1} for e in before]
    labels += [{"event_id": e, "label": 0, "label_time": ts[e] + hour} for e in revised]
    labels += [{"event_id": e, "label": 1, "label_time": _iso(ts[e] + 2 * hour)}
               for e in revised]  # the newer label wins; an ISO time works as well as ms
    labels.append({"event_id": "no-such-event", "label": 1, "label_time": ts[ids[0]]})
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps({**x, "label_time": str(x["label_time"])})
                               + b"\n" for x in labels))
    run = await _replay(tmp_path / "labelled.parquet", *_kafka_args(live), "--to-offsets", to,
                        "--labels", str(jsonl))
    table = pq.read_table(run.output)
    assert str(table.schema.field("label").type) == "int64"
    assert str(table.schema.field("label_timestamp").type) == "timestamp[ms, tz=UTC]"
    got = {d["event_id"]: (d["label"], None if d["label_timestamp"] is None else
                           int(d["label_timestamp"].timestamp() * 1000))
           for d in table.to_pylist()}
    assert set(got) == set(ids)
    for e in after:
        assert got[e] == (live.workload.labels[e], ts[e] + hour), e
    for e in before:  # known before the event happened: never attached
        assert got[e] == (None, None), e
    for e in revised:
        assert got[e] == (1, ts[e] + 2 * hour), e
    assert sum(label == 1 for label, _ in got.values()) >= len(revised)
    meta = orjson.loads(pq.read_metadata(run.output).metadata[b"streamwise.labels"])
    assert meta["file"] == "labels.jsonl" and meta["labels"] == len(labels)

    # The same labels from CSV, into JSONL output: the same join.
    csv = tmp_path / "labels.csv"
    csv.write_text("event_id,label,label_time\n" + "".join(
        f"{x['event_id']},{x['label']},{x['label_time']}\n" for x in labels))
    run = await _replay(tmp_path / "labelled.jsonl", *_kafka_args(live), "--to-offsets", to,
                        "--labels", str(csv))
    rows = _first_by_event(_jsonl_rows(run.output))
    assert {e: (d["label"], d["label_ts_ms"]) for e, d in rows.items()} == got


def _first_records(live: LiveRun, n: int) -> list[dict]:
    seen: dict[int, int] = {}
    out = []
    for d in live.in_order:  # (partition, offset) order: one decision per input record
        k = seen.get(d["partition"], 0)
        if k < n:
            out.append(d)
            seen[d["partition"]] = k + 1
    return out


def _iso(ms: int) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


# -- 3. isolation ------------------------------------------------------------------------------


@dataclass
class _Samples:
    groups: list[set[str]] = field(default_factory=list)
    committed: list[tuple[float, dict[int, int]]] = field(default_factory=list)


async def _sample(broker: str, group: str, topic: str, stop: asyncio.Event, out: _Samples,
                  timeout_s: float = 240.0, every_s: float = 0.25) -> None:
    """Consumer groups and the live group's committed offsets, until `stop` (bounded)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=15_000)
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            out.groups.append({g[0] for g in await admin.list_consumer_groups()})
            offsets = await admin.list_consumer_group_offsets(group)
            out.committed.append((time.monotonic(), {
                tp.partition: om.offset for tp, om in offsets.items()
                if tp.topic == topic and om.offset >= 0}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    finally:
        await admin.close()


async def _groups(broker: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=15_000)
    await admin.start()
    try:
        return {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def _topic_names(broker: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=15_000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _output_ends(broker: str, topics: FraudTopics) -> dict[str, dict[int, int]]:
    return {t: await end_offsets(broker, t)
            for t in (topics.decisions, topics.dlq, topics.late, topics.changelog)}


async def test_replay_beside_a_live_worker_touches_nothing_of_it(kafka_bootstrap, unique_prefix,
                                                                 tmp_path):
    broker, prefix = kafka_bootstrap, unique_prefix
    w = generate(20_000, 11)
    first_half, second_half = _keyed(w.events[:10_000]), _keyed(w.events[10_000:])
    topics = await _topics_with_profiles(broker, prefix, w)
    worker = WorkerProcess(broker, prefix, tmp_path / "state", tmp_path / "worker.log",
                           partitions=PARTITIONS)
    args = ["--broker", broker, "--topic-prefix", prefix, "--partitions", str(PARTITIONS),
            "--from-beginning"]
    worker.start()
    try:
        await worker.wait_ready()
        await produce(broker, topics.events, first_half)
        await _wait_committed_to_end(broker, topics, worker)
        groups_before = await _groups(broker)
        assert topics.group in groups_before
        topic_names_before = {t for t in await _topic_names(broker) if t.startswith(prefix)}

        # The live worker keeps consuming a paced stream while the replay runs.
        samples, stop = _Samples(), asyncio.Event()
        sampler = asyncio.create_task(_sample(broker, topics.group, topics.events, stop, samples))
        producer = asyncio.create_task(produce(broker, topics.events, second_half,
                                               rate_eps=1_000))
        try:
            t_replay = time.monotonic()
            during = await _replay(tmp_path / "during.jsonl", *args)
            t_replay_end = time.monotonic()
            await asyncio.wait_for(producer, 120)
            await _wait_committed_to_end(broker, topics, worker)
        finally:
            stop.set()
            producer.cancel()
            await asyncio.wait_for(sampler, 60)
        live_records = await wait_drained(broker, topics, {e["event_id"] for e in w.events},
                                          worker, timeout_s=120)

        # No consumer group appeared, at any sample, nor after (the broker is this session's).
        new = set().union(*samples.groups, await _groups(broker)) - groups_before
        assert not new, f"consumer groups appeared during the replay: {new}"
        # The live group only moved forward, and did move while the replay ran.
        assert samples.committed
        for (_, a), (_, b) in zip(samples.committed, samples.committed[1:], strict=False):
            assert all(b.get(p, -1) >= off for p, off in a.items()), (a, b)
        during_replay = [c for t, c in samples.committed if t_replay <= t <= t_replay_end]
        assert len(during_replay) >= 2 and sum(during_replay[-1].values()) > sum(
            during_replay[0].values()), "the live worker did not progress during the replay"
        assert {t for t in await _topic_names(broker) if t.startswith(prefix)} == (
            topic_names_before), "the replay created topics"

        # What the replay read (the end offsets at its start) it decided as live did.
        s = during.summary
        assert len(first_half) <= s["events"] < len(w.events), during.line
        replayed = _first_by_event(_jsonl_rows(during.output))
        live_first = {}
        for r in live_records:
            d = orjson.loads(r.value)
            d["partition"] = r.partition
            live_first.setdefault(d["event_id"], d)
        _assert_same_decisions(live_first, replayed, replayed, "replay beside live vs live")

        # Idle live worker: the outputs and the changelog stand still on their own (control),
        # and still after a replay.
        ends = await _output_ends(broker, topics)
        committed = await committed_offsets(broker, topics.group, topics.events)
        await asyncio.sleep(3)
        assert await _output_ends(broker, topics) == ends, "the idle live worker wrote (control)"
        await _replay(tmp_path / "idle.parquet", *args)
        assert await _output_ends(broker, topics) == ends, "the replay wrote to live topics"
        assert await committed_offsets(broker, topics.group, topics.events) == committed
        assert await end_offsets(broker, topics.events) == committed, "input moved"
        worker.check_alive("after the replays")
    finally:
        worker.stop()


# -- 4. backfill with another model -----------------------------------------------------------


async def test_backfill_without_the_primary_scores_with_the_backup(live: LiveRun, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(TOPO.models_dir, models)
    shutil.rmtree(models / "primary")
    run = await _replay(tmp_path / "backup.parquet", *_kafka_args(live),
                        "--models-dir", str(models))
    replayed = _first_by_event(_parquet_rows(run.output))
    assert set(replayed) == live.distinct_ids
    # Features do not depend on the model.
    _assert_same_decisions(live.decisions, replayed, live.distinct_ids, "features",
                           fields=("event_id", "key", "event_ts_ms"), score=False)
    complete = [e for e, d in replayed.items() if _complete(d)]
    assert len(complete) > len(replayed) // 2
    wrong = {e: (replayed[e]["model"], replayed[e]["path"], replayed[e]["reasons"])
             for e in complete
             if replayed[e]["model"] != "backup:1"
             or replayed[e]["path"] not in ("fallback:backup_model", "fallback:last_score")
             or "model_unavailable" not in replayed[e]["reasons"]
             or replayed[e]["decision_id"] != decision_id(e, "backup:1", FEATURE_SET)}
    assert not wrong, f"{len(wrong)} complete rows not from backup:1: {list(wrong.items())[:5]}"
    assert any(replayed[e]["path"] == "fallback:backup_model" for e in complete)
    assert all(live.decisions[e]["model"] == "primary:1" for e in complete)
    # Rows without complete features never reach a model: decided by the rules, as live.
    incomplete = live.distinct_ids - set(complete)
    assert incomplete
    _assert_same_decisions(live.decisions, replayed, incomplete, "rules rows")


async def test_model_pins_are_accepted_or_refused_in_one_line(live: LiveRun, tmp_path):
    per_partition = 250
    to = ",".join(f"{p}:{per_partition}" for p in range(PARTITIONS))
    run = await _replay(tmp_path / "pinned.jsonl", *_kafka_args(live),
                        "--model", "backup=1", "--to-offsets", to)
    assert run.summary["events"] == PARTITIONS * per_partition, run.line
    rows = _jsonl_rows(run.output)
    assert len(rows) == PARTITIONS * per_partition
    replayed = _first_by_event(rows)
    # A prefix of each partition, from fresh state: decided exactly as live.
    _assert_same_decisions(live.decisions, replayed, replayed, "pinned backup=1")
    assert any(d["model"] == "primary:1" for d in replayed.values())

    bad_out = tmp_path / "nonsense.jsonl"
    proc, wall = await asyncio.to_thread(_cli, [*_kafka_args(live), "--model", "nonsense",
                                                "--output", str(bad_out)], 60.0)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamwise: "), proc.stderr[-3000:]
    assert "NAME=VERSION" in lines[0] and "nonsense" in lines[0], lines[0]
    assert not bad_out.exists()
    assert wall < 30


# -- 4. order ---------------------------------------------------------------------------------


async def test_event_time_replay_merges_partitions_by_event_time(live: LiveRun, tmp_path):
    """An `event_time` topology: each partition's decisions come in its release order, the
    partitions are merged oldest event first, and the events the reorder buffers still held
    at the end of the range are decided too."""
    t = TOPO.time
    topo = dataclasses.replace(TOPO, time=TimeSettings(
        t.max_out_of_orderness_ms, t.allowed_lateness_ms, ordering="event_time",
        reorder_capacity=t.reorder_capacity))
    out = tmp_path / "event_time.jsonl"
    summary = await replay_kafka(live.bootstrap, topo, RulesOnly(topo.rules, FEATURE_SET),
                                 live.prefix, ReplayRange(from_beginning=True), str(out),
                                 PARTITIONS)
    rows = _jsonl_rows(out)
    assert {d["event_id"] for d in rows} == live.distinct_ids
    assert summary.decisions == len(rows)
    per_partition: dict[int, list[tuple[int, int]]] = {}
    for i, d in enumerate(rows):
        per_partition.setdefault(d["partition"], []).append((d["event_ts_ms"], i))
    assert len(per_partition) == PARTITIONS
    # The merge: at every step the output took the oldest head among the partitions.
    heads = {p: 0 for p in per_partition}
    for i, d in enumerate(rows):
        p = d["partition"]
        assert per_partition[p][heads[p]][1] == i
        others = [per_partition[q][heads[q]][0] for q in per_partition
                  if q != p and heads[q] < len(per_partition[q])]
        assert all(d["event_ts_ms"] <= ts for ts in others), (i, d["event_ts_ms"], others)
        heads[p] += 1
    # Within a partition, events that were not late come out in event-time order (a later
    # duplicate re-emits its original's decision wherever it arrives: first copies only).
    first = _first_by_event(rows)
    for p in per_partition:
        on_time = [d["event_ts_ms"] for d in first.values()
                   if d["partition"] == p and "late_event" not in d["reasons"]]
        assert on_time == sorted(on_time), p


# -- 5. file input -----------------------------------------------------------------------------


async def test_file_replay_equals_the_kafka_replay(live: LiveRun, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in live.workload.events))
    profiles = tmp_path / "profiles.json"
    profiles.write_bytes(orjson.dumps(live.workload.profiles))
    # A broker address where nothing listens: the file replay must not need Kafka at all.
    run = await _replay(tmp_path / "file.parquet", "--input", str(events), "--profiles",
                        str(profiles), "--partitions", str(PARTITIONS),
                        "--broker", "127.0.0.1:9")
    kafka = await _parity_replay(live)
    from_file, from_kafka = _parquet_rows(run.output), _parquet_rows(kafka.output)
    by_file, by_kafka = _first_by_event(from_file), _first_by_event(from_kafka)
    assert set(by_file) == set(by_kafka) == live.distinct_ids
    _assert_same_decisions(by_kafka, by_file, live.distinct_ids, "file vs Kafka replay",
                           fields=("decision_id", "event_id", "key", "decision", "path",
                                   "model", "reasons", "event_ts_ms", "partition"))
    # Partitioned as the producer partitioned them, in the same order.
    assert [(d["partition"], d["event_id"]) for d in from_file] == [
        (d["partition"], d["event_id"]) for d in from_kafka]
    counts = ("events", "decisions", "duplicates", "late", "dlq")
    assert [run.summary[k] for k in counts] == [kafka.summary[k] for k in counts]


# -- profiles ----------------------------------------------------------------------------------


async def test_replay_sees_deleted_and_stale_profiles_as_live_does(kafka_bootstrap,
                                                                   unique_prefix, tmp_path):
    """Live, a tombstone deletes a card's profile and a profile written more than
    `profile_max_age_ms` before an event is stale (its features missing). Replay reads "the
    current profiles": it must see the same."""
    broker, prefix = kafka_bootstrap, unique_prefix
    w = generate(3_000, SEED)
    counts: dict[str, int] = {}
    for e in w.events:
        if e["card_id"] in w.profiles:
            counts[e["card_id"]] = counts.get(e["card_id"], 0) + 1
    busiest = sorted(counts, key=lambda c: (-counts[c], c))
    deleted, stale = busiest[0:3], busiest[3:6]
    old_ms = min(e["ts_ms"] for e in w.events) - TOPO.features.profile_max_age_ms - 3_600_000

    topics = await _topics_with_profiles(broker, prefix, w)
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    try:
        for card in deleted:
            await producer.send_and_wait(topics.profiles, key=card.encode(), value=None)
        for card in stale:
            await producer.send_and_wait(topics.profiles, key=card.encode(),
                                         value=orjson.dumps(w.profiles[card]), timestamp_ms=old_ms)
    finally:
        await producer.stop()
    await produce(broker, topics.events, _keyed(w.events))
    worker = WorkerProcess(broker, prefix, tmp_path / "state", tmp_path / "worker.log",
                           partitions=PARTITIONS)
    worker.start()
    try:
        await worker.wait_ready()
        records = await wait_drained(broker, topics, {e["event_id"] for e in w.events}, worker)
    finally:
        worker.stop()
    live_first = _first_by_event(orjson.loads(r.value) for r in records)
    # The live side as the premise says: no profile features for those cards.
    for card in (*deleted, *stale):
        rows = [d for d in live_first.values() if d["key"] == card]
        assert rows and all(d["features"]["amount_over_avg"] is None for d in rows), card
    assert any("stale_profile" in d["reasons"] for d in live_first.values()
               if d["key"] in stale)

    run = await _replay(tmp_path / "profiles.jsonl", "--broker", broker, "--topic-prefix",
                        prefix, "--partitions", str(PARTITIONS), "--from-beginning")
    replayed = _first_by_event(_jsonl_rows(run.output))
    assert set(replayed) == set(live_first)
    of_deleted = sorted(e for e, d in live_first.items() if d["key"] in deleted)
    of_stale = sorted(e for e, d in live_first.items() if d["key"] in stale)
    _assert_same_decisions(live_first, replayed, set(live_first) - {*of_deleted, *of_stale},
                           "cards with a current profile")
    problems = [m for m in (
        _mismatches(live_first, replayed, of_deleted, f"cards whose profile was deleted {deleted}"),
        _mismatches(live_first, replayed, of_stale, f"cards whose profile is stale {stale}"),
    ) if m]
    assert not problems, "\n".join(problems)
