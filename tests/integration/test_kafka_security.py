"""Streamwise against a secured Kafka: real TLS and SASL handshakes with the local broker's
secured listeners (scripts/kafka-local.sh: an SSL listener that requires a client certificate,
a SASL_SSL listener with SCRAM users, a throwaway CA).

* the fraud worker end to end (produce -> decisions -> lookup) over SSL with mutual TLS, and
  over SASL_SSL with SCRAM-SHA-512, then `streamwise replay` over SASL_SSL deciding the same;
* the password appears in no log line, no /metrics sample and no /v1/models answer;
* an OAUTHBEARER token provider (the hook) authenticates; a rejected token is one line;
* the usual mistakes are one line and exit 2: wrong password, unknown CA, a plaintext client
  at a TLS listener, no client certificate for mutual TLS, a missing or unreadable
  certificate file, a TLS client at a plaintext listener.

Results are checked through the same broker's plaintext listener.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.integration.worker_harness import (
    REPO,
    FraudTopics,
    WorkerProcess,
    consume_all,
    fetch_json,
    wait_drained,
)
from topologies.fraud.workload import generate

pytestmark = pytest.mark.integration

EVENTS = 300
PARTITIONS = 2
SEED = 17


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STREAMWISE_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env or _env(), check=False)


def _one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("streamwise: "), proc.stderr[-3000:]
    return lines[0]


def _mtls(sec) -> list[str]:
    return ["--broker", sec.ssl, "--security-protocol", "SSL", "--ssl-cafile", str(sec.ca_file),
            "--ssl-certfile", str(sec.client_cert), "--ssl-keyfile", str(sec.client_key)]


def _scram(sec, mechanism: str = "SCRAM-SHA-512") -> list[str]:
    return ["--broker", sec.sasl_ssl, "--security-protocol", "SASL_SSL", "--ssl-cafile",
            str(sec.ca_file), "--sasl-mechanism", mechanism, "--sasl-username", sec.username]


def _produce(sec, security: list[str], prefix: str, env: dict[str, str] | None = None) -> None:
    """`streamwise produce` over the secured listener (it creates the topics)."""
    proc = _cli("produce", "fraud", *security, "--topic-prefix", prefix, "--partitions",
                str(PARTITIONS), "--events", str(EVENTS), "--seed", str(SEED), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"produced {EVENTS} events to {prefix}fraud.events" in proc.stderr


async def _run_worker(sec, security: list[str], prefix: str, tmp_path: Path
                      ) -> tuple[WorkerProcess, list[dict], dict]:
    """A worker over the secured listener; its decisions (read over plaintext) and a lookup."""
    broker = security[security.index("--broker") + 1]
    worker = WorkerProcess(broker, prefix, tmp_path / "state", tmp_path / "worker.log",
                           partitions=PARTITIONS, extra_args=security[2:])
    ids = {e["event_id"] for e in generate(EVENTS, SEED).events}
    worker.start()
    try:
        await worker.wait_ready()
        records = await wait_drained(sec.plaintext, FraudTopics(prefix), ids, worker,
                                     timeout_s=180)
        decisions = [orjson.loads(r.value) for r in records]
        card = decisions[-1]["key"]
        answers = await fetch_json(worker.url, [f"/v1/tables/velocity/{card}",
                                                "/v1/models", "/metrics"])
    finally:
        code = worker.stop()
    assert code in (0, -15), worker.log_tail()
    status, table = answers[f"/v1/tables/velocity/{card}"]
    assert status == 200 and table["key"] == card and table["value"]["count"] >= 1, table
    return worker, decisions, answers


async def test_worker_end_to_end_over_mutual_tls(kafka_secure, unique_prefix, tmp_path):
    sec = kafka_secure
    _produce(sec, _mtls(sec), unique_prefix)
    worker, decisions, _ = await _run_worker(sec, _mtls(sec), unique_prefix, tmp_path)
    assert len(decisions) == EVENTS
    assert {d["path"] for d in decisions} <= {"model", "fallback:rules"}
    log = worker.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


async def test_worker_and_replay_over_sasl_ssl_scram_sha_512_keep_the_password_secret(
        kafka_secure, unique_prefix, tmp_path):
    sec = kafka_secure
    password = sec.password_file.read_text().strip()
    # produce: the password from the environment; the worker: from a mounted-secret file
    _produce(sec, _scram(sec), unique_prefix, env=_env(STREAMWISE_SASL_PASSWORD=password))
    security = [*_scram(sec), "--sasl-password-file", str(sec.password_file)]
    worker, decisions, answers = await _run_worker(sec, security, unique_prefix, tmp_path)
    assert len(decisions) == EVENTS
    for path in ("/v1/models", "/metrics"):
        status, body = answers[path]
        assert status == 200 and password not in str(body), path
    log = worker.log_path.read_text()
    assert password not in log
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]

    # the replay over SASL_SSL decides every record as the live worker did
    out = tmp_path / "replay.jsonl"
    proc = _cli("replay", "fraud", *_scram(sec), "--topic-prefix", unique_prefix,
                "--from-beginning", "--output", str(out),
                env=_env(STREAMWISE_SASL_PASSWORD=password))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].startswith(f"replayed {EVENTS} events")
    assert password not in proc.stderr
    replayed = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    first = {}
    for d in decisions:
        first.setdefault(d["event_id"], d)
    again = {}
    for d in replayed:
        again.setdefault(d["event_id"], d)
    assert {e: d["decision_id"] for e, d in again.items()} == {
        e: d["decision_id"] for e, d in first.items()}


def test_an_oauthbearer_token_provider_authenticates(kafka_secure, unique_prefix):
    sec = kafka_secure
    oauth = ["--broker", sec.sasl_ssl, "--security-protocol", "SASL_SSL", "--ssl-cafile",
             str(sec.ca_file), "--sasl-mechanism", "OAUTHBEARER"]
    proc = _cli("produce", "fraud", *oauth, "--sasl-oauth-token-provider",
                "tests.integration.oauth_tokens:unsecured_jwt", "--topic-prefix", unique_prefix,
                "--partitions", "1", "--events", "20", "--no-profiles")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = asyncio.run(consume_all(sec.plaintext, f"{unique_prefix}fraud.events"))
    assert len(events) == 20
    proc = _cli("produce", "fraud", *oauth, "--sasl-oauth-token-provider",
                "tests.integration.oauth_tokens:rejected_token", "--topic-prefix",
                unique_prefix, "--events", "20", "--no-profiles")
    assert _one_line(proc) == (
        f"streamwise: authentication failed at broker {sec.sasl_ssl} with OAUTHBEARER: the "
        "connection was not served after it (its metadata answer names no broker); was the "
        "token or the password rejected?")


def _ca_free(sec) -> list[str]:
    """Mutual TLS flags without --ssl-cafile: the system's trust store, not our CA."""
    return ["--broker", sec.ssl, "--security-protocol", "SSL", "--ssl-certfile",
            str(sec.client_cert), "--ssl-keyfile", str(sec.client_key)]


