"""Scoring on a real worker: the trained models, broken model files, slow and failing inference.

Each test copies the topology's model registry into a temp folder (``--models-dir``) so that
it can break files without touching the repository.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

import topologies
from engine.kafka_io import ensure_topics
from engine.worker import topic_specs
from tests.integration.worker_harness import FraudTopics, WorkerProcess, produce, wait_drained
from tests.unit.onnx_factory import linear_model_bytes
from topologies.fraud.workload import generate

pytestmark = pytest.mark.integration

TOPO = topologies.get("fraud")
PARTITIONS = 2
TIMEOUT_MS = TOPO.scoring.timeout_ms


async def _topics_with_profiles(kafka_bootstrap: str, prefix: str, w) -> FraudTopics:
    """Create the topology's topics (2 partitions) as a worker would, then load profiles."""
    await ensure_topics(kafka_bootstrap, topic_specs(TOPO.topics(prefix), PARTITIONS))
    topics = FraudTopics(prefix)
    await produce(kafka_bootstrap, topics.profiles,
                  [(c.encode(), orjson.dumps(p)) for c, p in w.profiles.items()])
    return topics


def _registry_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(TOPO.models_dir, dst)
    return dst


def _break(folder: Path, how: str) -> None:
    onnx = folder / "model.onnx"
    if how == "removed":
        onnx.unlink()
    elif how == "random_bytes":
        onnx.write_bytes(os.urandom(onnx.stat().st_size))
    elif how == "other_inputs":
        # A real model with a different input layout: the backup's file under the primary's
        # manifest, with the checksum updated so that only the input check can catch it.
        blob = linear_model_bytes(5)
        onnx.write_bytes(blob)
        manifest = json.loads((folder / "model.json").read_text())
        manifest["sha256"] = hashlib.sha256(blob).hexdigest()
        (folder / "model.json").write_text(json.dumps(manifest))
    else:
        raise ValueError(how)


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        return await resp.text()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _readyz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as resp:
        return resp.status, await resp.json()


async def _run(kafka_bootstrap: str, prefix: str, tmp_path: Path, n_events: int,
               extra_args: list[str], seed: int = 7, after_ready=None, rate_eps: float = 0.0,
               wait_ready: bool = True) -> tuple[list[dict], WorkerProcess, str]:
    """Produce profiles, start a worker, produce events, drain; returns first decisions."""
    w = generate(n_events, seed)
    topics = await _topics_with_profiles(kafka_bootstrap, prefix, w)
    worker = WorkerProcess(kafka_bootstrap, prefix, tmp_path / "state", tmp_path / "worker.log",
                           partitions=PARTITIONS, extra_args=extra_args)
    worker.start()
    try:
        if wait_ready:
            await worker.wait_ready()
        else:
            await _wait_serving(worker)
        if after_ready is not None:
            await after_ready(worker)
        await produce(kafka_bootstrap, topics.events,
                      [(e["card_id"].encode(), orjson.dumps(e)) for e in w.events],
                      rate_eps=rate_eps)
        records = await wait_drained(kafka_bootstrap, topics, {e["event_id"] for e in w.events},
                                     worker, timeout_s=240)
    except BaseException:
        worker.stop()  # the caller's finally only covers what comes after this returns
        raise
    first: dict[str, dict] = {}
    for r in records:
        d = orjson.loads(r.value)
        first.setdefault(d["event_id"], d)
    return list(first.values()), worker, await _metrics(worker.url)


