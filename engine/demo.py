"""`streamwise demo`: local Kafka up, a fraud worker, reference events, a short report."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import orjson

from .config import EngineConfig, KafkaConfig
from .errors import ConfigError
from .kafka_io import (
    connect_check,
    ensure_topics,
    new_consumer,
    new_producer,
    partition_for,
    send_all,
)
from .progress import render_table
from .topology_loader import load_topology
from .worker import topic_specs

__all__ = ["run_demo"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8
DEMO_TOPOLOGY = "fraud"  # the reference topology, found like any other (its entry point)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _http_get(url: str, timeout_s: float = 5.0, json_body: bytes | None = None
              ) -> tuple[int, bytes, float]:
    """GET, or POST `json_body`; (status, body, elapsed ms)."""
    req = urllib.request.Request(url, data=json_body, headers=(
        {"Content-Type": "application/json"} if json_body is not None else {}))
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (loopback)
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    return status, body, (time.perf_counter() - t0) * 1000


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def run_demo(cfg: EngineConfig, events: int, keep: bool, broker_given: bool,
             child_env: dict[str, str]) -> int:
    """`broker_given`: a broker was configured (flag or environment), so no local one is
    started; `child_env`: the worker's whole environment (the CLI's, plus the STREAMWISE_*
    variables that connect it the same way: secrets never go on a command line)."""
    web_port = cfg.api.port
    kafka = cfg.kafka
    broker = kafka.bootstrap if broker_given else None
    started_kafka = False
    script = REPO_ROOT / "scripts" / "kafka-local.sh"
    if not broker:
        if not script.exists():
            raise ConfigError("no broker configured and no scripts/kafka-local.sh to start one")
        _say("1. Starting the local Apache Kafka (first run downloads the jars from Maven)...")
        out = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True,
                             timeout=1200)
        if out.returncode != 0:
            raise ConfigError("local Kafka did not start: "
                              + (out.stderr.strip().splitlines() or ["?"])[-1])
        broker = out.stdout.strip().splitlines()[-1]
        started_kafka = "already running" not in out.stderr
        kafka = kafka.model_copy(update={"bootstrap": broker})
        _say(f"   Kafka at {broker}")
    else:
        asyncio.run(connect_check(kafka))
        _say(f"1. Using the Kafka broker at {broker} ({kafka.security.protocol})")
    if not _port_free(web_port):
        raise ConfigError(f"port {web_port} is busy; pass --web-port")
    prefix = f"demo{int(time.time())}."
    data_dir = Path(tempfile.mkdtemp(prefix="streamwise-demo-"))
    worker = None
    try:
        topology = load_topology(DEMO_TOPOLOGY)
        assert topology.workload is not None  # the reference topology has one
        w = topology.workload(events, seed=7)
        asyncio.run(_produce_profiles(kafka, prefix, w.profiles))
        _say(f"2. Loaded {len(w.profiles):,} card profiles into {prefix}fraud.profiles")
        cmd = [sys.executable, "-m", "engine", "worker", DEMO_TOPOLOGY, "--broker", broker,
               "--web-port", str(web_port), "--data-dir", str(data_dir),
               "--topic-prefix", prefix, "--partitions", str(PARTITIONS)]
        log_path = data_dir / "worker.log"
        env = {**child_env, "STREAMWISE_BROKER": broker}
        worker = subprocess.Popen(cmd, stdout=open(log_path, "wb"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{web_port}"
        _wait_ready(base, worker, log_path)
        _say(f"3. Fraud worker up (pid {worker.pid}) at {base}, log {log_path}")
        report = asyncio.run(_produce_and_collect(kafka, prefix, w.events))
        _print_report(report, base, w.events)
        _say(f"\nNext, while the worker runs: metrics {base}/metrics, readiness {base}/readyz, "
             f"the API document {base}/openapi.json, lookups like "
             f"{base}/v1/features/<card>; topics {prefix}fraud.decisions, .dlq, .late; "
             f"its log {log_path}; `streamwise --help`.")
        if keep:
            _say(f"--keep: worker pid {worker.pid} and Kafka are left running "
                 f"(stop them: kill {worker.pid}; streamwise kafka down)")
            worker = None
            started_kafka = False
        else:
            _say("The demo stops the worker now (and the Kafka it started): run "
                 "`streamwise demo --keep` to keep both and try those URLs.")
        return 0
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
            shutil.rmtree(data_dir, ignore_errors=True)
        if started_kafka:
            subprocess.run(["bash", str(script), "stop"], capture_output=True, timeout=120)
            _say("Stopped the local Kafka this demo started.")


def _wait_ready(base: str, worker: subprocess.Popen, log_path: Path,
                timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise ConfigError(f"worker exited with {worker.returncode}: "
                              + log_path.read_text()[-2000:])
        try:
            if _http_get(base + "/readyz", 2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise ConfigError(f"worker not ready after {timeout_s:.0f}s; see {log_path}")


async def _produce_profiles(kafka: KafkaConfig, prefix: str, profiles: dict) -> None:
    topics = load_topology(DEMO_TOPOLOGY).topics(prefix)
    await ensure_topics(kafka, topic_specs(topics, PARTITIONS))
    producer = new_producer(kafka, max_batch_size=1 << 20)
    await producer.start()
    try:
        records = []
        for card, prof in profiles.items():
            k = card.encode()
            records.append((partition_for(k, PARTITIONS), (k, orjson.dumps(prof), [])))
        await send_all(producer, topics.profiles, records)
    finally:
        await producer.stop()


async def _produce_and_collect(kafka: KafkaConfig, prefix: str, events: list[dict]) -> dict:
    """Produce the events at a steady rate while reading decisions back, until every distinct
    event has one; latency is decision read time minus produce time."""
    topic_events, topic_decisions = f"{prefix}fraud.events", f"{prefix}fraud.decisions"
    expected = {e["event_id"] for e in events}
    consumer = new_consumer(kafka, topic_decisions, auto_offset_reset="earliest",
                            enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    producer = new_producer(kafka, max_batch_size=1 << 20)
    await producer.start()
    produced_at: dict[str, float] = {}
    decisions: dict[str, dict] = {}
    latencies: list[float] = []
    emitted = 0

    async def collect() -> None:
        nonlocal emitted
        deadline = time.monotonic() + 180
        while len(decisions) < len(expected) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            now_ms = time.time() * 1000
            for recs in batch.values():
                for r in recs:
                    d = orjson.loads(r.value)
                    emitted += 1
                    if d["event_id"] not in decisions:
                        decisions[d["event_id"]] = d
                        latencies.append(now_ms - produced_at.get(d["event_id"], now_ms))

    collector = asyncio.create_task(collect())
    try:
        t0 = time.time()
        rate, tick = 2000, 50  # events/s, chunk: an open loop well below saturation
        for i in range(0, len(events), tick):
            records = []
            for e in events[i:i + tick]:
                k = e["card_id"].encode()
                records.append((partition_for(k, PARTITIONS), (k, orjson.dumps(e), [])))
                produced_at.setdefault(e["event_id"], time.time() * 1000)
            await send_all(producer, topic_events, records)
            await asyncio.sleep(max(0.0, t0 + (i + tick) / rate - time.time()))
        _say(f"4. Produced {len(events):,} reference events to {topic_events} "
             f"in {time.time() - t0:.1f}s (open loop, {rate:,} events/s)")
        await collector
        return {"decisions": decisions, "emitted": emitted, "expected": len(expected),
                "latencies_ms": latencies, "elapsed_s": time.time() - t0}
    finally:
        collector.cancel()
        await producer.stop()
        await consumer.stop()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _print_report(r: dict, base: str, events: list[dict]) -> None:
    ds = list(r["decisions"].values())
    _say(f"5. {len(ds):,} of {r['expected']:,} distinct events decided "
         f"({r['emitted']:,} decision records incl. re-emitted duplicates)")
    by = Counter((d["path"], d["decision"]) for d in ds)
    render_table(("path", "decision", "events"),
                 ((path, dec, f"{n:,}") for (path, dec), n in sorted(by.items())),
                 title="Decisions by path", right=(2,))
    stages = ("validate", "dedup", "features", "inference", "policy", "total")
    rows = []
    for stage in stages:
        vals = [d["stage_ms"][stage] for d in ds]
        rows.append((stage, f"{_pct(vals, .5):.2f}", f"{_pct(vals, .99):.2f}"))
    render_table(("stage", "p50 ms", "p99 ms"), rows, right=(1, 2), title="Stage time")
    _say("   (per batch: every event waits for its batch)")
    lat = r["latencies_ms"]
    _say(f"   end to end (produce → decision read back): p50 {_pct(lat, .5):.0f} ms, "
         f"p99 {_pct(lat, .99):.0f} ms")
    busiest = Counter(e["card_id"] for e in events).most_common(1)[0][0]
    status, body, ms = _http_get(f"{base}/v1/tables/velocity/{busiest}")
    _say(f"\n6. Online lookup GET /v1/tables/velocity/{busiest} → {status} in {ms:.1f} ms")
    if status == 200:
        doc = orjson.loads(body)
        _say(f"   last_ts_ms={doc['value']['last_ts_ms']} tiles={doc['value']['tiles']} "
             f"events={doc['value']['count']} watermark_ms={doc['watermark_ms']} "
             f"served_by={doc['served_by']}")
    status, body, ms = _http_get(f"{base}/v1/decisions/{busiest}")
    if status == 200:
        d = orjson.loads(body)
        _say(f"   GET /v1/decisions/{busiest} → {d['decision']} via {d['path']} "
             f"(score {d['score']}, reasons {d['reasons']}) in {ms:.1f} ms")
    last = max((e for e in events if e["card_id"] == busiest), key=lambda e: e["ts_ms"])
    probe = {**last, "event_id": "demo-online-1", "amount": round(last["amount"] * 8, 2),
             "ts_ms": last["ts_ms"] + 60_000}
    timings = []
    for _ in range(5):  # the first call also warms the online path up
        status, body, ms = _http_get(f"{base}/v1/score", json_body=orjson.dumps(probe))
        timings.append(ms)
    _say(f"\n7. Online score POST /v1/score (card {busiest}, amount {probe['amount']}) → "
         f"{status} in {timings[0]:.1f} ms (then median {_pct(timings[1:], .5):.1f} ms)")
    if status == 200:
        d = orjson.loads(body)
        score = "none" if d["score"] is None else f"{d['score']:.4f}"
        _say(f"   {d['decision']} via {d['path']} ({d['model']}, score {score}, "
             f"reasons {d['reasons']}); read-only: the stream's state did not change")
