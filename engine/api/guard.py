"""The middleware around every request: request id, URL limit, bearer token, in-flight limit,
errors as JSON, and the request's metrics."""

from __future__ import annotations

import hmac
import logging
import os
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from ..metrics import EngineMetrics
from .http import (
    CLIENT_CLOSED,
    MAX_IN_FLIGHT,
    MAX_URL_CHARS,
    REQUEST_ID,
    SERVER_HEADER,
    ApiError,
    error_response,
    json_response,
)

__all__ = ["Guard"]

log = logging.getLogger("streamwise.api")

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


class Guard:
    """What every request goes through (`middleware`), in this order:

    - its request id: the client's `X-Request-Id` if it is 1-64 characters of
      ``A-Z a-z 0-9 . _ : @ -`` (it is echoed in a header and in JSON), else a new one;
    - a URL over `MAX_URL_CHARS` is 414;
    - `/v1/*` needs ``Authorization: Bearer <token>`` when a token is set (compared in
      constant time, never logged): 401 otherwise;
    - past `MAX_IN_FLIGHT` requests being served, 429 at once (the probes are never limited);
    - an `ApiError` or aiohttp's own HTTP error becomes the JSON error; a client that went
      away is counted as 499 and logged at debug level; anything else is a generic 500 whose
      trace stays in the log.

    Every answer carries `X-Request-Id` and ``Server: streamwise`` and is counted in
    `http_requests` and `http_seconds` by route and status.
    """

    def __init__(self, metrics: EngineMetrics, topology: str, token: str | None) -> None:
        self._metrics = metrics
        self._topology = topology
        self._expected = f"Bearer {token}".encode() if token else None
        self._in_flight = 0

    @property
    def token_set(self) -> bool:
        """Whether `/v1/*` needs the bearer token (an empty token is none)."""
        return self._expected is not None

    @property
    def in_flight(self) -> int:
        """Requests being served now (the open paths included, once admitted)."""
        return self._in_flight

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-Id", "")
        if not _REQUEST_ID_RE.fullmatch(request_id):  # echoed in a header and in JSON
            request_id = os.urandom(8).hex()  # as random as uuid4's first 16 hex digits
        request[REQUEST_ID] = request_id
        t0 = time.perf_counter()
        route = request.match_info.route.resource
        route_name = route.canonical if route is not None else "unmatched"
        try:
            self._admit(request)
            self._in_flight += 1
            try:
                response = await handler(request)
            finally:
                self._in_flight -= 1
        except ApiError as exc:
            response = error_response(exc.status, exc.message, request_id, exc.headers)
        except web.HTTPException as exc:  # aiohttp's own: 404/405 routing, 413 body size
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = error_response(exc.status, exc.reason, request_id, allow)
        except ConnectionError:  # the client went away (mid-body, say): not our failure
            log.debug("request %s: the client closed the connection", request_id)
            response = error_response(CLIENT_CLOSED, "client closed the connection",
                                      request_id)
        except Exception:
            log.exception("request %s failed", request_id)  # the trace stays in the log
            response = json_response({"error": "internal error", "status": 500,
                                      "request_id": request_id}, 500)
        response.headers["X-Request-Id"] = request_id
        response.headers["Server"] = SERVER_HEADER
        self._metrics.http_requests.labels(self._topology, route_name,
                                           str(response.status)).inc()
        self._metrics.http_seconds.labels(self._topology, route_name).observe(
            time.perf_counter() - t0)
        return response

    def _admit(self, request: web.Request) -> None:
        """The request's URL length, token and in-flight slot, or the `ApiError` refusing it."""
        if len(str(request.rel_url)) > MAX_URL_CHARS:
            raise ApiError(414, f"URL longer than {MAX_URL_CHARS} characters")
        if request.path.startswith("/v1/") and self._expected is not None:
            # aiohttp decodes header bytes with surrogateescape: re-encode the same way,
            # so invalid UTF-8 is just a wrong token (401), not an encoding error
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, self._expected):
                raise ApiError(401, "missing or wrong bearer token",
                               {"WWW-Authenticate": 'Bearer realm="streamwise"'})
        if self._in_flight >= MAX_IN_FLIGHT and request.path not in _OPEN_PATHS:
            raise ApiError(429, "too many requests in flight", {"Retry-After": "1"})