async def _wait_serving(worker: WorkerProcess, timeout_s: float = 90) -> None:
    """Until the worker is past start-up: ready, or unready for a reason other than start-up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_alive("while starting")
        try:
            status, body = await _readyz(worker.url)
            if status == 200 or body["reason"].startswith("no usable model"):
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.25)
    raise AssertionError("worker never served /readyz\n" + worker.log_tail())


async def test_worker_scores_with_the_primary_model(kafka_bootstrap, unique_prefix, tmp_path):
    decisions, worker, metrics = await _run(kafka_bootstrap, unique_prefix, tmp_path, 3000, [])
    try:
        complete = [d for d in decisions
                    if all(v is not None for v in d["features"].values())]
        assert len(complete) > 2000
        assert {d["path"] for d in complete} == {"model"}
        assert {d["model"] for d in complete} == {"primary:1"}
        assert all(0.0 <= d["score"] <= 1.0 for d in complete)
        incomplete = [d for d in decisions if d not in complete]
        assert incomplete and all(d["path"] == "fallback:rules" for d in incomplete)
        assert all(any(r.startswith("missing_features:") for r in d["reasons"])
                   for d in incomplete)
        assert _metric(metrics, "streamwise_model_rows_total", model="primary:1") >= len(complete)
    finally:
        worker.stop()


@pytest.mark.parametrize("how", ["removed", "random_bytes", "other_inputs"])
async def test_broken_primary_at_start_falls_back_to_a_fresh_last_score_then_the_backup(
        kafka_bootstrap, unique_prefix, tmp_path, how):
    """Without a primary, a complete row is decided by the card's last model score when that
    is fresh (the backup's own earlier score counts), else by the backup. The stream comes in
    two halves, the second after the first is decided, so each card's first event of the
    second half meets a known last decision: the one of its last event of the first half."""
    models = _registry_copy(tmp_path)
    _break(models / "primary" / "1", how)
    w = generate(1500, 7)
    topics = await _topics_with_profiles(kafka_bootstrap, unique_prefix, w)
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=PARTITIONS,
                           extra_args=["--models-dir", str(models)])
    halves = (w.events[:750], w.events[750:])
    try:
        worker.start()
        await worker.wait_ready()
        for half in halves:
            await produce(kafka_bootstrap, topics.events,
                          [(e["card_id"].encode(), orjson.dumps(e)) for e in half])
            records = await wait_drained(kafka_bootstrap, topics,
                                         {e["event_id"] for e in half}, worker, timeout_s=240)
        metrics = await _metrics(worker.url)
        status, body = await _readyz(worker.url)
    finally:
        worker.stop()
    decided: dict[str, dict] = {}
    for r in records:
        d = orjson.loads(r.value)
        decided.setdefault(d["event_id"], d)

    def complete(d: dict) -> bool:
        return all(v is not None for v in d["features"].values())

    done = [d for d in decided.values() if complete(d)]
    assert done and all(d["model"] == "backup:1" for d in done)
    assert {d["path"] for d in done} <= {"fallback:backup_model", "fallback:last_score"}
    assert all("model_unavailable" in d["reasons"] for d in done)
    # Each card's state after the first half: its last decided event (duplicates re-emit).
    seen: set[str] = set()
    last_of_card: dict[str, dict] = {}
    firsts: list[dict] = []
    for half, events in enumerate(halves):
        in_half: set[str] = set()
        for e in events:
            if e["event_id"] in seen:
                continue  # a duplicate: re-emits its original, changes nothing
            seen.add(e["event_id"])
            if half == 1 and e["card_id"] not in in_half:
                in_half.add(e["card_id"])
                firsts.append(e)
            elif half == 0:
                last_of_card[e["card_id"]] = decided[e["event_id"]]
    expected = {"fallback:last_score": 0, "fallback:backup_model": 0}
    for e in firsts:
        d, last = decided[e["event_id"]], last_of_card.get(e["card_id"])
        if not complete(d):
            continue
        fresh = (last is not None and last["path"] in ("model", "fallback:backup_model")
                 and 0 <= e["ts_ms"] - last["event_ts_ms"] <= TOPO.scoring.last_score_max_age_ms)
        want = "fallback:last_score" if fresh else "fallback:backup_model"
        expected[want] += 1
        assert d["path"] == want, (e, last)
        if fresh:
            assert d["score"] == last["score"], (d, last)
    assert expected["fallback:last_score"] > 0 and expected["fallback:backup_model"] > 0, expected
    assert _metric(metrics, "streamwise_model_fallbacks_total", reason="model_unavailable") >= len(done)
    assert status == 200, body  # the backup is usable
    assert "model rejected" in worker.log_path.read_text()


async def test_no_usable_model_is_unready_but_still_decides(kafka_bootstrap, unique_prefix,
                                                            tmp_path):
    models = _registry_copy(tmp_path)
    _break(models / "primary" / "1", "random_bytes")
    _break(models / "backup" / "1", "removed")

    async def unready(worker: WorkerProcess) -> None:
        status, body = await _readyz(worker.url)
        assert status == 503 and "no usable model" in body["reason"], body

    decisions, worker, _ = await _run(kafka_bootstrap, unique_prefix, tmp_path, 1000,
                                      ["--models-dir", str(models)], after_ready=unready,
                                      wait_ready=False)
    try:
        assert decisions and {d["path"] for d in decisions} <= {"fallback:rules", "abstain"}
    finally:
        worker.stop()


async def test_hot_reload_takes_a_new_version_and_rejects_a_bad_one(kafka_bootstrap,
                                                                     unique_prefix, tmp_path):
    models = _registry_copy(tmp_path)
    w = generate(4000, 7)
    topics = await _topics_with_profiles(kafka_bootstrap, unique_prefix, w)
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=PARTITIONS,
                           extra_args=["--models-dir", str(models)])
    events = [(e["card_id"].encode(), orjson.dumps(e)) for e in w.events]
    try:
        worker.start()
        await worker.wait_ready()
        await produce(kafka_bootstrap, topics.events, events[:1000])
        # A broken version 2 appears: rejected, version 1 keeps serving.
        bad = models / "primary" / "2"
        shutil.copytree(models / "primary" / "1", bad)
        _break(bad, "random_bytes")
        await _until(lambda m: _metric(m, "streamwise_model_load_failures_total") >= 1, worker)
        await produce(kafka_bootstrap, topics.events, events[1000:2000])
        # A valid version 3 appears: taken without a restart.
        good = models / "primary" / "3"
        shutil.copytree(models / "primary" / "1", good)
        manifest = json.loads((good / "model.json").read_text())
        manifest["version"] = "3"
        (good / "model.json").write_text(json.dumps(manifest))
        await asyncio.sleep(5)  # the registry is scanned every 2 s
        await produce(kafka_bootstrap, topics.events, events[2000:])
        records = await wait_drained(kafka_bootstrap, topics,
                                     {e["event_id"] for e in w.events}, worker, timeout_s=180)
    finally:
        worker.stop()
    by_offset = sorted((r.partition, r.offset, orjson.loads(r.value)) for r in records)
    models_used = [d["model"] for _, _, d in by_offset if d["path"] == "model"]
    assert "primary:2" not in models_used
    assert models_used[0] == "primary:1" and models_used[-1] == "primary:3"
    assert worker.proc.returncode in (0, -15)


async def _until(check, worker: WorkerProcess, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check(await _metrics(worker.url)):
            return
        await asyncio.sleep(0.5)
    raise AssertionError("condition not met\n" + worker.log_tail())


async def test_slow_inference_times_out_to_a_fallback(kafka_bootstrap, unique_prefix, tmp_path):
    # 20% of model calls take 10x the timeout budget: those calls time out and their rows
    # take the fallback chain (last score, backup, rules), each saying why.
    decisions, worker, metrics = await _run(
        kafka_bootstrap, unique_prefix, tmp_path, 3000,
        ["--inject-faults", f"slow=0.2:{10 * TIMEOUT_MS}", "--max-batch", "100"],
        rate_eps=1500)
    try:
        timed_out = [d for d in decisions if "timeout" in d["reasons"]]
        assert timed_out, "no call timed out"
        assert {d["path"] for d in timed_out} <= {"fallback:backup_model", "fallback:last_score",
                                                  "fallback:rules"}
        assert any(d["path"] == "model" for d in decisions)  # the other 80% are scored
        assert _metric(metrics, "streamwise_model_fallbacks_total", reason="timeout") >= len(timed_out)
    finally:
        worker.stop()


async def test_breaker_opens_half_opens_and_closes(kafka_bootstrap, unique_prefix, tmp_path):
    w = generate(6000, 7)
    topics = await _topics_with_profiles(kafka_bootstrap, unique_prefix, w)
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=PARTITIONS,
                           extra_args=["--inject-faults", "fail_for_s=30"])
    states: list[float] = []
    try:
        worker.start()
        await worker.wait_ready()
        events = [(e["card_id"].encode(), orjson.dumps(e)) for e in w.events]

        async def sample() -> None:
            while True:
                states.append(_metric(await _metrics(worker.url), "streamwise_breaker_state",
                                      model="primary"))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        try:
            # ~45 s of traffic: through the 30 s outage, the cool-down and the recovery.
            await produce(kafka_bootstrap, topics.events, events, rate_eps=len(events) / 45)
            records = await wait_drained(kafka_bootstrap, topics,
                                         {e["event_id"] for e in w.events}, worker)
        finally:
            sampler.cancel()
    finally:
        worker.stop()
    assert 2.0 in states, "breaker never opened"
    assert states[-1] == 0.0, "breaker did not close again"
    # Half-open lasts one probe call, shorter than any scrape: the worker logs each change.
    moves = re.findall(r"circuit breaker primary: (\w+) -> (\w+)", worker.log_path.read_text())
    assert moves[0] == ("closed", "open"), moves
    assert moves[-1] == ("half_open", "closed"), moves
    assert all(b == "half_open" for a, b in moves if a == "open"), moves  # never open -> closed
    first: dict[str, dict] = {}
    for r in records:
        d = orjson.loads(r.value)
        first.setdefault(d["event_id"], d)
    assert set(first) == {e["event_id"] for e in w.events}  # no event without a decision
    reasons = {r for d in first.values() for r in d["reasons"]}
    assert {"model_error", "breaker_open"} <= reasons
    assert any(d["path"] == "model" for d in first.values())
    log = worker.log_path.read_text()
    assert not re.search(r"Traceback", log), log[-3000:]
