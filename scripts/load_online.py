#!/usr/bin/env python3
"""Load the workers' online HTTP API while the stream runs (acceptance of issue #5).

Starts N fraud workers on fresh topics (and a private local broker unless one is given), a
producer of the reference workload at --rate events/s, then --clients concurrent clients for
--seconds, round-robin over the workers (so about half the requests are forwarded). Each client
alternates GET /v1/tables/velocity/{card} and POST /v1/score?budget_ms=50. Reports p50/p99/max
of both, errors, 404s (a card without state yet: not an error), the decision paths, who served
what, and the stream lag of the consumer group sampled every second.
Exit code 1 if any request failed (non-200 other than a lookup's 404, exception or 2 s timeout).
Usage: .venv/bin/python scripts/load_online.py [--broker HOST:PORT] [--clients 32] [--seconds 30]
       [--rate 1000] [--events 60000] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.bench.broker import LocalBroker, free_ports  # noqa: E402
from engine.bench.measure import progress  # noqa: E402
from topologies.fraud.workload import generate  # noqa: E402

PARTITIONS = 8
READY_TIMEOUT_S = 60.0
WARMUP_S = 5.0               # the stream runs this long before the clients start
REQUEST_TIMEOUT_S = 2.0
BUDGET_MS = 50
MAX_REQUESTS_PER_CLIENT = 1_000_000  # a count bound next to the time bound
STOP_TIMEOUT_S = 30.0


@dataclass
class _Stats:
    """Latencies and outcomes of one kind of request (lookups or scores)."""

    lat_ms: list[float] = field(default_factory=list)
    errors: int = 0
    not_found: int = 0
    error_kinds: Counter = field(default_factory=Counter)
    served_by: Counter = field(default_factory=Counter)
    forwarded: int = 0
    paths: Counter = field(default_factory=Counter)
    off_model_reasons: Counter = field(default_factory=Counter)  # why a score left the model

    def report(self, elapsed_s: float) -> dict[str, Any]:
        lat = np.asarray(self.lat_ms) if self.lat_ms else None

        def pct(q: float) -> float | None:
            return None if lat is None else round(float(np.percentile(lat, q)), 2)

        out = {"requests": len(self.lat_ms),
               "requests_per_s": round(len(self.lat_ms) / elapsed_s, 1) if elapsed_s else None,
               "p50_ms": pct(50), "p99_ms": pct(99),
               "max_ms": None if lat is None else round(float(lat.max()), 2),
               "errors": self.errors, "not_found_404": self.not_found,
               "error_kinds": dict(self.error_kinds.most_common(10)),
               "forwarded": self.forwarded, "served_by": dict(sorted(self.served_by.items()))}
        if self.paths:
            out["paths"] = dict(self.paths.most_common())
            out["off_model_reasons"] = dict(self.off_model_reasons.most_common(10))
        return out


@dataclass
class _Lag:
    samples: list[int] = field(default_factory=list)
    sample_errors: int = 0

    def report(self) -> dict[str, Any]:
        return {"max_lag_events": max(self.samples) if self.samples else None,
                "final_lag_events": self.samples[-1] if self.samples else None,
                "samples": len(self.samples), "sample_errors": self.sample_errors}


async def _watch_lag(broker: str, group: str, topic: str, stop: asyncio.Event, lag: _Lag) -> None:
    """Every second: the input's end offsets minus the group's committed offsets."""
    while True:
        try:
            done, total = await asyncio.wait_for(progress(broker, group, topic, PARTITIONS), 5)
            lag.samples.append(total - done)
        except Exception:  # a missed sample is reported, not fatal
            lag.sample_errors += 1
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
            return
        except TimeoutError:
            pass


async def _client(n: int, session: aiohttp.ClientSession, urls: list[str], token: str,
                  cards: list[str], events: list[dict], deadline: float,
                  lookups: _Stats, scores: _Stats) -> None:
    rng = random.Random(n)
    auth = {"Authorization": f"Bearer {token}"}
    post_headers = {**auth, "Content-Type": "application/json"}
    for i in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() >= deadline:
            return
        base = urls[(n + i) % len(urls)]
        is_lookup = i % 2 == 0
        stats = lookups if is_lookup else scores
        if is_lookup:
            method, url, body, headers = ("GET", f"{base}/v1/tables/velocity/{rng.choice(cards)}",
                                          None, auth)
        else:
            ev = rng.choice(events)
            body = json.dumps({**ev, "event_id": f"load-{n}-{i}", "ts_ms": ev["ts_ms"]}).encode()
            method, url, headers = "POST", f"{base}/v1/score?budget_ms={BUDGET_MS}", post_headers
        t0 = time.perf_counter()
        try:
            async with session.request(method, url, data=body, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
                via = resp.headers.get("X-Streamwise-Served-By")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            stats.lat_ms.append((time.perf_counter() - t0) * 1000)
            stats.errors += 1
            stats.error_kinds[type(exc).__name__] += 1
            continue
        stats.lat_ms.append((time.perf_counter() - t0) * 1000)
        if via is not None:
            stats.forwarded += 1
        if status == 404 and is_lookup:
            stats.not_found += 1
            continue
        if status != 200:
            stats.errors += 1
            stats.error_kinds[f"http_{status}"] += 1
            continue
        try:
            doc = json.loads(payload)
        except ValueError:
            stats.errors += 1
            stats.error_kinds["bad_json"] += 1
            continue
        stats.served_by[doc.get("served_by") or via or "?"] += 1
        if not is_lookup:
            path = str(doc.get("path"))
            stats.paths[path] += 1
            if path != "model":
                for reason in doc.get("reasons") or ["-"]:
                    stats.off_model_reasons[f"{path}: {reason}"] += 1


async def _load(urls: list[str], token: str, cards: list[str], events: list[dict],
                clients: int, seconds: float) -> tuple[_Stats, _Stats, float]:
    lookups, scores = _Stats(), _Stats()
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.monotonic()
        deadline = t0 + seconds
        await asyncio.wait_for(asyncio.gather(*(
            _client(n, session, urls, token, cards, events, deadline, lookups, scores)
            for n in range(clients))), seconds + REQUEST_TIMEOUT_S + 10)
        elapsed = time.monotonic() - t0
    return lookups, scores, elapsed


async def _run_load(args: argparse.Namespace, broker: str, prefix: str, urls: list[str],
                    token: str, cards: list[str], events: list[dict]) -> dict[str, Any]:
    lag, stop = _Lag(), asyncio.Event()
    watcher = asyncio.create_task(_watch_lag(broker, f"{prefix}streamwise-fraud",
                                             f"{prefix}fraud.events", stop, lag))
    try:
        lookups, scores, elapsed = await _load(urls, token, cards, events, args.clients,
                                               args.seconds)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(watcher, 15)
        except Exception as exc:  # lag is reported as missing, load still counts
            print(f"lag watcher: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"clients": args.clients, "seconds": round(elapsed, 2), "workers": len(urls),
            "rate_events_per_s": args.rate, "lookups": lookups.report(elapsed),
            "scores": scores.report(elapsed), "stream": lag.report()}


async def _wait_ready(urls: list[str], procs: list[subprocess.Popen], timeout_s: float) -> None:
    """Until every worker's /readyz is 200 and their partitions cover all PARTITIONS."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker pid {proc.pid} exited with {proc.returncode}")
            owned: set[int] = set()
            ready = 0
            for url in urls:
                try:
                    async with session.get(f"{url}/readyz") as resp:
                        doc = await resp.json(content_type=None)
                        last[url] = doc
                        if resp.status == 200:
                            ready += 1
                            owned.update(doc.get("partitions") or [])
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                    last[url] = type(exc).__name__
            if ready == len(urls) and owned >= set(range(PARTITIONS)):
                return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"workers not ready within {timeout_s:.0f} s: {last}")


