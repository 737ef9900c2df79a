"""Owner routing: a key's partition, and the request forwarded to the worker that owns it.

A key's partition is owned by one worker of the consumer group (the members topic says which,
see `engine.routing`); it is found as the topology's producers find it
(`engine.partitioning.router`). A request for a key this worker does not serve is forwarded
once to the owner (the hop is marked with `FORWARDED_HEADER`, so it never loops); while nobody
owns the partition (a rebalance) the answer is 503 with Retry-After. A per-key view never
repeats this: `owned_route` wraps it, the way Faust's `app.table_route` does.

A worker that keeps a standby replica of the partition answers from it instead of forwarding
(unless the request says ``consistency=owner``): the answer says `standby`, its `lag_ms`, and
`stale` when the lag passes the bound or the owner does not answer its health probe (a worker
that died before the group noticed), so no lookup waits for a rebalance.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..partitioning import router
from .http import FORWARD_TIMEOUT_S, FORWARDED_HEADER, KEY_RE, KEY_RULE, REQUEST_ID, ApiError

if TYPE_CHECKING:
    from ..pipeline import PartitionState, ReplicaView, StandbyRead
    from ..routing import Member, OwnerMap
    from ..topology import Topology

__all__ = ["CONSISTENCY", "ROUTING", "SOURCE", "KeyView", "OwnerRouting", "RoutedWorker",
           "Source", "consistency_param", "decided_here", "owned_here", "owned_route"]

log = logging.getLogger("streamwise.api")

_RETRY = {"Retry-After": "1"}
CONSISTENCY = ("any", "owner")  # ?consistency=: a standby may answer (default), or the owner
PROBE_EVERY_S = 0.5  # how often the owners of partitions replicated here are probed
OWNER_SILENT_S = 1.5  # an owner whose /healthz has not said 200 for this long is gone


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
    def standby(self, partition: int) -> StandbyRead | None: ...  # a replica of it here


@dataclass(frozen=True, slots=True)
class Source:
    """What a per-key read is answered from: the partition's state here (its owner), or a
    standby replica of it, with the replica's lag (ms) and whether it is `stale`."""

    state: PartitionState | ReplicaView | None  # None: assigned here, not open yet
    standby: bool = False
    stale: bool = False
    lag_ms: int = 0
    # the replica held its changelog to the end at its last fetch: a key it lacks is unknown
    # (else a lookup of a key it lacks asks the owner: the key may be newer than the replica)
    at_end: bool = True

    def fields(self) -> dict[str, bool | int]:
        """The response fields that say where the answer came from."""
        return {"stale": self.stale, "lag_ms": self.lag_ms, "standby": self.standby}

    def headers(self) -> dict[str, str]:
        """The same, as headers (for answers whose body is a stored message)."""
        return {"X-Streamwise-Stale": str(self.stale).lower(),
                "X-Streamwise-Lag-Ms": str(self.lag_ms),
                "X-Streamwise-Standby": str(self.standby).lower()}


SOURCE = web.RequestKey("source", Source)  # set by `owned_route` before the view runs


def consistency_param(request: web.Request) -> str:
    """``?consistency=any|owner`` (default any); 400 otherwise."""
    if not request.query_string:  # most reads: no query to parse (a hot path)
        return "any"
    value = request.query.get("consistency", "any")
    if value not in CONSISTENCY:
        raise ApiError(400, "consistency must be any or owner")
    return value


def owned_here(worker: RoutedWorker, partition: int) -> bool:
    """The worker's own word (`owns`): the partition is assigned to it."""
    return worker.owns(partition)


def decided_here(worker: RoutedWorker, partition: int) -> bool:
    """The partition's state is open here (it is in `pipelines`), so it can be read."""
    return partition in worker.pipelines


