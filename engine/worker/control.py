"""The worker's side of rollout: tail `T.control`, apply every change to the decider, judge
the guardrails, and write the automatic transitions (rollback on a breach; the next ramp
step and the release, by the worker that owns input partition 0).

A worker reads the control topic to its end before it joins its group (`load`), so it
decides nothing before it knows the current rollout state. After that one consumer without a
group tails it (fetches wait at most 200 ms), so a change is applied within about that plus
loading a candidate model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from ..clock import Clock
from ..kafka_io import KafkaTarget, new_consumer, new_producer, read_to_end
from ..rollout.control_io import write_state, writer_id
from ..rollout.metrics import RolloutCollector, RolloutMetrics
from ..rollout.state import ControlLog, RolloutState, advance, rollback
from ..scoring.rollout import RolloutDecider

__all__ = ["RolloutControl", "RolloutRejected", "submit"]

log = logging.getLogger("streamwise.rollout")

_JUDGE_EVERY_S = 0.5
_PENDING_S = 5.0  # after writing, wait this long for our record before writing again


class RolloutControl:
    def __init__(self, kafka: KafkaTarget, topic: str, decider: RolloutDecider, topology: str,
                 clock: Clock, registry: CollectorRegistry,
                 controller: Callable[[], bool]) -> None:
        self._kafka = kafka
        self._topic = topic
        self.decider = decider
        self._topology = topology
        self._clock = clock
        self._controller = controller  # does this worker advance ramps (owns partition 0)?
        self.log = ControlLog()
        self.metrics = RolloutMetrics.create(registry, topology)
        registry.register(RolloutCollector(topology, lambda: dict(self.log.slots)))
        self._position = 0
        self._writer = writer_id("worker")
        self._producer = None
        self._pending: tuple[str, int, float] | None = None  # (slot, seq written, when)
        self.loaded = False

    async def load(self) -> None:
        """Read the control topic to its end and apply it: before any decision."""
        async for chunk in read_to_end(self._kafka, self._topic, partitions=[0]):
            self.log.apply_all((r.key, r.value) for r in chunk)
            self._position = chunk[-1].offset + 1
        await asyncio.to_thread(self.decider.apply, dict(self.log.slots))
        self.loaded = True
        for s in self.log.slots.values():
            log.info("rollout %s: serving %s, %s%s", s.slot, s.serving, s.stage,
                     f" {s.candidate}" if s.candidate else "")

    async def run(self, stopping: asyncio.Event) -> None:
        """Tail the control topic and judge the guardrails until `stopping`."""
        consumer = new_consumer(self._kafka, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=200)
        await consumer.start()
        tp = TopicPartition(self._topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, self._position)
        next_judge = time.monotonic()
        try:
            while not stopping.is_set():
                try:
                    batches = await consumer.getmany(tp, timeout_ms=200, max_records=1000)
                except KafkaError:
                    log.exception("control topic read failed; retrying")
                    await asyncio.sleep(1.0)
                    continue
                records = batches.get(tp, [])
                if records:
                    changed = self.log.apply_all((r.key, r.value) for r in records)
                    if changed:
                        await asyncio.to_thread(self.decider.apply, dict(self.log.slots))
                        delay = time.time() - records[-1].timestamp / 1000
                        self.metrics.apply_delay_seconds.labels(self._topology).set(
                            max(0.0, delay))
                        for s in changed:
                            log.info("rollout %s: seq %d %s (%s)", s.slot, s.seq, s.stage,
                                     s.reason)
                if time.monotonic() >= next_judge:
                    next_judge = time.monotonic() + _JUDGE_EVERY_S
                    await self._judge()
        finally:
            await consumer.stop()
            if self._producer is not None:
                await self._producer.stop()

    # -- guardrails and ramps ---------------------------------------------------------------

    async def _judge(self) -> None:
        self._export_shadow()
        plan = self.decider.plan
        r, window = plan.rollout, plan.window
        if r is None or window is None or r.stage not in ("canary", "ramp"):
            return
        current = self.log.slots.get(r.slot)
        if current is None or current.seq != r.seq:
            return  # the decider has not caught up yet
        now_s = self._clock.now_ms() / 1000
        breach, canary, serving = window.judge(now_s)
        m, t = self.metrics, self._topology
        for side, stats in (("canary", canary), ("serving", serving)):
            m.side_rows.labels(t, r.slot, side).set(stats.rows)
            m.side_decline_ratio.labels(t, r.slot, side).set(stats.decline_rate)
            m.side_error_ratio.labels(t, r.slot, side).set(stats.error_rate)
        if canary.hist and serving.hist:
            from ..rollout.guardrails import psi
            m.score_psi.labels(t, r.slot).set(psi(serving.hist, canary.hist))
        if self._pending is not None:
            slot, seq, when = self._pending
            if current.seq < seq and time.monotonic() - when < _PENDING_S:
                return  # our last write is on its way back to us
            self._pending = None
        now_ms = self._clock.now_ms()
        if breach is not None:
            m.breaches.labels(t, r.slot, breach.guardrail).inc()
            new = rollback(current, r.slot, f"worker:{self._writer}", now_ms, automatic=True,
                           reason=f"guardrail {breach.guardrail}: {breach.detail}; rolled back "
                                  f"{r.slot}:{r.candidate} at {r.percent:g}%")
            log.error("rollout %s: %s", r.slot, new.reason)
            if await self._write(new):
                m.rollbacks.labels(t, r.slot).inc()
            return
        if r.stage == "ramp" and r.plan is not None and self._controller():
            dwell_ok = now_ms - r.step_started_ms >= r.plan.dwell_s * 1000
            rows = self.decider.step_rows
            if dwell_ok and rows >= r.plan.min_events and canary.rows >= window.settings.min_rows:
                why = (f"guardrails held over {window.settings.window_s:g} s, {rows} candidate "
                       f"decisions in {(now_ms - r.step_started_ms) / 1000:.0f} s")
                await self._write(advance(current, f"worker:{self._writer}", now_ms, why))

    async def _write(self, state: RolloutState) -> bool:
        try:
            if self._producer is None:
                self._producer = new_producer(self._kafka, acks="all", enable_idempotence=True)
                await self._producer.start()
            await write_state(self._producer, self._topic, state, self._writer)
        except KafkaError:
            log.exception("could not write rollout state %s seq %d", state.slot, state.seq)
            return False
        self._pending = (state.slot, state.seq, time.monotonic())
        return True

    def _export_shadow(self) -> None:
        stats = self.decider.drain_rollout_stats()
        m, t = self.metrics, self._topology
        for (ref, decision), n in stats.shadow.items():
            m.shadow_decisions.labels(t, ref, decision).inc(n)
        for ref, n in stats.shadow_disagreements.items():
            m.shadow_disagreements.labels(t, ref).inc(n)


class RolloutRejected(Exception):
    """A rollout request refused before anything was written: `status` says how (HTTP)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def submit(control: RolloutControl, kafka: KafkaTarget, topic: str, models: Any,
                 req: Any, by: str) -> RolloutState:
    """A rollout command from the HTTP API: the contract check of a staged version (the
    registry's load), then the same `next_state` the CLI writes."""
    from ..errors import ModelError
    from ..rollout.command import STAGING, next_state, parse_target
    from ..rollout.control_io import change
    from ..rollout.state import RolloutError

    if req.action in (*STAGING, "promote", "rollback"):
        try:
            slot, version = parse_target(req.target, req.action, control.log)
            if version is None and req.action in STAGING:
                raise RolloutError(f"{req.action} takes SLOT=VERSION")
            if version is not None:  # what would serve or be staged must load
                await asyncio.to_thread(models.load_version, slot, version)
        except RolloutError as exc:
            raise RolloutRejected(400, str(exc)) from None
        except ModelError as exc:
            raise RolloutRejected(422, f"refused: {exc}") from None

    def serving_default(slot: str) -> str:
        model = models.get(slot)
        if model is None:
            raise RolloutError(f"{slot}: this worker serves no version of it")
        return model.version

    def build(log: ControlLog) -> RolloutState:
        return next_state(log, req, serving_default, by, int(time.time() * 1000))

    try:
        return await change(kafka, topic, build, "api")
    except RolloutError as exc:
        raise RolloutRejected(409, str(exc)) from None
