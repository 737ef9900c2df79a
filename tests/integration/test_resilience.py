"""#13 items 3, 5 and 6 with real workers, a real broker and real RocksDB directories.

* item 3: a worker whose state directory cannot be opened leaves the group and exits 2 with
  one line, and its peer decides every event; a directory deleted under a running worker is
  noticed, the worker exits 2 the same way (no traceback from closing its stores), and a
  restart restores the partitions from the changelog;
* item 6: after a SIGKILL, a worker whose stores checkpointed restores only the changelog
  written after its last checkpoint, not the whole changelog;
* item 5: with the broker down longer than the session timeout /readyz says 503 with the
  reason, aiokafka's errors are rate-limited in the log, and the worker resumes on its own.

No assertion is about time: waits are bounded conditions on what the worker does.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.integration.worker_harness import (
    FraudTopics,
    WorkerProcess,
    consume_all,
    create_topics,
    end_offsets,
    produce,
    wait_drained,
)
from topologies.fraud.workload import generate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PARTITIONS = 4


@pytest.fixture
def workers(tmp_path: Path, kafka_bootstrap: str):
    """Factory of worker processes; every one still alive is SIGKILLed by PID at teardown."""
    made: list[WorkerProcess] = []

    def make(prefix: str, name: str, data_dir: Path | None = None) -> WorkerProcess:
        w = WorkerProcess(kafka_bootstrap, prefix, data_dir or tmp_path / f"data-{name}",
                          tmp_path / f"worker-{name}.log", partitions=PARTITIONS)
        made.append(w)
        return w

    yield make
    for w in made:
        w.kill()


async def _topics(broker: str, prefix: str) -> FraudTopics:
    topics = FraudTopics(prefix)
    await create_topics(broker, [(topics.events, PARTITIONS, {}),
                                 (topics.profiles, PARTITIONS, {"cleanup.policy": "compact"})])
    return topics


def _records(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(ev["card_id"].encode(), orjson.dumps(ev)) for ev in events]


async def _exit_code(worker: WorkerProcess, timeout_s: float = 120.0) -> int:
    """Wait (bounded) for the worker to exit on its own; its exit code."""
    deadline = time.monotonic() + timeout_s
    while worker.alive:
        if time.monotonic() > deadline:
            raise AssertionError(f"worker still running after {timeout_s:.0f}s\n"
                                 f"{worker.log_tail()}")
        await asyncio.sleep(0.2)
    assert worker.proc is not None
    return worker.proc.returncode


def _last_line(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace").strip().splitlines()[-1]


async def _get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
            http.get(url) as resp:
        return resp.status, orjson.loads(await resp.read())


# -- item 3 -------------------------------------------------------------------------------------


async def test_a_worker_whose_state_cannot_be_opened_leaves_and_its_peer_decides_all(
        kafka_bootstrap: str, unique_prefix: str, workers, tmp_path: Path) -> None:
    topics = await _topics(kafka_bootstrap, unique_prefix)
    good = workers(unique_prefix, "good")
    good.start()
    await good.wait_ready()
    blocker = tmp_path / "data-bad"
    blocker.write_text("a file where the state directory should be")
    bad = workers(unique_prefix, "bad", data_dir=blocker)
    bad.start()  # the group gives it half the partitions; it cannot open them

    assert await _exit_code(bad) == 2, bad.log_tail()
    line = _last_line(bad)
    assert re.fullmatch(r"streamwise: cannot open state at \S+/data-bad/fraud/p000\d: Not a "
                        r"directory \(the worker left its group; .*\)", line), line
    assert "Traceback" not in bad.log_path.read_text(), bad.log_tail()

    w = generate(2_000, seed=41)
    await produce(kafka_bootstrap, topics.events, _records(w.events))
    ids = {ev["event_id"] for ev in w.events}
    decisions = await wait_drained(kafka_bootstrap, topics, ids, good, timeout_s=180)
    assert {orjson.loads(r.value)["event_id"] for r in decisions} == ids
    assert good.stop() == 0, good.log_tail()


def _restored(worker: WorkerProcess, start: int) -> dict[int, int]:
    """partition -> changelog records restored, from the log of the worker's `start`-th start."""
    text = worker.log_path.read_text(errors="replace").split("===== start #")[start]
    found = re.findall(r"partition (\d+) ready \((\d+) changelog records restored\)", text)
    return {int(p): int(n) for p, n in found}


