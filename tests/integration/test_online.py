"""Online serving on two real workers of the fraud topology (one broker, 8 partitions).

* lookups: for 1,000 random cards, GET /v1/tables/velocity/{card} answers the same on either
  worker, equal to the oracle once the stream has drained: with ?consistency=owner keys owned
  by the other worker are forwarded (the answer says who served it); by default each worker
  answers them from its standby replica, once caught up with the owner's values, not stale;
* scoring: POST /v1/score on either worker gives the owner's decision; read-only unless
  ?update=true, which the stream then decides with the same decision_id;
* security and limits: 401 without or with a wrong token (open endpoints stay open), 413 on an
  oversize body, 400 on bad table names, traversal and keys, 414 on long URLs;
* schemathesis against /openapi.json finds no 5xx and no response off the document.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import topologies
from engine.kafka_io import ensure_topics
from engine.worker import topic_specs
from tests.integration.fraud_oracle import OracleResult
from tests.integration.test_fraud_stream import _oracle, check_tables
from tests.integration.worker_checks import assert_clean, run_schemathesis
from tests.integration.worker_harness import (
    FraudTopics,
    WorkerProcess,
    consume_all,
    fetch_json,
    produce,
    wait_drained,
)
from topologies.fraud.workload import Workload, generate

pytestmark = pytest.mark.integration

TOPO = topologies.get("fraud")
PARTITIONS = 8
N_EVENTS = 8_000
TOKEN = "test-token-" + os.urandom(6).hex()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOOKUP_CARDS = 1_000


@dataclass
class Pair:
    broker: str
    topics: FraudTopics
    workload: Workload
    oracle: OracleResult
    a: WorkerProcess
    b: WorkerProcess


async def _start_pair(broker: str, prefix: str, tmp: Path) -> Pair:
    w = generate(N_EVENTS, seed=3)
    await ensure_topics(broker, topic_specs(TOPO.topics(prefix), PARTITIONS))
    topics = FraudTopics(prefix)
    await produce(broker, topics.profiles,
                  [(c.encode(), orjson.dumps(p)) for c, p in w.profiles.items()])
    await produce(broker, topics.events,
                  [(e["card_id"].encode(), orjson.dumps(e)) for e in w.events])
    workers = [WorkerProcess(broker, prefix, tmp / f"w{i}", tmp / f"w{i}.log",
                             partitions=PARTITIONS, extra_args=["--api-token", TOKEN])
               for i in range(2)]
    try:
        for wp in workers:
            wp.start()
        for wp in workers:
            await wp.wait_ready()
        await wait_drained(broker, topics, {e["event_id"] for e in w.events}, None,
                           timeout_s=180)
        await _wait_split(workers)
        oracle = await _oracle(broker, topics, w.profiles)
    except BaseException:  # the fixture never yields: its teardown would not stop them
        for wp in workers:
            wp.stop()
        raise
    return Pair(broker, topics, w, oracle, *workers)


async def _wait_split(workers: list[WorkerProcess], timeout_s: float = 60.0) -> None:
    """Until both workers own partitions and each knows all 8 owners (the members topic)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        ready = await asyncio.gather(*(fetch_json(wp.url, ["/readyz"]) for wp in workers))
        parts = [set(r["/readyz"][1]["partitions"]) for r in ready]
        if all(parts) and set().union(*parts) == set(range(PARTITIONS)) and \
                not parts[0] & parts[1]:
            # every key answers on both workers (200, or 404 for a card the stream never saw;
            # 503 while a partition has no owner): nobody is mid-rebalance
            probe = [f"/v1/features/c{i:06d}" for i in range(40)]
            answers = await asyncio.gather(*(fetch_json(wp.url, probe, headers=AUTH)
                                             for wp in workers))
            codes = {s for a in answers for s, _ in a.values()}
            if codes <= {200, 404}:
                return
            last = f"probe statuses {codes}"
        else:
            last = f"partitions {parts}"
        await asyncio.sleep(0.5)
    raise AssertionError(f"workers did not split the partitions: {last}\n"
                         f"{workers[0].log_tail()}\n{workers[1].log_tail()}")


