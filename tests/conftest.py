"""Shared fixtures: a real Apache Kafka broker for the integration tests.

Where the broker comes from (first match wins):

1. ``KAFKA_BOOTSTRAP_SERVERS=host:port`` -- an existing broker or cluster, used as is;
2. a Docker engine that answers          -- ``apache/kafka:$KAFKA_VERSION`` via testcontainers;
3. otherwise                             -- ``scripts/kafka-local.sh`` starts a private broker on
   free 127.0.0.1 ports, data in a per-session temp dir, jars shared from ``KAFKA_LIBS_DIR``
   (default ``<repo>/.kafka-local``); stopped by PID at session end.

If no broker can be had the fixture raises: integration tests then *error*, they never skip.

The local broker also has its secured listeners (scripts/kafka-local.sh with KAFKA_SECURE=1):
an SSL listener requiring a client certificate and a SASL_SSL listener with SCRAM users. With
an external or Docker broker, `kafka_secure` starts one local secured broker of its own.

Fixtures:
    kafka_broker   (session) -> KafkaBroker: bootstrap, version, source; kill/stop/start/restart
                                and pause/resume (SIGSTOP/SIGCONT) for the local broker (crash,
                                restart and chaos tests)
    kafka_secure   (session) -> SecureListeners: SSL and SASL_SSL bootstraps, CA, client
                                certificate and key, SCRAM user and password file
                                (KAFKA_SECURE_LOCAL_DIR: of a secured local broker already up)
    kafka_bootstrap (session) -> str "host:port"
    admin          (session) -> KafkaAdmin: create_topics / delete_topics (async, and *_sync)
    unique_prefix  (function) -> str like "t1a2b3c4d." for topic / group names
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

from engine.bench.broker import free_ports

# Shared, noisy 2-core machines: hypothesis' per-example time limit would make property tests
# fail on a slow moment, not on a wrong answer.
settings.register_profile("streamwise", deadline=None)
settings.load_profile("streamwise")

REPO = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO / "scripts" / "kafka-local.sh"
KAFKA_VERSION = os.environ.get("KAFKA_VERSION", "4.1.2")
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"

_broker_summary: list[str] = []  # printed once in the terminal summary


# --------------------------------------------------------------------------- broker handle


@dataclass(frozen=True)
class SecureListeners:
    """The local broker's secured listeners and what a client needs for them (client.env)."""

    plaintext: str  # the same broker's plaintext bootstrap (to check results without TLS)
    ssl: str  # SSL listener, client certificate required (mutual TLS)
    sasl_ssl: str  # SASL_SSL listener: SCRAM-SHA-512/256, PLAIN, OAUTHBEARER (unsecured JWT)
    ca_file: Path
    client_cert: Path
    client_key: Path
    username: str
    password_file: Path

    @classmethod
    def read(cls, plaintext: str, base: Path) -> SecureListeners:
        env = dict(line.split("=", 1) for line in
                   (base / "secure" / "client.env").read_text().splitlines() if "=" in line)
        return cls(plaintext, env["KAFKA_SSL_BOOTSTRAP"], env["KAFKA_SASL_SSL_BOOTSTRAP"],
                   Path(env["KAFKA_CA_FILE"]), Path(env["KAFKA_CLIENT_CERT_FILE"]),
                   Path(env["KAFKA_CLIENT_KEY_FILE"]), env["KAFKA_SASL_USERNAME"],
                   Path(env["KAFKA_SASL_PASSWORD_FILE"]))


