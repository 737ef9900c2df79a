"""The worker's side of agents (`engine.agents`): which topics they read, and one poll's
records of those topics applied to the partitions' stores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition

from ..agents import Agent, run_agent
from ..pipeline import PollResult
from ..pipeline.records import BatchResult
from ..topology import Topology

__all__ = ["AgentError", "AgentFeeds"]


class AgentError(RuntimeError):
    """An agent raised: the worker stops rather than skip records whose updates it would lose."""


class AgentFeeds:
    """The agents of a topology that read Kafka, by the topic they read (topic prefix
    applied); those on the topology's own decisions are fed by the pipeline."""

    def __init__(self, topology: Topology, prefix: str, route) -> None:
        self.by_topic: dict[str, list[Agent]] = {}
        for a in topology.agents:
            if a.in_process:
                continue
            self.by_topic.setdefault(topology.agent_topic(a.topic, prefix), []).append(a)
        self._route = route

    @property
    def topics(self) -> list[str]:
        return sorted(self.by_topic)

    async def apply(self, batches: Mapping[TopicPartition, Sequence[Any]],
                    stores: Mapping[int, Any], poll: PollResult) -> dict[TopicPartition, int]:
        """Each agent over its partitions' records of this poll (partitions this worker does
        not own are skipped: their owner reads them). Their table changes join the poll's
        change set of the partition; returns the offsets to commit once it is written."""
        commits: dict[TopicPartition, int] = {}
        for tp, msgs in batches.items():
            store = stores.get(tp.partition)
            if store is None or not msgs:
                continue
            records = [(m.offset, m.key, m.value, m.timestamp) for m in msgs]
            for agent in self.by_topic[tp.topic]:
                try:
                    changes, end = await run_agent(agent, tp.partition, store, records,
                                                   self._route)
                except Exception as exc:
                    raise AgentError(
                        f"agent {agent.name} failed on {tp.topic}[{tp.partition}] offsets "
                        f"{records[0][0]}-{records[-1][0]}: {exc!r}") from exc
                if changes:
                    poll.partitions.setdefault(tp.partition, BatchResult()).changes.update(
                        changes)
                if end is not None:
                    commits[tp] = end
        return commits
