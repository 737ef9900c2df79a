"""The API's handlers, written against `ServedWorker`: what they read of a worker, and nothing
more (the model slots' handlers are in `model_views`). Each finds what it serves in
``request.app[VIEWS]``; per-key views are wrapped by `owned_route`, so they only ever see keys
of partitions served here."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..agents import read_row
from ..online import NotOwned, OnlineScorer, Overloaded
from ..ordering import too_far_ahead
from ..pipeline import Preview, abstain_decision, features_now, last_decision, table_view
from ..schemas import EventDecoder, Rejection
from .http import (
    KEY_RE,
    KEY_RULE,
    MAX_BODY_BYTES,
    MAX_FEATURE_KEYS,
    REQUEST_ID,
    TABLE_RE,
    ApiError,
    bool_param,
    int_param,
    json_response,
    read_body,
)
from .openapi import render as render_openapi
from .routing import (
    ROUTING,
    SOURCE,
    RoutedWorker,
    Source,
    consistency_param,
    decided_here,
    owned_route,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..clock import Clock
    from ..config import EngineConfig
    from ..metrics import EngineMetrics
    from ..scoring.registry import ModelRegistry
    from ..topology import TopicNames
    from ..worker.control import RolloutControl

__all__ = ["VIEWS", "ServedWorker", "ViewContext", "decision", "features", "features_many",
           "healthz", "openapi", "prometheus", "readyz", "score", "table"]



@runtime_checkable
class ServedWorker(RoutedWorker, Protocol):
    """What the API reads and calls of a worker (`engine.worker.Worker`), besides what owner
    routing reads (`RoutedWorker`)."""

    @property
    def failure(self) -> str | None: ...  # why it gave up (state not writable), or None
    @property
    def ready(self) -> tuple[bool, str]: ...  # ready?, and why (not)
    @property
    def registry(self) -> CollectorRegistry: ...  # what /metrics serves
    @property
    def metrics(self) -> EngineMetrics: ...
    @property
    def clock(self) -> Clock: ...  # the event-time guard's "now"
    @property
    def profiles(self) -> Mapping[str, Mapping[str, Any]]: ...  # entity key -> profile
    @property
    def models(self) -> ModelRegistry | None: ...  # None: the topology scores by rules
    @property
    def control(self) -> RolloutControl | None: ...  # None: no model rollouts
    @property
    def cfg(self) -> EngineConfig: ...  # its `kafka` section writes rollout commands
    @property
    def topics(self) -> TopicNames: ...  # its `control` topic takes them
    async def submit_event(self, key: bytes, value: bytes) -> None: ...  # to the input topic
    def breaker_state(self, model: str) -> str | None: ...  # the model's circuit breaker


class ViewContext:
    """What the views answer from, set once per app by `build_app` (``app[VIEWS]``)."""

    def __init__(self, worker: ServedWorker, online: OnlineScorer | None, *, token_set: bool,
                 body_timeout_s: float) -> None:
        self.worker = worker
        self.online = online  # scores POST /v1/score; None: 404 there
        self.token_set = token_set  # writes (score ?update=true, rollout) need a token
        self.body_timeout_s = body_timeout_s
        topo = worker.topology
        self.feature_names = tuple(topo.features.names)
        self.openapi = render_openapi(topo).encode()  # this topology's document, built once
        # the topology's contract, as the stream applies it
        self.decoder = EventDecoder(topo.schema, (topo.key_field, topo.event_id_field),
                                    min(topo.max_record_bytes, MAX_BODY_BYTES))

    def selection(self, names: object) -> tuple[str, ...]:
        """The features asked for (all when none is named), refused (400) if unknown; a
        comma-separated string or a list of names, in order, each once."""
        if names is None or names == [] or names == "":
            return self.feature_names
        if isinstance(names, str):
            names = [n for n in names.split(",") if n]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ApiError(400, "features must be a list of feature names")
        unknown = [n for n in names if n not in self.feature_names]
        if unknown:
            raise ApiError(400, f"unknown feature {unknown[0]!r}; features: "
                                f"{', '.join(self.feature_names)}")
        return tuple(dict.fromkeys(names))

    def features_of(self, key: str, partition: int, names: tuple[str, ...],
                    source: Source) -> dict | None:
        """The stored features of a key as `source` holds them (the partition decided here,
        or a standby replica of it; None: unknown key). An age (ms) is null where its value
        is (no input), and never negative."""
        worker = self.worker
        assert source.state is not None  # features are read where the partition is decided
        found = features_now(source.state, key, worker.profiles)
        if found is None:
            return None
        as_of, values, ages = found
        return {"key": key, "as_of_ms": as_of,
                "features": {n: values[n] for n in names},
                "ages_ms": {n: None if values[n] is None or ages[n] is None
                            else max(0, ages[n]) for n in names},
                "partition": partition, "served_by": worker.worker_id, **source.fields()}


VIEWS = web.AppKey("views", ViewContext)
_SELECTION = web.RequestKey("selection", tuple)  # the features a GET /v1/features asks for

# -- probes and documents ----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """200, or 503 with the reason once the worker has given up (its state cannot be written:
    it is leaving)."""
    worker = request.app[VIEWS].worker
    if worker.failure is not None:
        return json_response({"status": "failed", "reason": worker.failure}, 503)
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when ready, else 503; with the reason, the partitions decided here and the
    standby replicas kept here (their lag in changelog records and ms)."""
    worker = request.app[VIEWS].worker
    ok, why = worker.ready
    standbys = {}
    for p in range(worker.partitions):
        replica = worker.standby(p)
        if replica is not None:
            standbys[str(p)] = {"lag_records": replica.lag_records, "lag_ms": replica.lag_ms}
    return json_response({"ready": ok, "reason": why, "partitions": sorted(worker.pipelines),
                          "standbys": standbys}, 200 if ok else 503)