@dataclass
class KafkaBroker:
    bootstrap: str
    version: str
    source: str  # "external" | "testcontainers" | "local"
    local_env: dict[str, str] | None = field(default=None, repr=False)
    secure: SecureListeners | None = None

    @property
    def controllable(self) -> bool:
        """True when the tests own the broker process (kill/stop/start/restart work)."""
        return self.local_env is not None

    def kill(self) -> None:
        """SIGKILL the broker (no controlled shutdown); its data is kept."""
        self._script("kill")

    def stop(self) -> None:
        """Controlled shutdown."""
        self._script("stop")

    def start(self) -> None:
        """Start again on the same ports and data (log recovery after a kill)."""
        self._script("start")

    def restart(self) -> None:
        self._script("restart")

    @property
    def pid(self) -> int:
        """The local broker's JVM (from kafka-local.sh's PID file)."""
        if self.local_env is None:
            raise RuntimeError(f"the {self.source} broker at {self.bootstrap} is not ours")
        return int((Path(self.local_env["KAFKA_LOCAL_DIR"]) / "kafka.pid").read_text())

    def pause(self) -> None:
        """SIGSTOP the broker by PID: it holds its connections and answers nothing (a long GC
        pause, a frozen VM) until `resume()`."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def _script(self, command: str) -> str:
        if self.local_env is None:
            raise RuntimeError(
                f"the {self.source} broker at {self.bootstrap} is not ours to {command}"
            )
        return _run_kafka_local(command, self.local_env)

    def describe(self) -> str:
        secured = (f"; SSL {self.secure.ssl}, SASL_SSL {self.secure.sasl_ssl}"
                   if self.secure is not None else "")
        return (f"kafka broker: Apache Kafka {self.version} at {self.bootstrap} "
                f"({self.source}{secured})")


def _run_kafka_local(command: str, env: dict[str, str], timeout: float = 1200) -> str:
    """Run scripts/kafka-local.sh; return its stdout, raise with its stderr on failure."""
    try:
        proc = subprocess.run(
            [str(KAFKA_LOCAL), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,  # resolve (cold) + start; the script bounds each of its own waits
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"kafka-local.sh {command} timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"kafka-local.sh {command} failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


# --------------------------------------------------------------------------- broker sources


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _start_local(tmp_root: Path) -> KafkaBroker:
    last_error: Exception | None = None
    for _attempt in range(2):  # a free port can be taken between the probe and the bind
        port, cport, ssl_port, sasl_port = free_ports(4)
        env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(cport),
            "KAFKA_SECURE": "1",
            "KAFKA_SSL_PORT": str(ssl_port),
            "KAFKA_SASL_SSL_PORT": str(sasl_port),
            "KAFKA_LOCAL_DIR": tempfile.mkdtemp(prefix="kafka-", dir=tmp_root),
            "KAFKA_VERSION": KAFKA_VERSION,
            "KAFKA_OWNER_PID": str(os.getpid()),  # the broker goes when this session goes
        }
        try:
            out = _run_kafka_local("start", env)
        except RuntimeError as exc:
            last_error = exc
            if "already in use" in str(exc):
                continue
            raise
        lines = out.strip().splitlines()
        match = re.search(r"Apache Kafka (\S+)", out)
        bootstrap = lines[-1].strip()
        return KafkaBroker(
            bootstrap=bootstrap,
            version=match.group(1) if match else "unknown",
            source="local, scripts/kafka-local.sh",
            local_env=env,
            secure=SecureListeners.read(bootstrap, Path(env["KAFKA_LOCAL_DIR"])),
        )
    raise RuntimeError(f"could not start the local Kafka broker: {last_error}")


def _start_testcontainer():
    """apache/kafka in Docker (same version as the local broker); assumes a local engine."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    (port,) = free_ports(1)
    container = DockerContainer(f"apache/kafka:{KAFKA_VERSION}")
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{port},CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_MESSAGE_MAX_BYTES": "8388608",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
    }
    for key, value in env.items():
        container.with_env(key, value)
    # Same port inside and out, so the advertised address works from the host; loopback only.
    container.ports[f"{port}/tcp"] = ("127.0.0.1", port)
    container.start()
    try:
        wait_for_logs(container, "Kafka Server started", timeout=120)
    except Exception:
        container.stop()
        raise
    broker = KafkaBroker(
        f"127.0.0.1:{port}", KAFKA_VERSION, f"testcontainers apache/kafka:{KAFKA_VERSION}"
    )
    return broker, container


async def _metadata_request(bootstrap: str) -> int:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
        return len(metadata.brokers())
    finally:
        await client.close()


