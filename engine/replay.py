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

import os
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from . import __version__
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
from .partitioning import router
from .pipeline import Decider, Record
from .profiles import apply_profile_records
from .progress import Bar
from .replay_agents import read_schedules, warn_unrecorded
from .replay_routing import RoutingSpool
from .replay_runner import (
    BATCH,
    Decided,
    ReplaySummary,
    _chunks,
    _merges,
    _Runner,
    _write_in_order,
)
from .sinks.files import JsonlSink, ParquetSink, Sink
from .sinks.kafka import TopicSink
from .topology import Topology

__all__ = ["Decided", "EmptyRange", "ReplayRange", "ReplaySummary", "check_output",
           "parse_offsets", "parse_time", "replay_file", "replay_kafka"]

_Sink = Sink  # the sink protocol's former name (tests/unit/test_replay_order.py)


class EmptyRange(EngineError):
    """The range holds no event: nothing to decide (exit 1 unless --allow-empty)."""

    exit_code = 1


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
        t0 = time.monotonic()
        spool = RoutingSpool(workdir / "spool", topology, topics.events,
                             router(partitions, topology.partitioner))
        with Bar("read", total) as progress:
            for p in range(partitions):
                if stops[p] > firsts[p]:
                    async for chunk in _read_range(kafka, topics.events, p, firsts[p], stops[p]):
                        spool.add(p, chunk, emit_from=starts[p])
                        progress.advance(len(chunk))
                    spool.finish()
        summary.routed = spool.routed
        schedules = await read_schedules(kafka, topology, prefix, partitions)
        with Bar("replay", total) as progress:
            runner = _Runner(topology, decider, profiles, workdir, summary, progress,
                             topics.events, schedules)
            for p in spool.partitions():
                streams[p] = runner.decisions(p, _aiter(spool.batches(p, BATCH)))
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


async def _aiter(items: Iterator[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _file_records(path: Path, topology: Topology, partitions: int) -> dict[int, list[Record]]:
    """Events of a JSONL or Parquet file, partitioned as the producer would partition them."""
    out: dict[int, list[Record]] = {}
    for key, value in keyed_events(path, topology.key_field):
        p = partition_for(key, partitions, topology.partitioner) if key else 0
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
    if topology.reads_agent_tables:  # a file has no record of the agents' progress
        warn_unrecorded(topology)
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
            streams = {p: runner.decisions(p, _chunks(by_partition[p]))
                       for p in sorted(by_partition)}
            await _write_in_order(streams, sink, _merges(topology))
    finally:
        for stream in streams.values():
            await stream.aclose()  # closes the stores of partitions cut short by an error
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)
    summary.elapsed_s = time.monotonic() - t0
    return summary