async def prometheus(request: web.Request) -> web.Response:
    """The worker's registry in Prometheus' text format."""
    return web.Response(body=generate_latest(request.app[VIEWS].worker.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of the topology this worker runs (`engine.api.openapi`)."""
    return web.Response(body=request.app[VIEWS].openapi, content_type="application/json")


# -- per-key reads -----------------------------------------------------------------------------


def _known_table(view: Handler) -> Handler:
    """Refuses a table name that is not `TABLE_RE` (400) or not the topology's (404), before
    the key is looked at (the path's order)."""
    @functools.wraps(view)
    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["table"]
        if not TABLE_RE.fullmatch(name):
            raise ApiError(400, "invalid table name: [a-z][a-z0-9_]{0,63}")
        topology = request.app[VIEWS].worker.topology
        try:
            topology.table(name)
        except KeyError:
            if topology.agent_table(name) is None:
                raise ApiError(404, f"unknown table {name}") from None
        return await view(request)
    return handler


@_known_table
@owned_route()
async def table(request: web.Request, key: str, partition: int) -> web.Response:
    """An entity of a windowed table as stored: its tiles and a summary; a row of an agent's
    table: its JSON object (404: unknown key)."""
    worker = request.app[VIEWS].worker
    name = request.match_info["table"]
    source = request[SOURCE]
    state = source.state
    if worker.topology.agent_table(name) is not None:  # an agent's: one JSON object per key
        row = None if state is None else read_row(state.store, name, key)
        if row is None:
            if not source.at_end:  # a lagging replica may lack a new key: the owner says
                return await request.app[ROUTING].forward(request, partition)
            raise ApiError(404, "unknown key")
        return json_response({"table": name, "key": key, "value": row, "windows": [],
                              "watermark_ms": state.watermark.watermark_ms,
                              "partition": partition, "served_by": worker.worker_id,
                              **source.fields()})
    view = None if state is None else table_view(state, name, key)
    if view is None:
        if not source.at_end:  # a lagging replica may lack a new key: the owner says
            return await request.app[ROUTING].forward(request, partition)
        raise ApiError(404, "unknown key")
    last_ts, windows = view
    return json_response({
        "table": name, "key": key,
        "value": {"last_ts_ms": last_ts, "tiles": len(windows),
                  "count": sum(w["value"]["count"] for w in windows)},
        "windows": windows,
        "watermark_ms": state.watermark.watermark_ms,
        "partition": partition, "served_by": worker.worker_id, **source.fields(),
    })


def _query_selection(request: web.Request) -> None:
    """The `features` query parameter (comma-separated), refused before the request is routed."""
    request[_SELECTION] = request.app[VIEWS].selection(request.query.get("features"))


@owned_route(decided_here, check=_query_selection)
async def features(request: web.Request, key: str, partition: int) -> web.Response:
    """A key's stored features, all or those the `features` parameter names (404: unknown)."""
    ctx = request.app[VIEWS]
    doc = ctx.features_of(key, partition, request[_SELECTION], request[SOURCE])
    if doc is None:
        if not request[SOURCE].at_end:  # a lagging replica may lack a new key
            return await request.app[ROUTING].forward(request, partition)
        raise ApiError(404, "unknown key")
    return json_response({**doc, "feature_set": ctx.worker.topology.features.versioned_name})


@owned_route(decided_here)
async def decision(request: web.Request, key: str, partition: int) -> web.Response:
    """The entity's last decision as stored (404: never decided)."""
    worker = request.app[VIEWS].worker
    source = request[SOURCE]
    assert source.state is not None  # decisions are read where the partition is decided
    raw = last_decision(source.state, key)
    if raw is None:
        if not source.at_end:  # a lagging replica may lack a new key
            return await request.app[ROUTING].forward(request, partition)
        raise ApiError(404, "no decision for this key")
    return web.Response(body=raw, content_type="application/json",
                        headers={"X-Streamwise-Served-By": worker.worker_id,
                                 **source.headers()})


async def features_many(request: web.Request) -> web.Response:
    """Many keys, a feature selection: each key answered by its partition's owner (one
    forwarded request per owner, at most one hop), each with its own status, in the order
    the keys were given."""
    ctx = request.app[VIEWS]
    worker, routing = ctx.worker, request.app[ROUTING]
    if request.content_type != "application/json":
        raise ApiError(415, "send {keys, features} as application/json")
    try:
        body = orjson.loads(await read_body(request, ctx.body_timeout_s))
    except orjson.JSONDecodeError:
        raise ApiError(400, "body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise ApiError(400, "body must be {\"keys\": [...], \"features\": [...]}")
    keys = body["keys"]
    if not 1 <= len(keys) <= MAX_FEATURE_KEYS:
        raise ApiError(400, f"keys: 1 to {MAX_FEATURE_KEYS} keys per request")
    bad = [k for k in keys if not isinstance(k, str) or not KEY_RE.fullmatch(k)]
    if bad:
        raise ApiError(400, f"invalid key {str(bad[0])[:40]!r}: {KEY_RULE}")
    if not isinstance(body.get("features", []), list):
        raise ApiError(400, "features must be a list of feature names")
    names = ctx.selection(body.get("features"))
    consistency = consistency_param(request)
    results: dict[int, dict] = {}
    elsewhere: dict[int, list[int]] = {}  # partition -> positions of its keys
    sources: dict[int, Source | None] = {}  # partition -> where its keys are read here
    for i, key in enumerate(keys):
        p = routing.partition_of(key.encode())
        if p not in sources:
            if decided_here(worker, p):
                sources[p] = Source(worker.pipelines[p])
            else:
                replica = worker.standby(p) if consistency == "any" else None
                sources[p] = None if replica is None else routing.standby_source(p, replica)
        source = sources[p]
        doc = None if source is None else ctx.features_of(key, p, names, source)
        if doc is not None:
            results[i] = {**doc, "status": 200}
        elif source is not None and source.at_end:
            results[i] = {"key": key, "status": 404, "error": "unknown key", "partition": p,
                          "served_by": worker.worker_id}
        else:  # owned elsewhere; or unknown to a lagging replica here: the owner says
            elsewhere.setdefault(p, []).append(i)
    if elsewhere:
        await routing.forward_keys(request, keys, names, elsewhere, results)
    return json_response({"feature_set": worker.topology.features.versioned_name,
                          "features": list(names),
                          "results": [results[i] for i in range(len(keys))]})


# -- online scoring ----------------------------------------------------------------------------


async def score(request: web.Request) -> web.Response:
    """One event scored now, by the key's owner, within `budget_ms` (10-10,000, default 50;
    past it the decision is abstain → review); with ``update=true`` (needs a token) the event
    is also appended to the input topic, so the stream decides it too."""
    ctx = request.app[VIEWS]
    worker, topo, routing = ctx.worker, ctx.worker.topology, request.app[ROUTING]
    budget_ms = int_param(request, "budget_ms", 50, 10, 10_000)
    update = bool_param(request, "update")
    if update and not ctx.token_set:
        raise ApiError(403, "update=true writes to the input topic; it needs the worker "
                       "to run with --api-token")
    online = ctx.online
    if online is None:
        raise ApiError(404, "online scoring is not enabled on this worker")
    if request.content_type != "application/json":
        raise ApiError(415, "send the event as application/json")
    body = await read_body(request, ctx.body_timeout_s)
    event = ctx.decoder.decode(body)
    if type(event) is Rejection:
        if event.reason in ("invalid_json", "not_utf8", "empty"):
            raise ApiError(400, f"body is not a JSON event ({event.detail})")
        return json_response({"error": event.detail, "reason": event.reason, "status": 422,
                              "request_id": request[REQUEST_ID]}, 422)
    ahead = too_far_ahead(getattr(event, topo.time_field), worker.clock.now_ms(),
                          topo.max_future_ms)
    if ahead is not None:  # never scored, never appended: it would move a watermark
        return json_response({"error": ahead, "reason": "future_time", "status": 422,
                              "request_id": request[REQUEST_ID]}, 422)
    kb = getattr(event, topo.key_field).encode()
    p = routing.partition_of(kb)
    if not worker.owns(p):
        return await routing.forward(request, p, body)
    try:
        preview = await online.score(kb, event, budget_ms)
    except Overloaded as exc:
        raise ApiError(429, str(exc), {"Retry-After": "1"}) from None
    except NotOwned:
        return await routing.forward(request, p, body)
    except TimeoutError:
        # An authorization cannot wait: past the budget the answer is abstain → review.
        worker.metrics.online_fallbacks.labels(topo.name, "budget_exceeded").inc()
        preview = Preview(decision=abstain_decision(
            topo, event, topo.features.versioned_name, "budget_exceeded",
            int(time.time() * 1000)))
    extra: dict[str, object] = {"duplicate": preview.duplicate,
                                "served_by": worker.worker_id, "budget_ms": budget_ms}
    if update and not preview.duplicate:
        await worker.submit_event(kb, body)
        extra["queued"] = True  # the stream decides it too, with the same decision_id
    return web.Response(body=_with_fields(preview.decision, extra),
                        content_type="application/json")


def _with_fields(doc: bytes, extra: dict[str, object]) -> bytes:
    """A JSON object's bytes with `extra`'s fields added, encoded once: the decision (as
    stored or as just encoded) is never decoded and encoded again. Decisions have none of
    these fields."""
    doc = doc.rstrip()
    tail = orjson.dumps(extra)
    if len(doc) < 3 or doc[-1:] != b"}":  # not a non-empty object: the slow, safe way
        return orjson.dumps({**orjson.loads(doc), **extra})
    return doc[:-1] + b"," + tail[1:]
