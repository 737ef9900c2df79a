"""HTTP adapter of a worker: table lookups routed to the key's owner, online scoring, models,
health, readiness, metrics and the OpenAPI document. Contract: DESIGN.md §3, openapi.json.

Routing: a key's partition is owned by one worker of the consumer group (the members topic
says which, see `engine.routing`). A request for a key this worker does not own is forwarded
once to the owner (the hop is marked, so it never loops); while nobody owns the partition
(a rebalance) the answer is 503 with Retry-After. Values are never served from a partition
this worker does not own, so `stale` is false unless a future standby read says otherwise.

Security: `/v1/*` needs the bearer token when one is set (compared in constant time, never
logged); `?update=true` on `/v1/score` (it writes to the input topic) is refused when no token
is configured. Limits: URL length, key length and character set, table names, body size, and
in-flight requests (429 past them, at once). Errors are JSON with a request id, no traces.

Slow clients: a connection that has not sent a whole request head within `IDLE_TIMEOUT_S`
(after connecting, or after its previous answer: an idle keep-alive) is closed, and a body not
received within `BODY_TIMEOUT_S` is answered 408, so no client holds an in-flight slot for
longer. A client that goes away mid-request is counted with status 499 and logged at debug
level: it is not a server error. Requests aiohttp's HTTP parser refuses (a header over
8,190 bytes, a non-ASCII path, not HTTP at all) get the same JSON error, without echoing the
input, when the app runs under `ApiRunner`; no response names the server's software.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from importlib import resources
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import BadHttpMethod, InvalidURLError, LineTooLong
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .online import NotOwned, OnlineScorer, Overloaded
from .ordering import too_far_ahead
from .partitioning import router
from .pipeline import Preview, abstain_decision, features_now, last_decision, table_view
from .schemas import EventDecoder, Rejection

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["BODY_TIMEOUT_S", "IDLE_TIMEOUT_S", "MAX_BODY_BYTES", "MAX_FEATURE_KEYS",
           "MAX_IN_FLIGHT", "MAX_REQUEST_LINE_BYTES", "MAX_URL_CHARS", "ApiRunner", "build_app"]

log = logging.getLogger("streamwise.api")

MAX_URL_CHARS = 2048
# aiohttp's HTTP parser refuses a longer request line itself with a plain 400 before any
# middleware runs (its default is 8,190 bytes); raised so URLs up to here get the JSON 414.
MAX_REQUEST_LINE_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_IN_FLIGHT = 512  # requests being served at once; past it: 429
MAX_FEATURE_KEYS = 500  # keys in one POST /v1/features
FORWARD_TIMEOUT_S = 2.0
IDLE_TIMEOUT_S = 10.0  # a request head must arrive within this (also: idle keep-alives)
BODY_TIMEOUT_S = 10.0  # a request body must arrive within this: 408 otherwise
SERVER_HEADER = "streamwise"  # no software versions in responses
FORWARDED_HEADER = "X-Streamwise-Forwarded-By"
CLIENT_CLOSED = 499  # the status counted for a request whose client went away (nginx's)
_KEY_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")  # fullmatch: "$" would let "k\n" through
_TABLE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_OPENAPI = resources.files("engine").joinpath("openapi.json")
_REQUEST_ID = web.RequestKey("request_id", str)
_SESSION = web.AppKey("session", aiohttp.ClientSession)


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def _error(status: int, message: str, request_id: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message, "status": status, "request_id": request_id}, status,
                 headers)


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The request body, received within `timeout_s` (408 otherwise: a slow or stalled
    client must not hold an in-flight slot)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout_s:g} s") from None


class ApiError(Exception):
    """An error answer: status, message, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def build_app(worker: Worker, online: OnlineScorer | None = None,
              token: str | None = None, *, body_timeout_s: float = BODY_TIMEOUT_S,
              idle_timeout_s: float = IDLE_TIMEOUT_S) -> web.Application:
    """The worker's HTTP API. `online` scores `POST /v1/score` (404 without it). A request
    body must arrive within `body_timeout_s`, a request head within `idle_timeout_s`."""
    topo = worker.topology
    route = router(worker.partitions, topo.partitioner)  # as the topology's producers route
    metrics = worker.metrics
    in_flight = 0
    expected = f"Bearer {token}".encode() if token else None
    decoder = EventDecoder(topo.schema, (topo.key_field, topo.event_id_field),
                           min(topo.max_record_bytes, MAX_BODY_BYTES))

    @web.middleware
    async def guard(request: web.Request, handler):
        nonlocal in_flight
        request_id = request.headers.get("X-Request-Id", "")
        if not _REQUEST_ID_RE.fullmatch(request_id):  # echoed in a header and in JSON
            request_id = uuid.uuid4().hex[:16]
        request[_REQUEST_ID] = request_id
        t0 = time.perf_counter()
        route = request.match_info.route.resource
        route_name = route.canonical if route is not None else "unmatched"
        try:
            if len(str(request.rel_url)) > MAX_URL_CHARS:
                raise ApiError(414, f"URL longer than {MAX_URL_CHARS} characters")
            if request.path.startswith("/v1/") and expected is not None:
                # aiohttp decodes header bytes with surrogateescape: re-encode the same way,
                # so invalid UTF-8 is just a wrong token (401), not an encoding error
                given = request.headers.get("Authorization", "").encode("utf-8",
                                                                        "surrogateescape")
                if not hmac.compare_digest(given, expected):
                    raise ApiError(401, "missing or wrong bearer token",
                                   {"WWW-Authenticate": 'Bearer realm="streamwise"'})
            if in_flight >= MAX_IN_FLIGHT and request.path not in _OPEN_PATHS:
                raise ApiError(429, "too many requests in flight", {"Retry-After": "1"})
            in_flight += 1
            try:
                response = await handler(request)
            finally:
                in_flight -= 1
        except ApiError as exc:
            response = _error(exc.status, exc.message, request_id, exc.headers)
        except web.HTTPException as exc:  # aiohttp's own: 404/405 routing, 413 body size
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = _error(exc.status, exc.reason, request_id, allow)
        except ConnectionError:  # the client went away (mid-body, say): not our failure
            log.debug("request %s: the client closed the connection", request_id)
            response = _error(CLIENT_CLOSED, "client closed the connection", request_id)
        except Exception:
            log.exception("request %s failed", request_id)  # the trace stays in the log
            response = _json({"error": "internal error", "status": 500,
                              "request_id": request_id}, 500)
        response.headers["X-Request-Id"] = request_id
        response.headers["Server"] = SERVER_HEADER
        metrics.http_requests.labels(topo.name, route_name, str(response.status)).inc()
        metrics.http_seconds.labels(topo.name, route_name).observe(time.perf_counter() - t0)
        return response

    # -- routing ---------------------------------------------------------------------------

    def locate(request: web.Request) -> tuple[str, bytes, int]:
        key = request.match_info["key"]
        if not _KEY_RE.fullmatch(key):
            raise ApiError(400, "invalid key: 1-128 characters of A-Z a-z 0-9 . _ : @ -")
        kb = key.encode()
        return key, kb, route(kb)

    async def forward(request: web.Request, partition: int, body: bytes | None = None
                      ) -> web.Response:
        """Send the request to the partition's owner; one hop at most."""
        if request.headers.get(FORWARDED_HEADER):
            raise ApiError(503, f"partition {partition} is not owned here either "
                           "(rebalance in progress)", {"Retry-After": "1"})
        owner = worker.owners.owner(partition)
        if owner is None or owner.worker_id == worker.worker_id:
            raise ApiError(503, f"no worker owns partition {partition} right now "
                           "(rebalance in progress)", {"Retry-After": "1"})
        headers = {FORWARDED_HEADER: worker.worker_id, "X-Request-Id": request[_REQUEST_ID]}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        if body is not None:
            headers["Content-Type"] = "application/json"
        session: aiohttp.ClientSession = request.app[_SESSION]
        try:
            async with session.request(request.method, owner.url + str(request.rel_url),
                                       data=body, headers=headers) as resp:
                payload = await resp.read()
                return web.Response(body=payload, status=resp.status,
                                    content_type=resp.content_type,
                                    headers={"X-Streamwise-Served-By": owner.worker_id})
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, f"owner of partition {partition} did not answer "
                           f"({type(exc).__name__})", {"Retry-After": "1"}) from None

    # -- handlers --------------------------------------------------------------------------

    async def healthz(request: web.Request) -> web.Response:
        if worker.failure is not None:  # state cannot be written: the worker is leaving
            return _json({"status": "failed", "reason": worker.failure}, 503)
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ok, why = worker.ready
        return _json({"ready": ok, "reason": why, "partitions": sorted(worker.pipelines)},
                     200 if ok else 503)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(worker.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=_OPENAPI.read_bytes(), content_type="application/json")

    async def table(request: web.Request) -> web.Response:
        name = request.match_info["table"]
        if not _TABLE_RE.fullmatch(name):
            raise ApiError(400, "invalid table name: [a-z][a-z0-9_]{0,63}")
        try:
            topo.table(name)
        except KeyError:
            raise ApiError(404, f"unknown table {name}") from None
        key, kb, p = locate(request)
        if not worker.owns(p):
            return await forward(request, p)
        state = worker.pipelines.get(p)
        view = None if state is None else table_view(state, name, key)
        if view is None:
            raise ApiError(404, "unknown key")
        last_ts, windows = view
        return _json({
            "table": name, "key": key,
            "value": {"last_ts_ms": last_ts, "tiles": len(windows),
                      "count": sum(w["value"]["count"] for w in windows)},
            "windows": windows,
            "watermark_ms": state.watermark.watermark_ms,
            "partition": p, "served_by": worker.worker_id, "stale": False,
        })

    all_features = tuple(topo.features.names)

    def selection(names: object) -> tuple[str, ...]:
        """The features asked for (all when none is named), refused if unknown."""
        if names is None or names == [] or names == "":
            return all_features
        if isinstance(names, str):
            names = [n for n in names.split(",") if n]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ApiError(400, "features must be a list of feature names")
        unknown = [n for n in names if n not in all_features]
        if unknown:
            raise ApiError(400, f"unknown feature {unknown[0]!r}; features: "
                                f"{', '.join(all_features)}")
        return tuple(dict.fromkeys(names))

    def features_of(key: str, p: int, names: tuple[str, ...]) -> dict | None:
        """The stored features of a key of an owned partition (None: unknown key). An age is
        null where its value is (no input), and never negative."""
        found = features_now(worker.pipelines[p], key, worker.profiles)
        if found is None:
            return None
        as_of, values, ages = found
        return {"key": key, "as_of_ms": as_of,
                "features": {n: values[n] for n in names},
                "ages_ms": {n: None if values[n] is None or ages[n] is None
                            else max(0, ages[n]) for n in names},
                "partition": p, "served_by": worker.worker_id, "stale": False}

    async def features(request: web.Request) -> web.Response:
        key, kb, p = locate(request)
        names = selection(request.query.get("features"))
        if p not in worker.pipelines:
            return await forward(request, p)
        doc = features_of(key, p, names)
        if doc is None:
            raise ApiError(404, "unknown key")
        return _json({**doc, "feature_set": topo.features.versioned_name})

    async def features_many(request: web.Request) -> web.Response:
        """Many keys, a feature selection: each key answered by its partition's owner (one
        forwarded request per owner, at most one hop), each with its own status."""
        if request.content_type != "application/json":
            raise ApiError(415, "send {keys, features} as application/json")
        try:
            body = orjson.loads(await read_body(request, body_timeout_s))
        except orjson.JSONDecodeError:
            raise ApiError(400, "body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise ApiError(400, "body must be {\"keys\": [...], \"features\": [...]}")
        keys = body["keys"]
        if not 1 <= len(keys) <= MAX_FEATURE_KEYS:
            raise ApiError(400, f"keys: 1 to {MAX_FEATURE_KEYS} keys per request")
        bad = [k for k in keys if not isinstance(k, str) or not _KEY_RE.fullmatch(k)]
        if bad:
            raise ApiError(400, f"invalid key {str(bad[0])[:40]!r}: 1-128 characters of "
                                "A-Z a-z 0-9 . _ : @ -")
        if not isinstance(body.get("features", []), list):
            raise ApiError(400, "features must be a list of feature names")
        names = selection(body.get("features"))
        results: dict[int, dict] = {}
        elsewhere: dict[int, list[int]] = {}  # partition -> positions of its keys
        for i, key in enumerate(keys):
            p = route(key.encode())
            if p in worker.pipelines:
                doc = features_of(key, p, names)
                results[i] = {**doc, "status": 200} if doc is not None else {
                    "key": key, "status": 404, "error": "unknown key", "partition": p,
                    "served_by": worker.worker_id}
            else:
                elsewhere.setdefault(p, []).append(i)
        if elsewhere:
            await forward_keys(request, keys, names, elsewhere, results)
        return _json({"feature_set": topo.features.versioned_name, "features": list(names),
                      "results": [results[i] for i in range(len(keys))]})

    async def forward_keys(request: web.Request, keys: list[str], names: tuple[str, ...],
                           elsewhere: dict[int, list[int]], results: dict[int, dict]) -> None:
        """Ask each owner once for its keys; a key whose owner is unknown, this worker (a
        rebalance) or silent gets its own 503."""
        def unavailable(positions: list[int], p: int, why: str) -> None:
            for i in positions:
                results[i] = {"key": keys[i], "status": 503, "error": why, "partition": p}

        by_owner: dict[str, tuple[str, list[int]]] = {}
        for p, positions in elsewhere.items():
            owner = worker.owners.owner(p)
            if request.headers.get(FORWARDED_HEADER):
                unavailable(positions, p, f"partition {p} is not owned here either "
                                          "(rebalance in progress)")
            elif owner is None or owner.worker_id == worker.worker_id:
                unavailable(positions, p, f"no worker owns partition {p} right now "
                                          "(rebalance in progress)")
            else:
                by_owner.setdefault(owner.worker_id, (owner.url, []))[1].extend(positions)
        session: aiohttp.ClientSession = request.app[_SESSION]
        headers = {FORWARDED_HEADER: worker.worker_id, "X-Request-Id": request[_REQUEST_ID],
                   "Content-Type": "application/json"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]

        async def ask(url: str, positions: list[int]) -> None:
            payload = orjson.dumps({"keys": [keys[i] for i in positions],
                                    "features": list(names)})
            try:
                async with session.post(url + "/v1/features", data=payload,
                                        headers=headers) as resp:
                    answer = orjson.loads(await resp.read()) if resp.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                answer = None
            got = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(got, list) or len(got) != len(positions):
                for i in positions:
                    results[i] = {"key": keys[i], "status": 503,
                                  "error": "the key's owner did not answer",
                                  "partition": route(keys[i].encode())}
                return
            for i, doc in zip(positions, got, strict=True):
                results[i] = doc

        await asyncio.gather(*(ask(url, positions) for url, positions in by_owner.values()))

    async def decision(request: web.Request) -> web.Response:
        key, kb, p = locate(request)
        state = worker.pipelines.get(p)
        if state is None:
            return await forward(request, p)
        raw = last_decision(state, key)
        if raw is None:
            raise ApiError(404, "no decision for this key")
        return web.Response(body=raw, content_type="application/json",
                            headers={"X-Streamwise-Served-By": worker.worker_id})

    async def score(request: web.Request) -> web.Response:
        budget_ms = _int_param(request, "budget_ms", 50, 10, 10_000)
        update = _bool_param(request, "update")
        if update and expected is None:
            raise ApiError(403, "update=true writes to the input topic; it needs the worker "
                           "to run with --api-token")
        if online is None:
            raise ApiError(404, "online scoring is not enabled on this worker")
        if request.content_type != "application/json":
            raise ApiError(415, "send the event as application/json")
        body = await read_body(request, body_timeout_s)
        event = decoder.decode(body)  # the topology's contract, as the stream applies it
        if type(event) is Rejection:
            if event.reason in ("invalid_json", "not_utf8", "empty"):
                raise ApiError(400, f"body is not a JSON event ({event.detail})")
            return _json({"error": event.detail, "reason": event.reason, "status": 422,
                          "request_id": request[_REQUEST_ID]}, 422)
        ahead = too_far_ahead(getattr(event, topo.time_field), worker.clock.now_ms(),
                              topo.max_future_ms)
        if ahead is not None:  # never scored, never appended: it would move a watermark
            return _json({"error": ahead, "reason": "future_time", "status": 422,
                          "request_id": request[_REQUEST_ID]}, 422)
        kb = getattr(event, topo.key_field).encode()
        p = route(kb)
        if not worker.owns(p):
            return await forward(request, p, body)
        try:
            preview = await online.score(kb, event, budget_ms)
        except Overloaded as exc:
            raise ApiError(429, str(exc), {"Retry-After": "1"}) from None
        except NotOwned:
            return await forward(request, p, body)
        except TimeoutError:
            # An authorization cannot wait: past the budget the answer is abstain → review.
            metrics.online_fallbacks.labels(topo.name, "budget_exceeded").inc()
            preview = Preview(decision=abstain_decision(
                topo, event, topo.features.versioned_name, "budget_exceeded",
                int(time.time() * 1000)))
        doc = orjson.loads(preview.decision)
        doc["duplicate"] = preview.duplicate
        doc["served_by"] = worker.worker_id
        doc["budget_ms"] = budget_ms
        if update and not preview.duplicate:
            await worker.submit_event(kb, body)
            doc["queued"] = True  # the stream decides it too, with the same decision_id
        return _json(doc)

    async def models(request: web.Request) -> web.Response:
        reg = worker.models
        slots = [] if reg is None else [
            {"name": s.name, "active": s.active.ref if s.active else None,
             "last_error": s.last_error,
             "thresholds": (s.active.manifest.thresholds.model_dump()
                            if s.active else None),
             "breaker": worker.breaker_state(s.name),
             "rollout": rollout_of(s.name)}
            for s in sorted(reg.slots.values(), key=lambda s: s.name)]
        return _json({"topology": topo.name, "feature_set": topo.features.versioned_name,
                      "features": list(topo.features.names), "models": slots})

    def rollout_of(slot: str) -> dict | None:
        """The slot's rollout state as this worker applied it (None: no rollout recorded),
        with whether the candidate loaded here."""
        control = worker.control
        state = control.log.slots.get(slot) if control is not None else None
        if state is None:
            return None
        plan = control.decider.plan
        doc = state.summary()
        if plan.rollout is not None and plan.rollout.slot == slot:
            doc["candidate_loaded"] = plan.candidate is not None
            doc["candidate_error"] = plan.candidate_error
        return doc

    async def rollout(request: web.Request) -> web.Response:
        """A rollout command, as `streamwise rollout` writes it to the control topic (the
        staged version's contract is checked here; offline validation is the CLI's)."""
        from .rollout.command import ACTIONS, RolloutRequest
        from .worker.control import RolloutRejected, submit

        if expected is None:
            raise ApiError(403, "rollout changes need the worker to run with --api-token")
        if worker.control is None or worker.models is None:
            raise ApiError(404, "this worker's topology has no models to roll out")
        if request.content_type != "application/json":
            raise ApiError(415, "send {action, target, ...} as application/json")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ApiError(400, "body is not JSON") from None
        if not isinstance(body, dict) or body.get("action") not in ACTIONS[2:]:
            raise ApiError(400, f"action must be one of {', '.join(ACTIONS[2:])}")
        fields = {"target": str, "percent": (int, float), "sample": (int, float),
                  "steps": str, "dwell_s": (int, float), "min_events": int, "reason": str}
        unknown = sorted(set(body) - set(fields) - {"action"})
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r}")
        for name, kind in fields.items():
            value = body.get(name)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise ApiError(400, f"{name} has the wrong type")
        kw = {k: v for k, v in body.items() if k != "action" and v is not None}
        if "reason" in kw:
            kw["reason"] = kw["reason"][:500]
        req = RolloutRequest(action=body["action"], **kw)
        try:
            state = await submit(worker.control, worker.cfg.kafka, worker.topics.control,
                                 worker.models, req, f"api:{request[_REQUEST_ID]}")
        except RolloutRejected as exc:
            raise ApiError(exc.status, str(exc)) from None
        return _json(state.summary())

    async def on_startup(app: web.Application) -> None:
        app[_SESSION] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=64))

    async def on_cleanup(app: web.Application) -> None:
        await app[_SESSION].close()
        if online is not None:
            await online.close()

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY_BYTES,
                          handler_args={"max_line_size": MAX_REQUEST_LINE_BYTES,
                                        "keepalive_timeout": idle_timeout_s,
                                        "lingering_time": 1.0})
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/tables/{table}/{key}", table)
    app.router.add_get("/v1/features/{key}", features)
    app.router.add_post("/v1/features", features_many)
    app.router.add_get("/v1/decisions/{key}", decision)
    app.router.add_post("/v1/score", score)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/rollout", rollout)
    return app


class _ApiRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering what never reaches the app (requests its HTTP
    parser refuses) with the API's JSON error instead of text that echoes the input, and
    without a traceback in the log for a client's mistake."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # aiohttp's contract: too late for an answer
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:
            log.error("request failed outside the API", exc_info=exc)
            text = "internal error"
        else:
            log.debug("refused a request the HTTP parser could not read: %r", exc)
            text = _PARSER_ERRORS.get(type(exc), "malformed HTTP request")
        response = _error(status, text, uuid.uuid4().hex[:16], {"Server": SERVER_HEADER})
        response.force_close()
        return response


_PARSER_ERRORS = {
    LineTooLong: f"request line or header field too long (request line: at most "
                 f"{MAX_REQUEST_LINE_BYTES} bytes, header field: 8190)",
    InvalidURLError: "invalid URL (only ASCII; percent-encode anything else)",
    BadHttpMethod: "not an HTTP request",
}


class _ApiServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _ApiRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer requests the HTTP parser refuses with the
    API's JSON error (see `_ApiRequestHandler`)."""

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = _ApiServer  # the app's own server; only its connections differ
        return server


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}")
    return value


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, f"{name} must be true or false")
    return raw in ("true", "1")
