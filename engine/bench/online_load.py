"""`--online`: table lookups and `POST /v1/score` against a worker at a fixed concurrency."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from .measure import percentile

__all__ = ["closed_loop", "probe"]


async def closed_loop(base_url: str, requests: list[tuple[str, str, bytes | None]],
                      concurrency: int = 32, duration_s: float = 5.0,
                      max_requests: int = 500_000) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request when the last one answered, for
    `duration_s` (and at most `max_requests`). Requests are (method, path, JSON body)."""
    lat_ms: list[float] = []
    status: dict[int, int] = {}
    next_i = 0
    deadline = time.monotonic() + duration_s

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while time.monotonic() < deadline and next_i < max_requests:
            method, path, body = requests[next_i % len(requests)]
            next_i += 1
            t0 = time.perf_counter()
            async with session.request(method, base_url + path, data=body, headers=(
                    {"Content-Type": "application/json"} if body is not None else None)) as r:
                await r.read()
                status[r.status] = status.get(r.status, 0) + 1
            lat_ms.append((time.perf_counter() - t0) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    t_start = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    elapsed = time.monotonic() - t_start
    ok = status.get(200, 0)
    return {"requests": len(lat_ms), "ok": ok, "status": {str(k): v for k, v in status.items()},
            "requests_per_s": round(len(lat_ms) / elapsed, 1) if elapsed else None,
            "p50_ms": _r(percentile(lat_ms, 50)), "p99_ms": _r(percentile(lat_ms, 99)),
            "concurrency": concurrency}


async def probe(base_url: str, method: str, path: str, body: bytes | None) -> int:
    """Status of one request (0 when nothing answers)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, \
                s.request(method, base_url + path, data=body, headers=(
                    {"Content-Type": "application/json"} if body is not None else None)) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
