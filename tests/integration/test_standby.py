"""Standby replicas on two real workers (one broker, 8 partitions): a lookup load on one
worker while the other is SIGKILLed never fails and never answers wrong.

Before the kill each worker answers the other's keys from its standby replica (fresh: not
stale, the owner's values). From the kill until the group moves the dead worker's partitions
(its session timeout), the survivor keeps answering them from the replicas, flagged stale
once the owner stops answering its probe; then it promotes the replicas, restoring only the
changelog past each replica's offset (nothing here: the replicas had all of it).
"""

from __future__ import annotations

import asyncio
import random
import re
import time

import aiohttp
import orjson
import pytest

import topologies
from engine.kafka_io import ensure_topics
from engine.worker import topic_specs
from tests.integration.worker_harness import (
    FraudTopics,
    WorkerProcess,
    end_offsets,
    fetch_json,
    produce,
    wait_drained,
    wait_group_members,
)
from topologies.fraud.workload import generate

pytestmark = pytest.mark.integration

TOPO = topologies.get("fraud")
PARTITIONS = 8
N_EVENTS = 4_000
CLIENTS = 4
BEFORE_KILL = 300  # lookups answered before the SIGKILL
AFTER_PROMOTION = 600  # lookups answered once the survivor owns every partition
META = ("served_by", "stale", "lag_ms", "standby", "request_id")  # who and how, not what


def _value(body: object) -> object:
    """An answer without the fields that say who served it and how fresh."""
    return {k: v for k, v in body.items() if k not in META} if isinstance(body, dict) else body


async def _readyz(url: str) -> dict:
    return (await fetch_json(url, ["/readyz"]))["/readyz"][1]


