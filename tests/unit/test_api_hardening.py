"""HTTP hardening (#13 items 3-5): slow and vanishing clients, what aiohttp's parser refuses,
header encodings, key patterns, the Server header, and /healthz of a worker that gave up.

A real aiohttp server (`ApiRunner`, as `streamwise worker` runs it) on 127.0.0.1, spoken to
over raw sockets where a well-behaved client library would not send the bytes under test.
Every wait is bounded; short timeouts are passed to `build_app`, so nothing waits long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

import topologies
from engine.api import ApiRunner, build_app
from engine.api.views import ServedWorker
from engine.pipeline import PartitionState
from engine.state import MemoryStore
from tests.unit.fake_worker import FakeServedWorker

TOPO = topologies.get("fraud")
TIMEOUT_S = 0.5  # the body and idle timeouts the test server runs with
WAIT_S = 30.0  # bound of every wait for an answer (the fix answers after ~TIMEOUT_S)


class Worker(FakeServedWorker):
    """Owns every partition (empty memory stores); `failure` as the real worker sets it."""

    def __init__(self) -> None:
        super().__init__()
        self.pipelines = {p: PartitionState(TOPO, p, MemoryStore())
                          for p in range(self.partitions)}
        self.failure: str | None = None


def test_the_fake_has_what_the_api_reads() -> None:
    assert isinstance(Worker(), ServedWorker)


class Server:
    def __init__(self, worker: Worker, runner: web.AppRunner, port: int) -> None:
        self.worker, self.runner, self.port = worker, runner, port

    async def raw(self, data: bytes, *, then_close: bool = False) -> bytes:
        """Send `data` on a new connection; return everything the server sends until it
        closes the connection (b"" when it closes without an answer). `then_close`: hang up
        right after sending instead."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            if then_close:
                return b""
            return await asyncio.wait_for(reader.read(), WAIT_S)
        finally:
            writer.close()

    def http_count(self, route: str, status: int) -> float:
        return self.worker.registry.get_sample_value(
            "streamwise_http_requests_total",
            {"topology": "fraud", "route": route, "status": str(status)}) or 0.0


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    worker = Worker()
    runner = ApiRunner(build_app(worker, None, "s3cret", body_timeout_s=TIMEOUT_S,
                                 idle_timeout_s=TIMEOUT_S), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Server(worker, runner, runner.addresses[0][1])
    finally:
        await runner.cleanup()


def _split(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _json_error(raw: bytes, status: int) -> dict:
    got, headers, body = _split(raw)
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json"), headers
    doc = orjson.loads(body)
    assert set(doc) == {"error", "status", "request_id"} and doc["status"] == status, doc
    return doc


AUTH = b"Authorization: Bearer s3cret\r\n"


def _features_post(length: int, sent: bytes) -> bytes:
    return (b"POST /v1/features HTTP/1.1\r\nHost: t\r\n" + AUTH +
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length + sent)


# -- item 4: slow clients ---------------------------------------------------------------------


async def test_a_body_that_never_arrives_is_408_and_its_slot_is_freed(server: Server) -> None:
    answer = await server.raw(_features_post(100, b'{"keys": ['))
    doc = _json_error(answer, 408)
    assert doc["error"] == f"request body not received within {TIMEOUT_S:g} s"
    chunked = (b"POST /v1/features HTTP/1.1\r\nHost: t\r\n" + AUTH +
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\n{\"k\r\n")  # an unfinished chunked body, as in the issue
    _json_error(await server.raw(chunked), 408)
    assert server.http_count("/v1/features", 408) == 2


async def test_512_stalled_bodies_hold_the_slots_only_until_their_timeout(
        server: Server) -> None:
    stalled = [asyncio.create_task(server.raw(_features_post(100, b"{")))
               for _ in range(512)]
    answers = await asyncio.gather(*stalled)
    assert [_split(a)[0] for a in answers] == [408] * 512
    ok = await server.raw(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n" + AUTH +
                          b"Connection: close\r\n\r\n")
    assert _split(ok)[0] == 200  # every slot came back


async def test_an_unfinished_request_head_and_an_idle_keep_alive_are_closed(
        server: Server) -> None:
    # headers that never end: closed without an answer
    assert await server.raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: 1") == b""
    # a keep-alive connection that answered once and then stays idle: closed after it
    answer = await server.raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = _split(answer)
    assert status == 200 and orjson.loads(body) == {"status": "ok"}
    assert headers.get("connection", "keep-alive").lower() != "close"  # kept open, then shut


async def test_a_client_that_hangs_up_mid_body_is_499_not_500_and_logs_no_error(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await server.raw(_features_post(100, b'{"keys": '), then_close=True)
    for _ in range(3_000):  # bounded: until the server has counted it (at most ~30 s)
        if server.http_count("/v1/features", 499):
            break
        await asyncio.sleep(0.01)
    assert server.http_count("/v1/features", 499) == 1
    assert server.http_count("/v1/features", 500) == 0
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]


# -- item 5: smaller defects ------------------------------------------------------------------


async def test_an_authorization_header_of_invalid_utf8_is_a_401(server: Server) -> None:
    answer = await server.raw(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n"
                              b"Authorization: Bearer s3cr\xff\xfe\r\n"
                              b"X-Request-Id: id-\xff\r\nConnection: close\r\n\r\n")
    doc = _json_error(answer, 401)
    assert doc["error"] == "missing or wrong bearer token"
    assert doc["request_id"].isalnum()  # an invalid request id is replaced, not echoed


@pytest.mark.parametrize("path", ["/v1/features/c1%0A", "/v1/tables/velocity/c1%0A",
                                  "/v1/decisions/c1%0A", "/v1/tables/velocity%0A/c1"])
async def test_a_trailing_newline_is_not_part_of_a_valid_key(server: Server,
                                                             path: str) -> None:
    answer = await server.raw(b"GET %s HTTP/1.1\r\nHost: t\r\n" % path.encode() + AUTH +
                              b"Connection: close\r\n\r\n")
    assert _json_error(answer, 400)["error"].startswith("invalid ")


async def test_a_trailing_newline_in_a_posted_key_is_refused(server: Server) -> None:
    body = orjson.dumps({"keys": ["c1\n"]})
    answer = await server.raw(_features_post(len(body), body))
    assert _json_error(answer, 400)["error"].startswith("invalid key")


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9_000 + b"\r\n\r\n",
    "GET /v1/features/\u00e9t\u00e9 HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
], ids=["header-over-8KB", "non-ascii-path", "tls-on-http"])
async def test_what_the_http_parser_refuses_is_a_json_400_without_echo(
        server: Server, request_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await server.raw(request_bytes)
    doc = _json_error(answer, 400)
    assert b"aaaa" not in answer and b"\xc3\xa9" not in answer and b"not http" not in answer
    assert _split(answer)[1]["server"] == "streamwise"
    assert doc["error"]
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]


async def test_no_answer_names_the_server_software(server: Server) -> None:
    for request in (b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    b"GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"):
        status, headers, _ = _split(await server.raw(request))
        assert headers["server"] == "streamwise", (status, headers)


# -- item 3: a worker that gave up says so ----------------------------------------------------


async def test_healthz_is_503_with_the_reason_once_the_worker_has_failed(
        server: Server) -> None:
    server.worker.failure = "cannot write state at /data/fraud/p0003: the directory is gone"
    status, _, body = _split(await server.raw(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
    assert status == 503
    assert orjson.loads(body) == {"status": "failed", "reason": server.worker.failure}