@pytest.fixture(scope="module")
def pair(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("online")
    prefix = f"on{os.urandom(3).hex()}."
    p = asyncio.run(_start_pair(kafka_bootstrap, prefix, tmp))
    yield p
    for wp in (p.a, p.b):
        wp.stop()


_META = ("served_by", "stale", "lag_ms", "standby", "request_id")  # who and how, not what


def _values(answers: dict[str, tuple[int, object]], suffix: str = "") -> dict:
    """path -> (status, body without the fields that say who served it and how fresh)."""
    return {path.removesuffix(suffix): (status, {k: v for k, v in body.items()
                                                 if k not in _META}
                                        if isinstance(body, dict) else body)
            for path, (status, body) in answers.items()}


async def _wait_replicas_caught_up(pair: Pair, timeout_s: float = 60.0) -> None:
    """Until each worker holds a standby replica of every partition the other owns, with
    nothing of its changelog left to apply."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = [(await fetch_json(w.url, ["/readyz"]))["/readyz"][1] for w in (pair.a, pair.b)]
        if all(set(map(int, r["standbys"])) == set(o["partitions"]) and
               all(s["lag_records"] == 0 for s in r["standbys"].values())
               for r, o in ((ready[0], ready[1]), (ready[1], ready[0]))):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"standby replicas not caught up: {ready}")


async def test_lookups_agree_on_both_workers_and_with_the_oracle(pair: Pair):
    cards = sorted(pair.oracle.card_partition)
    sample = random.Random(11).sample(cards, min(LOOKUP_CARDS, len(cards)))
    paths = [f"/v1/tables/velocity/{c}" for c in sample]
    owner = "?consistency=owner"
    on_a = await fetch_json(pair.a.url, [p + owner for p in paths], headers=AUTH)
    on_b = await fetch_json(pair.b.url, [p + owner for p in paths], headers=AUTH)
    assert on_a == on_b  # same status, same body (served_by included: the owner served both)
    served = {body["served_by"] for status, body in on_a.values() if status == 200}
    assert len(served) == 2, served  # both owners appear: half of each side was forwarded
    assert sum(s == 200 for s, _ in on_a.values()) > 0.9 * len(sample)
    assert all(not b["standby"] and b["lag_ms"] == 0 for s, b in on_a.values() if s == 200)
    # By default each worker answers the other's keys from its standby replica: once the
    # replicas have caught up, the owner's values, fresh, each said to be a replica's.
    await _wait_replicas_caught_up(pair)
    owners = _values(on_a, owner)
    for wp in (pair.a, pair.b):
        local = await fetch_json(wp.url, paths, headers=AUTH)
        assert _values(local) == owners
        ok = [b for s, b in local.values() if s == 200]
        assert {b["served_by"] for b in ok} == {ok[0]["served_by"]}  # nothing forwarded
        assert not any(b["stale"] for b in ok)
        assert 0.2 * len(ok) < sum(b["standby"] for b in ok) < 0.8 * len(ok)
    assert_clean(await check_tables(pair.oracle, pair.a.url, sample, AUTH),
                 await check_tables(pair.oracle, pair.b.url, sample, AUTH))
    # features and last decisions route the same way, owner or replica
    feats = [f"/v1/features/{c}" for c in sample[:100]]
    fa, fb = (await fetch_json(pair.a.url, [f + owner for f in feats], headers=AUTH),
              await fetch_json(pair.b.url, [f + owner for f in feats], headers=AUTH))
    assert fa == fb and all(s == 200 for s, _ in fa.values())
    for wp in (pair.a, pair.b):
        assert _values(await fetch_json(wp.url, feats, headers=AUTH)) == _values(fa, owner)
    many = orjson.dumps({"keys": sample[:100]})
    for wp in (pair.a, pair.b):
        status, doc = await _post(wp.url, many, path="/v1/features")
        assert status == 200
        assert [{k: v for k, v in r.items() if k not in _META} for r in doc["results"]] == \
            [{**{k: v for k, v in _values(fa, owner)[f][1].items() if k != "feature_set"},
              "status": 200} for f in feats]
    decs = [f"/v1/decisions/{c}" for c in sample[:100]]
    da = await fetch_json(pair.a.url, [d + owner for d in decs], headers=AUTH)
    assert _values(da, owner) == _values(await fetch_json(pair.b.url, decs, headers=AUTH))
    assert da == await fetch_json(pair.b.url, [d + owner for d in decs], headers=AUTH)
    bad = await fetch_json(pair.a.url, [paths[0] + "?consistency=eventual"], headers=AUTH)
    assert bad[paths[0] + "?consistency=eventual"][0] == 400


async def _post(url: str, body: bytes, headers: dict[str, str] | None = None,
                query: str = "", path: str = "/v1/score") -> tuple[int, dict]:
    hdrs = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.post(f"{url}{path}{query}", data=body, headers=hdrs) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_online_score_is_the_owners_and_read_only_unless_update(pair: Pair):
    base = pair.workload.events[-1]
    event = {**base, "event_id": "online-probe-1", "amount": 950.0}
    body = orjson.dumps(event)
    sa, da = await _post(pair.a.url, body)
    sb, db = await _post(pair.b.url, body)
    assert sa == sb == 200, (da, db)
    assert da["decision_id"] == db["decision_id"] and da["features"] == db["features"]
    assert da["served_by"] == db["served_by"] and da["duplicate"] is False
    assert da["features"]["amount"] == 950.0 and da["path"] in ("model", "fallback:rules")
    # Read-only: nothing reached the stream, and the card's state did not move.
    card = event["card_id"]
    before = await fetch_json(pair.a.url, [f"/v1/tables/velocity/{card}"], headers=AUTH)
    again = await _post(pair.a.url, body)
    assert again[1]["decision_id"] == da["decision_id"] and again[1]["duplicate"] is False
    assert await fetch_json(pair.a.url, [f"/v1/tables/velocity/{card}"], headers=AUTH) == before
    # update=true appends the event to the input topic: the stream decides it, same id.
    up = {**event, "event_id": "online-probe-2"}
    status, doc = await _post(pair.b.url, orjson.dumps(up), query="?update=true")
    assert status == 200 and doc["queued"] is True
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        decided = [orjson.loads(r.value) for r in await consume_all(pair.broker,
                                                                     pair.topics.decisions)]
        hit = [d for d in decided if d["event_id"] == "online-probe-2"]
        if hit:
            assert hit[0]["decision_id"] == doc["decision_id"]
            break
        await asyncio.sleep(1)
    else:
        raise AssertionError("the stream never decided the event posted with update=true")
    # invalid events: 422 with the schema's reason; no key: 422; not JSON: 400
    bad = await _post(pair.a.url, orjson.dumps({**event, "amount": -1}))
    assert bad[0] == 422 and bad[1]["reason"] == "schema" and bad[1]["request_id"]
    assert (await _post(pair.a.url, orjson.dumps({"amount": 1})))[0] == 422
    assert (await _post(pair.a.url, b"{not json"))[0] == 400


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict | str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.get(url, headers=headers or {}) as resp:
        raw = await resp.read()
        try:
            return resp.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return resp.status, raw.decode(errors="replace")


async def test_security_and_limits(pair: Pair):
    url = pair.a.url
    card = sorted(pair.oracle.card_partition)[0]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for path in (f"/v1/tables/velocity/{card}", f"/v1/features/{card}", "/v1/models"):
            status, body = await _get(url + path, headers)
            assert status == 401 and body["request_id"] and "error" in body, (path, body)
    status, _ = await _post(url, b"{}", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):  # open by design
        assert (await _get(url + path))[0] == 200, path
    assert (await _get(url + "/v1/models", AUTH))[0] == 200
    # oversize body
    status, body = await _post(url, b'{"card_id": "' + b"x" * (80 * 1024) + b'"}')
    assert status == 413 and body["request_id"]
    # table names, traversal, keys
    for path in ("/v1/tables/Velocity/c1", "/v1/tables/..%2F..%2Fetc%2Fpasswd/c1",
                 "/v1/tables/velocity/..%2F..%2Fetc", "/v1/tables/velocity/" + "k" * 129,
                 "/v1/tables/velocity/a%20b", "/v1/features/%00"):
        status, body = await _get(url + path, AUTH)
        assert status == 400 and body["request_id"], (path, status, body)
    assert (await _get(url + "/v1/tables/nosuchtable/c1", AUTH))[0] == 404
    status, body = await _get(url + f"/v1/tables/velocity/{card}?pad=" + "p" * 3000, AUTH)
    assert status == 414 and body["status"] == 414 and body["request_id"], body
    status, body = await _get(url + "/v1/score", AUTH)
    assert status == 405 and body["request_id"]


async def test_metrics_parse_as_prometheus_text(pair: Pair):
    status, text = await _get(pair.a.url + "/metrics")
    assert status == 200 and isinstance(text, str)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"streamwise_http_requests", "streamwise_http_seconds", "streamwise_stage_seconds",
            "streamwise_events"} <= set(families)
    routes = {s.labels["route"] for s in families["streamwise_http_requests"].samples}
    assert "/v1/tables/{table}/{key}" in routes
    promtool = shutil.which("promtool")  # also checked with promtool where one is installed
    if promtool:
        proc = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                              capture_output=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schemathesis_finds_no_server_error(pair: Pair, tmp_path: Path):
    out = run_schemathesis(pair.a.url, TOKEN, tmp_path)  # every operation it loaded, tested...
    # ...with generated cases
    tested = re.search(r"Tested: (\d+)", out)
    generated = re.search(r"(\d+) generated", out)
    assert tested and generated, out[-3000:]
    assert int(generated.group(1)) >= int(tested.group(1)), out[-3000:]


async def test_when_a_worker_leaves_the_other_serves_every_key(pair: Pair):
    """Runs last: stops worker b. Its partitions move to a, which restores them from the
    changelog and answers for every key itself (b's member record is a tombstone now)."""
    assert pair.b.stop() in (0, -15)
    deadline = time.monotonic() + 90
    while True:
        status, body = await _get(pair.a.url + "/readyz")
        if status == 200 and body["partitions"] == list(range(PARTITIONS)):
            break
        assert time.monotonic() < deadline, f"a never took every partition: {body}"
        await asyncio.sleep(0.5)
    cards = random.Random(12).sample(sorted(pair.oracle.card_partition), 300)
    answers = await fetch_json(pair.a.url, [f"/v1/tables/velocity/{c}" for c in cards],
                               headers=AUTH)
    served = {body["served_by"] for status, body in answers.values() if status == 200}
    assert len(served) == 1 and served <= {b["served_by"] for s, b in answers.values()}
    assert_clean(await check_tables(pair.oracle, pair.a.url, cards, AUTH))
