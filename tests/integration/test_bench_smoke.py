"""`streamwise bench` still runs end to end: every row measured, nothing about timings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROWS = ("ceiling", "baseline", "baseline_batched", "streamwise")


def test_bench_tiny_run_reports_every_row(kafka_bootstrap, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "bench", "--broker", kafka_bootstrap,
         "--events", "2000", "--repeat", "1", "--latency-s", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for row in ROWS:
        p = report[row]
        assert p["events_per_s"] > 0, row
        for field in ("p50_ms", "p99_ms", "peak_rss_mb"):
            assert p[field] is not None and p[field] >= 0, (row, field)
    assert report["streamwise"]["stage_p99_ms"]
    assert report["ratios"]["vs_ceiling"] > 0 and report["ratios"]["vs_baseline"] > 0
    assert "streamwise worker" in proc.stdout  # the table was printed
