"""The HTTP adapter without Kafka: error shape, token rules, and the OpenAPI document."""

from __future__ import annotations

import json
import runpy
import threading
import time
from pathlib import Path

import orjson
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

import topologies
from engine.api import build_app
from engine.metrics import EngineMetrics
from engine.online import OnlineScorer
from engine.policy import RulesOnly
from engine.routing import OwnerMap
from engine.schemas import decision_id

ROOT = Path(__file__).resolve().parents[2]
TOPO = topologies.get("fraud")


class BrokenWorker:
    """Owns every partition, and every state read fails (a disk error, say)."""

    topology = TOPO
    partitions = 8
    worker_id = "http://127.0.0.1:1/pid1"
    pipelines: dict = {}
    profiles: dict = {}
    models = None
    owners = OwnerMap()
    ready = (True, "ready")
    state_lock = threading.Lock()

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = EngineMetrics.create(self.registry, TOPO.name)

    def owns(self, partition: int) -> bool:
        return True

    def read(self, partition: int, key: bytes) -> bytes | None:
        raise OSError("IO error: /var/lib/streamwise/p0003/000123.sst: checksum mismatch")


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


class SlowPipe:
    def preview(self, values, profiles, decider):
        time.sleep(1.0)  # a stalled model call
        return []


async def test_past_the_budget_the_answer_is_abstain_not_an_error() -> None:
    worker = BrokenWorker()
    worker.pipelines = {p: SlowPipe() for p in range(worker.partitions)}
    online = OnlineScorer(worker, RulesOnly(TOPO.rules, TOPO.features.versioned_name))
    client = TestClient(TestServer(build_app(worker, online, None)))
    await client.start_server()
    try:
        event = {"event_id": "e1", "card_id": "c1", "merchant_id": "m1", "amount": 10.0,
                 "currency": "USD", "country": "US", "ts_ms": 1_767_225_600_000}
        t0 = time.perf_counter()
        resp = await client.post("/v1/score?budget_ms=20", data=orjson.dumps(event),
                                 headers={"Content-Type": "application/json"})
        elapsed_ms = (time.perf_counter() - t0) * 1000
        body = await resp.json()
        assert resp.status == 200, body
        assert (body["path"], body["decision"], body["reasons"]) == \
            ("abstain", "review", ["budget_exceeded"])
        assert body["decision_id"] == decision_id("e1", "none", TOPO.features.versioned_name)
        assert elapsed_ms < 800  # did not wait for the stalled call (1 s)
        bad = await client.post("/v1/score", data=b'{"card_id": "c1"}',
                                headers={"Content-Type": "application/json"})
        assert bad.status == 422 and (await bad.json())["reason"] == "missing_key"
    finally:
        await client.close()
