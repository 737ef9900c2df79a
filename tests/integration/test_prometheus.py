"""A real Prometheus server scrapes a real worker on a real broker.

The test starts its own Prometheus (Debian's `prometheus` package) on a free loopback port with
a generated config that scrapes the worker's /metrics every second and loads the shipped alert
rules (deploy/prometheus/alerts.yml), then asks Prometheus' HTTP API what a user's dashboards
and alerts would ask. Both processes are the test's own and are stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.worker_harness import (
    REPO,
    FraudTopics,
    WorkerProcess,
    consume_all,
    create_topics,
    free_port,
    produce,
    wait_drained,
)
from topologies.fraud.workload import generate

pytestmark = pytest.mark.integration

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "streamwise.json"
STAGES = {"validate", "dedup", "features", "inference", "policy", "total"}
PARTITIONS = 4
FIRST, SECOND = 300, 1700  # two phases: the rate() window sees the stage histograms grow


def _binaries() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prometheus or not promtool:
        pytest.fail("prometheus/promtool not found: apt-get install -y prometheus (Debian's "
                    "package; .ci/run and scripts/test install it when run as root)",
                    pytrace=False)
    return prometheus, promtool


def _ids(records: list[tuple[bytes, bytes]]) -> set[str]:
    return {orjson.loads(v)["event_id"] for _, v in records}


class PrometheusServer:
    """A private Prometheus: config and TSDB in `root`, web on 127.0.0.1:`port`."""

    def __init__(self, binary: str, root: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "prometheus.log"
        config = root / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "streamwise", "scrape_timeout": "1s",
                                "static_configs": [{"targets": [target]}]}],
        }))
        self.cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "--- prometheus log tail ---\n" + "\n".join(text[-lines:])

    async def wait_ready(self, http: aiohttp.ClientSession, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, (
                f"prometheus exited with {self.proc and self.proc.returncode}\n{self.log_tail()}")
            try:
                async with http.get(f"{self.url}/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready\n{self.log_tail()}"
            await asyncio.sleep(0.25)

    async def query(self, http: aiohttp.ClientSession, promql: str) -> list[dict]:
        """An instant query; the result vector (raises on a PromQL error)."""
        async with http.get(f"{self.url}/api/v1/query", params={"query": promql}) as resp:
            body = await resp.json()
        assert body.get("status") == "success", f"{promql}: {body}"
        return body["data"]["result"]

    async def scalar(self, http: aiohttp.ClientSession, promql: str) -> float | None:
        result = await self.query(http, promql)
        return float(result[0]["value"][1]) if result else None

    async def until(self, http: aiohttp.ClientSession, promql: str, expected: float,
                    timeout_s: float = 60, rising: bool = True) -> None:
        """Poll (bounded) until the query's single value is `expected`. A `rising` value (a
        count) that passes `expected` fails at once: counted twice is not a timing issue."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.scalar(http, promql)
            if value == expected:
                return
            assert not rising or value is None or value < expected, (
                f"{promql} = {value} > {expected}")
            assert time.monotonic() < deadline, (
                f"{promql} = {value} after {timeout_s:.0f}s, want {expected}")
            await asyncio.sleep(0.5)


