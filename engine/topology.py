"""Topology: the frozen, declarative description of one deployment, validated at load."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel

from .agents import TABLE_RE, TOPIC_RE, Agent, AgentBatch
from .errors import TopologyError
from .features import FeatureSet, SinceLastFeature, TableFeature, WindowFeature
from .partitioning import PARTITIONERS, Partitioner
from .policy import Rules
from .rollout.settings import RolloutSettings
from .scoring.chain import ScoringSettings
from .windows import Hopping, Sliding, TileTable, Tumbling

__all__ = ["STAGES", "Profiles", "ReferenceWorkload", "StageBudget", "TimeSettings", "Topology",
           "TopicNames"]

Ordering = Literal["arrival", "event_time"]


class ReferenceWorkload(Protocol):
    """What a topology's workload generator returns."""

    events: list[dict]  # event documents in production order (a duplicate is repeated)
    profiles: dict[str, dict]  # entity key -> profile document (empty without profiles)
    # optional `side`: agent topic (relative, e.g. "outcomes") -> documents keyed like events,
    # produced by `streamwise produce --side TOPIC`


@dataclass(frozen=True)
class TimeSettings:
    """Event-time settings, in ms. See `engine.ordering.Watermark` for the exact rule."""

    max_out_of_orderness_ms: int
    allowed_lateness_ms: int
    ordering: Ordering = "arrival"
    reorder_capacity: int = 10_000


STAGES = ("validate", "dedup", "features", "inference", "policy", "total")


@dataclass(frozen=True)
class StageBudget:
    """Latency budget of one pipeline stage, in ms, at two quantiles (alerts compare the
    stage histograms against these)."""

    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Profiles:
    """Batch-precomputed entity profiles read from the compacted ``T.profiles`` topic.

    Values are JSON objects keyed by the entity key; every worker holds all of them.
    """

    fields: tuple[str, ...]


@dataclass(frozen=True)
class TopicNames:
    """Kafka topic and group names of a topology, with an optional prefix for isolation."""

    events: str
    decisions: str
    dlq: str
    late: str
    profiles: str
    control: str
    changelog: str
    members: str
    repartition: str
    progress: str
    group: str

    @classmethod
    def of(cls, name: str, prefix: str = "") -> TopicNames:
        base = f"{prefix}{name}"
        return cls(events=f"{base}.events", decisions=f"{base}.decisions", dlq=f"{base}.dlq",
                   late=f"{base}.late", profiles=f"{base}.profiles", control=f"{base}.control",
                   changelog=f"{base}.changelog", members=f"{base}.members",
                   repartition=f"{base}.repartition", progress=f"{base}.progress",
                   group=f"{prefix}streamwise-{name}")


