"""`streamwise replay`: re-run the live pipeline over Kafka offsets, a time range or a file.

Replay is the live code path with another driver: the same `PartitionPipeline`, the same
decider, fresh state in its own temporary RocksDB folder, its own consumer without a group (no
live offsets are touched), and output to Parquet, JSONL or an explicit topic only.

Determinism: records are re-cut into fixed-size batches whatever the fetch sizes were,
partitions are replayed one after the other (``event_time`` topologies merge them by event
time), `decided_at_ms` is the newest event time seen (not the wall clock) and timings are left
out of files, so two replays of one range write identical bytes.

Parquet output is a training set: per decision its input record's partition and offset, the
event's own fields (``event_<field>``), the features (counts as integers), the decision, times
as UTC timestamps, optionally a label joined point in time (`engine.labels`), and file metadata
saying what produced it (topology, feature set, model versions, the replayed range).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from . import __version__
from .clock import ManualClock
from .errors import ConfigError, EngineError
from .event_files import keyed_events
from .kafka_io import (
    KafkaTarget,
    MissingTopicError,
    TopicSpec,
    ensure_topics,
    missing_topics,
    new_consumer,
    new_producer,
    partition_for,
    read_to_end,
)
from .labels import Labels, parse_time
from .logs import release_held_logs
from .pipeline import Decider, Pipeline, Record
from .profiles import apply_profile_records
from .progress import Bar
from .replay_sinks import JsonlSink, ParquetSink, Sink, TopicSink
from .state import RocksStore
from .topology import Topology

__all__ = ["Decided", "EmptyRange", "ReplayRange", "ReplaySummary", "check_output",
           "parse_offsets", "parse_time", "replay_file", "replay_kafka"]

BATCH = 1000
_Sink = Sink  # the sink protocol's former name (tests/unit/test_replay_order.py)


class EmptyRange(EngineError):
    """The range holds no event: nothing to decide (exit 1 unless --allow-empty)."""

    exit_code = 1


class Decided(NamedTuple):
    """One decision of a replay and the input record it decided: (key, decision JSON, the
    record's offset, its raw value). Sinks index it (`[0]`, `[1]`)."""

    key: bytes
    value: bytes
    offset: int
    event: bytes | None


def parse_offsets(text: str) -> dict[int, int]:
    """``P:O,P:O`` → {partition: offset}."""
    out: dict[int, int] = {}
    try:
        for part in text.split(","):
            p, o = part.split(":")
            out[int(p)] = int(o)
    except ValueError:
        raise ConfigError(f"offsets look like 0:120,1:98, not {text!r}") from None
    if any(p < 0 or o < 0 for p, o in out.items()):
        raise ConfigError(f"negative partition or offset in {text!r}")
    return out


@dataclass(frozen=True)
class ReplayRange:
    """Where to start and stop. Times are Kafka record timestamps (epoch ms); a replay with
    no end stops at the end offsets seen when it starts, so it always terminates."""

    from_beginning: bool = False
    from_time_ms: int | None = None
    from_offsets: dict[int, int] | None = None
    to_time_ms: int | None = None
    to_offsets: dict[int, int] | None = None


@dataclass
class ReplaySummary:
    events: int = 0
    decisions: int = 0
    duplicates: int = 0
    late: int = 0
    dlq: int = 0
    warmup_events: int = 0
    elapsed_s: float = 0.0
    partitions: list[int] = field(default_factory=list)

    def line(self) -> str:
        rate = self.events / self.elapsed_s if self.elapsed_s else 0.0
        warm = (f", {self.warmup_events:,} earlier events replayed first to warm up windows"
                if self.warmup_events else "")
        return (f"replayed {self.events:,} events → {self.decisions:,} decisions, "
                f"{self.duplicates:,} duplicates, {self.late:,} late, {self.dlq:,} DLQ in "
                f"{self.elapsed_s:.1f}s ({rate:,.0f} events/s){warm}")


# -- the driver ----------------------------------------------------------------------------


class _Runner:
    """Runs one partition's records through a fresh pipeline, batch by batch."""

    def __init__(self, topology: Topology, decider: Decider, profiles: dict, workdir: Path,
                 summary: ReplaySummary, progress: Bar, topic: str) -> None:
        self.topic = topic  # named in dead-letter and late records
        self.topology = topology
        self.decider = decider
        self.profiles = profiles
        self.workdir = workdir
        self.summary = summary
        self.progress = progress

    async def decisions(self, partition: int, batches: AsyncIterator[list[Record]],
                        emit_from: int) -> AsyncGenerator[list[Decided], None]:
        """The partition's decisions with the input record each decided, one list per batch;
        warm-up batches yield nothing."""
        store = RocksStore(self.workdir / f"p{partition:04d}")
        clock = ManualClock(0)
        # A pipeline per partition: an event_time merge interleaves partitions, and each
        # partition's end-of-range flush must drain only its own reorder buffer.
        pipe = Pipeline(self.topology, self.decider, clock, topic=self.topic)
        pipe.open(partition, store)
        origins = _Origins(self.topology)
        last_offset = -1
        try:
            async for batch in batches:
                last_offset = batch[-1].offset
                for part in _split(batch, emit_from):
                    # decided_at = newest event time seen: deterministic, unlike the wall clock
                    clock.advance(origins.add(part) - clock.now_ms())
                    result = pipe.process({partition: part}, self.profiles).partitions[partition]
                    store.apply(result.changes)
                    origins.drop(result)
                    decided = origins.match(result.decisions)
                    self.progress.advance(len(part))
                    if part[0].offset < emit_from:
                        self.summary.warmup_events += len(part)
                        continue
                    self.summary.events += len(part)
                    self.summary.decisions += len(result.decisions)
                    self.summary.duplicates += result.duplicates
                    self.summary.late += len(result.late)
                    self.summary.dlq += len(result.dlq)
                    if decided:
                        yield decided
            # End of the range: events an event_time reorder buffer still holds are decided
            # too (a replay never leaves an event without a decision).
            tail = pipe.flush(self.profiles).partitions.get(partition)
            if tail is None:
                return
            store.apply(tail.changes)
            decided = origins.match(tail.decisions)
            if last_offset >= emit_from and decided:
                self.summary.decisions += len(decided)
                yield decided
        finally:
            store.close()


class _Origins:
    """Which input record each decision decided: the records not decided yet, by event id,
    oldest first (a duplicate's decision re-emits its original's, and belongs to the
    duplicate's own record; an event_time buffer releases records later)."""

    def __init__(self, topology: Topology) -> None:
        self._ts_field = topology.time_field
        self._id_field = topology.event_id_field
        self._score_late = topology.score_late
        self._waiting: dict[str, deque[tuple[int, bytes | None]]] = {}
        self._ids: dict[int, str] = {}  # offset -> event id, of the records waiting

    def add(self, records: list[Record]) -> int:
        """Note the records of a batch; returns their newest event time (0 without one)."""
        newest = 0
        for r in records:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
                doc = orjson.loads(r.value or b"null")
                ts = doc.get(self._ts_field)
                if isinstance(ts, int) and ts > newest:
                    newest = ts
                eid = doc.get(self._id_field)
                if eid is not None and eid != "":
                    self._waiting.setdefault(str(eid), deque()).append((r.offset, r.value))
                    self._ids[r.offset] = str(eid)
        return newest

    def drop(self, result: Any) -> None:
        """Forget records that get no decision: dead letters (and late events a topology
        does not score)."""
        side = list(result.dlq) + ([] if self._score_late else list(result.late))
        for rec in side:
            offset = int(dict(rec.headers).get("streamwise.offset", b"-1"))
            eid = self._ids.pop(offset, None)
            queue = self._waiting.get(eid) if eid is not None else None
            if queue:
                kept = deque(x for x in queue if x[0] != offset)
                if kept:
                    self._waiting[eid] = kept
                else:
                    del self._waiting[eid]

    def match(self, decisions: list[tuple[bytes, bytes]]) -> list[Decided]:
        out = []
        for key, value in decisions:
            eid = str(orjson.loads(value)["event_id"])
            queue = self._waiting.get(eid)
            offset, event = queue.popleft() if queue else (-1, None)
            if queue is not None and not queue:
                del self._waiting[eid]
            self._ids.pop(offset, None)
            out.append(Decided(key, value, offset, event))
        return out


async def _write_in_order(streams: dict[int, AsyncGenerator[list[Any], None]], sink: Sink,
                          merge_by_event_time: bool) -> None:
    """Partition after partition, or (``event_time`` topologies) a k-way merge of the
    partitions' decision streams by event time: each partition keeps its own order, and among
    partition heads the oldest event time goes first (ties: lower partition). Memory holds one
    batch of decisions per partition."""
    if not merge_by_event_time:
        for p, stream in streams.items():
            async for decisions in stream:
                sink.write(p, decisions)
                await sink.flush()
        return
    pending: dict[int, deque[tuple[int, Any]]] = {}
    heads: list[tuple[int, int]] = []

    async def refill(p: int) -> None:
        async for decisions in streams[p]:
            if decisions:
                pending[p] = deque((_event_ts(d[1]), d) for d in decisions)
                heapq.heappush(heads, (pending[p][0][0], p))
                return

    for p in streams:
        await refill(p)
    run_p, run = -1, []
    while heads:
        _, p = heapq.heappop(heads)
        queue = pending[p]
        if p != run_p and run:
            sink.write(run_p, run)
            run = []
        run_p = p
        run.append(queue.popleft()[1])
        if queue:
            heapq.heappush(heads, (queue[0][0], p))
        else:
            sink.write(p, run)
            run = []
            await sink.flush()
            await refill(p)
    await sink.flush()


def _merges(topology: Topology) -> bool:
    return topology.time.ordering == "event_time"


def _event_ts(decision: bytes) -> int:
    return orjson.loads(decision)["event_ts_ms"]


def _split(batch: list[Record], boundary: int) -> list[list[Record]]:
    """Cut a batch at the first offset to emit, so warm-up and output never share a batch."""
    if batch[0].offset >= boundary or batch[-1].offset < boundary:
        return [batch]
    i = next(i for i, r in enumerate(batch) if r.offset >= boundary)
    return [batch[:i], batch[i:]]


async def _rechunk(source: AsyncIterator[list], size: int) -> AsyncIterator[list[Record]]:
    buf: list[Record] = []
    async for chunk in source:
        buf.extend(Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                   for m in chunk)
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


def check_output(output: str, kafka: bool, labels: bool = False) -> None:
    """Refuse an output the replay could not write, before any work starts."""
    if output.startswith("topic:"):
        if not kafka:
            raise ConfigError("--output topic:NAME needs Kafka input, not --input")
        if not output[len("topic:"):]:
            raise ConfigError("--output topic: needs a topic name")
        if labels:
            raise ConfigError("--labels makes a training set: --output .parquet or .jsonl")
        return
    path = Path(output)
    if path.suffix not in (".parquet", ".jsonl"):
        raise ConfigError(f"--output must end in .parquet or .jsonl, or be topic:NAME; "
                          f"not {output}")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"--output {output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {output}: folder {folder} is not writable")
    if path.is_dir():
        raise ConfigError(f"--output {output} is a folder")