async def _wait_replicated(workers: list[WorkerProcess], timeout_s: float = 120.0) -> None:
    """Until each worker owns partitions, the two split all 8, and each holds a replica of
    every partition the other owns with nothing left to apply."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        ready = [await _readyz(w.url) for w in workers]
        owned = [set(r["partitions"]) for r in ready]
        replicas = [{int(p): s for p, s in r["standbys"].items()} for r in ready]
        if all(owned) and owned[0] | owned[1] == set(range(PARTITIONS)) and \
                not owned[0] & owned[1] and set(replicas[0]) == owned[1] and \
                set(replicas[1]) == owned[0] and \
                all(s["lag_records"] == 0 for r in replicas for s in r.values()):
            return
        last = ready
        await asyncio.sleep(0.5)
    raise AssertionError(f"standby replicas not in place: {last}\n"
                         f"{workers[0].log_tail()}\n{workers[1].log_tail()}")


async def test_sigkill_of_one_of_two_workers_under_lookups(kafka_bootstrap, unique_prefix,
                                                           tmp_path):
    broker, prefix = kafka_bootstrap, unique_prefix
    w = generate(N_EVENTS, seed=5)
    topics = FraudTopics(prefix)
    await ensure_topics(broker, topic_specs(TOPO.topics(prefix), PARTITIONS))
    await produce(broker, topics.profiles,
                  [(c.encode(), orjson.dumps(p)) for c, p in w.profiles.items()])
    a, b = (WorkerProcess(broker, prefix, tmp_path / f"w{i}", tmp_path / f"w{i}.log",
                          partitions=PARTITIONS, extra_args=["--standby-replicas", "1"])
            for i in range(2))
    try:
        for wp in (a, b):
            wp.start()
        for wp in (a, b):
            await wp.wait_ready()
        await wait_group_members(broker, topics.group, 2)
        await produce(broker, topics.events,
                      [(e["card_id"].encode(), orjson.dumps(e)) for e in w.events])
        await wait_drained(broker, topics, {e["event_id"] for e in w.events}, None)
        await _wait_replicated([a, b])
        a_owns = set((await _readyz(a.url))["partitions"])

        cards = sorted({e["card_id"] for e in w.events})
        sample = [*random.Random(5).sample(cards, 300), "zz-never-seen-card"]
        paths = [f"/v1/tables/velocity/{c}" for c in sample]
        # the owners' answers (b forwards a's keys to a)
        owners = await fetch_json(b.url, [p + "?consistency=owner" for p in paths])
        reference = {p: (owners[p + "?consistency=owner"][0],
                         _value(owners[p + "?consistency=owner"][1])) for p in paths}
        assert sum(s == 200 for s, _ in reference.values()) >= 290
        assert reference[paths[-1]][0] == 404
        # standby reads before the kill: the owner's values, fresh, and said to be a replica's
        local = await fetch_json(b.url, paths)
        replica_reads = 0
        for p in paths:
            status, body = local[p]
            assert (status, _value(body)) == reference[p], p
            if status == 200:
                part = body["partition"]
                assert body["standby"] is (part in a_owns) and body["stale"] is False
                replica_reads += body["standby"]
        assert replica_reads > 50

        # the load: CLIENTS closed-loop clients on b, while a is SIGKILLed
        answers: list[tuple[str, int, dict | str, bool]] = []  # path, status, body, owner up?
        errors: list[str] = []
        stop = asyncio.Event()
        a_alive = True

        async def client(i: int) -> None:
            k = i
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=10)) as http:
                while not stop.is_set():
                    path = paths[k % len(paths)]
                    k += CLIENTS
                    alive = a_alive
                    try:
                        async with http.get(b.url + path) as resp:
                            raw = await resp.read()
                            body = orjson.loads(raw) if raw.startswith(b"{") else raw.decode()
                            answers.append((path, resp.status, body, alive))
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        errors.append(f"{path}: {exc!r}")

        async def until(predicate, what: str, timeout_s: float = 120.0) -> None:
            deadline = time.monotonic() + timeout_s
            while not predicate():
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}\n{b.log_tail()}")
                b.check_alive("under the lookup load")
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
        try:
            await until(lambda: len(answers) >= BEFORE_KILL, "lookups before the kill")
            await asyncio.to_thread(a.kill)  # SIGKILL by PID: no leave, no tombstone
            a_alive = False
            killed_at = len(answers)
            deadline = time.monotonic() + 120
            while set((await _readyz(b.url))["partitions"]) != set(range(PARTITIONS)):
                assert time.monotonic() < deadline, f"b never owned all\n{b.log_tail()}"
                await asyncio.sleep(0.25)
            promoted_at = len(answers)
            await until(lambda: len(answers) >= promoted_at + AFTER_PROMOTION,
                        "lookups after the promotion")
        finally:
            stop.set()
            await asyncio.gather(*tasks)

        # 0 errors, 0 wrong answers: every lookup answered, each with the owner's value
        assert not errors, errors[:5]
        wrong = [(p, s, body) for p, s, body, _ in answers if (s, _value(body)) != reference[p]]
        assert not wrong, wrong[:5]
        # stale said while the owner was gone, never while it was up; the survivor owns all
        # in the end and answers as the owner
        during = [body for _, s, body, _ in answers[killed_at:promoted_at]
                  if s == 200 and body["partition"] in a_owns]
        assert any(body["stale"] and body["standby"] for body in during), \
            f"no stale answer among {len(during)} while the owner was gone"
        assert all(not body["stale"] for _, s, body, _ in answers[:killed_at] if s == 200)
        after = [body for _, s, body, _ in answers[-AFTER_PROMOTION // 2:] if s == 200]
        assert after and all(not body["standby"] and not body["stale"] for body in after)
        assert {body["served_by"] for body in after} == {after[0]["served_by"]}

        # each of a's partitions was promoted from its replica: only the tail restored (none:
        # the replica had the changelog up to its last record), though the changelog holds
        # records a rebuild would have read
        log = b.log_path.read_text()
        promoted = {int(p): (int(off), int(ms)) for p, off, ms in re.findall(
            r"partition (\d+): promoted from its standby replica at changelog offset (\d+) "
            r"in (\d+) ms", log)}
        restored = {int(p): int(n) for p, n in re.findall(
            r"partition (\d+) ready \((\d+) changelog records restored\)", log)}
        ends = await end_offsets(broker, topics.changelog)
        for p in sorted(a_owns):
            assert p in promoted, f"partition {p} was not promoted\n{b.log_tail()}"
            assert ends[p] > 0
            assert promoted[p][0] == ends[p] - 1, (p, promoted[p], ends[p])
            assert restored[p] == 0, (p, restored[p])
        print(f"\nfailover: {len(answers)} lookups ({killed_at} before the kill, "
              f"{promoted_at - killed_at} while a was gone, {len(during)} of them a's keys, "
              f"{sum(bool(b['stale']) for b in during)} stale), 0 errors, 0 wrong; promotion "
              f"of a's partitions: {[promoted[p][1] for p in sorted(a_owns)]} ms")
    finally:
        for wp in (a, b):
            wp.stop()


async def test_a_replica_directory_restores_only_the_changelog_tail(kafka_bootstrap,
                                                                   unique_prefix, tmp_path):
    """b keeps replicas of a's partitions, is stopped, and the stream goes on without it (a
    owns everything, promoting its replicas of b's partitions); when b comes back alone, every
    partition opens from b's directory (its store or its replica) and restores exactly the
    changelog records written while b was away: the tail, never the whole changelog."""
    broker, prefix = kafka_bootstrap, unique_prefix
    w = generate(N_EVENTS, seed=9)
    first, second = w.events[:N_EVENTS // 2], w.events[N_EVENTS // 2:]
    topics = FraudTopics(prefix)
    await ensure_topics(broker, topic_specs(TOPO.topics(prefix), PARTITIONS))
    await produce(broker, topics.profiles,
                  [(c.encode(), orjson.dumps(p)) for c, p in w.profiles.items()])
    a, b = (WorkerProcess(broker, prefix, tmp_path / f"w{i}", tmp_path / f"w{i}.log",
                          partitions=PARTITIONS) for i in range(2))
    try:
        for wp in (a, b):
            wp.start()
        for wp in (a, b):
            await wp.wait_ready()
        await wait_group_members(broker, topics.group, 2)
        await produce(broker, topics.events,
                      [(e["card_id"].encode(), orjson.dumps(e)) for e in first])
        await wait_drained(broker, topics, {e["event_id"] for e in first}, None)
        await _wait_replicated([a, b])
        before = await end_offsets(broker, topics.changelog)
        assert b.stop() == 0, b.log_tail()
        await produce(broker, topics.events,
                      [(e["card_id"].encode(), orjson.dumps(e)) for e in second])
        await wait_drained(broker, topics, {e["event_id"] for e in w.events}, a)
        after = await end_offsets(broker, topics.changelog)
        assert a.stop() == 0, a.log_tail()
        a_log = a.log_path.read_text()
        b_start = len(b.log_path.read_text())
        b.start()
        await b.wait_ready()
        log = b.log_path.read_text()[b_start:]
        restored = {int(p): int(n) for p, n in re.findall(
            r"partition (\d+) ready \((\d+) changelog records restored\)", log)}
        assert set(restored) == set(range(PARTITIONS)), log[-3000:]
        assert restored == {p: after[p] - before[p] for p in range(PARTITIONS)}
        assert sum(restored.values()) > 0 and all(before[p] > 0 for p in range(PARTITIONS))
        # a promoted its replicas of b's partitions when b left: nothing to restore there
        promoted = re.findall(r"partition (\d+): promoted from its standby replica", a_log)
        assert len(promoted) >= PARTITIONS // 2, a_log[-3000:]
    finally:
        for wp in (a, b):
            wp.stop()
