"""The CLI as a user meets it: bad input gives one line and a non-zero exit, quickly."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens


@pytest.mark.parametrize("command", [
    ["worker", "fraud", "--web-port", "0", "--data-dir", "{tmp}"],
    ["produce", "fraud", "--events", "10"],
    ["replay", "fraud", "--from-beginning", "--output", "{tmp}/out.jsonl"],
])
def test_unreachable_broker_fails_fast_with_one_line(tmp_path, command):
    broker = f"127.0.0.1:{_closed_port()}"
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    # It gives up on its own (the connect check's timeout), so it ends well before the 60 s
    # this run allows; it does not retry forever.
    proc = subprocess.run([sys.executable, "-m", "engine", *args, "--broker", broker],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("streamwise:")]
    assert errors == [f"streamwise: {errors[0].split(': ', 1)[1]}"]
    assert f"no Kafka broker answers at {broker}" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["worker", "nosuch"], "unknown topology 'nosuch'"),
    (["worker", "fraud", "--topic-prefix", "bad prefix!"], "invalid topic_prefix"),
    (["replay", "fraud", "--from-time", "yesterday", "--output", "x.jsonl"],
     "not an ISO time"),
    (["replay", "fraud", "--input", "missing.jsonl", "--output", "x.parquet"],
     "no such input file"),
    (["replay", "fraud", "--input", "x.jsonl", "--output", "x.csv"], "--output must end in"),
    (["replay", "fraud", "--from-beginning", "--output", "x.csv"], "--output must end in"),
    (["replay", "fraud", "--input", "x.jsonl", "--output", "topic:t"], "needs Kafka input"),
    (["replay", "fraud", "--from-offsets", "0:x", "--output", "x.jsonl"], "offsets look like"),
    (["worker", "fraud", "--model", "primary"], "--model takes NAME=VERSION"),
])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, message):
    if "x.jsonl" in args:
        (tmp_path / "x.jsonl").write_text("")
    proc = subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
