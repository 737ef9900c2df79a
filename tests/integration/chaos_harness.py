"""The chaos suite's moving parts: a cluster of worker processes, a paced producer that survives
a broker outage, poison records of every kind, events without a key, HTTP clients fast and
slow, and the clock of recovery. Black box like `worker_harness`: nothing from `engine` is
imported; workers are driven through their CLI, topics and HTTP API, and stopped by PID.

Every loop is bounded in count and time; randomness is seeded.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.integration.chaos_verifier import CardHistory
from tests.integration.worker_harness import (
    INPUT_MAX_MESSAGE_BYTES,
    FraudTopics,
    WorkerProcess,
    committed_offsets,
    create_topics,
    end_offsets,
    produce,
)

__all__ = ["Cluster", "Feeder", "HttpLoad", "caught_up", "far_future_events", "poison_records",
           "prepare_topics", "rss_bytes"]

Record = tuple[bytes | None, bytes | None]


async def prepare_topics(broker: str, prefix: str, partitions: int,
                         profiles: dict[str, dict]) -> FraudTopics:
    """The input topic (accepts 8 MiB records, so oversized ones reach the worker) and the
    profiles, before any worker starts."""
    topics = FraudTopics(prefix)
    await create_topics(broker, [
        (topics.events, partitions, {"max.message.bytes": str(INPUT_MAX_MESSAGE_BYTES)}),
        (topics.profiles, partitions, {"cleanup.policy": "compact"}),
    ])
    await produce(broker, topics.profiles,
                  ((card.encode(), orjson.dumps(p)) for card, p in sorted(profiles.items())))
    return topics


# -- input ------------------------------------------------------------------------------------


def poison_records(n: int, seed: int, cards: Sequence[str]) -> list[Record]:
    """`n` records that cannot become events, every kind in turn (each with its own id):
    empty, oversized (> 1 MiB; at most 3, they are big), not UTF-8, invalid JSON, NaN or
    infinity, a missing or empty key field, and schema violations; keyed by a card, or not
    keyed at all."""
    rng = random.Random(seed)
    kinds = ["empty", "not_utf8", "invalid_json", "non_finite", "missing_key", "schema",
             "oversized"]
    out: list[Record] = []
    oversized = 0
    for i in range(n):
        kind = kinds[i % len(kinds)]
        card = rng.choice(cards)
        ev = {"event_id": f"poison-{seed}-{i}", "card_id": card, "merchant_id": "m00001",
              "amount": 12.5, "currency": "USD", "country": "US", "ts_ms": 1_767_225_600_000}
        if kind == "oversized" and oversized >= 3:
            kind = "schema"
        if kind == "empty":
            value: bytes = b""
        elif kind == "oversized":
            oversized += 1
            value = json.dumps({**ev, "pad": "x" * (1 << 20)}).encode()
        elif kind == "not_utf8":
            value = json.dumps({**ev, "merchant_id": "m-XX"}).encode().replace(b"XX",
                                                                               b"\xff\xfe")
        elif kind == "invalid_json":
            value = json.dumps(ev).encode()[:-rng.randint(1, 20)]
        elif kind == "non_finite":
            value = json.dumps({**ev, "amount": rng.choice([math.nan, math.inf,
                                                            -math.inf])}).encode()
        elif kind == "missing_key":
            field_ = rng.choice(["card_id", "event_id"])
            bad = dict(ev)
            if rng.random() < 0.5:
                bad[field_] = ""
            else:
                del bad[field_]
            value = json.dumps(bad).encode()
        else:  # schema
            value = json.dumps(rng.choice([
                {**ev, "amount": "12.5"}, {**ev, "amount": -3.0}, {**ev, "currency": "DOLLAR"},
                {**ev, "ts_ms": 1.5}, {**ev, "country": None}, [ev]])).encode()
        key = None if rng.random() < 0.3 else card.encode()
        out.append((key, value))
    return out


def far_future_events(n: int, seed: int, cards: Sequence[str]) -> list[Record]:
    """Valid events dated in the year 2100: each must be refused (future_time) and must not
    move its partition's watermark."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        card = rng.choice(cards)
        ev = {"event_id": f"future-{seed}-{i}", "card_id": card, "merchant_id": "m00002",
              "amount": 99.0, "currency": "USD", "country": "US",
              "ts_ms": 4_102_444_800_000 + rng.randint(0, 10**9)}
        out.append((card.encode(), orjson.dumps(ev)))
    return out