def _quantile_from_buckets(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == math.inf:
                return lower  # the highest finite bound, as Prometheus answers
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    raise AssertionError("unreachable: the +Inf bucket holds every observation")


def _dashboard_queries() -> list[str]:
    """Every panel query of the shipped dashboard, with its variables set for this run."""
    doc = json.loads(DASHBOARD.read_text())
    values = {"$__rate_interval": "1m", "$topology": "fraud", "$stage": "total",
              "$job": "streamwise"}
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in values.items():
                expr = expr.replace(var, value)
            out.append(expr)
    return out


async def test_prometheus_scrapes_the_worker(kafka_bootstrap, unique_prefix, tmp_path):
    prometheus_bin, promtool = _binaries()
    topics = FraudTopics(unique_prefix)
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=PARTITIONS)
    server: PrometheusServer | None = None
    # The reference workload (duplicates, disorder and late events included): every input
    # record gets exactly one decision record. Its card profiles are loaded before the worker
    # starts, so events with complete features reach the models.
    w = generate(FIRST + SECOND, seed=23)
    records = [(e["card_id"].encode(), orjson.dumps(e)) for e in w.events]
    first, second = records[:FIRST], records[FIRST:]
    await create_topics(kafka_bootstrap, [(topics.profiles, PARTITIONS,
                                           {"cleanup.policy": "compact"})])
    await produce(kafka_bootstrap, topics.profiles,
                  [(c.encode(), orjson.dumps(p)) for c, p in w.profiles.items()])
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        worker.start()
        await worker.wait_ready()
        server = PrometheusServer(prometheus_bin, tmp_path, f"127.0.0.1:{worker.port}")
        server.start()
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await server.wait_ready(http)
            await server.until(http, 'up{job="streamwise"}', 1)

            await produce(kafka_bootstrap, topics.events, first)
            await wait_drained(kafka_bootstrap, topics, _ids(first), worker)
            await server.until(http, "sum(streamwise_decisions_total)", FIRST)
            await produce(kafka_bootstrap, topics.events, second)
            await wait_drained(kafka_bootstrap, topics, _ids(records), worker)
            n = len(records)

            # Exact counts: decisions, records consumed and produced, no lag left.
            await server.until(http, "sum(streamwise_decisions_total)", n)
            await server.until(http, "sum(streamwise_records_in_total)", n)
            await server.until(http, f'sum(streamwise_records_out_total{{topic='
                                     f'"{topics.decisions}"}})', n)
            await server.until(http, "count(streamwise_consumer_lag_records)", PARTITIONS)
            # Lag is measured every second from the broker's end offsets: it falls to 0.
            await server.until(http, "sum(streamwise_consumer_lag_records)", 0, rising=False)
            # fraud's anomaly agent reads its outcomes topic (nothing produced there here)
            await server.until(http, "count(streamwise_agent_lag_records)", 1)
            await server.until(http, "sum(streamwise_agent_lag_records)", 0, rising=False)
            by_outcome = {(r["metric"]["path"], r["metric"]["decision"]): float(r["value"][1])
                          for r in await server.query(
                              http, "sum by (path, decision) (streamwise_decisions_total)")}
            decided = Counter((d["path"], d["decision"]) for d in (
                orjson.loads(r.value) for r in await consume_all(kafka_bootstrap,
                                                                 topics.decisions)))
            assert by_outcome == {k: float(v) for k, v in decided.items()}

            # Per-stage p99 as a dashboard asks for it: every stage answers a latency.
            p99 = {r["metric"]["stage"]: float(r["value"][1]) for r in await server.query(
                http, "histogram_quantile(0.99, sum by (le, stage) "
                      "(rate(streamwise_stage_seconds_bucket[5m])))")}
            assert set(p99) == STAGES, p99
            assert all(math.isfinite(v) and v > 0 for v in p99.values()), p99
            # Model calls are timed per model and version.
            calls = await server.query(
                http, "histogram_quantile(0.99, sum by (le, model, version) "
                      "(rate(streamwise_inference_seconds_bucket[5m])))")
            assert calls and all(r["metric"]["model"] in {"primary", "backup"}
                                 and r["metric"]["version"] for r in calls), calls

            # The scraped histogram is the worker's own: Prometheus' p99 over all batches
            # equals the one computed from the worker's exposition (idle now, so stable).
            async with http.get(f"{worker.url}/metrics") as resp:
                exposition = await resp.text()
            buckets: dict[str, list[tuple[float, float]]] = {}
            for family in text_string_to_metric_families(exposition):
                if family.name == "streamwise_stage_seconds":
                    for s in family.samples:
                        if s.name.endswith("_bucket"):
                            buckets.setdefault(s.labels["stage"], []).append(
                                (float(s.labels["le"]), s.value))
            ours = {stage: _quantile_from_buckets(0.99, b) for stage, b in buckets.items()}
            cumulative = {r["metric"]["stage"]: float(r["value"][1]) for r in await server.query(
                http, "histogram_quantile(0.99, sum by (le, stage) "
                      "(streamwise_stage_seconds_bucket))")}
            assert cumulative.keys() == ours.keys() == STAGES
            assert all(math.isclose(cumulative[s], ours[s], rel_tol=1e-9) for s in STAGES), (
                cumulative, ours)

            # promtool accepts the exposition as it is served.
            check = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(),
                                   capture_output=True, timeout=60, check=False)
            assert check.returncode == 0, (check.stdout + check.stderr).decode()

            # The shipped alert rules load and evaluate on real data without error.
            await _rules_evaluated(server, http)
            # Every panel query of the shipped dashboard is valid PromQL on real data.
            empty = [q for q in _dashboard_queries() if not await server.query(http, q)]
            assert not [q for q in empty if "streamwise_decisions_total" in q
                        or "streamwise_records_in_total" in q
                        or "streamwise_stage_seconds_bucket" in q], empty
    finally:
        if server is not None:
            server.stop()
        worker.stop()


async def _rules_evaluated(server: PrometheusServer, http: aiohttp.ClientSession,
                           timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(f"{server.url}/api/v1/rules") as resp:
            groups = (await resp.json())["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert rules, f"no rules loaded from {ALERTS}\n{server.log_tail()}"
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
        assert not bad, bad
        if all(r["health"] == "ok" for r in rules):
            return
        assert time.monotonic() < deadline, [(r["name"], r["health"]) for r in rules]
        await asyncio.sleep(0.5)
