"""The replay row: `streamwise replay` over the backlog the live worker just drained.

`streamwise replay fraud --from-beginning --to-offsets <the backlog's end offsets>
--output <work>/replay.jsonl` under the worker's topic prefix, as its own process. events/s is
replay's own figure from its summary line (events over the time from its first read to its
last write: start-up, imports, model load and profile load are outside it, as they are
outside every live row's window); the command's wall time and its peak RSS (VmHWM, read
every 50 ms while it runs) are kept beside it.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import workload
from .measure import peak_rss_mb

__all__ = ["ReplayFailed", "measure_replay", "replay_argv"]

# ReplaySummary.line(): "replayed 2,000 events → ... in 0.4s (5,123 events/s)..."
_SUMMARY = re.compile(r"replayed ([\d,]+) events .* in ([\d.]+)s \(([\d,]+) events/s\)")


class ReplayFailed(RuntimeError):
    pass


def replay_argv(broker: str, prefix: str, partitions: int, stops: dict[int, int],
                output: Path) -> list[str]:
    offsets = ",".join(f"{p}:{o}" for p, o in sorted(stops.items()))
    return [sys.executable, "-m", "engine", "--log-level", "WARNING", "replay",
            workload.BENCH_TOPOLOGY,
            "--broker", broker, "--topic-prefix", prefix, "--partitions", str(partitions),
            "--from-beginning", "--to-offsets", offsets, "--output", str(output)]


async def measure_replay(argv: list[str], logfile: Path, timeout_s: float) -> dict[str, Any]:
    """Run `argv` to its end (killed by PID past `timeout_s`); its summary, wall time and
    peak RSS."""
    t0 = time.monotonic()
    with open(logfile, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        peak = None
        try:
            # VmHWM, not the child's ru_maxrss: that one starts from this (big) process's
            # peak at fork. Read before poll(): a reaped process has none.
            while True:
                peak = peak_rss_mb(proc.pid) or peak
                if proc.poll() is not None:
                    break
                if time.monotonic() - t0 > timeout_s:
                    raise ReplayFailed(f"replay still running after {timeout_s:.0f}s")
                await asyncio.sleep(0.05)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait(timeout=10)
    wall_s = time.monotonic() - t0
    text = logfile.read_text(errors="replace")
    found = _SUMMARY.findall(text)
    if proc.returncode != 0 or not found:
        raise ReplayFailed(f"replay exited with {proc.returncode}:\n{text[-2000:]}")
    events, elapsed, rate = found[-1]
    return {"events_per_s": float(rate.replace(",", "")),
            "events": int(events.replace(",", "")),
            "elapsed_s": float(elapsed),
            "command_s": round(wall_s, 2),
            "peak_rss_mb": None if peak is None else round(peak, 2)}