NULL_KEY_SHARE = 0.05  # of the valid events: at least ~1% of the stream, as #13 asks


def mix(events: list[dict], extra: list[Record], seed: int,
        null_keys: float = NULL_KEY_SHARE) -> list[Record]:
    """The events in order, keyed by card except a seeded `null_keys` share (0..1) produced
    without a key (aiokafka's default partitioner then picks a random partition, so the
    worker forwards most of them to their card's partition; a workload duplicate draws its
    own, so an event and its copy may land apart), with `extra` records at seeded positions."""
    keys = random.Random(f"null-keys-{seed}")
    stream: list[Record] = [(None if keys.random() < null_keys else ev["card_id"].encode(),
                             orjson.dumps(ev)) for ev in events]
    rng = random.Random(seed)
    for rec in extra:
        stream.insert(rng.randint(0, len(stream)), rec)
    return stream


class Feeder:
    """Produces records in order at `rate_eps` in the background. A chunk whose send fails (the
    broker is down or frozen) is sent again until acknowledged, so every record reaches the
    input topic at least once (a chunk written before its acknowledgement was lost is there
    twice: the verifier reads the topic as it is)."""

    def __init__(self, broker: str, topic: str, records: list[Record], rate_eps: float,
                 chunk: int = 100) -> None:
        self.broker, self.topic, self.records = broker, topic, records
        self.rate_eps, self.chunk = rate_eps, chunk
        self.sent = 0  # records acknowledged
        self.resends = 0
        self._task: asyncio.Task | None = None

    @property
    def progress(self) -> float:
        return self.sent / max(len(self.records), 1)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def wait(self, timeout_s: float = 900.0) -> None:
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout_s)

    async def until(self, share: float, timeout_s: float = 600.0) -> None:
        """Until `share` of the records are acknowledged (bounded)."""
        deadline = time.monotonic() + timeout_s
        while self.progress < share:
            if self._task is not None and self._task.done():
                self._task.result()
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"producer at {self.progress:.0%}, not {share:.0%}")
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.broker, acks="all", linger_ms=5,
                                    max_request_size=16 << 20, request_timeout_ms=10_000)
        await producer.start()
        started = time.monotonic()
        try:
            for lo in range(0, len(self.records), self.chunk):
                part = self.records[lo:lo + self.chunk]
                for _ in range(200):  # bounded: ~200 x (<= 10 s) across outages
                    try:
                        futures = [await producer.send(self.topic, value=v, key=k)
                                   for k, v in part]
                        await asyncio.gather(*futures)
                        break
                    except KafkaError:
                        self.resends += 1
                        await asyncio.sleep(0.5)
                else:
                    raise AssertionError(f"chunk at {lo} not acknowledged after 200 tries")
                self.sent = lo + len(part)
                ahead = self.sent / self.rate_eps - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            await producer.stop()


# -- workers ----------------------------------------------------------------------------------


@dataclass
class Cluster:
    """Worker processes of one topology deployment, started and stopped by the test by PID."""

    broker: str
    prefix: str
    root: Path
    partitions: int = 8
    extra_args: tuple[str, ...] = ()
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    exits: list[tuple[str, int]] = field(default_factory=list)

    def worker(self, name: str) -> WorkerProcess:
        if name not in self.workers:
            self.workers[name] = WorkerProcess(
                self.broker, self.prefix, self.root / f"data-{name}",
                self.root / f"worker-{name}.log", partitions=self.partitions,
                extra_args=self.extra_args)
        return self.workers[name]

    def start(self, name: str) -> WorkerProcess:
        w = self.worker(name)
        w.start()
        return w

    @property
    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers.values() if w.alive]

    @property
    def urls(self) -> list[str]:
        return [w.url for w in self.alive]

    async def wait_ready(self, timeout_s: float = 180.0) -> None:
        await asyncio.gather(*(w.wait_ready(timeout_s) for w in self.alive))

    def kill(self, name: str) -> None:
        self.workers[name].kill()

    def stop(self, name: str) -> int | None:
        rc = self.workers[name].stop(timeout_s=60)
        self.exits.append((name, rc if rc is not None else -1))
        return rc

    def close(self) -> None:
        for w in self.workers.values():
            w.kill()

    def peak_rss(self) -> dict[str, int]:
        return {n: rss_bytes(w.proc.pid) for n, w in self.workers.items()
                if w.alive and w.proc is not None}


def rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM) from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def caught_up(broker: str, topics: FraudTopics, since: float,
                    timeout_s: float = 600.0) -> float:
    """Seconds from `since` (monotonic) until the group has committed every input offset that
    existed when this was called (its end offsets then); raises after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    ends = None
    while ends is None:  # the broker may still be coming back
        try:
            ends = await asyncio.wait_for(end_offsets(broker, topics.events), 20)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    while True:
        try:
            done = await asyncio.wait_for(committed_offsets(broker, topics.group,
                                                            topics.events), 20)
            if all(done.get(p, 0) >= e for p, e in ends.items() if e > 0):
                return time.monotonic() - since
        except Exception:  # the broker is away: try again
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not caught up with {ends} after {timeout_s:.0f}s")
        await asyncio.sleep(0.25)


# -- HTTP clients -------------------------------------------------------------------------------


@dataclass
class HttpLoad:
    """Clients reading keys while the cluster changes. Every 200 answer is kept and checked
    after the run (`check`): it must be one of the card's real states, recomputed from the
    input topic (`CardHistory`); 503 (a rebalance, Retry-After) and 429 (limits) are allowed
    answers, anything else is wrong. Slow clients send a request head and then a body that
    never finishes, again and again."""

    cluster: Cluster
    cards: list[str]
    statuses: dict[str, int] = field(default_factory=dict)
    answers: list[tuple[str, bytes]] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    served: dict[int, int] = field(default_factory=dict)  # client -> 200 answers
    slow_answers: dict[str, int] = field(default_factory=dict)
    refusal_ms: list[float] = field(default_factory=list)  # time to a 429/503
    max_answers: int = 100_000

    def check(self, history: CardHistory) -> list[str]:
        """The 200 answers that are no state the card ever had, and every wrong status."""
        wrong = list(self.wrong)
        for card, body in self.answers:
            doc = orjson.loads(body)
            if not history.matches(card, doc):
                wrong.append(f"{card}: {history.nearest(card, doc)}")
        return wrong

    def _count(self, where: dict[str, int], key: str) -> None:
        where[key] = where.get(key, 0) + 1

    async def reader(self, client: int, stop: asyncio.Event, seed: int) -> None:
        rng = random.Random(seed * 1000 + client)
        self.served[client] = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for _ in range(1_000_000):  # bounded; ends when `stop` is set
                if stop.is_set():
                    return
                urls = self.cluster.urls
                if not urls:
                    await asyncio.sleep(0.1)
                    continue
                card = rng.choice(self.cards)
                url = f"{rng.choice(urls)}/v1/tables/velocity/{card}"
                t0 = time.perf_counter()
                try:
                    async with http.get(url) as resp:
                        status, body = resp.status, await resp.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._count(self.statuses, f"connection:{type(exc).__name__}")
                    await asyncio.sleep(0.1)  # a worker that just went away
                    continue
                self._count(self.statuses, str(status))
                if status == 200:
                    self.served[client] += 1
                    if len(self.answers) < self.max_answers:
                        self.answers.append((card, body))
                elif status in (429, 503):
                    self.refusal_ms.append((time.perf_counter() - t0) * 1000)
                    await asyncio.sleep(0.05)
                else:
                    self.wrong.append(f"{card}: status {status} {body[:200]!r}")

    async def slow_client(self, stop: asyncio.Event, port_of: str) -> None:
        """A POST /v1/score whose body never finishes (a few bytes, then silence), repeated."""
        host, port = port_of.removeprefix("http://").rsplit(":", 1)
        for _ in range(10_000):  # bounded; ends when `stop` is set
            if stop.is_set():
                return
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError as exc:
                self._count(self.slow_answers, f"connect:{type(exc).__name__}")
                await asyncio.sleep(0.5)
                continue
            try:
                writer.write(b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Type: "
                             b"application/json\r\nContent-Length: 1000\r\n\r\n{\"event_id\"")
                await writer.drain()
                head = await asyncio.wait_for(reader.readline(), 60)
                parts = head.split()
                self._count(self.slow_answers, parts[1].decode() if len(parts) > 1
                            else "closed")
            except (OSError, TimeoutError) as exc:
                self._count(self.slow_answers, type(exc).__name__)
            finally:
                writer.close()


def env_tier() -> str:
    tier = os.environ.get("STREAMWISE_CHAOS_TIER", "pr")
    if tier not in ("pr", "nightly"):
        raise ValueError(f"STREAMWISE_CHAOS_TIER is pr or nightly, not {tier!r}")
    return tier