@dataclass(frozen=True)
class _Provenance:
    """What a training-set file says about itself (Parquet file metadata)."""

    topology: Topology
    models: dict[str, str]
    source: dict[str, Any]
    labels: Labels | None

    def metadata(self) -> dict[str, str]:
        t = self.topology
        meta = {"topology": t.name, "feature_set": t.features.versioned_name,
                "features": list(t.features.names), "models": self.models,
                "replayed": self.source, "streamwise_version": __version__,
                "event_time_field": t.time_field, "ordering": t.time.ordering}
        if self.labels is not None:
            meta["labels"] = {"file": self.labels.source, "labels": len(self.labels),
                              "join": "event_id; a label is attached to an event only when "
                                      "the event's time is before the label's time (newest)"}
        return {f"streamwise.{k}": orjson.dumps(v).decode() if not isinstance(v, str) else v
                for k, v in meta.items()}


def _open_sink(output: str, prov: _Provenance, producer: AIOKafkaProducer | None) -> Sink:
    if output.startswith("topic:"):
        assert producer is not None
        return TopicSink(producer, output[len("topic:"):])
    path = Path(output)
    if path.suffix == ".parquet":
        return ParquetSink(path, prov.topology, prov.metadata(), prov.labels)
    return JsonlSink(path, prov.labels)


