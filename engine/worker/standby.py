"""Standby replicas: read-only copies of partitions other workers own, kept by tailing their
changelogs, so lookups are answered here (flagged with their lag) and a partition that moves
here is promoted from its replica, restoring only the changelog's tail.

Which partitions a worker replicates follows the members topic (`routing.standby_partitions`:
the `replicas` workers after the owner on the ring of owners, in worker-id order). One consumer
without a group holds every replica's changelog partition; it applies whole changelog batches
only (the end-marker rule of `changelog.apply_whole_batches`), each with its offset, into a
RocksStore under ``<state_dir>/standby/pNNNN``, so a restart or a promotion resumes there.
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


class StandbySet:
    """The standby replicas of one worker: which partitions, their stores, their lag."""

    def __init__(self, kafka: KafkaTarget, topology: Topology, changelog: str, partitions: int,
                 state_dir: Path, checkpoints: Checkpoints, replicas: int, owners: OwnerMap,
                 me: Callable[[], str]) -> None:
        self._kafka = kafka
        self._topology = topology
        self._topic = changelog
        self._partitions = partitions
        self.dir = state_dir / "standby"
        self._checkpoints = checkpoints
        self.replicas = replicas
        self._owners = owners
        self._me = me
        self._held: dict[int, _Replica] = {}
        # partitions this worker owns or is opening: never replicated (until `include`)
        self._excluded: set[int] = set()
        self._lock = asyncio.Lock()  # held while batches are applied and replicas change
        self._consumer: AIOKafkaConsumer | None = None
        self.changed = asyncio.Event()  # set when the wanted replicas may have changed
        self._started = time.monotonic()

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
        else:  # behind, or never at the end yet: since it last was (or since it started)
            since = r.caught_up_at if r.caught_up_at is not None else self._started
            lag_ms = int((time.monotonic() - since) * 1000)
        return StandbyRead(r.view, lag_records, lag_ms)

    def exclude(self, partition: int) -> None:
        """This worker is opening `partition` as its owner: never replicate it meanwhile."""
        self._excluded.add(partition)

    def include(self, partition: int) -> None:
        """`partition` left this worker: it may be replicated again."""
        self._excluded.discard(partition)
        self.changed.set()

    async def release(self, partition: int) -> tuple[Path, int | None] | None:
        """Stop replicating `partition` (after the batch being applied) and close its store;
        its directory and changelog offset, for promotion, or None without a replica."""
        self.exclude(partition)
        async with self._lock:
            r = self._held.pop(partition, None)
            if r is None:
                return None
            self._reassign()
            offset = r.store.changelog_offset
            r.store.close()
            return r.store.path, offset

    async def run(self, stopping: asyncio.Event) -> None:
        """Keep the wanted replicas current until `stopping`; closes their stores at the end."""
        self._started = time.monotonic()
        consumer = new_consumer(self._kafka, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                max_partition_fetch_bytes=4 << 20)
        await consumer.start()
        self._consumer = consumer
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
                async with self._lock:
                    await self._apply(consumer, batches)
        finally:
            self._consumer = None
            await consumer.stop()
            async with self._lock:
                for p in list(self._held):
                    self._close(p)

    async def _apply(self, consumer: AIOKafkaConsumer, batches: dict) -> None:
        for tp, records in batches.items():
            r = self._held.get(tp.partition)
            if r is None or not records:
                continue  # released meanwhile
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
        if wanted == self._held.keys():
            return
        async with self._lock:
            for p in sorted(self._held.keys() - wanted):
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
        return _Replica(store, view, start, start)

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
        tps = {p: TopicPartition(self._topic, p) for p in self._held}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, self._held[p].next_offset)