class OwnerRouting:
    """Places keys on partitions and forwards requests to their owners (one HTTP session,
    opened at the app's startup, each call bounded by `FORWARD_TIMEOUT_S`)."""

    def __init__(self, worker: RoutedWorker, standby_max_lag_ms: int = 1000) -> None:
        self.worker = worker
        # as the topology's producers route: entity key bytes -> partition
        self.partition_of: Callable[[bytes], int] = router(worker.partitions,
                                                           worker.topology.partitioner)
        self.standby_max_lag_ms = standby_max_lag_ms
        self._session: aiohttp.ClientSession | None = None
        self._probes: asyncio.Task | None = None
        self._answered: dict[str, float] = {}  # worker id -> monotonic s of its last 200
        self._probed: dict[str, float] = {}  # worker id -> monotonic s of its first probe

    async def open(self) -> None:
        """The session forwarded requests go through, and the owners' health probes (on the
        app's startup)."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=64))
        self._probes = asyncio.create_task(self._probe_owners(), name="owner probes")

    async def close(self) -> None:
        """Stop the probes, close the session (on the app's cleanup)."""
        if self._probes is not None:
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
        if self._session is not None:
            await self._session.close()

    def standby_source(self, partition: int, replica: StandbyRead) -> Source | None:
        """A read from the standby replica of `partition`: stale when it lags the changelog by
        more than `standby_max_lag_ms`, or its owner has not answered its probe for
        `OWNER_SILENT_S` (then `lag_ms` is at least the time since the owner last answered:
        what it wrote after that may be missing here). None (ask the owner) while the replica
        has not reached its changelog's end since it opened: it may hold any prefix of the
        partition, however old."""
        lag_ms = replica.lag_ms
        owner = self.worker.owners.owner(partition)
        silent_ms = self._silent_ms(owner.worker_id) if owner is not None else None
        gone = owner is None or (silent_ms is not None and silent_ms > OWNER_SILENT_S * 1000)
        if not replica.caught_up:  # it may miss any key: never a 404 or an old value from it
            return None
        if gone and silent_ms is not None:
            lag_ms = max(lag_ms, silent_ms)
        return Source(replica.view, standby=True,
                      stale=gone or lag_ms > self.standby_max_lag_ms, lag_ms=lag_ms,
                      at_end=replica.lag_ms == 0)

    def _silent_ms(self, worker_id: str) -> int | None:
        """ms since the worker's /healthz last said 200; None while it has not been probed
        yet (unknown: it counts as up, so a replica that never caught up is not used). A
        worker probed but never heard counts as silent for longer than `OWNER_SILENT_S`."""
        seen = self._answered.get(worker_id)
        if seen is not None:
            return int((time.monotonic() - seen) * 1000)
        first = self._probed.get(worker_id)
        if first is None:
            return None
        return int((time.monotonic() - first + OWNER_SILENT_S) * 1000)

    async def _probe_owners(self) -> None:
        """GET /healthz of every owner of a partition replicated here, every
        `PROBE_EVERY_S`: a SIGKILLed owner refuses the connection at once, so its partitions'
        replicas say stale long before the group's session timeout moves them."""
        worker = self.worker

        async def probe(member: Member) -> None:
            try:
                async with self.session.get(member.url + "/healthz",
                                            timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                    if resp.status == 200:
                        self._answered[member.worker_id] = time.monotonic()
            except (aiohttp.ClientError, TimeoutError):
                pass  # silent: its time since the last answer grows
            self._probed.setdefault(member.worker_id, time.monotonic())

        while True:
            owners: dict[str, Member] = {}
            for p in range(worker.partitions):
                owner = worker.owners.owner(p)
                if owner is not None and owner.worker_id != worker.worker_id and \
                        worker.standby(p) is not None:
                    owners[owner.worker_id] = owner
            try:
                await asyncio.gather(*(probe(m) for m in owners.values()))
            except Exception:  # never let the probes die: lookups would say stale for ever
                log.exception("owner probes failed")
            await asyncio.sleep(PROBE_EVERY_S)

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
        query = "?consistency=owner" if consistency_param(request) == "owner" else ""

        async def ask(url: str, positions: list[int]) -> None:
            payload = orjson.dumps({"keys": [keys[i] for i in positions],
                                    "features": list(names)})
            try:  # the consistency asked for holds at the owner too
                async with self.session.post(url + "/v1/features" + query, data=payload,
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

    The handler refuses a key that is not `KEY_RE` (400) and a `consistency` other than
    any/owner, runs `check` (the request's other parameters, refused here rather than
    forwarded), finds the key's partition, and calls ``view(request, key, partition)`` with
    ``request[SOURCE]`` set when `served_here(worker, partition)`, or when this worker keeps a
    standby replica of it and the request did not ask for ``consistency=owner``; otherwise it
    forwards the request. The app's `OwnerRouting` is `request.app[ROUTING]`.
    """
    def decorate(view: KeyView) -> Handler:
        @functools.wraps(view)
        async def handler(request: web.Request) -> web.StreamResponse:
            routing = request.app[ROUTING]
            key = request.match_info["key"]
            if not KEY_RE.fullmatch(key):
                raise ApiError(400, f"invalid key: {KEY_RULE}")
            consistency = consistency_param(request)
            if check is not None:
                check(request)
            partition = routing.partition_of(key.encode())
            worker = routing.worker
            if served_here(worker, partition):
                request[SOURCE] = Source(worker.pipelines.get(partition))
                return await view(request, key, partition)
            replica = worker.standby(partition) if consistency == "any" else None
            source = None if replica is None else routing.standby_source(partition, replica)
            if source is None:
                return await routing.forward(request, partition)
            request[SOURCE] = source
            return await view(request, key, partition)
        return handler
    return decorate