def _not_empty(events: int, what: str, allow_empty: bool) -> None:
    if events <= 0 and not allow_empty:
        raise EmptyRange(f"nothing to replay: {what} holds no records; pass --allow-empty "
                         "to write an empty output anyway")


async def _range(consumer: AIOKafkaConsumer, topology: Topology, topic: str,
                 rng: ReplayRange, partitions: int
                 ) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """(first offset to emit, first offset to read: warm-up, stop offset) per partition."""
    for given in (rng.from_offsets, rng.to_offsets):
        bad = sorted(p for p in (given or {}) if p >= partitions)
        if bad:
            raise ConfigError(f"partition {bad[0]} does not exist: {topic} has {partitions} "
                              f"partitions (0-{partitions - 1})")
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    begin = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    starts, warm_starts, stops = {}, {}, {}
    for tp in tps:
        p = tp.partition
        starts[p] = begin[tp]
        if rng.from_offsets is not None:
            starts[p] = max(begin[tp], rng.from_offsets.get(p, end[tp]))
        stops[p] = end[tp] if rng.to_offsets is None else min(end[tp],
                                                                rng.to_offsets.get(p, end[tp]))
    if rng.from_time_ms is not None:
        starts = await _offsets_at(consumer, tps, rng.from_time_ms, end)
        # Warm-up: rebuild the windows the first events need (largest retain + lateness).
        lookback = max(tb.retain_ms for tb in topology.tables) + \
            topology.time.allowed_lateness_ms + topology.time.max_out_of_orderness_ms
        warm_starts = await _offsets_at(consumer, tps, rng.from_time_ms - lookback, end)
    if rng.to_time_ms is not None:
        at = await _offsets_at(consumer, tps, rng.to_time_ms, end)
        stops = {p: min(stops[p], at[p]) for p in stops}
    return starts, {p: warm_starts.get(p, starts[p]) for p in starts}, stops


