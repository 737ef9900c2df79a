"""Agents in replay: their tables rebuilt at the input positions where the live worker had them.

A decision that reads an agent table (`engine.features.TableFeature`) depends on which agent
records had been applied when its poll started. The live worker writes that down per poll and
partition (``T.progress``: the poll's first input offset, and each Kafka-fed agent's position);
agents on the decisions were fed each poll's decisions after it. Replay follows the same
schedule: it cuts its batches at those offsets and, at each, feeds the agents on the decisions
the decisions made since the last cut, then applies each Kafka-fed agent's records (read from
its topic) up to the recorded position. Between two cuts the tables hold still, as they did
live, so the decisions read the same rows.

Without a record (file input, or a worker too old to write them) agents on the decisions are
fed after every replay batch and Kafka-fed agents get nothing: decisions that read agent
tables may then differ from the live ones, and replay says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .agents import ProgressHistory, drive, run_agent
from .kafka_io import KafkaTarget, missing_topics, read_to_end
from .pipeline import Pipeline, Record
from .pipeline.records import FORWARDED
from .topology import Topology

__all__ = ["AgentSchedule", "read_schedules"]

log = logging.getLogger(__name__)

SideRecord = tuple[int, bytes | None, bytes | None, int | None]  # offset, key, value, ts


@dataclass
class AgentSchedule:
    """One partition's agent schedule in replay (see the module's docstring)."""

    partition: int
    history: ProgressHistory = field(default_factory=ProgressHistory)
    side: dict[str, list[SideRecord]] = field(default_factory=dict)  # agent topic -> records
    _next: int = 0  # the next progress record to reach
    _made: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # since the last cut

    def cut(self, records: Sequence[Record]) -> Iterator[Sequence[Record]]:
        """`records` (one replay batch, in offset order) in pieces that each start at a cut
        or run to the batch's end; call `reach` before processing each."""
        at = self.history.at
        lo, i = 0, self._next
        for j, r in enumerate(records):
            if r.offset >= FORWARDED:
                continue
            while i < len(at) and at[i] <= r.offset:
                if j > lo:
                    yield records[lo:j]
                    lo = j
                i += 1
        if lo < len(records):
            yield records[lo:]

    def reach(self, piece: Sequence[Record], pipe: Pipeline, store) -> None:
        """Before `piece` (from `cut`): every cut at or below its first own record, in
        order."""
        offset = next((r.offset for r in piece if r.offset < FORWARDED), None)
        if offset is None:
            return
        at = self.history.at
        while self._next < len(at) and at[self._next] <= offset:
            changes: dict[bytes, bytes | None] = {}
            pipe.feed_agents(self.partition, self._made, changes)
            self._made = []
            store.apply(changes)
            for agent in pipe.topology.agents:
                if agent.in_process:
                    continue
                upto = self.history.agents[self._next].get(agent.name, 0)
                records = [r for r in self.side.get(agent.topic, ()) if r[0] < upto]
                if records:  # run_agent skips what it has applied already
                    changes, _ = drive(run_agent(agent, self.partition, store, records),
                                       agent.name)
                    store.apply(changes)
            self._next += 1

    def made(self, decisions: Sequence[tuple[int, bytes, bytes]]) -> None:
        """A piece's decisions: fed to the agents at the next cut."""
        self._made += decisions

    @property
    def recorded(self) -> bool:
        return len(self.history) > 0


async def read_schedules(kafka: KafkaTarget, topology: Topology, prefix: str,
                         partitions: int) -> dict[int, AgentSchedule]:
    """Each partition's schedule from the progress topic and the agents' topics (read to
    their ends); empty when decisions read no agent table."""
    if not topology.reads_agent_tables:
        return {}
    schedules = {p: AgentSchedule(p) for p in range(partitions)}
    progress = topology.topics(prefix).progress
    side = {topology.agent_topic(a.topic, prefix): a.topic
            for a in topology.agents if not a.in_process}
    absent = set(await missing_topics(kafka, [progress, *side]))
    if progress not in absent:
        async for chunk in read_to_end(kafka, progress):
            for m in chunk:
                if m.partition in schedules:
                    schedules[m.partition].history.add(m.value)
    for topic, relative in side.items():
        if topic in absent:
            continue
        async for chunk in read_to_end(kafka, topic):
            for m in chunk:
                if m.partition in schedules:
                    schedules[m.partition].side.setdefault(relative, []).append(
                        (m.offset, m.key, m.value, m.timestamp))
    unrecorded = [p for p, s in schedules.items() if not s.recorded]
    if unrecorded:
        warn_unrecorded(topology, unrecorded)
    return schedules


def warn_unrecorded(topology: Topology, partitions: Sequence[int] | None = None) -> None:
    where = f" for partitions {list(partitions)}" if partitions is not None else ""
    log.warning("no agent progress recorded%s: topology %s's decisions read agent tables, "
                "which replay rebuilds batch by batch; they may differ from the live ones",
                where, topology.name)

