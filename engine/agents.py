"""Agents: Faust-style async functions over side streams, with tables of their own.

A topology declares an agent on one of its topics (named relative to the topology: with
``@TOPOLOGY.agent("decisions", tables=("card_risk",))`` the agent reads
``<prefix><topology>.decisions``). The topic must have as many partitions as the input: the
worker that owns input partition p reads partition p of every agent topic, under the same
consumer group, and the agent's tables live in partition p's state store, beside the windowed
tables, written through the same changelog batch and restored with it.

Each poll, the agent is awaited once per partition with the poll's records of that partition
(like Faust's ``stream.take``): an `AgentBatch` of `AgentRecord`s, oldest first, and the
partition's tables. What it writes to its tables becomes part of the poll's state change set,
together with the position the agent has read up to, so a crash re-delivers records the agent
has already applied and they are skipped: every record changes the tables exactly once (the
input offsets are committed at least once after).

Keys are routed like entities: a table key lives on the partition the topology's partitioner
gives it, and an agent writes only keys of its own partition (`OwnershipError` otherwise), so
``GET /v1/tables/{table}/{key}`` finds a key at its owner. A *local* table
(``local_tables=``) is the exception: each partition keeps its own row for any key (e.g. a
merchant's statistics over the payments of the cards that partition decides), so a decision
reads it without leaving its partition; over HTTP a key's row is the one its owner keeps.
Values are JSON objects.

An agent on the topology's own ``"decisions"`` is fed in process, not from Kafka: after each
poll, with the decisions the poll made (each once, in order; a duplicate's re-emitted copy is
not one), in the same change set as those decisions (`run_decision_agents`). Its records have
the input record's position as `offset` and no timestamp.

Table features (`engine.features.TableFeature`) read agent rows when a poll starts, so a
decision depends on which agent records had been applied by then. The worker writes that
down per poll (`progress_doc`, to ``T.progress``) and replay re-applies the agents at the
same input positions (`ProgressHistory`).

Pure: no Kafka, no RocksDB; the worker (`engine.worker.agents`) feeds it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .state import layout

__all__ = ["DECISIONS", "Agent", "AgentBatch", "AgentRecord", "AgentTable", "OwnershipError",
           "ProgressHistory", "TableReader", "drive", "positions", "progress_doc", "read_row",
           "run_agent", "run_decision_agents"]

DECISIONS = "decisions"  # the topic of an agent fed in process with the poll's decisions

TOPIC_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
TABLE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class OwnershipError(ValueError):
    """An agent wrote a key that belongs to another partition."""


class TableReader(Protocol):
    """What an agent table reads from: a partition's store (staged changes included)."""

    def get(self, key: bytes) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """One record of an agent's topic: `value` is its JSON document (None: a tombstone or not
    a JSON document, with `raw` as read), `timestamp_ms` its Kafka timestamp (epoch ms)."""

    offset: int
    key: str | None
    value: Any
    timestamp_ms: int | None
    raw: bytes | None


@dataclass(frozen=True)
class Agent:
    """An agent: `fn(batch)` awaited for each partition's share of a poll of `topic`."""

    name: str
    topic: str  # relative to the topology: "decisions" -> "<prefix><topology>.decisions"
    fn: Callable[[AgentBatch], Awaitable[None]]
    tables: tuple[str, ...] = ()
    local_tables: tuple[str, ...] = ()  # one row per key in every partition, not routed

    @property
    def in_process(self) -> bool:
        """Fed with the poll's own decisions, not read from Kafka."""
        return self.topic == DECISIONS

    def open_tables(self, partition: int, store: TableReader, changes: dict[bytes, bytes | None],
                    route: Callable[[bytes], int] | None) -> dict[str, AgentTable]:
        tables = {name: AgentTable(name, partition, store, changes, route)
                  for name in self.tables}
        tables.update((name, AgentTable(name, partition, store, changes, None))
                      for name in self.local_tables)
        return tables


class AgentTable:
    """One agent table of one partition: JSON objects by key.

    Reads see the partition's stored state with this poll's writes over it. `set` and `delete`
    change nothing until the poll's change set is written.
    """

    def __init__(self, name: str, partition: int, store: TableReader,
                 changes: dict[bytes, bytes | None],
                 route: Callable[[bytes], int] | None) -> None:
        self.name = name
        self.partition = partition
        self._store = store
        self._changes = changes
        self._route = route
        self._keys: dict[str, bytes] = {}  # key -> its store key, ownership checked

    def _key(self, key: str) -> bytes:
        k = self._keys.get(key)
        if k is None:
            raw = key.encode()
            if self._route is not None and self._route(raw) != self.partition:
                raise OwnershipError(
                    f"table {self.name}: key {key!r} belongs to partition {self._route(raw)}, "
                    f"not {self.partition}; key the agent's topic by the table's key")
            k = self._keys[key] = layout.agent_key(self.name, raw)
        return k

    def get(self, key: str, default: Any = None) -> Any:
        k = self._key(key)
        raw = self._changes[k] if k in self._changes else self._store.get(k)
        return default if raw is None else orjson.loads(raw)

    def __getitem__(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def set(self, key: str, value: Mapping[str, Any]) -> None:
        """Store `value` (a JSON object) under `key`."""
        if not isinstance(value, Mapping):
            raise TypeError(f"table {self.name}: a value is a JSON object, not "
                            f"{type(value).__name__}")
        self._changes[self._key(key)] = orjson.dumps(value)

    __setitem__ = set

    def delete(self, key: str) -> None:
        self._changes[self._key(key)] = None


@dataclass
class AgentBatch:
    """One partition's records of a poll, oldest first, and the agent's tables there."""

    partition: int
    records: list[AgentRecord]
    tables: Mapping[str, AgentTable] = field(default_factory=dict)

    def table(self, name: str) -> AgentTable:
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"the agent did not declare table {name!r} (declared: "
                           f"{sorted(self.tables)})") from None

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def read_row(store: TableReader, table: str, key: str) -> Any:
    """A row of an agent table as stored (None: no such key)."""
    raw = store.get(layout.agent_key(table, key.encode()))
    return None if raw is None else orjson.loads(raw)


