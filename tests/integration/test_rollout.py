"""Safe rollout on a real broker with two real workers (#16 acceptance).

One story on one pair of workers (CI time): adopt the shipped primary as the serving version,
shadow a candidate over 20,000 events (every decision carries its shadow score; a replay
without the shadow writes the same bytes), canary it at 10% (the hash slice, on both workers,
across a restart and in a replay), ramp it to 100% (it becomes the serving version without a
restart, every event decided), then ramp a candidate that declines everything (rolled back by
the guardrail, only its canary slice saw it, the alarm metric is up, the reason is on the
control topic). And `validate` on its own: the shipped primary passes, a model with other
inputs and one whose ECE is over the limit are refused. Nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

import topologies
from engine.rollout.state import in_canary
from tests.integration.worker_harness import (
    REPO,
    FraudTopics,
    WorkerProcess,
    consume_all,
    create_topics,
    produce,
    wait_drained,
)
from tests.unit.onnx_factory import linear_model_bytes
from topologies.fraud.workload import generate

pytestmark = pytest.mark.integration

TOPO = topologies.get("fraud")
PARTITIONS = 4
TOKEN = "rollout-token"


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"streamwise {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def _version(src: Path, dst: Path, version: str, **manifest_changes) -> None:
    """A copy of a model version under another version number (and manifest changes)."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "model.json").read_text())
    doc.update(version=version, **manifest_changes)
    (dst / "model.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def holdout(tmp_path_factory) -> Path:
    """A labelled held-out set built through replay (no Kafka): the features live sees."""
    d = tmp_path_factory.mktemp("holdout")
    w = generate(5_000, seed=13)
    ts = {e["event_id"]: e["ts_ms"] for e in w.events}
    (d / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in w.events))
    (d / "labels.jsonl").write_bytes(b"".join(
        orjson.dumps({"event_id": k, "label": v, "label_time": ts[k] + 1}) + b"\n"
        for k, v in w.labels.items()))
    (d / "profiles.json").write_bytes(orjson.dumps(w.profiles))
    out = d / "holdout.parquet"
    _cli("replay", "fraud", "--input", str(d / "events.jsonl"), "--profiles",
         str(d / "profiles.json"), "--labels", str(d / "labels.jsonl"), "--output", str(out))
    return out


def test_validate_passes_the_shipped_primary_and_refuses_bad_models(tmp_path, holdout):
    models = tmp_path / "models"
    shutil.copytree(TOPO.models_dir, models)
    primary = models / "primary" / "1"
    names = list(TOPO.features.names)
    # other inputs: a real model of 5 features under a manifest of 12 (checksum updated)
    _version(primary, models / "primary" / "4", "4")
    blob = linear_model_bytes(5)
    (models / "primary" / "4" / "model.onnx").write_bytes(blob)
    doc = json.loads((models / "primary" / "4" / "model.json").read_text())
    doc["sha256"] = hashlib.sha256(blob).hexdigest()
    (models / "primary" / "4" / "model.json").write_text(json.dumps(doc))
    # uncalibrated: scores near 0.5 for every row, whatever the truth
    _version(primary, models / "primary" / "5", "5")
    blob = linear_model_bytes(len(names), weights=[1e-4] * len(names), bias=0.0)
    (models / "primary" / "5" / "model.onnx").write_bytes(blob)
    doc = json.loads((models / "primary" / "5" / "model.json").read_text())
    doc["sha256"] = hashlib.sha256(blob).hexdigest()
    (models / "primary" / "5" / "model.json").write_text(json.dumps(doc))
    common = ["--models-dir", str(models), "--holdout", str(holdout), "--json"]

    ok = _cli("rollout", "fraud", "validate", "primary=1", "--against", "1", *common)
    report = json.loads(ok.stdout)
    assert report["ok"] and report["holdout_rows"] > 3_000 and report["holdout_positives"] > 20
    c = report["candidate_report"]
    assert c["auc"] > 0.95 and c["ece"] <= TOPO.rollout.minima.max_ece
    assert set(c["decision_rates"]) == {"approve", "review", "decline"}
    assert c["reliability"] and c["us_per_row_single"] > 0 and c["ms_per_batch"] > 0

    inputs = _cli("rollout", "fraud", "validate", "primary=4", *common, check=False)
    assert inputs.returncode == 2
    assert "input shape" in json.loads(inputs.stdout)["contract_error"]

    ece = _cli("rollout", "fraud", "validate", "primary=5", "--against", "1", *common,
               check=False)
    assert ece.returncode == 2
    bad = json.loads(ece.stdout)
    assert bad["contract_error"] is None
    assert any(f.startswith("ECE ") for f in bad["failures"]), bad["failures"]


