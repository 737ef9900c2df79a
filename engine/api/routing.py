"""Owner routing: a key's partition, and the request forwarded to the worker that owns it.

A key's partition is owned by one worker of the consumer group (the members topic says which,
see `engine.routing`); it is found as the topology's producers find it
(`engine.partitioning.router`). A request for a key this worker does not serve is forwarded
once to the owner (the hop is marked with `FORWARDED_HEADER`, so it never loops); while nobody
owns the partition (a rebalance) the answer is 503 with Retry-After. A per-key view never
repeats this: `owned_route` wraps it, the way Faust's `app.table_route` does.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..partitioning import router
from .http import FORWARD_TIMEOUT_S, FORWARDED_HEADER, KEY_RE, KEY_RULE, REQUEST_ID, ApiError

if TYPE_CHECKING:
    from ..pipeline import PartitionState
    from ..routing import Member, OwnerMap
    from ..topology import Topology

__all__ = ["ROUTING", "KeyView", "OwnerRouting", "RoutedWorker", "decided_here", "owned_here",
           "owned_route"]

_RETRY = {"Retry-After": "1"}


class RoutedWorker(Protocol):
    """What owner routing reads of a worker."""

    @property
    def topology(self) -> Topology: ...  # its partitioner places keys
    @property
    def partitions(self) -> int: ...  # of the input topic
    @property
    def owners(self) -> OwnerMap: ...  # partition -> member, from the members topic
    @property
    def worker_id(self) -> str: ...  # this worker, as the members topic names it
    @property
    def pipelines(self) -> Mapping[int, PartitionState]: ...  # the partitions decided here
    def owns(self, partition: int) -> bool: ...  # the partition is assigned to this worker


def owned_here(worker: RoutedWorker, partition: int) -> bool:
    """The worker's own word (`owns`): the partition is assigned to it."""
    return worker.owns(partition)


def decided_here(worker: RoutedWorker, partition: int) -> bool:
    """The partition's state is open here (it is in `pipelines`), so it can be read."""
    return partition in worker.pipelines


class OwnerRouting:
    """Places keys on partitions and forwards requests to their owners (one HTTP session,
    opened at the app's startup, each call bounded by `FORWARD_TIMEOUT_S`)."""

    def __init__(self, worker: RoutedWorker) -> None:
        self.worker = worker
        # as the topology's producers route: entity key bytes -> partition
        self.partition_of: Callable[[bytes], int] = router(worker.partitions,
                                                           worker.topology.partitioner)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """The session forwarded requests go through (on the app's startup)."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=64))

    async def close(self) -> None:
        """Close the session (on the app's cleanup)."""
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("owner routing is not open (the app has not started)")
        return self._session

    async def forward(self, request: web.Request, partition: int, body: bytes | None = None
                      ) -> web.Response:
        """Send the request (with `body`, JSON, if given) to the partition's owner; one hop at
        most. The owner's answer comes back as it is, with ``X-Streamwise-Served-By``; 503
        with Retry-After when there is no other owner to ask or it does not answer."""
        owner = self._owner(request, partition)
        headers = self._hop_headers(request)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(request.method, owner.url + str(request.rel_url),
                                            data=body, headers=headers) as resp:
                payload = await resp.read()
                return web.Response(body=payload, status=resp.status,
                                    content_type=resp.content_type,
                                    headers={"X-Streamwise-Served-By": owner.worker_id})
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, f"owner of partition {partition} did not answer "
                           f"({type(exc).__name__})", _RETRY) from None

    async def forward_keys(self, request: web.Request, keys: list[str], names: tuple[str, ...],
                           elsewhere: dict[int, list[int]], results: dict[int, dict]) -> None:
        """The batch feature read's fan-out: ask each owner once (``POST /v1/features``) for
        the keys at the positions `elsewhere` lists by partition, and put each key's answer at
        its position in `results`. A key whose owner is unknown, this worker (a rebalance) or
        silent gets its own 503 there."""
        by_owner: dict[str, tuple[str, list[int]]] = {}
        for p, positions in elsewhere.items():
            try:
                owner = self._owner(request, p)
            except ApiError as exc:
                for i in positions:
                    results[i] = {"key": keys[i], "status": 503, "error": exc.message,
                                  "partition": p}
            else:
                by_owner.setdefault(owner.worker_id, (owner.url, []))[1].extend(positions)
        headers = {**self._hop_headers(request), "Content-Type": "application/json"}

        async def ask(url: str, positions: list[int]) -> None:
            payload = orjson.dumps({"keys": [keys[i] for i in positions],
                                    "features": list(names)})
            try:
                async with self.session.post(url + "/v1/features", data=payload,
                                             headers=headers) as resp:
                    answer = orjson.loads(await resp.read()) if resp.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                answer = None
            got = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(got, list) or len(got) != len(positions):
                for i in positions:
                    results[i] = {"key": keys[i], "status": 503,
                                  "error": "the key's owner did not answer",
                                  "partition": self.partition_of(keys[i].encode())}
                return
            for i, doc in zip(positions, got, strict=True):
                results[i] = doc

        await asyncio.gather(*(ask(url, positions) for url, positions in by_owner.values()))

    def _owner(self, request: web.Request, partition: int) -> Member:
        """The member to forward to: 503 if this request was forwarded already (one hop) or
        no other worker owns the partition (both: a rebalance in progress)."""
        if request.headers.get(FORWARDED_HEADER):
            raise ApiError(503, f"partition {partition} is not owned here either "
                           "(rebalance in progress)", _RETRY)
        owner = self.worker.owners.owner(partition)
        if owner is None or owner.worker_id == self.worker.worker_id:
            raise ApiError(503, f"no worker owns partition {partition} right now "
                           "(rebalance in progress)", _RETRY)
        return owner

    def _hop_headers(self, request: web.Request) -> dict[str, str]:
        """The forwarded request's headers: the hop mark, the request id, the client's token."""
        headers = {FORWARDED_HEADER: self.worker.worker_id, "X-Request-Id": request[REQUEST_ID]}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        return headers


ROUTING = web.AppKey("routing", OwnerRouting)  # the app's routing, which `owned_route` uses

KeyView = Callable[[web.Request, str, int], Awaitable[web.StreamResponse]]


def owned_route(served_here: Callable[[RoutedWorker, int], bool] = owned_here,
                check: Callable[[web.Request], None] | None = None
                ) -> Callable[[KeyView], Handler]:
    """Routes a per-key view (`request.match_info["key"]`) to the key's owner.

    The handler refuses a key that is not `KEY_RE` (400), runs `check` (the request's other
    parameters, refused here rather than forwarded), finds the key's partition, and forwards
    the request unless `served_here(worker, partition)`; otherwise it calls
    ``view(request, key, partition)``. The app's `OwnerRouting` is `request.app[ROUTING]`.
    """
    def decorate(view: KeyView) -> Handler:
        @functools.wraps(view)
        async def handler(request: web.Request) -> web.StreamResponse:
            routing = request.app[ROUTING]
            key = request.match_info["key"]
            if not KEY_RE.fullmatch(key):
                raise ApiError(400, f"invalid key: {KEY_RULE}")
            if check is not None:
                check(request)
            partition = routing.partition_of(key.encode())
            if not served_here(routing.worker, partition):
                return await routing.forward(request, partition)
            return await view(request, key, partition)
        return handler
    return decorate
