"""`streamwise bench` still runs end to end: every row measured, nothing about timings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROWS = ("ceiling", "baseline", "baseline_batched", "quix", "streamwise", "processes")
RATIOS = ("vs_ceiling", "vs_baseline", "vs_baseline_batched", "vs_quix", "replay_vs_live",
          "processes_vs_one")


def test_bench_tiny_run_reports_every_row(kafka_bootstrap, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "bench", "--broker", kafka_bootstrap,
         "--events", "2000", "--repeat", "1", "--latency-s", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for row in ROWS:
        p = report[row]
        assert p["events_per_s"] > 0, row
        assert 0 < p["backlog_outputs"] <= 2000, row
        for field in ("p50_ms", "p99_ms", "peak_rss_mb"):
            assert p[field] is not None and p[field] >= 0, (row, field)
    assert report["streamwise"]["stage_p99_ms"]
    replay = report["replay"]
    assert replay["events"] == 2000 and replay["events_per_s"] > 0
    assert replay["peak_rss_mb"] > 0
    for ratio in RATIOS:
        assert report["ratios"][ratio] > 0, ratio
    assert "NotLeaderForPartitionError" not in proc.stdout + proc.stderr
    for label in ("quix streams", "streamwise worker", "streamwise replay"):
        assert label in proc.stdout, label  # the table was printed
