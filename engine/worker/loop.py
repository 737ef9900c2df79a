"""The stream worker: consumes, runs the batch pipeline, writes state, produces, commits.

The hot path sits below any framework `Stream`: aiokafka `getmany` hands a whole poll, all its
partitions, to `Pipeline.process` as one batch. The worker reads two co-partitioned topics
(the range assignor gives one worker partition p of both): the input, and the repartition
topic, where a record whose entity belongs to another partition than the one it was produced
to (another partitioner, a null key, a key that is not the entity) is forwarded before it
touches any state; its own partition's offset is committed once the copy is acknowledged. A poll is bounded by count and by time: its
record limit adapts so the pipeline's work per poll stays near `cycle_ms` (fetches wait at most
`fetch_max_wait_ms` for data), so no event waits long behind others.

Per poll:
1. the state changes (one changelog batch per partition) and the poll's decisions, dead-letter,
   late and forwarded records are queued to Kafka together, in one round;
2. once the changelog is acknowledged, each partition's changes go to RocksDB in one write
   batch, with the changelog offset they were written at, off the event loop: by the
   pipeline's thread before its next poll (no thread hop of their own), or in a thread when
   the input goes idle;
3. once the outputs are acknowledged too, the poll's input offsets become committable; they
   are committed at most every `commit_interval_ms` (100), and whenever the input is idle, a
   partition is revoked or the worker stops.
A crash before 2 leaves the changelog ahead of local state: restore replays it (whole batches
only: each batch's last changelog record carries an end marker, and a cut batch is dropped).
A crash before the commit re-delivers the input: dedup finds every event whose state reached
the changelog and re-emits its stored decision (and a re-delivered late record its late
record); an event whose decision was acknowledged but whose changelog batch was not is decided
again from the same state, so it gets the same decision and `decision_id` unless its model
path changed meanwhile (a timeout, a model swapped in between).

Steps 1-3 of a poll run on the event loop while the pipeline already works on the next polls,
whose reads see the earlier polls' changes staged in `StagedStore` until step 2 wrote them.
Polls finish in order, at most `_MAX_POLLS_IN_FLIGHT` at a time; a revoke or close waits for
all of them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry

from ..clock import Clock, SystemClock
from ..config import EngineConfig
from ..errors import StateError
from ..kafka_io import (
    TopicSpec,
    ensure_topics,
    new_consumer,
    new_producer,
    send_records,
    wait_for_coordinator,
)
from ..metrics import (
    EngineMetrics,
    WorkerSnapshot,
    WorkerStateCollector,
    count_decisions,
    register_runtime_collectors,
)
from ..partitioning import router
from ..pipeline import Decider, PartitionState, Pipeline, PollResult, Record, StandbyRead
from ..pipeline.records import forwarded_position
from ..routing import Member
from ..sinks.kafka import queue_outputs
from ..state import Checkpoints, RocksStore, StagedStore
from ..topology import TopicNames, Topology
from .agents import AgentError, AgentFeeds
from .changelog import changelog_records, restore
from .shared import SharedState
from .standby import StandbySet

if TYPE_CHECKING:
    from ..scoring.registry import ModelRegistry

__all__ = ["Worker", "topic_specs"]

log = logging.getLogger("streamwise.worker")

_FULL_GC_EVERY_S = 300.0  # a full collection now and then reclaims cycles frozen since
_MAX_POLLS_IN_FLIGHT = 4  # polls whose writes may be under way while the next one runs
SESSION_TIMEOUT_MS = 10_000  # the consumer group's; /readyz fails once the broker is silent longer


def topic_specs(t: TopicNames, partitions: int, agent_topics: Sequence[str] = (),
                progress: bool = False) -> list[TopicSpec]:
    """Every topic of a topology (with its agents' topics, and the agents' progress when
    decisions read agent tables). Outputs, changelog and agent topics are co-partitioned
    with the input."""
    big = {"max.message.bytes": str(8 << 20)}  # oversized input must reach us to be DLQ'd
    compact = {"cleanup.policy": "compact"}
    n = partitions
    return [TopicSpec(t.events, n, big), TopicSpec(t.decisions, n, {}), TopicSpec(t.dlq, n, {}),
            TopicSpec(t.late, n, {}), TopicSpec(t.profiles, n, compact),
            TopicSpec(t.control, 1, compact), TopicSpec(t.changelog, n, compact),
            TopicSpec(t.members, 1, compact), TopicSpec(t.repartition, n, big),
            *(TopicSpec(a, n, {}) for a in agent_topics if a != t.decisions),
            *([TopicSpec(t.progress, n, {})] if progress else [])]


class Worker:
    """One worker of a topology: a member of the topology's consumer group."""

    def __init__(self, cfg: EngineConfig, topology: Topology, decider: Decider,
                 clock: Clock | None = None, registry: CollectorRegistry | None = None,
                 models: ModelRegistry | None = None) -> None:
        self.cfg = cfg
        self.topology = topology
        self.topics = topology.topics(cfg.kafka.topic_prefix)
        self.partitions = cfg.kafka.partitions or topology.default_partitions
        self.decider = decider
        self.models = models
        self.clock = clock or SystemClock()
        self.registry = registry or CollectorRegistry()
        self.metrics = EngineMetrics.create(self.registry, topology.name)
        register_runtime_collectors(self.registry)
        self.registry.register(WorkerStateCollector(topology.name, self._snapshot))
        for stage, budget in topology.budgets.items():
            for q, ms in (("p95", budget.p95_ms), ("p99", budget.p99_ms)):
                self.metrics.stage_budget_seconds.labels(topology.name, stage, q).set(ms / 1000)
        self._committed: dict[int, int] = {}  # partition -> offset this worker last committed
        self._lag: dict[int, int] = {}  # partition -> records behind the end (scrape reads it)
        self._agent_lag: dict[str, int] = {}  # agent topic -> records not yet read here
        self._watermarked: set[int] = set()  # partitions with a watermark series
        self.state_dir = Path(cfg.state.data_dir) / topology.name
        self.shared = SharedState(cfg.kafka, self.topics, self.partitions)
        self.stores: dict[int, StagedStore] = {}
        self.route = router(self.partitions, topology.partitioner)  # entity key -> partition
        self.pipeline = Pipeline(topology, decider, self.clock, topic=self.topics.events,
                                 route=self.route)
        self.agents = AgentFeeds(topology, cfg.kafka.topic_prefix, self.route)
        self._agents_paused = False  # their topics wait while the input has a backlog
        self.assigned_once = False
        self._lock = asyncio.Lock()
        # Online scoring reads stores from a worker thread: a store is closed only under this
        # lock, and online reads take it, so no read ever meets a closing RocksDB.
        self.state_lock = threading.Lock()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task] = []
        self._inflight: deque[asyncio.Task] = deque()  # polls whose writes are under way
        self._to_apply: deque[Mapping[int, int]] = deque()  # acknowledged, for RocksDB
        self._uncommitted: dict[TopicPartition, int] = {}  # offsets written, not committed
        self._last_commit = time.monotonic()
        k = cfg.kafka
        self._max_records = min(k.max_batch_records, 500)  # adapts to the cycle time
        self._us_per_record: float | None = None
        self._last_full_gc = time.monotonic()
        self.decided = 0
        self.url: str | None = None  # where this worker's HTTP API answers; set before start()
        self._worker_id: tuple[str, str] | None = None  # (url, worker id) of `worker_id`
        # the rollout state's tail (engine/worker/control.py), when the decider rolls out
        # model versions (a RolloutDecider); the owner of input partition 0 advances ramps
        self.control: Any = None
        if hasattr(decider, "apply"):
            from .control import RolloutControl
            self.control = RolloutControl(cfg.kafka, self.topics.control, decider,
                                          topology.name, self.clock, self.registry,
                                          controller=lambda: 0 in self.pipelines)
        self.checkpoints = Checkpoints()
        # Why this worker gave up (its state cannot be opened or written), or None: it leaves
        # its group and exits; /healthz and /readyz say so meanwhile.
        self.failure: str | None = None
        self._broker_seen = time.monotonic()  # last time a broker answered (see _watch_broker)
        # read-only replicas of partitions other workers own (engine/worker/standby.py)
        replicas = cfg.state.standby_replicas
        self.standbys: StandbySet | None = None if replicas <= 0 else StandbySet(
            cfg.kafka, topology, self.topics.changelog, self.partitions, self.state_dir,
            self.checkpoints, replicas, self.owners, lambda: self.worker_id)
        self._standby_task: asyncio.Task | None = None

    @property
    def profiles(self) -> Mapping[str, Mapping[str, Any]]:
        return self.shared.profiles

    @property
    def owners(self):
        return self.shared.owners

    @property
    def pipelines(self) -> Mapping[int, PartitionState]:
        """The partitions this worker decides now, with their watermarks."""
        return self.pipeline.partitions

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        k = self.cfg.kafka
        # The input is never created by accident (a mistyped prefix): only when asked to.
        await ensure_topics(k, topic_specs(self.topics, self.partitions, self.agents.topics,
                                           self.topology.reads_agent_tables),
                            k.replication_factor,
                            must_exist=() if k.create_input_topic else [self.topics.events])
        self._producer = new_producer(
            k, acks="all", enable_idempotence=True,
            max_batch_size=1 << 20, max_request_size=4 << 20, linger_ms=0)
        await self._producer.start()
        await self.shared.load()
        if self.control is not None:  # the rollout state, before any decision
            await self.control.load()
        for m in self.owners.members:  # an earlier process at our URL that died unannounced
            if m.url == self.url and m.worker_id != self.worker_id:
                await self._producer.send_and_wait(self.topics.members, None,
                                                   key=m.worker_id.encode(), partition=0)
        await wait_for_coordinator(k, self.topics.group)  # no ERROR lines on a new cluster
        self._consumer = new_consumer(
            k, group_id=self.topics.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=k.fetch_max_wait_ms, max_partition_fetch_bytes=4 << 20,
            session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=2_000,
            # partition p of the input and of the repartition topic go to one worker
            partition_assignment_strategy=(RangePartitionAssignor,))
        self._consumer.subscribe([self.topics.events, self.topics.repartition,
                                  *self.agents.topics], listener=_Listener(self))
        await self._consumer.start()
        self._tasks.append(asyncio.create_task(self.shared.tail(self._stopping),
                                               name="profiles+members"))
        if self.models is not None:
            self._tasks.append(asyncio.create_task(self._reload_models(), name="models"))
        if self.control is not None:
            self._tasks.append(asyncio.create_task(self.control.run(self._stopping),
                                                   name="rollout"))
        self._tasks.append(asyncio.create_task(self._track_lag(), name="lag"))
        if self.standbys is not None:
            self._standby_task = asyncio.create_task(self.standbys.run(self._stopping),
                                                     name="standbys")
        self._tasks.append(asyncio.create_task(self._watch_state(), name="state"))
        self._tasks.append(asyncio.create_task(self._watch_broker(), name="broker"))

    async def run(self) -> None:
        """Process until `stop()`; the batch in flight is finished, then `close()` is due."""
        assert self._consumer is not None
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=200,
                                                   max_records=self._max_records)
            if self.agents.by_topic:
                self._pace_agents(batches)
            if batches:
                async with self._lock:
                    await self._process(batches)
            while self._inflight and self._inflight[0].done():
                await self._inflight.popleft()  # raises what its writes raised
            if not batches and not self._inflight:  # idle: write and commit what is done
                if self._to_apply:
                    await asyncio.to_thread(self._apply_ready)
                if self._uncommitted:
                    await self._commit()
        await self._drain()  # the last polls' writes; raises what they raised

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """Leave the group, flush the producer, close the stores. Safe to call twice."""
        for task in self._tasks:
            task.cancel()
        if self._standby_task is not None:  # awaited: its stores close cleanly (flushed)
            self._standby_task.cancel()
            try:
                await self._standby_task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("standby replicas failed")
            self._standby_task = None
        try:
            await self._drain()  # the last poll's state, outputs and commit
        except StateError as exc:  # said once already, where it happened
            log.warning("the last polls' writes failed (%s); their records will be "
                        "re-delivered", exc)
        except Exception:
            log.exception("the last poll's writes failed; its records will be re-delivered")
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: partitions move on at once
            self._consumer = None
        if self._producer is not None:
            await self._announce(leaving=True)
            await self._producer.stop()
            self._producer = None
        for p in list(self.stores):
            self._close_partition(p)

    @property
    def ready(self) -> tuple[bool, str]:
        if self.failure is not None:
            return False, self.failure
        silent_s = time.monotonic() - self._broker_seen
        if silent_s > SESSION_TIMEOUT_MS / 1000:
            return False, f"no Kafka broker has answered for {silent_s:.0f} s"
        if not self.shared.profiles_loaded:
            return False, "loading profiles"
        if not self.assigned_once:
            return False, "waiting for partition assignment"
        health = self.decider.health()
        if self.models is not None and health.has_models and not health.usable:
            errors = {n: s.last_error for n, s in self.models.slots.items()}
            return False, f"no usable model: {errors or 'registry empty'}"
        return True, "ready"

    # -- the hot path ----------------------------------------------------------------------

    async def _process(self, batches: Mapping[TopicPartition, list]) -> None:
        # The pipeline runs in a worker thread, so the event loop keeps answering HTTP and
        # finishing the previous poll's writes meanwhile. The partition lock is held, so no
        # revoke can close a store under it; the previous poll's changes are staged in the
        # stores, so this poll reads them.
        side = {tp: msgs for tp, msgs in batches.items() if tp.topic in self.agents.by_topic}
        if side:
            batches = {tp: msgs for tp, msgs in batches.items() if tp not in side}
        n = sum(len(msgs) for msgs in batches.values())
        self.metrics.records_in.labels(self.topology.name, self.topics.events).inc(n)
        t0 = time.perf_counter()
        # (also with no input: the thread first writes what earlier polls staged, agents' too)
        try:
            poll = await asyncio.to_thread(self._run_pipeline, batches)
        except AgentError as exc:
            self.fail(str(exc))
            return
        if n:
            self._adapt(n, time.perf_counter() - t0)
        else:  # an agents-only poll: no stage of the pipeline ran
            poll.stage_ms = {}
        agent_commits: dict[TopicPartition, int] = {}
        if side:  # agents run on the event loop, over the stores with this poll's reads done
            try:
                agent_commits = await self.agents.apply(side, self.stores, poll)
            except AgentError as exc:  # skipping the records would lose their updates
                self.fail(str(exc))
                return
        while len(self._inflight) >= _MAX_POLLS_IN_FLIGHT:  # bounded: wait for the oldest
            await self._inflight[0]
            self._inflight.popleft()
        self._collect_garbage()
        if not poll.partitions and not agent_commits:
            return
        producer = self._producer
        assert producer is not None
        t = self.topics
        changelog, outputs = {}, []
        for p, r in poll.partitions.items():
            if r.changes:
                self.stores[p].stage(r.changes)
                changelog[p] = await send_records(producer, t.changelog, p,
                                                  changelog_records(r.changes))
        outputs += await queue_outputs(producer, t, poll, self.route)
        previous = self._inflight[-1] if self._inflight else None
        task = asyncio.create_task(self._finish(poll, changelog, outputs, previous,
                                                agent_commits))
        task.add_done_callback(self._stop_on_failure)
        self._inflight.append(task)

    def _run_pipeline(self, batches: Mapping[TopicPartition, list]) -> PollResult:
        """One poll, all its partitions (those revoked while it was in flight are skipped),
        after writing to RocksDB what earlier polls have had acknowledged. A partition's
        forwarded records (from the repartition topic) go first, at their positions."""
        self._apply_ready()
        events = self.topics.events
        inputs: dict[int, list] = {}
        for tp, msgs in batches.items():
            if tp.topic == events:
                p = tp.partition
                inputs[p] = inputs[p] + msgs if p in inputs else msgs
            else:
                inputs[tp.partition] = [
                    Record(m.topic, m.partition, forwarded_position(m.partition, m.offset),
                           m.key, m.value, m.timestamp) for m in msgs
                ] + inputs.get(tp.partition, [])
        poll = self.pipeline.process(inputs, self.profiles)
        try:
            self.pipeline.feed_poll(poll)
        except Exception as exc:  # skipping the decisions would lose their updates
            raise AgentError(f"an agent on the decisions failed: {exc!r}") from exc
        return poll

    def _pace_agents(self, batches: Mapping[TopicPartition, list]) -> None:
        """Agents yield to the input: a full poll of input (a backlog) pauses their topics,
        and a poll less than half full resumes them, so side streams catch up when decisions
        have room rather than slowing them."""
        assert self._consumer is not None
        side = self.agents.by_topic
        n = sum(len(m) for tp, m in batches.items() if tp.topic not in side)
        if n >= self._max_records and not self._agents_paused:
            self._agents_paused = True
            self._consumer.pause(*(tp for tp in self._consumer.assignment()
                                   if tp.topic in side))
        elif n < self._max_records // 2 and self._agents_paused:
            self._agents_paused = False
            self._consumer.resume(*(tp for tp in self._consumer.assignment()
                                    if tp.topic in side))

    def _adapt(self, records: int, seconds: float) -> None:
        """Keep a poll's pipeline work near the cycle time: the record limit follows the
        measured time per record (a moving average), within [50, max_batch_records]."""
        us = seconds * 1e6 / max(records, 1)
        self._us_per_record = us if self._us_per_record is None else \
            0.8 * self._us_per_record + 0.2 * us
        k = self.cfg.kafka
        limit = int(k.cycle_ms * 1000 / max(self._us_per_record, 1.0))
        self._max_records = max(50, min(k.max_batch_records, limit))

    def _collect_garbage(self) -> None:
        """Objects that survive a poll (tables, caches, models) are frozen out of the
        collector's sight, so young collections stay short; a full collection now and then
        reclaims cycles made since the last one."""
        now = time.monotonic()
        if now - self._last_full_gc >= _FULL_GC_EVERY_S:
            self._last_full_gc = now
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    async def _finish(self, poll: PollResult,
                      changelog: Mapping[int, list[tuple[asyncio.Future, int]]],
                      outputs: list[tuple[asyncio.Future, int]],
                      previous: asyncio.Task | None,
                      agent_commits: Mapping[TopicPartition, int]) -> None:
        """Steps 2-3 of a poll whose records are queued: local state once its changelog is
        acknowledged, then its offsets become committable once its outputs are. Polls finish
        in order: each waits for the one before (and fails when it failed)."""
        offsets = {}
        for p, sent in changelog.items():
            metas = await asyncio.gather(*(fut for fut, _ in sent))
            offsets[p] = metas[-1].offset + sent[-1][1] - 1
        if previous is not None:
            await previous
        if offsets:  # local state, atomically with the changelog offset it corresponds to:
            self._to_apply.append(offsets)  # written by the pipeline's thread before its next
            # poll (no thread hop of its own), or when the input goes idle
        await asyncio.gather(*(fut for fut, _ in outputs))
        t = self.topics
        for p, r in poll.partitions.items():
            if r.commit_offset is not None:
                self._uncommitted[TopicPartition(t.events, p)] = r.commit_offset
            if r.forwarded_commit is not None:
                self._uncommitted[TopicPartition(t.repartition, p)] = r.forwarded_commit
        self._uncommitted.update(agent_commits)
        self._observe(poll)
        if time.monotonic() - self._last_commit >= self.cfg.kafka.commit_interval_ms / 1000:
            await self._commit()

    async def _commit(self) -> None:
        """Commit the input offsets whose outputs and state are all written."""
        offsets, self._uncommitted = self._uncommitted, {}
        self._last_commit = time.monotonic()
        if not offsets or self._consumer is None:
            return
        commit = {tp: off for tp, off in offsets.items() if tp.partition in self.pipelines}
        try:
            await self._consumer.commit(commit)
            events = self.topics.events
            self._committed.update((tp.partition, off) for tp, off in commit.items()
                                   if tp.topic == events)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # Rebalance in progress: the new owner re-reads these records and dedup re-emits
            # their decisions. Nothing is lost.
            log.warning("offset commit skipped (%s); records will be re-delivered", exc)

    def _apply_ready(self) -> None:
        """Write the staged change sets whose changelog is acknowledged, oldest first, each
        with its changelog offset (one RocksDB write batch per partition and poll)."""
        while self._to_apply:
            for p, offset in self._to_apply.popleft().items():
                self.stores[p].apply_oldest(offset)

    def _stop_on_failure(self, task: asyncio.Task) -> None:
        """A poll whose writes failed stops the loop at once (even with no more input), and
        `run` raises the error: nothing is committed past it, its records are re-delivered."""
        if not task.cancelled() and task.exception() is not None:
            if isinstance(task.exception(), StateError):
                self.fail(str(task.exception()))
            self._stopping.set()

    def fail(self, reason: str) -> None:
        """Give up: local state cannot be opened or written. The worker stops, leaves its group
        (its partitions move to the other workers, which restore them from the changelog) and
        exits non-zero with `reason`; until then /healthz and /readyz answer 503."""
        if self.failure is None:
            self.failure = reason
            log.error("%s; leaving the group and exiting", reason)
        self._stopping.set()

    async def _drain(self) -> None:
        """Wait for every poll whose writes are under way, then commit; the first failure is
        raised here."""
        while self._inflight:
            task = self._inflight.popleft()
            await task
        if self._to_apply:
            await asyncio.to_thread(self._apply_ready)
        await self._commit()

    # -- metrics ---------------------------------------------------------------------------

    def _observe(self, poll: PollResult) -> None:
        m, name, t = self.metrics, self.topology.name, self.topics
        for stage, ms in poll.stage_ms.items():
            m.stage_seconds.labels(name, stage).observe(ms / 1000)
        outcomes = poll.outcomes.copy()
        for p, r in poll.partitions.items():
            m.batch_records.labels(name).observe(len(r.decisions) + len(r.dlq))
            m.events.labels(name, "accepted").inc(r.accepted)
            m.events.labels(name, "duplicate").inc(r.duplicates)
            m.events.labels(name, "late").inc(len(r.late))
            m.events.labels(name, "dlq").inc(len(r.dlq))
            if r.forward:
                m.events.labels(name, "forwarded").inc(len(r.forward))
            for reason in r.dlq_reasons:
                m.dlq.labels(name, reason).inc()
            outcomes.update(count_decisions(r.reemitted))
            for topic, n in ((t.decisions, len(r.decisions)), (t.dlq, len(r.dlq)),
                             (t.late, len(r.late)), (t.changelog, len(r.changes)),
                             (t.repartition, len(r.forward))):
                if n:
                    m.records_out.labels(name, topic).inc(n)
            wm = self.pipelines[p].watermark.watermark_ms if p in self.pipelines else None
            if wm is not None:
                m.watermark_seconds.labels(name, str(p)).set(wm / 1000)
                self._watermarked.add(p)
            self.decided += len(r.decisions)
        for (path, decision), n in outcomes.items():
            m.decisions.labels(name, path, decision).inc(n)
        for p in self._watermarked - self.pipelines.keys():  # revoked: another worker reports
            m.watermark_seconds.remove(name, str(p))
            self._watermarked.discard(p)
        m.observe_chain(name, self.decider.drain_stats())
        for model, (_, value) in self.decider.health().breakers.items():
            m.breaker_state.labels(name, model).set(value)

    def _snapshot(self) -> WorkerSnapshot:
        """What a Prometheus scrape reads now (see metrics.WorkerStateCollector)."""
        health = self.decider.health()
        usable = len(health.usable) if health.has_models else None
        active = {} if self.models is None else {
            # list(): one C call, so a reload thread adding a slot cannot break the iteration
            n: s.active.ref.partition(":")[2] for n, s in list(self.models.slots.items())
            if s.active is not None}
        lag = {p: n for p, n in self._lag.items() if p in self.pipelines}
        standby_lag = {}
        for p in range(self.partitions):
            replica = self.standby(p)
            if replica is not None:
                standby_lag[p] = (replica.lag_records, replica.lag_ms)
        return WorkerSnapshot(self.ready[0], usable, active, lag, self._agent_lag, standby_lag)

    async def _track_lag(self, every_s: float = 1.0) -> None:
        """Consumer lag per owned partition: its end offset (asked of the broker, so the lag
        grows even while this worker is stuck) minus what this worker last committed there,
        or its fetch position before its first commit."""
        events = self.topics.events
        while not self._stopping.is_set():
            await asyncio.sleep(every_s)
            consumer = self._consumer
            tps = [TopicPartition(events, p) for p in sorted(self.pipelines)]
            if consumer is None or not tps:
                continue
            side = [TopicPartition(topic, p) for topic in self.agents.topics
                    for p in sorted(self.pipelines)]
            try:
                ends = await asyncio.wait_for(consumer.end_offsets(tps + side), timeout=5)
                lag = {}
                for tp in tps:
                    done = self._committed.get(tp.partition)
                    if done is None:
                        done = await asyncio.wait_for(consumer.position(tp), timeout=1)
                    lag[tp.partition] = max(0, ends[tp] - done)
                agent_lag = dict.fromkeys(self.agents.topics, 0)
                for tp in side:
                    read = await asyncio.wait_for(consumer.position(tp), timeout=1)
                    agent_lag[tp.topic] += max(0, ends[tp] - read)
            except Exception as exc:  # a rebalance, a slow broker: the next round measures
                log.debug("consumer lag not measured this time: %r", exc)
                continue
            self._lag, self._agent_lag = lag, agent_lag

    async def _watch_state(self, every_s: float = 1.0) -> None:
        """Checkpoint stores that receive no writes (a busy store checkpoints as it writes),
        and notice a state directory deleted under the worker: a flush there fails, and
        nothing written from then on would survive a restart, so the worker gives up."""
        while not self._stopping.is_set():
            await asyncio.sleep(every_s)
            try:
                for staged in list(self.stores.values()):
                    store = staged.inner
                    if isinstance(store, RocksStore):
                        if not store.present():
                            raise StateError(f"cannot write state at {store.path}: the "
                                             "directory is gone")
                        store.checkpoint_if_due()  # schedules a flush; does not wait for it
            except StateError as exc:
                self.fail(str(exc))

    async def _watch_broker(self, every_s: float = 1.0) -> None:
        """One cheap request to the broker a second (the input's first end offset), so
        /readyz can say when no broker has answered for longer than the session timeout."""
        tp = TopicPartition(self.topics.events, 0)
        while not self._stopping.is_set():
            consumer = self._consumer
            if consumer is not None:
                try:
                    await asyncio.wait_for(consumer.end_offsets([tp]), timeout=5)
                    self._broker_seen = time.monotonic()
                except Exception as exc:  # KafkaError, a timeout: the broker is not there
                    log.debug("broker probe failed: %r", exc)
            await asyncio.sleep(every_s)

    # -- partitions ------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._agents_paused = False  # a new assignment starts unpaused
        events = self.topics.events
        own = {tp.partition for tp in assigned if tp.topic == events}
        forwarded = {tp.partition for tp in assigned if tp.topic != events}
        if own != forwarded:  # a member of the group with another assignor
            log.warning("input partitions %s and repartition partitions %s were assigned "
                        "apart: forwarded records may be decided late", sorted(own),
                        sorted(forwarded))
        async with self._lock:
            try:
                for p in sorted(own):
                    if p not in self.pipelines:
                        await self._open_partition(p)
            except StateError as exc:  # aiokafka would log and swallow it: the worker stalls
                self.fail(str(exc))
                return
            self.metrics.assigned_partitions.labels(self.topology.name).set(len(self.pipelines))
            self.assigned_once = True
            log.info("assigned partitions %s", sorted(self.pipelines))
            await self._announce()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in flight to be fully written
            await self._drain()
            events = self.topics.events
            gone = sorted(tp.partition for tp in revoked if tp.topic == events)
            for p in gone:
                self._close_partition(p)
            log.info("revoked partitions %s", gone)
            await self._announce()

    async def _announce(self, leaving: bool = False) -> None:
        """Publish which partitions this worker owns now (a tombstone when leaving), so every
        worker routes HTTP reads of a key to its owner. The group generation orders claims."""
        if self._producer is None or self.url is None:
            return
        coordinator = getattr(self._consumer, "_coordinator", None)
        generation = int(getattr(coordinator, "generation", 0) or 0)
        value = None if leaving else Member(self.worker_id, self.url,
                                            frozenset(self.pipelines), generation).encode()
        try:
            await self._producer.send_and_wait(self.topics.members, value,
                                               key=self.worker_id.encode(), partition=0)
        except KafkaError:
            log.exception("could not announce partitions %s; lookups of other workers may "
                          "be routed wrongly until the next rebalance", sorted(self.pipelines))
            return
        self.owners.apply(self.worker_id, value)

    async def _open_partition(self, p: int) -> None:
        # A standby replica of p here is promoted as it is (its store, open): the restore
        # reads only the changelog past its offset, and lookups keep being answered from it
        # until the owned state is up.
        t0 = time.monotonic()
        store = None if self.standbys is None else await self.standbys.take(p)
        promoted_from = None if store is None else store.changelog_offset
        if store is None:
            store = RocksStore(self.state_dir / f"p{p:04d}", self.checkpoints)
        name = self.topology.name
        try:
            restored = await restore(self.cfg.kafka, self.topics.changelog, p, store,
                                     self.metrics.restored_records.labels(name),
                                     self.metrics.restoring_partitions.labels(name))
            self.stores[p] = staged = StagedStore(store)
            self.pipeline.open(p, staged)
        except BaseException:
            self.stores.pop(p, None)
            try:
                store.close()
            except StateError as exc:
                log.warning("partition %d: %s", p, exc)
            raise
        finally:
            if self.standbys is not None:
                self.standbys.done(p)  # the replica's reads end here: the owner answers
        if promoted_from is not None:
            log.info("partition %d: promoted from its standby replica at changelog offset %d "
                     "in %d ms", p, promoted_from, int((time.monotonic() - t0) * 1000))
        log.info("partition %d ready (%d changelog records restored)", p, restored)

    def _close_partition(self, p: int) -> None:
        self.pipeline.close(p)
        self._committed.pop(p, None)  # another worker commits there now
        store = self.stores.pop(p, None)
        standbys = self.standbys
        if store is not None and standbys is not None and not store.staged and \
                isinstance(store.inner, RocksStore) and standbys.adopt(p, store.inner):
            return  # now a standby replica: lookups of p keep an answer through a rebalance
        if store is not None:
            with self.state_lock:
                try:
                    store.close()
                except StateError as exc:  # its changes are in the changelog: nothing lost
                    log.warning("partition %d: %s", p, exc)
        if standbys is not None:
            standbys.include(p)

    # -- models ----------------------------------------------------------------------------

    async def _reload_models(self, every_s: float = 2.0) -> None:
        """Hot reload: pick up new model versions without a restart."""
        assert self.models is not None
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            await asyncio.sleep(every_s)
            try:
                errors = await loop.run_in_executor(None, self.models.refresh)
            except Exception:
                log.exception("model registry scan failed")
                continue
            for err in errors:
                self.metrics.model_load_failures.labels(self.topology.name,
                                                        err.split("/", 1)[0]).inc()

    # -- for the API -----------------------------------------------------------------------

    async def submit_event(self, key: bytes, value: bytes) -> None:
        """Append one event to the input topic (online `?update=true`): the stream applies it
        like any other event, through dedup, the changelog and the commit."""
        assert self._producer is not None
        await self._producer.send_and_wait(self.topics.events, value, key=key,
                                           partition=self.route(key))

    def breaker_state(self, model: str) -> str | None:
        state = self.decider.health().breakers.get(model)
        return None if state is None else state[0]

    def owns(self, partition: int) -> bool:
        return partition in self.stores

    def standby(self, partition: int) -> StandbyRead | None:
        """The standby replica of a partition owned elsewhere, with its lag; None when this
        worker keeps none (or owns the partition)."""
        if self.standbys is None or partition in self.stores:
            return None
        return self.standbys.read(partition)

    @property
    def worker_id(self) -> str:
        """Unique per process: the API's URL and the process id."""
        # cached per URL: every answer names it (a hot path), and the URL is set once
        url = self.url or f"{self.cfg.api.host}:{self.cfg.api.port}"
        cached = self._worker_id
        if cached is None or cached[0] != url:
            cached = self._worker_id = (url, f"{url}/pid{os.getpid()}")
        return cached[1]


class _Listener(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked):
        await self._worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned):
        await self._worker.on_assigned(set(assigned))