@dataclass(frozen=True)
class Topology:
    """One deployment: input contract, key, dedup, time, tables, features, rules.

    `score_late`: late events still get a decision (scored with aggregates as they stand,
    without themselves); they never change an aggregate either way.
    `max_future_ms`: an event whose time is further ahead than this of its record's Kafka
    timestamp (online: of the time the request arrived) is refused with reason
    ``future_time``, so no single event can drag a partition's watermark into the future
    (None: no check).
    `partitioner`: how the topology's producers spread keys over partitions (``murmur2``: the
    Java client's and aiokafka's default; ``crc32``: librdkafka's). Online routing follows
    it, and a record not on the partition it gives the record's entity key is forwarded
    there through the repartition topic before it touches any state.
    `workload`: the topology's reference workload, for `streamwise produce`, the demo and the
    bench: ``workload(n_events, seed)`` returns a `ReferenceWorkload`, the same for the same
    arguments; it may also be given the keyword shares ``duplicates``, ``disorder`` and
    ``late`` (each in [0, 1]) and ``start_ms`` (event time of the first event, epoch ms).
    None: ``produce`` needs ``--file``.
    `agents`: Faust-style agents over side topics (`engine.agents`); `agent` adds one with a
    decorator once the topology exists.
    `decision_context`: event fields copied into every decision, under ``context`` (what a
    consumer of the decisions, an agent among them, needs of the event beyond its features).
    """

    name: str
    schema: type[BaseModel]
    key_field: str
    event_id_field: str
    time_field: str
    dedup_ttl_ms: int
    time: TimeSettings
    tables: tuple[TileTable, ...]
    features: FeatureSet
    rules: Rules
    profiles: Profiles | None = None
    scoring: ScoringSettings | None = None
    models_dir: Path | None = None
    budgets: Mapping[str, StageBudget] = field(default_factory=dict)
    rollout: RolloutSettings = RolloutSettings()  # guardrails, validation minima, held-out set
    score_late: bool = True
    max_record_bytes: int = 1 << 20
    max_future_ms: int | None = 600_000
    partitioner: Partitioner = "murmur2"
    default_partitions: int = 8
    description: str = ""
    workload: Callable[..., ReferenceWorkload] | None = None
    agents: tuple[Agent, ...] = ()
    decision_context: tuple[str, ...] = ()
    _tables_by_name: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        object.__setattr__(self, "_tables_by_name", {t.name: t for t in self.tables})

    def table(self, name: str) -> TileTable:
        return self._tables_by_name[name]

    def topics(self, prefix: str = "") -> TopicNames:
        return TopicNames.of(self.name, prefix)

    def agent(self, topic: str, tables: tuple[str, ...] = (), local_tables: tuple[str, ...] = ()
              ) -> Callable[[Callable[[AgentBatch], Awaitable[None]]],
                            Callable[[AgentBatch], Awaitable[None]]]:
        """Declare the decorated ``async def fn(batch: AgentBatch)`` an agent over `topic`
        (relative to the topology: ``"outcomes"`` is ``<prefix><name>.outcomes``; the
        topology's own ``"decisions"`` are fed in process) owning `tables` (rows on their
        key's partition) and `local_tables` (rows in every partition). Raises TopologyError
        on a bad name or a table declared twice."""
        def register(fn: Callable[[AgentBatch], Awaitable[None]]
                     ) -> Callable[[AgentBatch], Awaitable[None]]:
            agents = (*self.agents, Agent(fn.__name__, topic, fn, tuple(tables),
                                          tuple(local_tables)))
            self._validate_agents(agents)
            object.__setattr__(self, "agents", agents)  # declared once, at import
            return fn
        return register

    def agent_topic(self, topic: str, prefix: str = "") -> str:
        """The full name of an agent's `topic` (relative to the topology)."""
        return f"{prefix}{self.name}.{topic}"

    def agent_table(self, name: str) -> Agent | None:
        """The agent owning table `name`, or None."""
        return next((a for a in self.agents if name in a.tables or name in a.local_tables),
                    None)

    @property
    def reads_agent_tables(self) -> bool:
        """Whether decisions depend on agents (table features): the worker then records its
        agents' progress per poll, for replay."""
        return bool(self.features.agent_tables_read())

    def check_table_features(self) -> None:
        """Raise TopologyError unless every table feature reads a declared agent table: run
        once the module declaring the topology (and its agents) is imported."""
        for f in self.features.features:
            for table in f.tables if isinstance(f, TableFeature) else ():
                if self.agent_table(table) is None:
                    raise TopologyError(f"topology {self.name!r}: feature {f.name} reads "
                                        f"table {table!r}, which no agent declares")

    def _validate(self) -> None:
        def fail(msg: str) -> None:
            raise TopologyError(f"topology {self.name!r}: {msg}")

        if not self.name.replace("_", "").isalnum():
            fail("name must be alphanumeric or underscore")
        fields = self.schema.model_fields
        for what in ("key_field", "event_id_field", "time_field"):
            if getattr(self, what) not in fields:
                fail(f"{what}={getattr(self, what)!r} is not a field of {self.schema.__name__}")
        if self.schema.model_config.get("allow_inf_nan", True):
            fail(f"{self.schema.__name__} must set allow_inf_nan=False")
        if self.dedup_ttl_ms <= 0:
            fail("dedup_ttl_ms must be > 0")
        if self.max_future_ms is not None and self.max_future_ms < 0:
            fail("max_future_ms must be >= 0 (or None: no check)")
        if self.partitioner not in PARTITIONERS:
            fail(f"partitioner must be one of {', '.join(PARTITIONERS)}, not "
                 f"{self.partitioner!r}")
        t = self.time
        if t.max_out_of_orderness_ms < 0 or t.allowed_lateness_ms < 0:
            fail("out-of-orderness and allowed lateness must be >= 0")
        if t.ordering not in ("arrival", "event_time"):
            fail(f"ordering must be 'arrival' or 'event_time', not {t.ordering!r}")
        names = [tb.name for tb in self.tables]
        if len(set(names)) != len(names):
            fail("table names must be unique")
        tables = {tb.name: tb for tb in self.tables}
        for tb in self.tables:
            if tb.tile_ms <= 0:
                fail(f"table {tb.name}: tile_ms must be > 0")
            for f in (tb.value_field, tb.distinct_field):
                if f is not None and f not in fields:
                    fail(f"table {tb.name}: {f!r} is not a field of the schema")
        seen = set()
        for f in self.features.features:
            if f.name in seen:
                fail(f"feature {f.name!r} defined twice")
            seen.add(f.name)
            if isinstance(f, WindowFeature | SinceLastFeature) and f.table not in tables:
                fail(f"feature {f.name}: unknown table {f.table!r}")
            if isinstance(f, TableFeature):
                if not f.tables or isinstance(f.tables, str):
                    fail(f"feature {f.name}: tables must be a tuple of agent table names")
                if f.key_field not in fields:
                    fail(f"feature {f.name}: {f.key_field!r} is not a field of the schema")
            if isinstance(f, WindowFeature):
                tb = tables[f.table]
                w = f.window
                sizes = [w.duration_ms] + ([w.step_ms] if isinstance(w, Hopping) else [])
                if any(s <= 0 or s % tb.tile_ms for s in sizes):
                    fail(f"feature {f.name}: window sizes must be positive multiples of "
                         f"the table's tile ({tb.tile_ms} ms)")
                if isinstance(w, Sliding | Tumbling | Hopping) and w.duration_ms > tb.retain_ms:
                    fail(f"feature {f.name}: window {w.duration_ms} ms is longer than table "
                         f"{tb.name}'s retain_ms {tb.retain_ms}")
        for f in self.decision_context:
            if f not in fields:
                fail(f"decision_context: {f!r} is not a field of the schema")
        for stage, b in self.budgets.items():
            if stage not in STAGES:
                fail(f"budget for unknown stage {stage!r}; stages are {', '.join(STAGES)}")
            if not 0 < b.p95_ms <= b.p99_ms:
                fail(f"budget of {stage}: need 0 < p95_ms <= p99_ms")
        unknown = set(self.features.critical) - seen
        if unknown:
            fail(f"critical features not defined: {sorted(unknown)}")
        self._validate_agents(self.agents)

    def _validate_agents(self, agents: tuple[Agent, ...]) -> None:
        def fail(msg: str) -> None:
            raise TopologyError(f"topology {self.name!r}: {msg}")

        # the topology's own topics, but the decisions: they are the agents' usual input
        own = {f.name for f in fields(TopicNames)} - {"group", "decisions"}
        names, tables = set(), {tb.name for tb in self.tables}
        for a in agents:
            if not TOPIC_RE.fullmatch(a.topic) or a.topic in own:
                fail(f"agent {a.name}: topic {a.topic!r} must match {TOPIC_RE.pattern} and not "
                     f"be one of {sorted(own)}")
            if a.name in names:
                fail(f"agent {a.name} declared twice")
            names.add(a.name)
            for tb in (*a.tables, *a.local_tables):
                if not TABLE_RE.fullmatch(tb):
                    fail(f"agent {a.name}: table name {tb!r} must match {TABLE_RE.pattern}")
                if tb in tables:
                    fail(f"agent {a.name}: table {tb!r} is declared twice")
                tables.add(tb)