async def _partition_count(consumer: AIOKafkaConsumer, topic: str) -> int:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # noqa: SLF001 (the topic exists)
        parts = consumer.partitions_for_topic(topic) or set()
    return len(parts)


async def replay_kafka(kafka: KafkaTarget, topology: Topology, decider: Decider, prefix: str,
                       rng: ReplayRange, output: str, partitions: int | None = None, *,
                       labels: Labels | None = None, models: dict[str, str] | None = None,
                       allow_empty: bool = True) -> ReplaySummary:
    """Replay the topology's input topic over `rng` to `output`. `partitions`: the count the
    caller expects (None: whatever the topic has). Refuses a missing input topic, and (unless
    `allow_empty`) a range without records, before the output is created."""
    topics = topology.topics(prefix)
    absent = await missing_topics(kafka, [topics.events, topics.profiles])
    if topics.events in absent:
        raise MissingTopicError(f"input topic {topics.events} does not exist (check "
                                "--topic-prefix and --broker)")
    profiles: dict = {}
    if topics.profiles not in absent:  # never a metadata request for a missing topic
        async for chunk in read_to_end(kafka, topics.profiles):
            apply_profile_records(profiles, chunk)
    consumer = new_consumer(kafka, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        have = await _partition_count(consumer, topics.events)
        if partitions is not None and partitions != have:
            raise ConfigError(f"topic {topics.events} has {have} partitions, not {partitions}; "
                              f"pass --partitions {have}")
        partitions = have
        starts, firsts, stops = await _range(consumer, topology, topics.events, rng, partitions)
    finally:
        await consumer.stop()
    emitted = sum(max(0, stops[p] - starts[p]) for p in stops)
    _not_empty(emitted, f"the range of {topics.events}", allow_empty)
    release_held_logs()  # the start-up checks passed
    source = {"topic": topics.events, "from_beginning": rng.from_beginning,
              "from_time_ms": rng.from_time_ms, "to_time_ms": rng.to_time_ms,
              "offsets": {str(p): [starts[p], max(starts[p], stops[p])] for p in sorted(stops)},
              "warmup_from": {str(p): firsts[p] for p in sorted(firsts) if firsts[p] < starts[p]}}
    prov = _Provenance(topology, models or {}, source, labels)

    producer = None
    if output.startswith("topic:"):
        await ensure_topics(kafka, [TopicSpec(output[6:], partitions, {})])
        producer = new_producer(kafka, acks="all", max_batch_size=1 << 20)
        await producer.start()
    summary = ReplaySummary(partitions=list(range(partitions)))
    workdir = Path(tempfile.mkdtemp(prefix="streamwise-replay-"))
    streams: dict[int, AsyncGenerator[list[Decided], None]] = {}
    sink: Sink | None = None
    try:
        sink = _open_sink(output, prov, producer)
        total = sum(max(0, stops[p] - firsts[p]) for p in stops)
        with Bar("replay", total) as progress:
            runner = _Runner(topology, decider, profiles, workdir, summary, progress,
                             topics.events)
            t0 = time.monotonic()
            for p in range(partitions):
                if stops[p] > firsts[p]:
                    source_records = _read_range(kafka, topics.events, p, firsts[p], stops[p])
                    streams[p] = runner.decisions(p, _rechunk(source_records, BATCH),
                                                  emit_from=starts[p])
            await _write_in_order(streams, sink, _merges(topology))
    finally:
        for stream in streams.values():
            await stream.aclose()  # closes the stores of partitions cut short by an error
        if sink is not None:
            sink.close()
        if producer is not None:
            await producer.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary.elapsed_s = time.monotonic() - t0
    return summary


async def _offsets_at(consumer: AIOKafkaConsumer, tps: list[TopicPartition], ts_ms: int,
                      end: dict) -> dict[int, int]:
    found = await consumer.offsets_for_times({tp: max(ts_ms, 0) for tp in tps})
    return {tp.partition: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}


async def _read_range(kafka: KafkaTarget, topic: str, partition: int, start: int, stop: int
                      ) -> AsyncIterator[list]:
    async for chunk in read_to_end(kafka, topic, [partition], start_offsets={partition: start}):
        kept = [m for m in chunk if m.offset < stop]
        if kept:
            yield kept
        if chunk[-1].offset >= stop - 1:
            return


def _file_records(path: Path, topology: Topology, partitions: int) -> dict[int, list[Record]]:
    """Events of a JSONL or Parquet file, partitioned as the producer would partition them."""
    out: dict[int, list[Record]] = {}
    for key, value in keyed_events(path, topology.key_field):
        p = partition_for(key, partitions) if key else 0
        recs = out.setdefault(p, [])
        recs.append(Record(str(path), p, len(recs), key, value, None))  # no record time
    return out


async def replay_file(path: Path, topology: Topology, decider: Decider, profiles: dict,
                      output: str, partitions: int, *, labels: Labels | None = None,
                      models: dict[str, str] | None = None, allow_empty: bool = True
                      ) -> ReplaySummary:
    """Batch scoring of a file with no Kafka at all. A record's offset is its position in its
    partition's share of the file."""
    by_partition = _file_records(path, topology, partitions)
    n = sum(len(v) for v in by_partition.values())
    _not_empty(n, f"input file {path}", allow_empty)
    release_held_logs()
    prov = _Provenance(topology, models or {}, {"file": path.name, "records": n,
                                                "partitions": partitions}, labels)
    summary = ReplaySummary(partitions=sorted(by_partition))
    sink = _open_sink(output, prov, None)
    workdir = Path(tempfile.mkdtemp(prefix="streamwise-replay-"))
    t0 = time.monotonic()
    streams: dict[int, AsyncGenerator[list[Decided], None]] = {}
    try:
        with Bar("replay", n) as progress:
            runner = _Runner(topology, decider, profiles, workdir, summary, progress, str(path))
            streams = {p: runner.decisions(p, _chunks(by_partition[p]), emit_from=0)
                       for p in sorted(by_partition)}
            await _write_in_order(streams, sink, _merges(topology))
    finally:
        for stream in streams.values():
            await stream.aclose()  # closes the stores of partitions cut short by an error
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)
    summary.elapsed_s = time.monotonic() - t0
    return summary


async def _chunks(records: list[Record]) -> AsyncIterator[list[Record]]:
    for i in range(0, len(records), BATCH):
        yield records[i:i + BATCH]
