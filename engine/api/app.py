"""The worker's HTTP app: the guard, the routes, the forwarding session's lifetime; and the
server classes that answer what aiohttp's HTTP parser refuses with the API's JSON error."""

from __future__ import annotations

import logging
import uuid

from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import BadHttpMethod, InvalidURLError, LineTooLong

from ..online import OnlineScorer
from . import model_views, views
from .guard import Guard
from .http import (
    BODY_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_REQUEST_LINE_BYTES,
    SERVER_HEADER,
    error_response,
)
from .routing import ROUTING, OwnerRouting
from .views import VIEWS, ServedWorker, ViewContext

__all__ = ["ApiRunner", "build_app"]

log = logging.getLogger("streamwise.api")


def build_app(worker: ServedWorker, online: OnlineScorer | None = None,
              token: str | None = None, *, body_timeout_s: float = BODY_TIMEOUT_S,
              idle_timeout_s: float = IDLE_TIMEOUT_S) -> web.Application:
    """The worker's HTTP API. `online` scores `POST /v1/score` (404 without it). `token`:
    the bearer token `/v1/*` needs (none, or empty: open). A request body must arrive within
    `body_timeout_s`, a request head within `idle_timeout_s` (seconds)."""
    guard = Guard(worker.metrics, worker.topology.name, token)
    routing = OwnerRouting(worker, worker.cfg.state.standby_max_lag_ms)

    async def on_startup(app: web.Application) -> None:
        await routing.open()

    async def on_cleanup(app: web.Application) -> None:
        await routing.close()
        if online is not None:
            await online.close()

    app = web.Application(middlewares=[guard.middleware], client_max_size=MAX_BODY_BYTES,
                          handler_args={"max_line_size": MAX_REQUEST_LINE_BYTES,
                                        "keepalive_timeout": idle_timeout_s,
                                        "lingering_time": 1.0})
    app[ROUTING] = routing
    app[VIEWS] = ViewContext(worker, online, token_set=guard.token_set,
                             body_timeout_s=body_timeout_s)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.prometheus)
    app.router.add_get("/openapi.json", views.openapi)
    app.router.add_get("/v1/tables/{table}/{key}", views.table)
    app.router.add_get("/v1/features/{key}", views.features)
    app.router.add_post("/v1/features", views.features_many)
    app.router.add_get("/v1/decisions/{key}", views.decision)
    app.router.add_post("/v1/score", views.score)
    app.router.add_get("/v1/models", model_views.models)
    app.router.add_post("/v1/rollout", model_views.rollout)
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
        response = error_response(status, text, uuid.uuid4().hex[:16], {"Server": SERVER_HEADER})
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
