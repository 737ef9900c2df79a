"""`streamwise worker --processes 2`: two members of the group under one supervisor, one HTTP
port for both (owner routing between them), a killed member started again, one clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import orjson
import pytest

from tests.integration.worker_harness import (
    FraudTopics,
    WorkerProcess,
    fetch_json,
    produce,
    wait_drained,
    wait_group_members,
)

pytestmark = pytest.mark.integration


def _events(start: int, n: int) -> list[dict]:
    base_ms = 1_767_225_600_000
    return [{"event_id": f"proc-{i}", "card_id": f"c{i % 50:03d}", "merchant_id": f"m{i % 7}",
             "amount": 12.5 + i % 9, "currency": "EUR", "country": "FR",
             "ts_ms": base_ms + i * 50} for i in range(start, start + n)]


def _records(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(e["card_id"].encode(), orjson.dumps(e)) for e in events]


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


async def _members(pid: int, n: int, timeout_s: float = 60.0) -> set[int]:
    for _ in range(int(timeout_s * 4)):
        kids = _children(pid)
        if len(kids) == n:
            return kids
        await asyncio.sleep(0.25)
    raise AssertionError(f"supervisor {pid} has {_children(pid)} children, expected {n}")


async def test_two_members_share_one_port_and_a_killed_one_comes_back(kafka_bootstrap,
                                                                      unique_prefix,
                                                                      tmp_path):
    topics = FraudTopics(unique_prefix)
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=4,
                           extra_args=("--processes", "2", "--create-input-topic"))
    first, second = _events(0, 1500), _events(1500, 1500)
    try:
        worker.start()
        await worker.wait_ready()
        members = await _members(worker.proc.pid, 2)
        # /readyz answers once either member is up; both must hold partitions before producing
        await wait_group_members(kafka_bootstrap, topics.group, 2)
        await produce(kafka_bootstrap, topics.events, _records(first))
        await wait_drained(kafka_bootstrap, topics, {e["event_id"] for e in first}, worker)
        assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["m0", "m1"]
        cards = [f"/v1/tables/velocity/c{i:03d}" for i in range(50)]
        answers = await fetch_json(worker.url, cards)
        assert {status for status, _ in answers.values()} == {200}
        served = {body["served_by"] for _, body in answers.values()}
        assert len(served) == 2, served  # both members own keys; the port reaches both

        victim = sorted(members)[0]
        os.kill(victim, signal.SIGKILL)
        await produce(kafka_bootstrap, topics.events, _records(second))
        await wait_drained(kafka_bootstrap, topics,
                           {e["event_id"] for e in first + second}, worker)
        members_after = await _members(worker.proc.pid, 2)
        assert victim not in members_after  # started again as a new process
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    assert not _children(worker.proc.pid)
