"""Black-box harness for end-to-end tests: a worker subprocess and plain aiokafka helpers.

Imports nothing from `engine`: the worker is driven only through its CLI, its topics and its
HTTP API, exactly as a user would. Every wait is bounded in time; a worker that dies while the
test waits fails the test with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

__all__ = [
    "REPO",
    "FraudTopics",
    "WorkerProcess",
    "committed_offsets",
    "consume_all",
    "create_topics",
    "end_offsets",
    "fetch_json",
    "free_port",
    "produce",
    "wait_drained",
    "wait_group_members",
]

REPO = Path(__file__).resolve().parents[2]
INPUT_MAX_MESSAGE_BYTES = 8 << 20
_PRODUCER_MAX_REQUEST = 16 << 20


@dataclass(frozen=True)
class FraudTopics:
    """Topic and group names of the fraud topology under a test prefix."""

    prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix}fraud.events"

    @property
    def decisions(self) -> str:
        return f"{self.prefix}fraud.decisions"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}fraud.dlq"

    @property
    def late(self) -> str:
        return f"{self.prefix}fraud.late"

    @property
    def profiles(self) -> str:
        return f"{self.prefix}fraud.profiles"

    @property
    def changelog(self) -> str:
        return f"{self.prefix}fraud.changelog"

    @property
    def repartition(self) -> str:
        return f"{self.prefix}fraud.repartition"

    @property
    def outcomes(self) -> str:
        return f"{self.prefix}fraud.outcomes"

    @property
    def group(self) -> str:
        return f"{self.prefix}streamwise-fraud"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerProcess:
    """`python -m engine worker fraud ...` (or another `topology`, run from `cwd`) as a child
    process that the test owns by PID.

    Output goes to `log_path` (appended across restarts). `start()` picks a fresh port each
    time; `kill()` is SIGKILL, `stop()` is SIGTERM with a bounded wait and SIGKILL after it.
    """

    def __init__(self, broker: str, prefix: str, data_dir: Path, log_path: Path,
                 partitions: int = 4, extra_args: Sequence[str] = (),
                 topology: str = "fraud", cwd: Path = REPO) -> None:
        self.topology = topology  # what `streamwise worker` is given: a name or mod:ATTR
        self.cwd = cwd
        self.broker = broker
        self.prefix = prefix
        self.data_dir = data_dir
        self.log_path = log_path
        self.partitions = partitions
        self.extra_args = tuple(extra_args)
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        assert self.port is not None, "worker not started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.alive, "worker already running"
        self.port = free_port()
        self.starts += 1
        # Tests start workers before anything is produced: they ask for the input topic
        # explicitly (a worker never creates it by accident).
        cmd = [sys.executable, "-m", "engine", "worker", self.topology, "--broker", self.broker,
               "--web-port", str(self.port), "--data-dir", str(self.data_dir),
               "--topic-prefix", self.prefix, "--partitions", str(self.partitions),
               "--create-input-topic", *self.extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until GET /readyz answers 200; fails early when the process exits."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            while True:
                self.check_alive("while starting")
                try:
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                        last = f"{resp.status} {await resp.text()}"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    last = repr(exc)
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker not ready after {timeout_s:.0f}s (last /readyz: "
                                         f"{last})\n{self.log_tail()}")
                await asyncio.sleep(0.25)

    def check_alive(self, when: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited with code {self.proc.returncode} {when}\n"
                                 f"{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL by PID (no shutdown of any kind) and reap it."""
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after `timeout_s`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no worker log)"
        return f"--- worker log tail ({self.log_path}) ---\n" + "\n".join(text[-lines:])


# -- Kafka helpers ----------------------------------------------------------------------------


async def create_topics(broker: str, specs: Iterable[tuple[str, int, dict[str, str]]],
                        timeout_s: float = 30.0) -> None:
    """Create ``(name, partitions, config)`` topics (replication 1) and wait for leaders."""
    specs = list(specs)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=15_000)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(n, p, 1, topic_configs=c) for n, p, c in specs],
                                      timeout_ms=int(timeout_s * 1000))
        names = [n for n, _, _ in specs]
        deadline = time.monotonic() + timeout_s
        while True:
            topics = await admin.describe_topics(names)
            if all(t.get("error_code", 0) == 0 and t["partitions"]
                   and all(p["leader"] >= 0 for p in t["partitions"]) for t in topics):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"topics not ready after {timeout_s}s: {topics}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def produce(broker: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
                  rate_eps: float = 0.0, chunk: int = 500,
                  partition_of: Callable[[bytes | None, bytes | None], int | None] | None = None,
                  ) -> int:
    """Produce keyed records in order (aiokafka's default partitioner, unless `partition_of`
    names a record's partition from its key and value: None leaves it to the default) and wait for the acks.

    `rate_eps` > 0 paces the stream (records per second). Returns the number produced.
    """
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all",
                                max_request_size=_PRODUCER_MAX_REQUEST, linger_ms=5)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        futures = []
        for key, value in records:
            partition = partition_of(key, value) if partition_of is not None else None
            futures.append(await producer.send(topic, value=value, key=key,
                                               partition=partition))
            sent += 1
            if sent % chunk == 0:
                await asyncio.gather(*futures)
                futures = []
                if rate_eps > 0:
                    ahead = sent / rate_eps - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


