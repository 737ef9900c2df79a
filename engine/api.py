"""HTTP adapter of a worker: table lookups, last decisions, health, readiness, metrics."""

from __future__ import annotations

import logging
import re
import uuid

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .kafka_io import partition_for
from .pipeline import LATEST_DECISION_PREFIX
from .windows import EntityTiles

__all__ = ["build_app"]

log = logging.getLogger("streamwise.api")

_KEY_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_TABLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str, request_id: str) -> web.Response:
    return _json({"error": message, "status": status, "request_id": request_id}, status)


@web.middleware
async def _errors(request: web.Request, handler):
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    request["request_id"] = request_id
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason, request_id)
    except Exception:
        log.exception("request %s failed", request_id)  # the trace stays in the log
        return _error(500, "internal error", request_id)


def build_app(worker) -> web.Application:
    """The worker's HTTP API (local reads; forwarding to the owner comes with routing)."""
    topo = worker.topology

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ok, why = worker.ready
        return _json({"ready": ok, "reason": why,
                      "partitions": sorted(worker.pipelines)}, 200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(worker.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _locate(request: web.Request) -> tuple[str, bytes, int]:
        key = request.match_info["key"]
        if not _KEY_RE.match(key):
            raise web.HTTPBadRequest(reason="invalid key")
        kb = key.encode()
        p = partition_for(kb, worker.partitions)
        if not worker.owns(p):
            raise web.HTTPServiceUnavailable(reason=f"partition {p} of this key is not "
                                             "owned by this worker")
        return key, kb, p

    async def table(request: web.Request) -> web.Response:
        name = request.match_info["table"]
        if not _TABLE_RE.match(name):
            raise web.HTTPBadRequest(reason="invalid table name")
        try:
            tb = topo.table(name)
        except KeyError:
            raise web.HTTPNotFound(reason=f"unknown table {name}") from None
        key, kb, p = _locate(request)
        raw = worker.read(p, tb.state_prefix + kb)
        if raw is None:
            raise web.HTTPNotFound(reason="unknown key")
        ent = EntityTiles.from_json(orjson.loads(raw))
        windows = ent.windows(tb.tile_ms)
        pipe = worker.pipelines.get(p)
        return _json({
            "table": name, "key": key,
            "value": {"last_ts_ms": ent.last_ts_ms, "tiles": len(windows),
                      "count": sum(w["value"]["count"] for w in windows)},
            "windows": windows,
            "watermark_ms": pipe.watermark.watermark_ms if pipe else None,
            "served_by": worker.worker_id, "stale": False,
        })

    async def decision(request: web.Request) -> web.Response:
        key, kb, p = _locate(request)
        raw = worker.read(p, LATEST_DECISION_PREFIX + kb)
        if raw is None:
            raise web.HTTPNotFound(reason="no decision for this key")
        return web.Response(body=raw, content_type="application/json")

    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/tables/{table}/{key}", table)
    app.router.add_get("/v1/decisions/{key}", decision)
    return app
