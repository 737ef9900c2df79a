"""`--online`: table lookups and `POST /v1/score` against a worker, in a closed loop (a fixed
number of clients) and, with vegeta (a compiled load generator: `scripts/load-tools.sh`), in an
open loop (a fixed request rate, whatever the answers' latency: how a feature store is measured,
so a slow answer cannot slow the load down and hide itself)."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .measure import percentile

__all__ = ["closed_loop", "find_vegeta", "probe", "vegeta"]

_REPO = Path(__file__).resolve().parents[2]


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


def find_vegeta() -> str | None:
    """vegeta as `scripts/load-tools.sh` installs it (``.tools/bin``), else on PATH."""
    local = _REPO / ".tools" / "bin" / "vegeta"
    return str(local) if os.access(local, os.X_OK) else shutil.which("vegeta")


def vegeta(binary: str, base_url: str, requests: list[tuple[str, str, bytes | None]],
           duration_s: float, rate_per_s: int | None = None,
           clients: int | None = None) -> dict[str, Any]:
    """One vegeta attack (blocking: run it in a thread): an open loop at `rate_per_s`
    requests per second, or a closed loop of `clients` connections each sending its next
    request when the last one answered (``-rate=0``). Requests are (method, path, JSON body),
    sent round robin, over keep-alive connections.

    Latencies are vegeta's, from sending a request to its last byte; `errors` counts every
    answer that is not a 200 (timeouts after 5 s included, as status 0). `loadgen_cores` is
    the CPU vegeta used over the attack (user + system seconds per second of it), so a
    report shows whether the load generator, not the server, was the bottleneck."""
    if (rate_per_s is None) == (clients is None):
        raise ValueError("give rate_per_s (open loop) or clients (closed loop)")
    with tempfile.TemporaryDirectory(prefix="sw-vegeta-") as tmp:
        targets = Path(tmp) / "targets.json"
        with targets.open("wb") as f:
            for method, path, body in requests:
                t: dict[str, Any] = {"method": method, "url": base_url + path}
                if body is not None:
                    t["body"] = base64.b64encode(body).decode()
                    t["header"] = {"Content-Type": ["application/json"]}
                f.write(orjson.dumps(t) + b"\n")
        results = Path(tmp) / "results.bin"
        load = ([f"-rate={rate_per_s}/s", "-max-workers=1024"] if rate_per_s is not None
                else ["-rate=0", f"-workers={clients}", f"-max-workers={clients}"])
        cmd = [binary, "attack", "-format=json", f"-targets={targets}",
               f"-duration={duration_s:g}s", "-timeout=5s", "-keepalive=true",
               f"-output={results}", *load]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)  # its own CPU use, not the bench's
        elapsed = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"vegeta attack failed ({proc.returncode}): "
                               f"{proc.stderr.read().decode(errors='replace')[-500:]}")
        proc.stderr.close()
        report = subprocess.run([binary, "report", "-type=json", str(results)],
                                capture_output=True, check=True, timeout=120)
    doc = orjson.loads(report.stdout)
    lat = doc["latencies"]
    codes = {str(k): int(v) for k, v in doc["status_codes"].items()}
    return {"mode": "open" if rate_per_s is not None else "closed",
            "rate_per_s": rate_per_s, "clients": clients, "requests": doc["requests"],
            "requests_per_s": round(doc["rate"], 1),
            "p50_ms": _r(lat["50th"] / 1e6), "p99_ms": _r(lat["99th"] / 1e6),
            "max_ms": _r(lat["max"] / 1e6), "status": codes,
            "errors": sum(n for code, n in codes.items() if code != "200"),
            "loadgen_cores": round((usage.ru_utime + usage.ru_stime) / elapsed, 2)}
