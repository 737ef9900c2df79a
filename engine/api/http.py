"""The API's HTTP vocabulary: its limits and header names, JSON answers and errors, the request
body read under a deadline, and query parameters parsed or refused with a 400."""

from __future__ import annotations

import asyncio
import re

import orjson
from aiohttp import web

__all__ = ["BODY_TIMEOUT_S", "CLIENT_CLOSED", "FORWARDED_HEADER", "FORWARD_TIMEOUT_S",
           "IDLE_TIMEOUT_S", "KEY_RE", "KEY_RULE", "MAX_BODY_BYTES", "MAX_FEATURE_KEYS",
           "MAX_IN_FLIGHT", "MAX_REQUEST_LINE_BYTES", "MAX_URL_CHARS", "REQUEST_ID",
           "SERVER_HEADER", "TABLE_RE", "ApiError", "bool_param", "error_response", "int_param",
           "json_response", "read_body"]

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
KEY_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")  # fullmatch: "$" would let "k\n" through
KEY_RULE = "1-128 characters of A-Z a-z 0-9 . _ : @ -"  # KEY_RE, as error messages word it
TABLE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
REQUEST_ID = web.RequestKey("request_id", str)  # set by the guard before any view runs


class ApiError(Exception):
    """An error answer: status, message, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    """`data` as an application/json answer (orjson)."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def error_response(status: int, message: str, request_id: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    """The API's one error shape: ``{"error", "status", "request_id"}``."""
    return json_response({"error": message, "status": status, "request_id": request_id},
                         status, headers)


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The request body, received within `timeout_s` (408 otherwise: a slow or stalled
    client must not hold an in-flight slot)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout_s:g} s") from None


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter `name` as an integer in [lo, hi] (both included); `default` when
    absent, 400 when not an integer or out of range."""
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


def bool_param(request: web.Request, name: str) -> bool:
    """Query parameter `name` as true/false/1/0 (any case); false when absent, 400 otherwise."""
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, f"{name} must be true or false")
    return raw in ("true", "1")
