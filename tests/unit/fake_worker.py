"""A stand-in for `engine.worker.Worker` as the HTTP API reads it (the `ServedWorker`
protocol): the fraud topology, no models, no rollouts, every partition owned, nothing ever
appended to the input topic. Tests subclass it and give it their state (`pipelines`)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

import topologies
from engine.clock import ManualClock
from engine.config import EngineConfig
from engine.metrics import EngineMetrics
from engine.routing import OwnerMap

__all__ = ["TOPO", "FakeServedWorker"]

TOPO = topologies.get("fraud")


class FakeServedWorker:
    topology = TOPO
    partitions = 8
    worker_id = "http://127.0.0.1:1/pid1"
    profiles: dict = {}
    models = None
    owners = OwnerMap()
    ready = (True, "ready")
    failure: str | None = None  # the worker has not given up (its state is writable)
    state_lock = threading.Lock()
    clock = ManualClock(1_800_000_000_000)
    control = None  # no model rollouts (no models either): cfg and topics are never read
    cfg = EngineConfig()
    topics = TOPO.topics()

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = EngineMetrics.create(self.registry, TOPO.name)

    def owns(self, partition: int) -> bool:
        return True

    def standby(self, partition: int) -> None:
        return None  # no standby replicas: every partition is owned

    async def submit_event(self, key: bytes, value: bytes) -> None:
        raise AssertionError("no test appends to the input topic")

    def breaker_state(self, model: str) -> str | None:
        return None