def _stop(proc: subprocess.Popen, name: str) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"{name} (pid {proc.pid}) still alive after {STOP_TIMEOUT_S:.0f} s: SIGKILL",
              file=sys.stderr)
        proc.kill()
        proc.wait(timeout=10)


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _print_report(r: dict[str, Any]) -> None:
    print(f"online load: {r['clients']} clients for {r['seconds']} s over {r['workers']} "
          f"workers, stream at {r['rate_events_per_s']:,.0f} events/s")
    print(f"{'':8} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'errors':>7} {'404s':>6} {'fwd':>7}")
    for name in ("lookups", "scores"):
        s = r[name]
        print(f"{name:8} {s['requests']:>9,} {s['requests_per_s'] or 0:>8,.0f} "
              f"{_ms(s['p50_ms']):>8} {_ms(s['p99_ms']):>8} {_ms(s['max_ms']):>8} "
              f"{s['errors']:>7,} {s['not_found_404']:>6,} {s['forwarded']:>7,}")
        if s["error_kinds"]:
            print(f"  {name} errors: {s['error_kinds']}")
        print(f"  {name} served_by: {s['served_by']}")
    print(f"  score paths: {r['scores'].get('paths', {})}")
    print(f"  off-model reasons: {r['scores'].get('off_model_reasons', {})}")
    st = r["stream"]
    print(f"stream lag (events): max {st['max_lag_events']}, final {st['final_lag_events']} "
          f"({st['samples']} samples, {st['sample_errors']} failed)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                    help="bootstrap HOST:PORT (default: env KAFKA_BOOTSTRAP_SERVERS, else a "
                         "private local broker)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="stream events/s")
    ap.add_argument("--events", type=int, default=60_000, help="events the producer sends")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="also write the report to this JSON file")
    args = ap.parse_args()
    if args.clients < 1 or args.workers < 1 or args.seconds <= 0:
        ap.error("--clients and --workers must be >= 1, --seconds > 0")

    py = sys.executable
    prefix = f"lo{uuid.uuid4().hex[:6]}."
    token = secrets.token_urlsafe(24)
    tmp = Path(tempfile.mkdtemp(prefix="streamwise-load-"))
    workload = generate(args.events, 7)
    events = workload.events
    cards = sorted({e["card_id"] for e in events})
    broker: LocalBroker | None = None
    workers: list[subprocess.Popen] = []
    producer: subprocess.Popen | None = None
    logs: list[Path] = []
    try:
        bootstrap = args.broker
        if not bootstrap:
            broker = LocalBroker()
            print("starting a private local broker ...", file=sys.stderr)
            bootstrap = broker.start()
        common = ["--broker", bootstrap, "--topic-prefix", prefix,
                  "--partitions", str(PARTITIONS)]
        env = {**os.environ, "STREAMWISE_API_TOKEN": token}
        ports = free_ports(args.workers)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for i, port in enumerate(ports):
            log = tmp / f"worker{i}.log"
            logs.append(log)
            with open(log, "wb") as fh:
                workers.append(subprocess.Popen(
                    [py, "-m", "engine", "--log-level", "WARNING", "worker", "fraud", *common,
                     "--web-host", "127.0.0.1", "--web-port", str(port),
                     "--data-dir", str(tmp / f"w{i}"), "--create-input-topic"],
                    env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT))
        print(f"{args.workers} workers on {', '.join(urls)} (prefix {prefix}); waiting for "
              f"/readyz ...", file=sys.stderr)
        asyncio.run(_wait_ready(urls, workers, READY_TIMEOUT_S))
        plog = tmp / "producer.log"
        logs.append(plog)
        with open(plog, "wb") as fh:
            producer = subprocess.Popen(
                [py, "-m", "engine", "--log-level", "WARNING", "produce", "fraud", *common,
                 "--events", str(args.events), "--rate", str(args.rate)],
                cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        time.sleep(WARMUP_S)
        if producer.poll() not in (None, 0):
            raise RuntimeError(f"producer exited with {producer.returncode}:\n{_tail(plog)}")
        print(f"load: {args.clients} clients for {args.seconds:.0f} s ...", file=sys.stderr)
        report = asyncio.run(_run_load(args, bootstrap, prefix, urls, token, cards, events))
        report.update(broker=bootstrap, topic_prefix=prefix)
        for i, proc in enumerate(workers):
            if proc.poll() is not None:
                raise RuntimeError(f"worker {i} exited with {proc.returncode} during the "
                                   f"load:\n{_tail(logs[i])}")
        _print_report(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return 1 if report["lookups"]["errors"] or report["scores"]["errors"] else 0
    except Exception as exc:
        print(f"load_online: {type(exc).__name__}: {exc}", file=sys.stderr)
        for log in logs:
            tail = _tail(log)
            if tail:
                print(f"--- {log.name} (last lines)\n{tail}", file=sys.stderr)
        return 2
    finally:
        if producer is not None:
            _stop(producer, "producer")
        for proc in workers:  # all at once, so they leave the group together
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for i, proc in enumerate(workers):
            _stop(proc, f"worker {i}")
        if broker is not None:
            try:
                broker.stop()
            except Exception as exc:  # still remove the temp dir
                print(f"broker stop: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
