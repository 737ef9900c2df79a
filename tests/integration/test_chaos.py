"""The chaos suite (#13): faults injected into real workers and a real broker while a seeded
stream flows, then an independent verifier (`chaos_verifier`) recomputes from the input topic
what every record must have become and counts lost, duplicate, unexpected and wrong outputs.

Two tiers, one code path: the PR tier (default; part of `scripts/test`) runs small streams
and few faults; the nightly tier (`STREAMWISE_CHAOS_TIER=nightly`, run by `scripts/chaos`,
which prints the table) runs longer streams and more faults. Each scenario appends its row to
`$STREAMWISE_CHAOS_RESULTS` (JSON lines) when set.

Every scenario's stream holds 1% poison records of every kind, events dated in the year 2100
(refused as future_time, #13 item 1) and null-keyed events (1 valid event in 20, on a random
partition): the worker forwards each to its card's partition (#13 item 2), where its place
among that partition's own records depends on timing, so the verifier recomputes every
partition in the order its decisions show and requires each decision on its card's partition.

Acceptance per scenario: 0 lost, 0 unexpected, 0 wrong_value, every input record accounted
for exactly once (duplicates after dedup by decision_id and recovery seconds are measured and
reported, not asserted: no timing assertion here).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.chaos_harness import (
    Cluster,
    Feeder,
    HttpLoad,
    caught_up,
    env_tier,
    far_future_events,
    mix,
    poison_records,
    prepare_topics,
    rss_bytes,
)
from tests.integration.chaos_verifier import (
    CardHistory,
    Expected,
    Report,
    check_tables,
    expected_outcomes,
    profiles_of,
    valid_event_ids,
    verify,
)
from tests.integration.worker_harness import (
    INPUT_MAX_MESSAGE_BYTES,
    FraudTopics,
    committed_offsets,
    consume_all,
    create_topics,
    end_offsets,
    produce,
    wait_drained,
)
from topologies.fraud.workload import generate

TIER = env_tier()
NIGHTLY = TIER == "nightly"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1_800 if NIGHTLY else 600)]

PARTITIONS = 8
RESULTS = os.environ.get("STREAMWISE_CHAOS_RESULTS")


@dataclass(frozen=True)
class Size:
    events: int
    rate: float  # events/s the stream is produced at
    faults: int = 0


SIZES = {
    "pr": {"kills": Size(9_000, 300, 3), "broker": Size(6_000, 300, 1),
           "dir": Size(5_000, 300), "scale": Size(5_000, 250), "http": Size(3_000, 200),
           "replays": Size(4_000, 0), "graceful": Size(6_000, 300, 2),
           "models": Size(5_000, 300)},
    "nightly": {"kills": Size(40_000, 400, 10), "broker": Size(30_000, 300, 3),
                "dir": Size(20_000, 400), "scale": Size(24_000, 300), "http": Size(20_000, 300),
                "replays": Size(20_000, 0), "graceful": Size(20_000, 400, 5),
                "models": Size(20_000, 400)},
}[TIER]


# -- common -------------------------------------------------------------------------------------


def _stream(size: Size, seed: int) -> tuple[list, dict]:
    """The reference workload with 1% poison records and 0.2% far-future events mixed in, 1
    valid event in 20 without a key (`mix`)."""
    w = generate(size.events, seed=seed)
    cards = sorted({ev["card_id"] for ev in w.events})
    extra = poison_records(max(7, size.events // 100), seed, cards) + \
        far_future_events(max(2, size.events // 500), seed, cards)
    return mix(w.events, extra, seed), w.profiles


async def _setup(broker: str, prefix: str, tmp: Path, size: Size, seed: int,
                 extra_args: tuple[str, ...] = ()) -> tuple[Cluster, FraudTopics, Feeder]:
    stream, profiles = _stream(size, seed)
    topics = await prepare_topics(broker, prefix, PARTITIONS, profiles)
    cluster = Cluster(broker, prefix, tmp, PARTITIONS, extra_args)
    return cluster, topics, Feeder(broker, topics.events, stream, size.rate or 1e9)


async def _repartition_committed(broker: str, topics: FraudTopics, timeout_s: float) -> None:
    """Until the group has committed the end of the repartition topic (bounded by
    `timeout_s`): a forwarded record's input offset is committed once it is forwarded, its
    outputs are all written only once its repartition offset is."""
    deadline = time.monotonic() + timeout_s
    while True:
        ends = await end_offsets(broker, topics.repartition)
        done = await committed_offsets(broker, topics.group, topics.repartition)
        behind = {p: (done.get(p), e) for p, e in ends.items() if e > 0 and done.get(p) != e}
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"repartition topic not committed to its end: {behind}")
        await asyncio.sleep(0.5)


async def _drained(broker: str, topics: FraudTopics) -> tuple[Expected, list]:
    """Wait until every valid input event is decided and the group has committed the end of
    the input and of the repartition topic; then the recomputation (in the order the
    decisions show) and the decision records."""
    timeout_s = 900 if NIGHTLY else 400
    consumed = await consume_all(broker, topics.events)
    await wait_drained(broker, topics, valid_event_ids(consumed), None, timeout_s=timeout_s)
    await _repartition_committed(broker, topics, timeout_s)
    decisions = await consume_all(broker, topics.decisions)  # re-emissions included
    profiles = profiles_of(await consume_all(broker, topics.profiles))
    return expected_outcomes(consumed, profiles, decisions, PARTITIONS), decisions


async def _verified(name: str, broker: str, topics: FraudTopics) -> tuple[Report, Expected]:
    """Drain, read every output topic and verify (no tables)."""
    expected, decisions = await _drained(broker, topics)
    rep = verify(name, expected, decisions, await consume_all(broker, topics.dlq),
                 await consume_all(broker, topics.late))
    return rep, expected


async def _finish(name: str, broker: str, cluster: Cluster, topics: FraudTopics,
                  recoveries: list[asyncio.Task] | None = None, sample: int | None = 1_000,
                  extra: dict | None = None, record: bool = True,
                  lookups: tuple[HttpLoad, list[str]] | None = None) -> Report:
    """Drain, read every topic, verify, check the tables over HTTP (a seeded sample of the
    cards in the PR tier, all nightly) and the `lookups` clients' answers (each a state the
    card had), record the row (unless the caller adds to it)."""
    rep, expected = await _verified(name, broker, topics)
    for w in cluster.alive:
        w.check_alive("at the end of the scenario")
    await check_tables(rep, expected, cluster.urls, sample=None if NIGHTLY else sample)
    if lookups is not None:
        load, cards = lookups
        for answer in load.check(CardHistory.of(expected, cards)):
            rep.problem("wrong_value", "a lookup answered a state the card never had", answer)
    if recoveries:
        rep.recovery_s = max(await asyncio.gather(*recoveries))
    rep.extra.update(extra or {})
    if record:
        _record(rep)
    return rep


def _record(rep: Report) -> None:
    print(rep.explain())
    if RESULTS:
        with open(RESULTS, "a") as f:
            f.write(orjson.dumps({"tier": TIER, **rep.row()}).decode() + "\n")


def _assert_ok(rep: Report) -> None:
    assert rep.ok, rep.explain()


@pytest.fixture
def cluster_guard():
    """Every cluster a test made is SIGKILLed by PID at teardown (what is still alive)."""
    made: list[Cluster] = []
    yield made.append
    for c in made:
        c.close()


async def _known_cards(broker: str, topics: FraudTopics, feeder: Feeder) -> list[str]:
    """Produce the first quarter of the stream and wait until it is decided; the cards it
    gave a table (accepted events, recomputed from the input topic). Readers read only
    those: a 404 is then a wrong answer, and a card's state only grows from there."""
    first = feeder.records[:len(feeder.records) // 4]
    feeder.records = feeder.records[len(first):]
    await produce(broker, topics.events, first)
    so_far, _ = await _drained(broker, topics)
    return sorted(so_far.oracle.tiles)


def _recover(broker: str, topics: FraudTopics) -> asyncio.Task:
    """Measure, in the background, the recovery from a fault that ends now."""
    return asyncio.create_task(caught_up(broker, topics, time.monotonic()))


# -- scenarios ----------------------------------------------------------------------------------


async def test_worker_sigkills(kafka_bootstrap: str, unique_prefix: str, tmp_path: Path,
                               cluster_guard) -> None:
    """Two workers, 8 partitions; a SIGKILL every 5-15 s (3 in the PR tier, 10 nightly), the
    victim restarted at once, as a supervisor would."""
    size = SIZES["kills"]
    cluster, topics, feeder = await _setup(kafka_bootstrap, unique_prefix, tmp_path, size, 101)
    cluster_guard(cluster)
    cluster.start("w1")
    cluster.start("w2")
    await cluster.wait_ready()
    feeder.start()
    rng = random.Random(101)
    recoveries = []
    for _ in range(size.faults):
        await asyncio.sleep(rng.uniform(5, 15))
        victim = rng.choice(["w1", "w2"])
        cluster.kill(victim)
        cluster.start(victim)
        recoveries.append(_recover(kafka_bootstrap, topics))
    await feeder.wait()
    rep = await _finish("worker SIGKILL", kafka_bootstrap, cluster, topics, recoveries,
                        extra={"faults": size.faults})
    _assert_ok(rep)


async def test_broker_sigkills_and_a_freeze(kafka_broker, unique_prefix: str, tmp_path: Path,
                                            cluster_guard) -> None:
    """The broker SIGKILLed mid-stream and down 5-20 s (1x PR, 3x nightly), and nightly also
    frozen with SIGSTOP for 30 s; the workers are never restarted: they resume by themselves."""
    if not kafka_broker.controllable:
        pytest.skip(f"cannot kill the {kafka_broker.source} broker from the tests")
    broker = kafka_broker.bootstrap
    size = SIZES["broker"]
    cluster, topics, feeder = await _setup(broker, unique_prefix, tmp_path, size, 103)
    cluster_guard(cluster)
    cluster.start("w1")
    cluster.start("w2")
    await cluster.wait_ready()
    feeder.start()
    rng = random.Random(103)
    recoveries, downs = [], []
    faults = [("kill", rng.uniform(5, 10 if not NIGHTLY else 20)) for _ in range(size.faults)]
    if NIGHTLY:
        faults.append(("freeze", 30.0))
    for i, (kind, down_s) in enumerate(faults):
        await feeder.until((i + 1) / (len(faults) + 1))
        try:
            if kind == "kill":
                await asyncio.to_thread(kafka_broker.kill)
            else:
                kafka_broker.pause()
            await asyncio.sleep(down_s)
        finally:
            if kind == "kill":
                await asyncio.to_thread(kafka_broker.start)
            else:
                kafka_broker.resume()
        downs.append(f"{kind} {down_s:.0f}s")
        recoveries.append(_recover(broker, topics))
        for w in cluster.workers.values():
            w.check_alive("after the broker came back")
    await feeder.wait()
    rep = await _finish("broker SIGKILL/SIGSTOP", broker, cluster, topics, recoveries,
                        extra={"faults": ", ".join(downs), "producer_resends": feeder.resends})
    assert [w.starts for w in cluster.workers.values()] == [1, 1]  # nobody restarted them
    _assert_ok(rep)


async def test_a_state_dir_deleted_under_a_worker(kafka_bootstrap: str, unique_prefix: str,
                                                  tmp_path: Path, cluster_guard) -> None:
    """One worker's state directory deleted mid-stream: it notices, leaves its group and exits
    2 (#13 item 3); restarted (a supervisor), it restores from the changelog."""
    size = SIZES["dir"]
    cluster, topics, feeder = await _setup(kafka_bootstrap, unique_prefix, tmp_path, size, 107)
    cluster_guard(cluster)
    cluster.start("w1")
    victim = cluster.start("w2")
    await cluster.wait_ready()
    feeder.start()
    await feeder.until(0.4)
    t0 = time.monotonic()
    shutil.rmtree(victim.data_dir)
    for _ in range(1_200):  # bounded: at most ~120 s for it to notice and leave
        if not victim.alive:
            break
        await asyncio.sleep(0.1)
    assert victim.proc is not None and victim.proc.poll() == 2, victim.log_tail()
    last = victim.log_path.read_text(errors="replace").strip().splitlines()[-1]
    assert last.startswith("streamwise: cannot write state at "), last
    noticed_s = time.monotonic() - t0
    victim.start()
    recovery = _recover(kafka_bootstrap, topics)
    await feeder.wait()
    rep = await _finish("state dir deleted", kafka_bootstrap, cluster, topics, [recovery],
                        extra={"noticed_s": round(noticed_s, 1)})
    _assert_ok(rep)


async def test_graceful_restarts_duplicate_nothing(kafka_bootstrap: str, unique_prefix: str,
                                                   tmp_path: Path, cluster_guard) -> None:
    """SIGTERM and restart, one worker at a time (2x PR, 5x nightly): every output record
    exactly once (0 raw duplicates: a graceful stop commits all it wrote)."""
    size = SIZES["graceful"]
    cluster, topics, feeder = await _setup(kafka_bootstrap, unique_prefix, tmp_path, size, 109)
    cluster_guard(cluster)
    cluster.start("w1")
    cluster.start("w2")
    await cluster.wait_ready()
    feeder.start()
    recoveries = []
    for i in range(size.faults):
        await feeder.until((i + 1) / (size.faults + 1))
        name = ("w1", "w2")[i % 2]
        assert await asyncio.to_thread(cluster.stop, name) == 0, \
            cluster.workers[name].log_tail()
        cluster.start(name)
        recoveries.append(_recover(kafka_bootstrap, topics))
        await cluster.wait_ready()
    await feeder.wait()
    rep = await _finish("graceful restarts", kafka_bootstrap, cluster, topics, recoveries,
                        extra={"faults": size.faults})
    _assert_ok(rep)
    assert rep.raw_duplicate == 0 and rep.duplicate == 0, rep.explain()


async def test_scaling_while_clients_read(kafka_bootstrap: str, unique_prefix: str,
                                          tmp_path: Path, cluster_guard) -> None:
    """1 -> 2 -> 3 -> 2 -> 1 workers while the stream flows and 8 clients read keys from
    whichever workers are up: every 200 answer is a state the card really had."""
    size = SIZES["scale"]
    cluster, topics, feeder = await _setup(kafka_bootstrap, unique_prefix, tmp_path, size, 113)
    cluster_guard(cluster)
    cluster.start("w1")
    await cluster.wait_ready()
    cards = await _known_cards(kafka_bootstrap, topics, feeder)
    load = HttpLoad(cluster, cards)
    stop = asyncio.Event()
    readers = [asyncio.create_task(load.reader(i, stop, 113)) for i in range(8)]
    feeder.start()
    recoveries = []
    try:
        for i, (action, name) in enumerate([("start", "w2"), ("start", "w3"), ("stop", "w3"),
                                            ("stop", "w2")]):
            await feeder.until((i + 1) / 5)
            if action == "start":
                cluster.start(name)
                await cluster.wait_ready()
            else:
                assert await asyncio.to_thread(cluster.stop, name) == 0, \
                    cluster.workers[name].log_tail()
            recoveries.append(_recover(kafka_bootstrap, topics))
        await feeder.wait()
    finally:
        stop.set()
        await asyncio.gather(*readers)
    rep = await _finish("scale 1-2-3-2-1 + 8 readers", kafka_bootstrap, cluster, topics,
                        recoveries, extra={"lookups": sum(load.served.values()),
                                           "answers": dict(sorted(load.statuses.items()))},
                        lookups=(load, cards))
    _assert_ok(rep)
    assert all(n > 0 for n in load.served.values()), load.served


async def test_512_clients_half_of_them_slow(kafka_bootstrap: str, unique_prefix: str,
                                             tmp_path: Path, cluster_guard) -> None:
    """256 clients whose request bodies never finish and 256 normal readers, on two workers,
    while the stream flows: the slow ones get 408 (#13 item 4), the normal ones are served
    (or told 429/503 at once), every answer is right, and memory stays bounded."""
    size = SIZES["http"]
    cluster, topics, feeder = await _setup(kafka_bootstrap, unique_prefix, tmp_path, size, 127)
    cluster_guard(cluster)
    cluster.start("w1")
    cluster.start("w2")
    await cluster.wait_ready()
    cards = await _known_cards(kafka_bootstrap, topics, feeder)
    load = HttpLoad(cluster, cards)
    stop = asyncio.Event()
    urls = cluster.urls
    feeder.start()
    tasks = [asyncio.create_task(load.slow_client(stop, urls[i % 2])) for i in range(256)]
    tasks += [asyncio.create_task(load.reader(i, stop, 127)) for i in range(256)]
    peak: dict[str, int] = {}
    try:
        await feeder.wait()
        for _ in range(15 if not NIGHTLY else 60):  # the load goes on a while after the stream
            for name, w in cluster.workers.items():
                if w.proc is not None:
                    peak[name] = max(peak.get(name, 0), rss_bytes(w.proc.pid))
            await asyncio.sleep(1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    refusals = sorted(load.refusal_ms)
    rep = await _finish("512 clients, 256 slow", kafka_bootstrap, cluster, topics, extra={
        "lookups": sum(load.served.values()), "answers": dict(sorted(load.statuses.items())),
        "slow": dict(sorted(load.slow_answers.items())),
        "refusal_p99_ms": round(refusals[int(len(refusals) * 0.99)], 1) if refusals else None,
        "peak_rss_mb": {n: v >> 20 for n, v in peak.items()}}, lookups=(load, cards))
    _assert_ok(rep)
    # refused, never held: 408 once the body timeout fires (429/503 if the slots were full)
    assert load.slow_answers.get("408") and set(load.slow_answers) <= {"408", "429", "503"}, \
        load.slow_answers
    assert all(n > 0 for n in load.served.values()), "a normal client was never served"
    assert max(peak.values()) < 1 << 30, peak  # the Kubernetes memory limit: 1 GiB


async def test_faulty_models_under_load(kafka_bootstrap: str, unique_prefix: str,
                                        tmp_path: Path, cluster_guard) -> None:
    """The primary model slow (10% of calls +60 ms, past its 30 ms timeout) and failing (5%),
    then its files deleted, then a corrupt newer version dropped in: decisions come from the
    fallback chain, none is lost or computed from wrong features."""
    models = tmp_path / "models"
    shutil.copytree(Path(__file__).resolve().parents[2] / "topologies" / "fraud" / "models",
                    models)
    size = SIZES["models"]
    cluster, topics, feeder = await _setup(
        kafka_bootstrap, unique_prefix, tmp_path, size, 131,
        ("--models-dir", str(models), "--inject-faults", "slow=0.1:60,fail=0.05"))
    cluster_guard(cluster)
    cluster.start("w1")
    cluster.start("w2")
    await cluster.wait_ready()
    feeder.start()
    await feeder.until(0.3)
    (models / "primary" / "1" / "model.onnx").unlink()  # missing: the loaded one keeps serving
    await feeder.until(0.6)
    corrupt = models / "primary" / "2"
    corrupt.mkdir()
    shutil.copy(models / "primary" / "1" / "model.json", corrupt / "model.json")
    (corrupt / "model.onnx").write_bytes(b"\x08\x07 not an onnx model")
    await feeder.wait()
    rep = await _finish("models missing/corrupt/slow/failing", kafka_bootstrap, cluster,
                        topics, record=False)
    paths = {}
    for r in await consume_all(kafka_bootstrap, topics.decisions):
        path = orjson.loads(r.value)["path"]
        paths[path] = paths.get(path, 0) + 1
    rep.extra["paths"] = dict(sorted(paths.items()))
    _record(rep)
    _assert_ok(rep)
    assert paths.get("model", 0) > 0 and len(paths) > 1, paths  # faults did take effect


async def _copy_input(broker: str, source: list, prefix: str) -> FraudTopics:
    """The same records (partition, key, value, record time) under another prefix."""
    topics = FraudTopics(prefix)
    await create_topics(broker, [
        (topics.events, PARTITIONS, {"max.message.bytes": str(INPUT_MAX_MESSAGE_BYTES)}),
        (topics.profiles, PARTITIONS, {"cleanup.policy": "compact"})])
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5,
                                max_request_size=16 << 20)
    await producer.start()
    try:
        for name, records in (("events", source[0]), ("profiles", source[1])):
            futures = [await producer.send(getattr(topics, name), value=r.value, key=r.key,
                                           partition=r.partition, timestamp_ms=r.timestamp)
                       for r in records]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return topics


def _comparable(records: list, prefix: str) -> list[tuple]:
    """Output records per partition in order, without what legitimately differs between runs
    (per-batch stage timings, the wall-clock decision time, the DLQ's receive time, the
    run's topic prefix in the source-topic header), and what depends on when forwarded
    events arrived: the watermark a late record was late against (the verifier checks it
    per run) and a forwarded record's offset in the repartition topic."""
    out = []
    for r in records:
        try:
            d = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            d = None
        if isinstance(d, dict) and "decision_id" in d:
            d.pop("stage_ms", None)
            d.pop("decided_at_ms", None)
            body = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
        else:
            body = r.value or b""
        drop = {"streamwise.received_at_ms", "streamwise.watermark_ms"}
        if dict(r.headers).get("streamwise.topic", b"").endswith(b".repartition"):
            drop |= {"streamwise.partition", "streamwise.offset"}  # its place there: timing
        headers = tuple((k, v.removeprefix(prefix.encode()) if k == "streamwise.topic" else v)
                        for k, v in r.headers if k not in drop)
        out.append((r.partition, r.key, body, headers))
    return out


def _by_event(rows: list[tuple]) -> dict[str, list[tuple]]:
    """Comparable decision or late rows grouped by event id, each group sorted."""
    out: dict[str, list[tuple]] = {}
    for row in rows:
        out.setdefault(orjson.loads(row[2])["event_id"], []).append(row)
    return {eid: sorted(group, key=repr) for eid, group in out.items()}  # keys may be None


def _same_history(runs: list[Expected]) -> set[str]:
    """The events decided from the same history in every run: each card's events up to and
    including the event in the same processing order with the same outcomes (then the
    worker's features, float rounding included, and lateness cannot differ). A forwarded
    event's place depends on timing; from where a card's orders part, its events may differ."""
    orders = []
    for e in runs:
        o = e.oracle
        cards: dict[str, list[tuple[str, str]]] = {}
        for eid in sorted(o.outcome, key=e.order.__getitem__):
            cards.setdefault(o.events[eid]["card_id"], []).append((eid, o.outcome[eid]))
        orders.append(cards)
    same = set()
    for card, first in orders[0].items():
        for i, (eid, _) in enumerate(first):
            if any(other.get(card, [])[:i + 1] != first[:i + 1] for other in orders[1:]):
                break
            same.add(eid)
    return same


def _timeout_only(rows: list[list[tuple]]) -> bool:
    """Whether the runs' decision rows of one event differ only where a model call timed out
    (a documented reason for another path, hence another decision): as many rows, each with
    the same partition, key and features, and a differing row has a timeout or an open
    breaker among some run's reasons."""
    if len({len(r) for r in rows}) != 1:
        return False
    for same_row in zip(*rows, strict=True):
        docs = [orjson.loads(row[2]) for row in same_row]
        if len({row[:2] for row in same_row}) != 1 or \
                any(d["features"] != docs[0]["features"] for d in docs):
            return False
        if len(set(same_row)) > 1 and not any(
                set(d["reasons"]) & {"timeout", "breaker_open"} for d in docs):
            return False
    return True


def _differing_decisions(runs: list[list[tuple]], same: set[str]) -> tuple[list[str], int]:
    """Examples of events decided from the same history whose decision rows differ between
    the runs, and how many such events differ only because a model call timed out."""
    groups = [_by_event(rows) for rows in runs]
    differing, timed_out = [], 0
    for eid in sorted(same):
        rows = [g.get(eid, []) for g in groups]
        if all(r == rows[0] for r in rows):
            continue
        if _timeout_only(rows):
            timed_out += 1
        else:
            differing.append(f"decision of {eid}: {[r[0][2][:160] for r in rows if r]}")
    return differing, timed_out


async def test_poison_and_three_identical_runs(kafka_bootstrap: str, unique_prefix: str,
                                               tmp_path: Path, cluster_guard) -> None:
    """1% poison records of every kind, far-future and null-keyed events, decided by three
    fresh deployments from copies of the same input, each run verified. A forwarded event's
    place among its card partition's records depends on timing, so the runs are compared event
    by event: the DLQ records byte for byte, and the decisions and late records of every
    event decided from the same history in all three runs (`_same_history`) byte for byte too
    (timings aside)."""
    size = SIZES["replays"]
    stream, profiles = _stream(size, 137)
    topics = await prepare_topics(kafka_bootstrap, unique_prefix + "r0.", PARTITIONS, profiles)
    await produce(kafka_bootstrap, topics.events, stream)
    source = (await consume_all(kafka_bootstrap, topics.events),
              await consume_all(kafka_bootstrap, topics.profiles))
    runs, expectations, others = [], [], []
    for run in range(3):
        t = topics if run == 0 else await _copy_input(kafka_bootstrap, source,
                                                      f"{unique_prefix}r{run}.")
        (tmp_path / f"run{run}").mkdir()
        cluster = Cluster(kafka_bootstrap, t.prefix, tmp_path / f"run{run}", PARTITIONS)
        cluster_guard(cluster)
        cluster.start("w1")
        await cluster.wait_ready()
        if run == 0:
            rep = await _finish("poison + far-future, 3 runs", kafka_bootstrap, cluster, t,
                                record=False)
        else:
            others.append((await _verified(f"run {run}", kafka_bootstrap, t))[0])
        expectations.append((await _drained(kafka_bootstrap, t))[0])
        runs.append([_comparable(await consume_all(kafka_bootstrap, getattr(t, name)), t.prefix)
                     for name in ("decisions", "dlq", "late")])
        cluster.close()
    same = _same_history(expectations)
    differing = [] if runs[0][1] == runs[1][1] == runs[2][1] else ["dlq"]
    late = [_by_event(run[2]) for run in runs]
    differing += [f"late record of {eid}" for eid in sorted(same)
                  if not late[0].get(eid) == late[1].get(eid) == late[2].get(eid)]
    decisions, timed_out = _differing_decisions([run[0] for run in runs], same)
    differing += decisions
    rep.extra["three_runs_identical"] = not differing
    rep.extra["events_compared"] = len(same)
    rep.extra["events_order_dependent"] = len(expectations[0].valid) - len(same)
    rep.extra["rows_a_timeout_changed"] = timed_out
    for other in others:
        rep.extra[other.scenario] = "ok" if other.ok else other.row()
    _record(rep)
    _assert_ok(rep)
    assert all(other.ok for other in others), "\n".join(o.explain() for o in others)
    assert not differing, f"{differing[:3]} differ between three runs of the same input"