def _consumer(broker: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                            auto_offset_reset="earliest", fetch_max_wait_ms=100,
                            max_partition_fetch_bytes=_PRODUCER_MAX_REQUEST,
                            fetch_max_bytes=64 << 20)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic)
    deadline = time.monotonic() + 15
    while not parts:
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} does not exist")
        await consumer._client.force_metadata_update()  # noqa: SLF001 (no public way)
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await asyncio.sleep(0.2)
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def end_offsets(broker: str, topic: str) -> dict[int, int]:
    """Log end offset of every partition of `topic`."""
    consumer = _consumer(broker)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(broker: str, group: str, topic: str) -> dict[int, int]:
    """Offsets the group has committed on `topic` (partitions without a commit are absent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=15_000)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: om.offset for tp, om in offsets.items()
            if tp.topic == topic and om.offset >= 0}


async def wait_group_members(broker: str, group: str, n: int, timeout_s: float = 120.0) -> None:
    """Until consumer group `group` is Stable with `n` members (each with its assignment): a
    member that is still importing or joining when a test produces would see none of it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=15_000)
    await admin.start()
    seen: tuple = ()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            (response,) = await admin.describe_consumer_groups([group])
            # DescribeGroupsResponse: (error_code, group_id, state, protocol_type, protocol,
            # members, ...)
            seen = response.groups[0]
            if seen[2] == "Stable" and len(seen[5]) == n:
                return
            await asyncio.sleep(0.25)
    finally:
        await admin.close()
    state = (seen[2], len(seen[5])) if seen else None
    raise AssertionError(f"group {group} not Stable with {n} members after {timeout_s:.0f}s "
                         f"(last: state, members = {state})")


async def consume_all(broker: str, topic: str, timeout_s: float = 60.0) -> list:
    """Every record of `topic` from the beginning to the end offsets seen at the call.

    Records come back as aiokafka ConsumerRecords, in (partition, offset) order.
    """
    consumer = _consumer(broker)
    await consumer.start()
    out = []
    try:
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while remaining:
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if not remaining:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic} timed out; still at "
                                     f"{ {tp.partition: await consumer.position(tp) for tp in remaining} }"
                                     f" of {ends}")
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for tp, records in batches.items():
                out.extend(r for r in records if r.offset < ends[tp])
    finally:
        await consumer.stop()
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


async def wait_drained(broker: str, topics: FraudTopics, expected_ids: set[str],
                       worker: WorkerProcess | None, timeout_s: float = 180.0) -> list:
    """Wait until the group has committed the end of the input and decisions cover every id.

    Returns every decision record (ConsumerRecord, value still bytes). Raises with the gap
    (offsets behind, ids missing) after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    status = "nothing checked yet"
    while True:
        if worker is not None:
            worker.check_alive("while draining")
        ends = await end_offsets(broker, topics.events)
        committed = await committed_offsets(broker, topics.group, topics.events)
        behind = {p: (committed.get(p), e) for p, e in ends.items()
                  if e > 0 and committed.get(p) != e}
        if not behind:
            decisions = await consume_all(broker, topics.decisions)
            seen = {orjson.loads(r.value)["event_id"] for r in decisions}
            missing = expected_ids - seen
            if not missing:
                return decisions
            status = (f"offsets committed to the end, but {len(missing)} event ids have no "
                      f"decision, e.g. {sorted(missing)[:5]}")
        else:
            status = f"committed vs end offsets behind: {behind}"
        if time.monotonic() > deadline:
            raise AssertionError(f"not drained after {timeout_s:.0f}s: {status}"
                                 + (f"\n{worker.log_tail()}" if worker else ""))
        await asyncio.sleep(0.5)


async def fetch_json(base_url: str, paths: Sequence[str], concurrency: int = 16,
                     timeout_s: float = 10.0, headers: dict[str, str] | None = None
                     ) -> dict[str, tuple[int, object]]:
    """GET every path; returns path -> (status, parsed JSON body or text)."""
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, tuple[int, object]] = {}

    async def one(http: aiohttp.ClientSession, path: str) -> None:
        async with sem, http.get(base_url + path) as resp:
            body = await resp.read()
            try:
                out[path] = (resp.status, orjson.loads(body))
            except orjson.JSONDecodeError:
                out[path] = (resp.status, body.decode(errors="replace"))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     headers=headers) as http:
        await asyncio.gather(*(one(http, p) for p in paths))
    return out
