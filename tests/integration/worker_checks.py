"""What the end-to-end worker tests of both topologies share: the decision record's fields, how
problems found against an oracle are reported, and schemathesis run against a live worker.

The per-topology checks (features, late records, dead letters, tables) stay in each test: their
details differ with what each topology promises.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

__all__ = ["DECISION_FIELDS", "DLQ_TRUNCATE", "EXAMPLES", "assert_clean", "run_schemathesis"]

DECISION_FIELDS = {"decision_id", "event_id", "key", "score", "decision", "model", "path",
                   "reasons", "features", "stage_ms", "event_ts_ms", "decided_at_ms"}
DLQ_TRUNCATE = 64 * 1024  # a dead letter carries at most this many bytes of its record
EXAMPLES = 8  # problems shown per category


def assert_clean(*reports: dict[str, list[str]],
                 title: str = "worker output differs from the oracle") -> None:
    """Raise AssertionError listing every category with problems (count and a few examples)."""
    merged: dict[str, list[str]] = defaultdict(list)
    for report in reports:
        for k, v in report.items():
            merged[k] += v
    merged = {k: v for k, v in merged.items() if v}
    if merged:
        lines = []
        for k, v in sorted(merged.items()):
            lines += [f"* {k}: {len(v)}", *(f"    {x}" for x in v[:EXAMPLES])]
        raise AssertionError(f"{title}:\n" + "\n".join(lines))


def run_schemathesis(base_url: str, token: str, cwd: Path) -> str:
    """Run schemathesis against the worker's own /openapi.json (30 examples per operation,
    seed 5) and return its output, once it passed and tested every operation it selected:
    no 5xx, every status, content type and body as the document says."""
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
           "-H", f"Authorization: Bearer {token}", "--max-examples", "30", "--seed", "5",
           "--checks", "not_a_server_error,status_code_conformance,"
                       "content_type_conformance,response_schema_conformance"]
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, "NO_COLOR": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # It really ran: every operation it loaded from the document was tested.
    selected = re.search(r"Selected: (\d+)/(\d+)", proc.stdout)
    tested = re.search(r"Tested: (\d+)", proc.stdout)
    assert selected and tested, proc.stdout[-3000:]
    assert int(tested.group(1)) == int(selected.group(1)) == int(selected.group(2)) > 0, \
        proc.stdout[-3000:]
    return proc.stdout
