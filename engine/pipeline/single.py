"""One partition through a `Pipeline`, step by step: the shape tests and tools drive."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..clock import Clock
from ..ordering import Watermark
from ..topology import Topology
from .batch import Pipeline
from .decide import Decider
from .partition import PartitionState, Store
from .preview import Preview, features_now, preview
from .records import BatchResult, InputRecord

__all__ = ["PartitionPipeline"]


class PartitionPipeline:
    """A `Pipeline` holding one partition: `process` takes that partition's records (offset
    order) and returns its `BatchResult`, with the poll's stage timings as `stage_ms`.
    `topic` (what dead-letter and late records name as their origin) defaults to the
    topology's input topic without a prefix."""

    def __init__(self, topology: Topology, partition: int, store: Store, decider: Decider,
                 clock: Clock, topic: str | None = None) -> None:
        self.topology = topology
        self.partition = partition
        self.pipeline = Pipeline(topology, decider, clock,
                                 topic=topic if topic is not None else topology.topics().events)
        self.state: PartitionState = self.pipeline.open(partition, store)
        self._clock = clock

    @property
    def watermark(self) -> Watermark:
        return self.state.watermark

    def process(self, records: Sequence[InputRecord],
                profiles: Mapping[str, Mapping[str, Any]]) -> BatchResult:
        return self._one(self.pipeline.process({self.partition: records}, profiles))

    def flush(self, profiles: Mapping[str, Mapping[str, Any]]) -> BatchResult:
        return self._one(self.pipeline.flush(profiles))

    def _one(self, poll) -> BatchResult:
        result = poll.partitions.get(self.partition, BatchResult())
        result.stage_ms = poll.stage_ms  # type: ignore[attr-defined]
        return result

    def preview(self, events: Sequence[Any], profiles: Mapping[str, Mapping[str, Any]],
                decider: Decider) -> list[Preview]:
        return preview(self.state, events, profiles, decider, self._clock.now_ms())

    def features_now(self, key: str, profiles: Mapping[str, Mapping[str, Any]]):
        return features_now(self.state, key, profiles)