@pytest.mark.parametrize("case", [
    "wrong password", "unknown CA", "plaintext client at TLS", "plaintext client at SASL_SSL",
    "no client certificate", "missing certificate file", "unreadable certificate file",
    "TLS client at plaintext",
])
def test_a_security_mistake_is_one_line_and_exit_2(kafka_secure, tmp_path, case):
    sec = kafka_secure
    host, port = sec.plaintext.rsplit(":", 1)
    want = {
        "wrong password": (
            [*_scram(sec)], {"STREAMWISE_SASL_PASSWORD": "not-the-password"},
            f"streamwise: authentication failed at broker {sec.sasl_ssl} as 'streamwise' with "
            "SCRAM-SHA-512: [Error 58] SaslAuthenticationFailed: Authentication failed during "
            "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"),
        "unknown CA": (
            _ca_free(sec), {},
            f"streamwise: TLS: certificate verify failed for broker {sec.ssl}: self-signed "
            "certificate in certificate chain; pass the CA that signed it with --ssl-cafile"),
        "plaintext client at TLS": (
            ["--broker", sec.ssl], {},
            f"streamwise: the listener at {sec.ssl} expects TLS: use --security-protocol SSL "
            "or SASL_SSL (with --ssl-cafile)"),
        "plaintext client at SASL_SSL": (
            ["--broker", sec.sasl_ssl], {},
            f"streamwise: the listener at {sec.sasl_ssl} expects TLS: use --security-protocol "
            "SSL or SASL_SSL (with --ssl-cafile)"),
        "no client certificate": (
            ["--broker", sec.ssl, "--security-protocol", "SSL", "--ssl-cafile",
             str(sec.ca_file)], {},
            f"streamwise: TLS: broker {sec.ssl} requires mutual TLS and no client certificate "
            "was given (sslv3 alert bad certificate); pass --ssl-certfile and --ssl-keyfile "
            "signed by a CA the broker trusts"),
        "missing certificate file": (
            [*_mtls(sec)[:-4], "--ssl-certfile", str(tmp_path / "client.pem")], {},
            f"streamwise: cannot read --ssl-certfile {tmp_path / 'client.pem'}: No such file "
            "or directory"),
        "unreadable certificate file": (  # a folder: unreadable even for root
            [*_mtls(sec)[:-4], "--ssl-certfile", str(tmp_path)], {},
            f"streamwise: cannot read --ssl-certfile {tmp_path}: Is a directory"),
        "TLS client at plaintext": (
            ["--broker", sec.plaintext, "--security-protocol", "SSL", "--ssl-cafile",
             str(sec.ca_file)], {},
            f"streamwise: TLS handshake with {host}:{port} failed: the listener does not speak "
            "TLS; use --security-protocol PLAINTEXT"),
    }
    flags, env, line = want[case]
    for command in (["produce", "fraud", "--events", "5", "--no-profiles"],
                    ["replay", "fraud", "--from-beginning", "--output",
                     str(tmp_path / "out.jsonl")]):
        proc = _cli(*command, *flags, env=_env(**env), timeout=60)
        assert _one_line(proc) == line, command
        assert "not-the-password" not in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()
