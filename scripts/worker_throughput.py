#!/usr/bin/env python3
"""Measure `streamwise worker` throughput on a pre-produced backlog of reference events.

Produces N events (and profiles) to fresh topics, then starts one worker and times from its
first committed offsets to the group's committed offsets reaching the end of the input
(start-up and the first poll are left out).
Usage: .venv/bin/python scripts/worker_throughput.py --broker 127.0.0.1:9092 --events 200000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from engine.bench.measure import progress


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--broker", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--timeout-s", type=float, default=900)
    ap.add_argument("--replay", action="store_true",
                    help="then replay the same events and compare (events/s, peak RSS)")
    args = ap.parse_args()
    prefix = f"tp{uuid.uuid4().hex[:6]}."
    py = sys.executable
    common = ["--broker", args.broker, "--topic-prefix", prefix, "--partitions",
              str(args.partitions)]
    subprocess.run([py, "-m", "engine", "produce", "fraud", "--events", str(args.events),
                    *common], check=True)
    data = tempfile.mkdtemp(prefix="streamwise-tp-")
    worker = subprocess.Popen([py, "-m", "engine", "--log-level", "WARNING", "worker", "fraud",
                               "--web-port", "0", "--data-dir", data, *common])
    group, topic = f"{prefix}streamwise-fraud", f"{prefix}fraud.events"
    try:
        t_first = None
        deadline = time.monotonic() + args.timeout_s
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                print(f"worker exited with {worker.returncode}", file=sys.stderr)
                return 1
            done, total = asyncio.run(asyncio.wait_for(
                progress(args.broker, group, topic, args.partitions), 30))
            now = time.monotonic()
            if done and t_first is None:
                t_first, first_done = now, done
            if done >= total:
                elapsed = now - t_first
                rate = (total - first_done) / elapsed if elapsed else float("nan")
                print(f"worker: {total:,} events, {total - first_done:,} after the first "
                      f"commit in {elapsed:.1f}s = {rate:,.0f} events/s, "
                      f"peak RSS {_peak_rss_mb(worker.pid):,.0f} MB")
                if args.replay:
                    _replay(py, common, data, rate)
                return 0
            time.sleep(0.5)
        print("timed out", file=sys.stderr)
        return 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process (Linux), in MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _replay(py: str, common: list[str], data: str, live_rate: float) -> None:
    out = os.path.join(data, "replay.parquet")
    t0 = time.monotonic()
    proc = subprocess.Popen([py, "-m", "engine", "--log-level", "WARNING", "replay", "fraud",
                             "--from-beginning", "--output", out, *common],
                            stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, _peak_rss_mb(proc.pid))
        except OSError:
            break
        time.sleep(0.2)
    summary = proc.stderr.read().strip().splitlines()[-1:] if proc.stderr else []
    elapsed = time.monotonic() - t0
    print(f"replay: {' '.join(summary)} (command {elapsed:.1f}s incl. start-up), "
          f"peak RSS {peak:,.0f} MB")
    rate = float(summary[0].split("(")[1].split()[0].replace(",", "")) if summary else 0.0
    print(f"replay / live worker throughput: {rate / live_rate:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