def _flushes(data_dir: Path) -> dict[int, tuple[int, int]]:
    """partition -> (flushes started, flushes finished), from each RocksDB's info LOG."""
    out = {}
    for p in range(PARTITIONS):
        log = data_dir / "fraud" / f"p{p:04d}" / "LOG"
        text = log.read_text(errors="replace") if log.exists() else ""
        out[p] = (text.count('"event": "flush_started"'),
                  text.count('"event": "flush_finished"'))
    return out


async def test_sigkill_after_a_checkpoint_restores_only_the_changelog_tail(
        kafka_bootstrap: str, unique_prefix: str, workers) -> None:
    """Item 6: without a WAL, the landed worker kept nothing through a SIGKILL and replayed
    every partition's whole changelog; checkpoints flush within 10 s of a write."""
    topics = await _topics(kafka_bootstrap, unique_prefix)
    worker = workers(unique_prefix, "w1")
    worker.start()
    await worker.wait_ready()
    base = _flushes(worker.data_dir)  # a new store flushes once, to write its format marker
    w = generate(4_000, seed=43)
    await produce(kafka_bootstrap, topics.events, _records(w.events))
    await wait_drained(kafka_bootstrap, topics, {ev["event_id"] for ev in w.events}, worker)
    # Wait (bounded) until each partition's RocksDB has finished a checkpoint since (its own
    # LOG says so) and none is under way; the landed worker never flushed before a clean close.
    deadline = time.monotonic() + 120
    while True:
        now = _flushes(worker.data_dir)
        if all(now[p][0] > base[p][0] and now[p][1] == now[p][0] for p in now):
            break
        assert time.monotonic() < deadline, f"no checkpoint: {now}\n{worker.log_tail()}"
        await asyncio.sleep(0.5)
    changelog = await end_offsets(kafka_bootstrap, topics.changelog)
    worker.kill()
    worker.start()
    await worker.wait_ready()
    restored = _restored(worker, 2)
    assert sorted(restored) == list(range(PARTITIONS)), worker.log_tail()
    # Only what was written after the last checkpoint is replayed (all of it: the landed
    # worker replayed each partition's whole changelog).
    assert all(restored[p] < changelog[p] for p in restored), (restored, changelog)

    more = generate(6_000, seed=43).events[4_000:]  # the same cards, later
    await produce(kafka_bootstrap, topics.events, _records(more))
    await wait_drained(kafka_bootstrap, topics, {ev["event_id"] for ev in more}, worker)
    assert worker.stop() == 0, worker.log_tail()


