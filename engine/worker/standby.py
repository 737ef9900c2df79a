"""Standby replicas: read-only copies of partitions other workers own, kept by tailing their
changelogs, so lookups are answered here (flagged with their lag) and a partition that moves
here is promoted from its replica, restoring only the changelog's tail.

Which partitions a worker replicates follows the members topic (`routing.standby_partitions`:
the `replicas` workers after the owner on the ring of owners, in worker-id order). One consumer
without a group holds every replica's changelog partition; it applies whole changelog batches
only (the end-marker rule of `changelog.apply_whole_batches`), each with its offset, into the
partition's RocksStore, so a restart or a promotion resumes there.

A partition's store is one directory, ``<state_dir>/pNNNN``, whichever role it plays here, and
one open RocksStore moves between the roles without being closed: a promoted replica becomes
the owned store as it is (`take`, then `done` once the owned state is up; reads keep coming
from the replica meanwhile), and a revoked partition's store becomes a replica (`adopt`), so a
rebalance never leaves a key this worker held without an answer. (Separate directories would
need a move, hence a close and a window without reads, at every promotion.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ..errors import StateError
from ..kafka_io import KafkaTarget, new_consumer
from ..pipeline import ReplicaView, StandbyRead
from ..routing import OwnerMap, standby_partitions
from ..state import Checkpoints, RocksStore
from ..topology import Topology
from .changelog import apply_whole_batches

__all__ = ["StandbySet"]

log = logging.getLogger("streamwise.worker")


@dataclass
class _Replica:
    store: RocksStore
    view: ReplicaView
    next_offset: int  # the next changelog offset to read (records read, applied or pending)
    applied_to: int  # offset after the last applied batch
    pending: dict[bytes, bytes | None] = field(default_factory=dict)  # an unfinished batch
    highwater: int | None = None  # the partition's end offset at the last fetch
    caught_up_at: float | None = None  # monotonic s when a fetch last found it at the end
    behind: bool = True  # the last fetch found records past `next_offset`
    promoting: bool = False  # taken by the owner: no longer tailed, still read until `done`
    opened_at: float = field(default_factory=time.monotonic)


class StandbySet:
    """The standby replicas of one worker: which partitions, their stores, their lag."""

    def __init__(self, kafka: KafkaTarget, topology: Topology, changelog: str, partitions: int,
                 state_dir: Path, checkpoints: Checkpoints, replicas: int, owners: OwnerMap,
                 me: Callable[[], str]) -> None:
        self._kafka = kafka
        self._topology = topology
        self._topic = changelog
        self._partitions = partitions
        self.dir = state_dir
        self._checkpoints = checkpoints
        self.replicas = replicas
        self._owners = owners
        self._me = me
        self._held: dict[int, _Replica] = {}
        # partitions this worker owns or is opening: never replicated (until `include`)
        self._excluded: set[int] = set()
        self._lock = asyncio.Lock()  # held while batches are applied and replicas change
        self._consumer: AIOKafkaConsumer | None = None
        self._running = False
        self.changed = asyncio.Event()  # set when the wanted replicas may have changed

    @property
    def partitions(self) -> list[int]:
        """The partitions replicated here now."""
        return sorted(self._held)

    def read(self, partition: int) -> StandbyRead | None:
        """The replica of `partition` and its lag, or None when there is none here."""
        r = self._held.get(partition)
        if r is None:
            return None
        lag_records = 0 if r.highwater is None else max(0, r.highwater - r.applied_to)
        if not r.behind and r.caught_up_at is not None:
            lag_ms = 0
        else:  # behind, or never at the end yet: since it last was (or since it opened)
            since = r.caught_up_at if r.caught_up_at is not None else r.opened_at
            lag_ms = int((time.monotonic() - since) * 1000)
        return StandbyRead(r.view, lag_records, lag_ms, r.caught_up_at is not None)

    def exclude(self, partition: int) -> None:
        """This worker is opening `partition` as its owner: never replicate it meanwhile."""
        self._excluded.add(partition)

    def include(self, partition: int) -> None:
        """`partition` left this worker: it may be replicated again."""
        self._excluded.discard(partition)
        self.changed.set()

    async def take(self, partition: int) -> RocksStore | None:
        """The owner opens `partition`: its replica's store (open, tailed no more; reads still
        answered from it until `done`), or None when there is no replica here."""
        self.exclude(partition)
        async with self._lock:  # after the batch being applied
            r = self._held.get(partition)
            if r is None:
                return None
            r.promoting = True
            self._reassign()
            return r.store

    def done(self, partition: int) -> None:
        """The owner's state of `partition` is up (or failed and closed the store): the
        replica is gone."""
        self._held.pop(partition, None)

    def adopt(self, partition: int, store: RocksStore) -> bool:
        """`partition` was revoked here: its store (every change set written, with its
        changelog offset) becomes a replica at once, kept if the placement wants it here.
        False when the replicas are not running (closing): the caller closes the store."""
        if not self._running:
            return False
        try:
            view = ReplicaView(self._topology, partition, store)
        except StateError:
            return False
        offset = store.changelog_offset
        start = 0 if offset is None else offset + 1
        # at the end of the changelog as far as this worker knows: it wrote it
        self._held[partition] = _Replica(store, view, start, start, caught_up_at=time.monotonic(),
                                         behind=False)
        self._excluded.discard(partition)
        self._reassign()
        self.changed.set()
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Keep the wanted replicas current until `stopping`; closes their stores at the end."""
        consumer = new_consumer(self._kafka, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                max_partition_fetch_bytes=4 << 20)
        await consumer.start()
        self._consumer = consumer
        self._running = True
        try:
            while not stopping.is_set():
                await self._sync()
                if not self._held:
                    self.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), timeout=0.5)
                    continue
                try:
                    batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
                except KafkaError as exc:  # an outage: the lag grows and says so
                    log.warning("standby replicas: fetch failed (%r); retrying", exc)
                    await asyncio.sleep(1.0)
                    continue
                try:
                    async with self._lock:
                        await self._apply(consumer, batches)
                except StateError as exc:  # a replica's disk: its lag grows and says so
                    log.warning("standby replicas: %s; retrying", exc)
                    await asyncio.sleep(1.0)
        finally:
            self._running = False
            self._consumer = None
            await consumer.stop()
            async with self._lock:
                for p, r in list(self._held.items()):
                    if not r.promoting:  # a promoting store is the owner's to close
                        self._close(p)

    async def _apply(self, consumer: AIOKafkaConsumer, batches: dict) -> None:
        for tp, records in batches.items():
            r = self._held.get(tp.partition)
            if r is None or r.promoting or not records:
                continue  # taken meanwhile
            pending = r.pending
            applied = await asyncio.to_thread(apply_whole_batches, records, pending, r.store,
                                              self._topic)
            r.next_offset = records[-1].offset + 1
            if not pending:  # every record read is applied (compaction leaves offset gaps)
                r.applied_to = r.next_offset
            elif applied:
                r.applied_to = (r.store.changelog_offset or 0) + 1
        now = time.monotonic()
        for p, r in self._held.items():
            if r.promoting:  # not assigned any more: no fetch position, no highwater
                continue
            hw = consumer.highwater(TopicPartition(self._topic, p))
            if hw is None:
                continue
            r.highwater = hw
            r.behind = r.next_offset < hw
            if not r.behind:
                r.caught_up_at = now

    async def _sync(self) -> None:
        """Open the replicas the placement wants here, close those it no longer wants."""
        wanted = standby_partitions(self._owners, self._me(), self.replicas, self._partitions,
                                    frozenset(self._held)) - self._excluded
        tailed = {p for p, r in self._held.items() if not r.promoting}
        if wanted == tailed:
            return
        async with self._lock:
            tailed = {p for p, r in self._held.items() if not r.promoting}
            for p in sorted(tailed - wanted):
                self._close(p)
                log.info("partition %d: standby replica closed", p)
            for p in sorted(wanted - self._held.keys() - self._excluded):
                try:
                    self._held[p] = self._open(p)
                except StateError as exc:  # a replica is an optimisation: say so, go on
                    log.warning("partition %d: no standby replica (%s)", p, exc)
                    continue
                log.info("partition %d: standby replica from changelog offset %d", p,
                         self._held[p].next_offset)
            self._reassign()

    def _open(self, p: int) -> _Replica:
        store = RocksStore(self.dir / f"p{p:04d}", self._checkpoints)
        try:
            view = ReplicaView(self._topology, p, store)
        except StateError:
            store.close()
            raise
        local = store.changelog_offset
        start = 0 if local is None else local + 1
        return _Replica(store, view, start, start, opened_at=time.monotonic())

    def _close(self, p: int) -> None:
        r = self._held.pop(p, None)
        if r is not None:
            try:
                r.store.close()
            except StateError as exc:  # a replica: the changelog still has it all
                log.warning("partition %d: %s", p, exc)

    def _reassign(self) -> None:
        """The consumer's assignment follows the replicas held; each resumes where it was
        (assign forgets positions)."""
        consumer = self._consumer
        if consumer is None:
            return
        tps = {p: TopicPartition(self._topic, p) for p, r in self._held.items()
               if not r.promoting}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, self._held[p].next_offset)