def _decode_record(offset: int, key: bytes | None, value: bytes | None,
                  timestamp_ms: int | None) -> AgentRecord:
    """An agent record; a value that is not a JSON document is given as None (and `raw`)."""
    doc = None
    if value is not None:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = None
    return AgentRecord(offset, None if key is None else key.decode(errors="replace"), doc,
                       timestamp_ms if timestamp_ms is not None and timestamp_ms >= 0 else None,
                       value)


async def run_agent(agent: Agent, partition: int, store: TableReader,
                    records: list[tuple[int, bytes | None, bytes | None, int | None]],
                    route: Callable[[bytes], int] | None = None
                    ) -> tuple[dict[bytes, bytes | None], int | None]:
    """Apply one partition's records ``(offset, key, value, timestamp_ms)`` (oldest first) to
    `agent`: the change set to write (its tables' changes and the agent's new position) and
    the offset to commit (the last record's + 1; None: nothing new). Records below the
    position stored for the agent were applied before a crash and are skipped."""
    changes: dict[bytes, bytes | None] = {}
    if not records:
        return changes, None
    marker = layout.agent_position_key(agent.name)
    stored = store.get(marker)
    done = int(stored) if stored is not None else -1  # offsets below this are applied
    fresh = [_decode_record(o, k, v, t) for o, k, v, t in records if o >= done]
    end = records[-1][0] + 1
    if fresh:
        await agent.fn(AgentBatch(partition, fresh,
                                  agent.open_tables(partition, store, changes, route)))
        changes[marker] = str(end).encode()
    return changes, end


def run_decision_agents(agents: Sequence[Agent], partition: int, store: TableReader,
                        changes: dict[bytes, bytes | None],
                        made: Sequence[tuple[int, bytes, bytes]],
                        route: Callable[[bytes], int] | None = None) -> None:
    """Feed the decisions a poll made on `partition` (``(input position, key, decision)``, in
    order) to the in-process `agents`, writing their tables' changes into `changes` (the
    poll's change set: reads see it over the store). Runs without an event loop: such an
    agent must not wait on I/O (an agent that suspends raises RuntimeError)."""
    if not made:
        return
    records = [AgentRecord(pos, key.decode(errors="replace"), orjson.loads(body), None, body)
               for pos, key, body in made]
    for agent in agents:
        drive(agent.fn(AgentBatch(partition, records,
                                  agent.open_tables(partition, store, changes, route))),
              agent.name)


def drive(coro: Coroutine[Any, Any, Any], name: str) -> Any:
    """Run an agent's coroutine to its end without an event loop (inside a poll, in replay,
    in `engine.testing`); RuntimeError when it suspends, i.e. waits on I/O."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError(f"agent {name} waited on I/O: an agent run inside a poll or a replay "
                       "must finish without awaiting")


def positions(store: TableReader, agents: Sequence[Agent]) -> dict[str, int]:
    """Where each agent read from Kafka has applied its topic up to in this store (the next
    offset; 0: nothing yet)."""
    out = {}
    for a in agents:
        raw = store.get(layout.agent_position_key(a.name))
        out[a.name] = int(raw) if raw is not None else 0
    return out


def progress_doc(at: int, agents: dict[str, int]) -> bytes:
    """The progress record of one partition's poll: its input starts at offset `at`, and its
    table features read agent rows with each Kafka-fed agent applied up to `agents[name]`."""
    return orjson.dumps({"at": at, "agents": agents})


class ProgressHistory:
    """One partition's progress records, as they end up mattering: a worker that restarted
    wrote a record for an offset again, and what it wrote then (and after) replaces what the
    earlier run wrote from that offset on."""

    def __init__(self) -> None:
        self.at: list[int] = []
        self.agents: list[dict[str, int]] = []

    def add(self, raw: bytes | None) -> None:
        try:
            doc = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("at"), int):
            return
        at = doc["at"]
        while self.at and self.at[-1] >= at:  # a restart re-decided from `at` on
            self.at.pop()
            self.agents.pop()
        self.at.append(at)
        self.agents.append({k: v for k, v in (doc.get("agents") or {}).items()
                            if isinstance(v, int)})

    def __len__(self) -> int:
        return len(self.at)
