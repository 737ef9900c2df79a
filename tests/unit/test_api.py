"""The HTTP adapter without Kafka: error shape, token rules, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import runpy
import threading
from pathlib import Path

import aiohttp
import orjson
from aiohttp.test_utils import TestClient, TestServer

import topologies
from engine.api import MAX_REQUEST_LINE_BYTES, MAX_URL_CHARS, build_app
from engine.api.views import ServedWorker
from engine.config import EngineConfig
from engine.online import OnlineScorer
from engine.pipeline import PartitionState
from engine.policy import RulesOnly
from engine.schemas import decision_id
from engine.state import MemoryStore
from engine.worker import Worker
from tests.unit.fake_worker import FakeServedWorker

ROOT = Path(__file__).resolve().parents[2]
TOPO = topologies.get("fraud")


class BrokenStore:
    """Every read fails (a disk error, say)."""

    def get(self, key: bytes) -> bytes | None:
        raise OSError("IO error: /var/lib/streamwise/p0003/000123.sst: checksum mismatch")

    def items_between(self, lo: bytes, hi: bytes):
        raise OSError("IO error: /var/lib/streamwise/p0003/000123.sst: checksum mismatch")


class BrokenWorker(FakeServedWorker):
    """Owns every partition, and every state read fails."""

    def __init__(self, store_broken: bool = True) -> None:
        super().__init__()
        self.pipelines = {}
        for p in range(self.partitions):
            state = self.pipelines[p] = PartitionState(TOPO, p, MemoryStore())
            if store_broken:
                state.store = BrokenStore()


def test_the_fake_and_the_real_worker_have_what_the_api_reads() -> None:
    assert isinstance(BrokenWorker(), ServedWorker)
    decider = RulesOnly(TOPO.rules, TOPO.features.versioned_name)
    assert isinstance(Worker(EngineConfig(), TOPO, decider), ServedWorker)


async def _client(token: str | None = None) -> TestClient:
    client = TestClient(TestServer(build_app(BrokenWorker(), None, token)))
    await client.start_server()
    return client


async def test_internal_errors_are_generic_json_with_a_request_id() -> None:
    client = await _client()
    try:
        resp = await client.get("/v1/tables/velocity/c1", headers={"X-Request-Id": "req-42"})
        body = await resp.json()
        assert resp.status == 500
        assert body == {"error": "internal error", "status": 500, "request_id": "req-42"}
        assert resp.headers["X-Request-Id"] == "req-42"
        text = await (await client.get("/v1/decisions/c1")).text()
        assert "checksum" not in text and "Traceback" not in text and "request_id" in text
    finally:
        await client.close()


async def test_token_guards_v1_only_and_update_needs_a_token() -> None:
    client = await _client(token="s3cret")
    try:
        assert (await client.get("/v1/models")).status == 401
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
                ).status == 200
        assert (await client.get("/healthz")).status == 200
        unauth = await client.get("/v1/models")
        assert unauth.headers["WWW-Authenticate"].startswith("Bearer")
    finally:
        await client.close()
    client = await _client(token=None)
    try:
        resp = await client.post("/v1/score?update=true", data=b"{}",
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 403  # mutating, and the worker has no token
    finally:
        await client.close()


def test_the_openapi_document_is_current_and_lists_every_route() -> None:
    committed = (ROOT / "engine" / "openapi.json").read_text()
    generated = runpy.run_path(str(ROOT / "scripts" / "gen_openapi.py"))["render"]()
    assert committed == generated, "run scripts/gen_openapi.py and commit engine/openapi.json"
    doc = json.loads(committed)
    app = build_app(BrokenWorker())
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD"}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    assert orjson.loads(committed)["components"]["schemas"]["FraudEvent"]["required"] == \
        TOPO.schema.model_json_schema()["required"]


async def test_a_fraud_worker_serves_the_committed_document() -> None:
    client = await _client()
    try:
        resp = await client.get("/openapi.json")
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.text() == (ROOT / "engine" / "openapi.json").read_text()
    finally:
        await client.close()


EVENT = {"event_id": "e1", "card_id": "c1", "merchant_id": "m1", "amount": 10.0,
         "currency": "USD", "country": "US", "ts_ms": 1_767_225_600_000}
JSON = {"Content-Type": "application/json"}


class StalledDecider(RulesOnly):
    """The rules, behind a call that hangs (a stalled model call) until `release`."""

    def __init__(self) -> None:
        super().__init__(TOPO.rules, TOPO.features.versioned_name)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.finished = threading.Event()

    def decide(self, rows):
        self.entered.set()
        self.release.wait(timeout=60)
        self.finished.set()
        return super().decide(rows)


def _stalled_worker() -> tuple[BrokenWorker, StalledDecider]:
    return BrokenWorker(store_broken=False), StalledDecider()


async def test_past_the_budget_the_answer_is_abstain_without_waiting_for_the_model() -> None:
    worker, pipe = _stalled_worker()
    online = OnlineScorer(worker, pipe)
    client = TestClient(TestServer(build_app(worker, online, None)))
    await client.start_server()
    try:
        resp = await client.post("/v1/score?budget_ms=20", data=orjson.dumps(EVENT),
                                 headers=JSON)
        body = await resp.json()
        assert resp.status == 200, body
        assert not pipe.finished.is_set()  # answered while the model call still hangs
        assert (body["path"], body["decision"], body["reasons"]) == \
            ("abstain", "review", ["budget_exceeded"])
        assert body["decision_id"] == decision_id("e1", "none", TOPO.features.versioned_name)
        assert worker.registry.get_sample_value(
            "streamwise_online_fallbacks_total",
            {"topology": "fraud", "reason": "budget_exceeded"}) == 1.0
        assert pipe.entered.wait(timeout=30)  # the stalled call had started
        bad = await client.post("/v1/score", data=b'{"card_id": "c1"}', headers=JSON)
        assert bad.status == 422 and (await bad.json())["reason"] == "missing_key"
    finally:
        pipe.release.set()
        await client.close()


# --------------------------------------------------------------------------- limits


async def _hold(client: TestClient, online: OnlineScorer, n: int) -> list[asyncio.Task]:
    """Start `n` score requests that stay in flight (the pipe is stalled, the budget long)."""
    tasks = [asyncio.ensure_future(client.post(
        "/v1/score?budget_ms=10000", data=orjson.dumps({**EVENT, "event_id": f"e{i}"}),
        headers=JSON)) for i in range(n)]
    for _ in range(3_000):  # until every request is admitted; at most ~30 s
        if online.in_flight == n:
            return tasks
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {online.in_flight} of {n} requests were admitted")


async def _finish(tasks: list[asyncio.Task]) -> list[int]:
    statuses = []
    for resp in await asyncio.gather(*tasks):
        statuses.append(resp.status)
        resp.release()
    return statuses


async def test_the_257th_online_score_in_flight_gets_429_at_once() -> None:
    worker, pipe = _stalled_worker()
    online = OnlineScorer(worker, pipe)
    assert online.max_pending == 256  # the shipped default, as the README documents
    client = TestClient(TestServer(build_app(worker, online, None)),
                        connector=aiohttp.TCPConnector(limit=0))
    await client.start_server()
    tasks: list[asyncio.Task] = []
    try:
        tasks = await _hold(client, online, 256)
        resp = await client.post("/v1/score", data=orjson.dumps({**EVENT, "event_id": "x"}),
                                 headers=JSON)
        body = await resp.json()
        assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        assert body["status"] == 429 and body["request_id"]
        assert body["error"] == "256 online requests in flight"
        assert (await client.get("/v1/models")).status == 200  # only scoring is limited here
        pipe.release.set()
        assert await _finish(tasks) == [200] * 256
    finally:
        pipe.release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


async def test_the_513th_request_in_flight_gets_429_at_once_and_probes_stay_open() -> None:
    worker, pipe = _stalled_worker()
    online = OnlineScorer(worker, pipe,
                          max_pending=10_000)
    client = TestClient(TestServer(build_app(worker, online, None)),
                        connector=aiohttp.TCPConnector(limit=0))
    await client.start_server()
    tasks: list[asyncio.Task] = []
    try:
        tasks = await _hold(client, online, 512)
        for path in ("/v1/models", "/v1/decisions/c1"):
            resp = await client.get(path, headers={"X-Request-Id": "over"})
            assert resp.status == 429 and resp.headers["Retry-After"] == "1", path
            assert await resp.json() == {"error": "too many requests in flight",
                                         "status": 429, "request_id": "over"}
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await client.get(path)).status == 200, path  # probes are never limited
        pipe.release.set()
        assert await _finish(tasks) == [200] * 512
        assert (await client.get("/v1/models")).status == 200  # admitted again
    finally:
        pipe.release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


async def test_url_length_limit_is_414_as_documented() -> None:
    client = await _client()
    try:
        at_limit = "/healthz?pad=" + "p" * (MAX_URL_CHARS - len("/healthz?pad="))
        assert len(at_limit) == 2048
        assert (await client.get(at_limit)).status == 200
        for url in (at_limit + "p", "/v1/tables/velocity/" + "k" * 3000,
                    "/healthz?pad=" + "p" * (MAX_REQUEST_LINE_BYTES - 100)):
            resp = await client.get(url, headers={"X-Request-Id": "long"})
            assert resp.status == 414, len(url)
            assert await resp.json() == {"error": "URL longer than 2048 characters",
                                         "status": 414, "request_id": "long"}
        # Past the HTTP parser's request-line limit aiohttp itself answers 400 (plain text),
        # before the API sees the request (README, "Security and limits").
        resp = await client.get("/healthz?pad=" + "p" * (MAX_REQUEST_LINE_BYTES + 1))
        assert resp.status == 400
        assert MAX_URL_CHARS == 2048 and MAX_REQUEST_LINE_BYTES == 65_536
    finally:
        await client.close()


async def test_an_online_event_from_the_far_future_is_refused_and_never_scored() -> None:
    worker = BrokenWorker(store_broken=False)
    online = OnlineScorer(worker, RulesOnly(TOPO.rules, TOPO.features.versioned_name))
    client = TestClient(TestServer(build_app(worker, online, None)))
    await client.start_server()
    try:
        now = worker.clock.now_ms()
        future = {**EVENT, "ts_ms": now + TOPO.max_future_ms + 1}
        resp = await client.post("/v1/score", data=orjson.dumps(future), headers=JSON)
        body = await resp.json()
        assert resp.status == 422 and body["reason"] == "future_time", body
        at_limit = {**EVENT, "ts_ms": now + TOPO.max_future_ms}
        assert (await client.post("/v1/score", data=orjson.dumps(at_limit),
                                  headers=JSON)).status == 200
    finally:
        await client.close()


def test_a_score_answer_is_the_decision_with_its_fields_spliced_in() -> None:
    from engine.api.views import _with_fields

    extra = {"duplicate": False, "served_by": "w1", "budget_ms": 50}
    stored = orjson.dumps({"decision_id": "d1", "features": {"a": 1.5}, "reasons": []})
    assert orjson.loads(_with_fields(stored, extra)) == {**orjson.loads(stored), **extra}
    assert orjson.loads(_with_fields(stored + b"\n", extra)) == {**orjson.loads(stored),
                                                                 **extra}
    assert orjson.loads(_with_fields(b"{}", extra)) == extra  # no fields: no stray comma