def _wait_serving(bootstrap: str, timeout: float = 60.0) -> None:
    """One real Metadata round trip (retried, bounded) before any test uses the broker."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if asyncio.run(_metadata_request(bootstrap)) > 0:
                return
            error: Exception = RuntimeError("metadata lists no broker")
        except Exception as exc:
            error = exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kafka at {bootstrap} does not answer metadata: {error!r}")
        time.sleep(1)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory):
    """The session's Kafka broker (raises, never skips, when none can be had)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    container = None
    if external:
        broker = KafkaBroker(external, "unknown", "external, KAFKA_BOOTSTRAP_SERVERS")
    elif _docker_answers():
        broker, container = _start_testcontainer()
    else:
        broker = _start_local(tmp_path_factory.mktemp("kafka-local"))
    try:
        _wait_serving(broker.bootstrap)
        _broker_summary.append(broker.describe())
        yield broker
    finally:
        if container is not None:
            container.stop()
        if broker.local_env is not None:
            broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """Bootstrap address "host:port" of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def kafka_secure(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory):
    """The secured listeners: the session's local broker's, or (external or Docker broker) a
    local secured broker of this fixture's own, stopped at the end."""
    if kafka_broker.secure is not None:
        yield kafka_broker.secure
        return
    running = os.environ.get("KAFKA_SECURE_LOCAL_DIR", "").strip()  # a secured local broker
    if running:                                                     # that is already up
        base = Path(running)
        yield SecureListeners.read((base / "kafka.bootstrap").read_text().strip(), base)
        return
    broker = _start_local(tmp_path_factory.mktemp("kafka-secure"))
    try:
        _wait_serving(broker.bootstrap)
        _broker_summary.append(f"secured listeners: {broker.describe()}")
        yield broker.secure
    finally:
        broker.stop()


@pytest.fixture
def unique_prefix() -> str:
    """A per-test prefix for topic and group names, e.g. "t1a2b3c4d."."""
    return f"t{secrets.token_hex(4)}."


class KafkaAdmin:
    """Topic admin on the session broker. Each call opens and closes its own
    AIOKafkaAdminClient, so it works from any event loop; *_sync variants for plain tests."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def create_topics(
        self,
        *names: str,
        partitions: int = 1,
        config: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> list[str]:
        """Create topics (replication 1) and wait until every partition has a leader."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import for_code

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=15_000)
        await admin.start()
        try:
            response = await admin.create_topics(
                [NewTopic(n, partitions, 1, topic_configs=config or {}) for n in names],
                timeout_ms=int(timeout * 1000),
            )
            for topic, code, *rest in response.topic_errors:
                if code:
                    raise for_code(code)(f"create topic {topic}: {rest[0] if rest else ''}")
            deadline = time.monotonic() + timeout
            while True:
                topics = await admin.describe_topics(list(names))
                if all(
                    t["error_code"] == 0
                    and len(t["partitions"]) == partitions
                    and all(p["leader"] >= 0 for p in t["partitions"])
                    for t in topics
                ):
                    return list(names)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topics not ready after {timeout}s: {topics}")
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    async def delete_topics(self, *names: str, timeout: float = 30.0) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=15_000)
        await admin.start()
        try:
            await admin.delete_topics(list(names), timeout_ms=int(timeout * 1000))
        finally:
            await admin.close()

    def create_topics_sync(self, *names: str, **kwargs) -> list[str]:
        return _run_in_thread(self.create_topics(*names, **kwargs))

    def delete_topics_sync(self, *names: str, **kwargs) -> None:
        return _run_in_thread(self.delete_topics(*names, **kwargs))


def _run_in_thread(coro):
    """asyncio.run in a helper thread: safe even when the caller already runs a loop."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> KafkaAdmin:
    """Topic admin helper: ``await admin.create_topics(name, partitions=8)``."""
    return KafkaAdmin(kafka_bootstrap)


# --------------------------------------------------------------------------- hooks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ is an integration test (needs a real broker)."""
    for item in items:
        if INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return f"kafka: external broker {os.environ['KAFKA_BOOTSTRAP_SERVERS']}"
    return (
        f"kafka: Apache Kafka {KAFKA_VERSION}, started on first use "
        "(testcontainers if Docker answers, else scripts/kafka-local.sh)"
    )


def pytest_terminal_summary(terminalreporter) -> None:
    for line in _broker_summary:
        terminalreporter.write_line(line)