# -- the story on two workers -------------------------------------------------------------------


async def _models(url: str) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
            http.get(url + "/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200
        doc = await r.json()
    return next(m for m in doc["models"] if m["name"] == "primary")


async def _wait_applied(workers: list[WorkerProcess], seq: int, timeout_s: float = 60) -> dict:
    """Until every worker's /v1/models shows rollout seq `seq` (or later) for primary."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = []
        for w in workers:
            w.check_alive("while waiting for a rollout change")
            seen.append(await _models(w.url))
        if all(m["rollout"] and m["rollout"]["seq"] >= seq for m in seen):
            return seen[0]["rollout"]
        if time.monotonic() > deadline:
            raise AssertionError(f"rollout seq {seq} not applied by every worker: "
                                 f"{[m['rollout'] for m in seen]}")
        await asyncio.sleep(0.2)


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        return await r.text()


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _events(n: int, seed: int, start_ms: int) -> list[tuple[bytes, bytes]]:
    w = generate(n, seed, duplicates=0.0, late=0.0)
    out = []
    for e in w.events:
        e = {**e, "ts_ms": e["ts_ms"] - w.events[0]["ts_ms"] + start_ms,
             "event_id": f"s{seed}-{e['event_id']}"}
        out.append((e["card_id"].encode(), orjson.dumps(e)))
    return out


async def _paced_until(kafka: str, topics: FraudTopics, workers, batches, done, what: str):
    """Produce one batch after the other (each paced at 1,000 events/s) until `done()`;
    returns the batches produced."""
    sent = []
    for batch in batches:
        await produce(kafka, topics.events, batch, rate_eps=1_000)
        sent.append(batch)
        for w in workers:
            w.check_alive(what)
        if await done():
            return sent
    raise AssertionError(f"{what}: not done after {len(sent)} batches")


def _untimed(raw: bytes) -> bytes:
    """A decision record without its batch's stage timings (they differ run to run)."""
    return re.sub(rb'"stage_ms":\{[^}]*\}', b'"stage_ms":{}', raw)


def _ids(batches) -> set[str]:
    return {orjson.loads(v)["event_id"] for b in batches for _, v in b}


async def test_shadow_canary_ramp_and_automatic_rollback_on_two_workers(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path, holdout: Path):
    kafka, prefix = kafka_bootstrap, unique_prefix
    topics = FraudTopics(prefix)
    t = TOPO.topics(prefix)
    models = tmp_path / "models"
    shutil.copytree(TOPO.models_dir, models)
    primary = models / "primary" / "1"
    _version(primary, models / "primary" / "2", "2")  # a good candidate
    # passes offline validation (same scores) but declines everything at its thresholds
    _version(primary, models / "primary" / "3", "3",
             thresholds={"review_at": 0.00001, "decline_at": 0.00002})
    base = ["--broker", kafka, "--topic-prefix", prefix, "--models-dir", str(models)]
    stage = [*base, "--holdout", str(holdout)]

    w = generate(20_000, seed=21)
    await create_topics(kafka, [(topics.events, PARTITIONS, {}), (topics.profiles, PARTITIONS,
                                                                  {"cleanup.policy": "compact"}),
                                (t.control, 1, {"cleanup.policy": "compact"})])
    await produce(kafka, topics.profiles, [(c.encode(), orjson.dumps(p))
                                           for c, p in w.profiles.items()])
    # The slot comes under rollout control before the workers start (newer versions are in
    # the folder: without this record they would serve the newest, 3).
    out = _cli("rollout", "fraud", "promote", "primary=1", *base).stdout
    assert "seq 1 released: serving 1" in out
    workers = [WorkerProcess(kafka, prefix, tmp_path / f"w{i}", tmp_path / f"w{i}.log",
                             partitions=PARTITIONS,
                             extra_args=["--models-dir", str(models), "--api-token", TOKEN])
               for i in range(2)]
    try:
        for wp in workers:
            wp.start()
        for wp in workers:
            await wp.wait_ready()
        state = await _wait_applied(workers, 1)
        assert (state["serving"], state["stage"]) == ("1", "released")
        assert (await _models(workers[0].url))["active"] == "primary:1"

        # -- shadow: 20,000 events, each decision carries the candidate's score -------------
        _cli("rollout", "fraud", "shadow", "primary=2", *stage)
        assert (await _wait_applied(workers, 2))["stage"] == "shadow"
        shadow_events = [(e["card_id"].encode(), orjson.dumps(e)) for e in w.events]
        await produce(kafka, topics.events, shadow_events)
        ids = {e["event_id"] for e in w.events}
        live = await wait_drained(kafka, topics, ids, None, timeout_s=300)
        docs = [orjson.loads(r.value) for r in live]
        assert all(d["shadow"]["model"] == "primary:2" for d in docs)
        complete = [d for d in docs if all(v is not None for v in d["features"].values())]
        assert len(complete) > 15_000
        # A shadow call has the primary's timeout (it delays its batch's decisions): on a
        # starved machine a batch's shadow may time out, and says so; it never acts either way.
        unscored = [d["shadow"] for d in complete if d["shadow"]["score"] is None]
        assert {s["reason"] for s in unscored} <= {"timeout"}, unscored[:3]
        assert len(unscored) <= 0.02 * len(complete), len(unscored)
        assert all(d["shadow"]["score"] == pytest.approx(d["score"], abs=1e-6)
                   for d in complete if d["path"] == "model" and d["shadow"]["score"] is not None)
        text = await _metrics(workers[0].url) + await _metrics(workers[1].url)
        assert _value(text, "streamwise_shadow_decisions_total", model="primary:2") >= \
            len(complete)
        # Serving decisions are byte-identical to a run without the shadow: a replay with the
        # shadow and one pinned to the serving version (no rollout), raw records compared.
        _cli("replay", "fraud", "--from-beginning", "--output", f"topic:{prefix}with", *base)
        _cli("replay", "fraud", "--from-beginning", "--model", "primary=1", "--output",
             f"topic:{prefix}without", *base)
        with_ = await consume_all(kafka, f"{prefix}with")
        without = await consume_all(kafka, f"{prefix}without")
        assert len(with_) == len(without) == len(live)
        stripped = []
        for r in with_:
            d = orjson.loads(r.value)
            assert d["shadow"]["model"] == "primary:2"
            stripped.append(_untimed(r.value.replace(b',"shadow":' + orjson.dumps(d["shadow"]),
                                                     b"")))
        assert stripped == [_untimed(r.value) for r in without]
        # ...and the live serving decisions are the replay's (timings aside)
        by_id = {orjson.loads(r.value)["event_id"]: orjson.loads(r.value) for r in without}
        timed_out = 0
        for d in docs:
            r = by_id[d["event_id"]]
            if d["path"] != r["path"] and "timeout" in d["reasons"]:
                timed_out += 1  # a live model call past its budget (replay has none)
                continue
            assert (d["decision_id"], d["decision"], d["path"], d["model"]) == \
                (r["decision_id"], r["decision"], r["path"], r["model"])
        assert timed_out <= 0.05 * len(docs)

        # -- canary at 10%: the hash slice, on both workers, across a restart ---------------
        _cli("rollout", "fraud", "canary", "primary=2", "--percent", "10", *stage)
        assert (await _wait_applied(workers, 3))["percent"] == 10
        start = max(e["ts_ms"] for e in w.events) + 1
        canary_batches = [_events(3_000, 31 + i, start + i * 4_000_000) for i in range(3)]
        await produce(kafka, topics.events, canary_batches[0])
        workers[0].stop()  # the other worker takes every partition meanwhile
        await produce(kafka, topics.events, canary_batches[1])
        await wait_drained(kafka, topics, _ids(canary_batches[:2]), workers[1], 300)
        workers[0].start()
        await workers[0].wait_ready()
        assert (await _models(workers[0].url))["rollout"]["seq"] == 3  # read before deciding
        await produce(kafka, topics.events, canary_batches[2])
        canary_ids = _ids(canary_batches)
        decided = await wait_drained(kafka, topics, canary_ids | ids, None, timeout_s=300)
        canary_docs = [orjson.loads(r.value) for r in decided]
        canary_docs = [d for d in canary_docs if d["event_id"] in canary_ids]
        keys = {d["key"] for d in canary_docs}
        slice_ = {k for k in keys if in_canary("primary", "2", k, 10)}
        assert abs(len(slice_) / len(keys) - 0.10) <= 0.02
        for d in canary_docs:
            if d["path"] == "canary":
                assert d["key"] in slice_ and d["model"] == "primary:2"
            if d["path"] == "model":
                assert d["key"] not in slice_ and d["model"] == "primary:1"
        got = {d["key"] for d in canary_docs if d["path"] == "canary"}
        assert len(got) >= 0.8 * len(slice_)  # the rest had only incomplete features
        # a replay under the canary decides the same entities the same way
        replay = tmp_path / "canary.jsonl"
        _cli("replay", "fraud", "--from-beginning", "--output", str(replay), *base)
        replayed = {d["event_id"]: d for d in map(orjson.loads, replay.read_bytes().splitlines())}
        for d in canary_docs:
            assert (replayed[d["event_id"]]["path"] == "canary") == (d["path"] == "canary")

        # -- a good candidate ramps to 100% and serves, no restart, every event decided -----
        pids = [wp.proc.pid for wp in workers]
        _cli("rollout", "fraud", "ramp", "primary=2", "--steps", "20,50,100", "--dwell-s", "2",
             "--min-events", "100", *stage)
        await _wait_applied(workers, 4)
        start += 20_000_000

        async def released() -> bool:
            r = (await _models(workers[0].url))["rollout"]
            return r["stage"] == "released"

        ramp_batches = await _paced_until(
            kafka, topics, workers,
            (_events(1_000, 50 + i, start + i * 1_000_000) for i in range(60)), released,
            "ramping primary=2")
        state = (await _models(workers[1].url))["rollout"]
        assert (state["serving"], state["last_good"], state["automatic"]) == ("2", "1", True)
        assert [wp.proc.pid for wp in workers] == pids
        assert [(await _models(wp.url))["active"] for wp in workers] == ["primary:2"] * 2
        after = _events(1_000, 49, start + 70_000_000)
        await produce(kafka, topics.events, after)  # decided by the released version
        ramp_batches.append(after)
        decided = await wait_drained(kafka, topics, canary_ids | ids | _ids(ramp_batches),
                                     None, timeout_s=300)
        after_ids = _ids([after])
        last = [d for d in map(orjson.loads, (r.value for r in decided))
                if d["event_id"] in after_ids]
        assert {d["model"] for d in last if d["path"] in ("model", "canary")} == {"primary:2"}
        assert "canary" not in {d["path"] for d in last}

        # -- a bad candidate on a ramp is rolled back by the guardrail ----------------------
        seq = state["seq"]
        _cli("rollout", "fraud", "ramp", "primary=3", "--steps", "10,50,100", "--dwell-s", "5",
             "--min-events", "100", *stage)
        await _wait_applied(workers, seq + 1)
        start += 80_000_000

        async def rolled_back() -> bool:
            r = (await _models(workers[0].url))["rollout"]
            return r["stage"] == "rolled_back"

        bad_batches = await _paced_until(
            kafka, topics, workers,
            (_events(1_000, 150 + i, start + i * 1_000_000) for i in range(60)), rolled_back,
            "ramping the bad primary=3")
        state = (await _models(workers[0].url))["rollout"]
        assert state["automatic"] and state["alarm"] and state["serving"] == "2"
        assert state["reason"].startswith("guardrail decline_rate"), state["reason"]
        assert "at 10%" in state["reason"]
        for wp in workers:
            assert _value(await _metrics(wp.url), "streamwise_rollout_alarm",
                          model="primary") == 1
        text = await _metrics(workers[0].url) + await _metrics(workers[1].url)
        assert _value(text, "streamwise_rollout_guardrail_breaches_total",
                      guardrail="decline_rate") >= 1
        bad_ids = _ids(bad_batches)
        decided = await wait_drained(kafka, topics, canary_ids | ids | _ids(ramp_batches)
                                     | bad_ids, None, timeout_s=300)
        bad_docs = [d for d in map(orjson.loads, (r.value for r in decided))
                    if d["event_id"] in bad_ids]
        bad_keys = {d["key"] for d in bad_docs}
        hit = {d["key"] for d in bad_docs if d["model"] == "primary:3"}
        assert hit and hit <= {k for k in bad_keys if in_canary("primary", "3", k, 10)}
        assert len(hit) <= 0.12 * len(bad_keys)
        # the reason is on the control topic, the last word there
        status = json.loads(_cli("rollout", "fraud", "status", "--json", *base).stdout)
        assert status["slots"][0]["reason"] == state["reason"]
        assert status["slots"][0]["alarm"] is True
    finally:
        for wp in workers:
            wp.stop()