async def test_a_state_dir_deleted_under_a_running_worker_is_noticed_and_restored(
        kafka_bootstrap: str, unique_prefix: str, workers) -> None:
    topics = await _topics(kafka_bootstrap, unique_prefix)
    worker = workers(unique_prefix, "w1")
    worker.start()
    await worker.wait_ready()
    w = generate(4_000, seed=47)
    first, second = w.events[:2_000], w.events[2_000:]
    await produce(kafka_bootstrap, topics.events, _records(first))
    await wait_drained(kafka_bootstrap, topics, {ev["event_id"] for ev in first}, worker)

    shutil.rmtree(worker.data_dir)
    assert await _exit_code(worker) == 2, worker.log_tail()
    line = _last_line(worker)
    assert re.fullmatch(r"streamwise: cannot write state at \S+/fraud/p000\d: the directory "
                        r"is gone \(the worker left its group; .*\)", line), line
    assert "Traceback" not in worker.log_path.read_text(), worker.log_tail()

    worker.start()  # what a supervisor does: the state comes back from the changelog
    await worker.wait_ready()
    assert sum(_restored(worker, 2).values()) > 0, worker.log_tail()
    await produce(kafka_bootstrap, topics.events, _records(second))
    decisions = await wait_drained(kafka_bootstrap, topics, {ev["event_id"] for ev in w.events},
                                   worker)
    # the restored state is the state: the last event of each card sees all its earlier ones
    counts = Counter(ev["card_id"] for ev in w.events)
    latest = {}
    for r in decisions:
        d = orjson.loads(r.value)
        latest[d["key"]] = d
    assert all(latest[c]["features"]["count_1h"] <= counts[c] for c in counts)
    status, body = await _get(f"{worker.url}/v1/tables/velocity/{w.events[-1]['card_id']}")
    assert status == 200 and body["value"]["count"] >= 1, body
    assert worker.stop() == 0, worker.log_tail()


# -- item 5: the broker goes away ---------------------------------------------------------------


async def test_with_the_broker_down_readyz_fails_the_log_stays_quiet_and_the_worker_resumes(
        kafka_broker, unique_prefix: str, workers) -> None:
    if not kafka_broker.controllable:
        pytest.skip(f"cannot kill the {kafka_broker.source} broker from the tests")
    broker = kafka_broker.bootstrap
    topics = await _topics(broker, unique_prefix)
    worker = workers(unique_prefix, "w1")
    worker.start()
    await worker.wait_ready()
    w = generate(3_000, seed=53)
    first, second = w.events[:1_500], w.events[1_500:]
    await produce(broker, topics.events, _records(first))
    await wait_drained(broker, topics, {ev["event_id"] for ev in first}, worker)

    mark = worker.log_path.stat().st_size
    down_at = time.monotonic()
    await asyncio.to_thread(kafka_broker.kill)
    try:
        deadline = time.monotonic() + 120
        while True:  # bounded: until /readyz says the broker is gone
            worker.check_alive("while the broker was down")
            status, body = await _get(f"{worker.url}/readyz")
            if status == 503:
                break
            assert time.monotonic() < deadline, f"/readyz still {status} {body}"
            await asyncio.sleep(0.5)
        assert body["reason"].startswith("no Kafka broker has answered for "), body
        health, _ = await _get(f"{worker.url}/healthz")
        assert health == 200  # alive: it waits for the broker, it does not give up
    finally:
        await asyncio.to_thread(kafka_broker.start)
    down_s = time.monotonic() - down_at

    deadline = time.monotonic() + 180
    while (await _get(f"{worker.url}/readyz"))[0] != 200:  # bounded: ready again by itself
        worker.check_alive("after the broker came back")
        assert time.monotonic() < deadline, worker.log_tail()
        await asyncio.sleep(0.5)
    with worker.log_path.open("rb") as f:
        f.seek(mark)
        outage_log = f.read().decode(errors="replace").splitlines()
    errors = Counter(re.sub(r"\d+", "N", line.split(" ", 2)[2]) for line in outage_log
                     if " ERROR " in line or " WARNING " in line)
    # one line per message template per 10 s, the first at once (the landed worker wrote
    # ~150 ERROR lines a second)
    allowed = math.ceil((time.monotonic() - down_at) / 10) + 1
    assert errors and max(errors.values()) <= allowed, (down_s, errors.most_common(5))

    await produce(broker, topics.events, _records(second))
    decisions = await wait_drained(broker, topics, {ev["event_id"] for ev in w.events}, worker)
    assert len({orjson.loads(r.value)["event_id"] for r in decisions}) == len(
        {ev["event_id"] for ev in w.events})
    assert worker.stop() == 0, worker.log_tail()
    assert await consume_all(broker, topics.dlq) == []
