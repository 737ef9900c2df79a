"""The CLI as a user meets it against a real broker: every mistake gives one line on stderr and a
non-zero exit (never a traceback, never a library's log lines first), and leaves nothing behind.

Mistakes that need no broker are in tests/unit/test_cli_settings.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.worker_harness import REPO
from topologies.fraud.workload import generate

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STREAMWISE_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env, check=False)


def _one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """Exit `code` and exactly one line on stderr (nothing of aiokafka's before it)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("streamwise: "), proc.stderr[-3000:]
    return lines[0]


async def _topics(broker: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=15_000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.parametrize("command", [
    ["worker", "fraud", "--web-port", "0", "--data-dir", "{tmp}"],
    ["produce", "fraud", "--events", "10"],
    ["replay", "fraud", "--from-beginning", "--output", "{tmp}/out.jsonl"],
])
def test_unreachable_broker_is_one_line_without_library_noise(tmp_path, command):
    broker = f"127.0.0.1:{_closed_port()}"
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    # It gives up on its own (the connect check's timeout); it does not retry forever.
    proc = _cli(*args, "--broker", broker, timeout=60)
    assert _one_line(proc) == (f"streamwise: no Kafka broker answers at {broker} (connection "
                               f"refused at {broker})")


@pytest.mark.parametrize("args, message", [
    (["worker", "nosuch"], "unknown topology 'nosuch'"),
    (["replay", "fraud", "--from-time", "yesterday", "--output", "x.jsonl"],
     "not an ISO time"),
    (["replay", "fraud", "--input", "missing.jsonl", "--output", "x.parquet"],
     "no such input file"),
    (["replay", "fraud", "--input", "x.jsonl", "--output", "x.csv"], "--output must end in"),
    (["replay", "fraud", "--from-beginning", "--output", "x.csv"], "--output must end in"),
    (["replay", "fraud", "--input", "x.jsonl", "--output", "topic:t"], "needs Kafka input"),
    (["replay", "fraud", "--from-offsets", "0:x", "--output", "x.jsonl"], "offsets look like"),
])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "x.jsonl").write_text("")
    proc = subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert message in _one_line(proc)


def test_a_mistyped_topic_prefix_says_the_input_is_missing_and_creates_nothing(
        kafka_bootstrap, tmp_path):
    broker = kafka_bootstrap
    prefix = f"nosuch{os.urandom(3).hex()}."
    proc = _cli("worker", "fraud", "--broker", broker, "--topic-prefix", prefix,
                "--web-port", "0", "--data-dir", str(tmp_path / "state"))
    assert _one_line(proc) == (
        f"streamwise: input topic {prefix}fraud.events does not exist at {broker} (check "
        "--topic-prefix and --broker; `streamwise produce` creates it, or pass "
        "--create-input-topic)")
    proc = _cli("replay", "fraud", "--broker", broker, "--topic-prefix", prefix,
                "--from-beginning", "--output", str(tmp_path / "out.jsonl"))
    assert _one_line(proc) == (f"streamwise: input topic {prefix}fraud.events does not exist "
                               "(check --topic-prefix and --broker)")
    assert not (tmp_path / "out.jsonl").exists()
    # Nothing under that prefix came into being (the broker auto-creates topics on a metadata
    # request for them: none was made).
    assert not {t for t in asyncio.run(_topics(broker)) if t.startswith(prefix)}


def test_produce_creates_the_topics_says_so_and_replays_of_empty_ranges_fail(
        kafka_bootstrap, tmp_path, unique_prefix):
    broker, prefix = kafka_bootstrap, unique_prefix
    proc = _cli("produce", "fraud", "--broker", broker, "--topic-prefix", prefix,
                "--partitions", "2", "--events", "200", "--no-profiles")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == (f"created 10 topics with 2 partitions: {prefix}fraud.events, "
                        f"{prefix}fraud.decisions, {prefix}fraud.dlq, {prefix}fraud.late, "
                        f"{prefix}fraud.profiles, {prefix}fraud.control, "
                        f"{prefix}fraud.changelog, {prefix}fraud.members, "
                        f"{prefix}fraud.repartition, {prefix}fraud.outcomes")
    # not a terminal: no progress bar, only the summary line
    assert lines[1].startswith(f"produced 200 events to {prefix}fraud.events in ")
    assert len(lines) == 2 and "\x1b" not in proc.stderr and "\r" not in proc.stderr


    base = ["replay", "fraud", "--broker", broker, "--topic-prefix", prefix]
    out = tmp_path / "out.parquet"
    proc = _cli(*base, "--from-time", "2099-01-01T00:00:00Z", "--output", str(out))
    assert _one_line(proc, code=1) == (
        f"streamwise: nothing to replay: the range of {prefix}fraud.events holds no records; "
        "pass --allow-empty to write an empty output anyway")
    assert not out.exists()
    proc = _cli(*base, "--from-offsets", "99:0", "--output", str(out))
    assert _one_line(proc) == (f"streamwise: partition 99 does not exist: {prefix}fraud.events "
                               "has 2 partitions (0-1)")
    proc = _cli(*base, "--from-offsets", "0:100000,1:100000", "--output", str(out))
    assert _one_line(proc, code=1).startswith("streamwise: nothing to replay")
    proc = _cli(*base, "--partitions", "8", "--from-beginning", "--output", str(out))
    assert _one_line(proc) == (f"streamwise: topic {prefix}fraud.events has 2 partitions, "
                               "not 8; pass --partitions 2")
    assert not out.exists()
    proc = _cli(*base, "--from-time", "2099-01-01T00:00:00Z", "--output", str(out),
                "--allow-empty")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).num_rows == 0
    proc = _cli(*base, "--from-beginning", "--output", str(tmp_path / "all.jsonl"))
    assert proc.returncode == 0, proc.stderr
    rows = [orjson.loads(line) for line in (tmp_path / "all.jsonl").read_bytes().splitlines()]
    assert len(rows) == 200

    # the anomaly agents' side topic: the workload's reports of its frauds
    proc = _cli("produce", "fraud", "--broker", broker, "--topic-prefix", prefix,
                "--partitions", "2", "--events", "2000", "--no-profiles", "--outcomes")
    assert proc.returncode == 0, proc.stderr
    reports = len(generate(2000, 7).side["outcomes"])
    assert reports > 0 and proc.stderr.splitlines()[-1] == \
        f"produced {reports:,} records to {prefix}fraud.outcomes"
    proc = _cli("produce", "fraud", "--broker", broker, "--topic-prefix", prefix,
                "--events", "10", "--side", "refunds")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "streamwise: topology fraud has no agent reading 'refunds' (its agents read: "
        "outcomes)"), proc.stderr


def test_a_worker_given_the_input_topic_flag_creates_it(kafka_bootstrap, tmp_path,
                                                        unique_prefix):
    """The explicit way: --create-input-topic (development). The worker is started, becomes
    ready, and is stopped by its PID."""
    from tests.integration.worker_harness import WorkerProcess
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=2)
    worker.start()
    try:
        asyncio.run(worker.wait_ready())
    finally:
        assert worker.stop() in (0, -15)
    assert f"{unique_prefix}fraud.events" in asyncio.run(_topics(kafka_bootstrap))
    assert "NotLeaderForPartition" not in Path(worker.log_path).read_text()
