"""`streamwise replay`: re-run the live pipeline over Kafka offsets, a time range or a file.

Replay is the live code path with another driver: the same `PartitionPipeline`, the same
decider, fresh state in its own temporary RocksDB folder, its own consumer without a group (no
live offsets are touched), and output to Parquet, JSONL or an explicit topic only.

Determinism: records are re-cut into fixed-size batches whatever the fetch sizes were,
partitions are replayed one after the other (``event_time`` topologies merge them by event
time), `decided_at_ms` is the newest event time seen (not the wall clock) and timings are left
out of files, so two replays of one range write identical bytes.
"""

from __future__ import annotations

import contextlib
import heapq
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from .clock import ManualClock
from .errors import ConfigError
from .event_files import keyed_events
from .kafka_io import TopicSpec, ensure_topics, partition_for, read_to_end, send_all
from .pipeline import Decider, Pipeline, Record
from .profiles import apply_profile_records
from .state import RocksStore
from .topology import Topology

__all__ = ["ReplayRange", "ReplaySummary", "check_output", "parse_offsets", "parse_time",
           "replay_file", "replay_kafka"]

BATCH = 1000


def parse_time(text: str) -> int:
    """ISO-8601 (``2026-01-01T00:00:00Z``) or epoch ms → epoch ms."""
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"not an ISO time or epoch ms: {text!r}") from None
    if dt.tzinfo is None:
        raise ConfigError(f"{text!r} has no time zone; add Z or +00:00")
    return int(dt.timestamp() * 1000)


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


# -- sinks ---------------------------------------------------------------------------------


class _Sink:
    def write(self, partition: int, decisions: list[tuple[bytes, bytes]]) -> None: ...

    async def flush(self) -> None: ...

    def close(self) -> None: ...


def _row(raw: bytes, partition: int) -> dict:
    d = orjson.loads(raw)
    d.pop("stage_ms", None)  # wall-clock timings: in the summary, not in the file
    d["partition"] = partition
    return d


class JsonlSink(_Sink):
    def __init__(self, path: Path) -> None:
        self._fh = open(path, "wb")  # noqa: SIM115 (closed in close())

    def write(self, partition: int, decisions: list[tuple[bytes, bytes]]) -> None:
        for _, raw in decisions:
            self._fh.write(orjson.dumps(_row(raw, partition), option=orjson.OPT_SORT_KEYS))
            self._fh.write(b"\n")

    def close(self) -> None:
        self._fh.close()


class ParquetSink(_Sink):
    """Decision fields plus one ``feature_<name>`` column per feature; row groups of
    `chunk_rows` keep memory bounded."""

    def __init__(self, path: Path, feature_names: Sequence[str], chunk_rows: int = 20_000):
        self._names = list(feature_names)
        fields = [("decision_id", pa.string()), ("event_id", pa.string()), ("key", pa.string()),
                  ("partition", pa.int32()), ("score", pa.float64()), ("decision", pa.string()),
                  ("model", pa.string()), ("path", pa.string()),
                  ("reasons", pa.list_(pa.string())), ("event_ts_ms", pa.int64()),
                  ("decided_at_ms", pa.int64())]
        fields += [(f"feature_{n}", pa.float64()) for n in self._names]
        self._schema = pa.schema(fields)
        self._writer = pq.ParquetWriter(path, self._schema, compression="zstd")
        self._rows: list[dict] = []
        self._chunk = chunk_rows

    def write(self, partition: int, decisions: list[tuple[bytes, bytes]]) -> None:
        for _, raw in decisions:
            d = _row(raw, partition)
            feats = d.pop("features")
            for n in self._names:
                v = feats.get(n)
                d[f"feature_{n}"] = None if v is None else float(v)
            self._rows.append(d)
        if len(self._rows) >= self._chunk:
            self._write_rows()

    def _write_rows(self) -> None:
        if self._rows:
            table = pa.Table.from_pylist(self._rows, schema=self._schema)
            self._writer.write_table(table)
            self._rows = []

    def close(self) -> None:
        self._write_rows()
        self._writer.close()


class TopicSink(_Sink):
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._pending: list[tuple[int, list[tuple[bytes, bytes]]]] = []

    def write(self, partition: int, decisions: list[tuple[bytes, bytes]]) -> None:
        self._pending.append((partition, decisions))

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        await send_all(self._producer, self._topic,
                       ((p, (k, v, [])) for p, decisions in pending for k, v in decisions))


# -- the driver ----------------------------------------------------------------------------


class _Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._t0 = time.monotonic()
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self._tty and (now - self._last > 0.5 or self.done >= self.total):
            self._last = now
            rate = self.done / max(now - self._t0, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0
            sys.stderr.write(f"\r  replay {self.done:,}/{self.total:,} events  "
                             f"{rate:,.0f} events/s  ETA {eta:,.0f}s   ")
            sys.stderr.flush()

    def end(self) -> None:
        if self._tty:
            sys.stderr.write("\n")


class _Runner:
    """Runs one partition's records through a fresh pipeline, batch by batch."""

    def __init__(self, topology: Topology, decider: Decider, profiles: dict, workdir: Path,
                 summary: ReplaySummary, progress: _Progress, topic: str) -> None:
        self.topic = topic  # named in dead-letter and late records
        self.topology = topology
        self.decider = decider
        self.profiles = profiles
        self.workdir = workdir
        self.summary = summary
        self.progress = progress

    async def decisions(self, partition: int, batches: AsyncIterator[list[Record]],
                        emit_from: int) -> AsyncGenerator[list[tuple[bytes, bytes]], None]:
        """The partition's decisions, one list per batch; warm-up batches yield nothing."""
        store = RocksStore(self.workdir / f"p{partition:04d}")
        clock = ManualClock(0)
        # A pipeline per partition: an event_time merge interleaves partitions, and each
        # partition's end-of-range flush must drain only its own reorder buffer.
        pipe = Pipeline(self.topology, self.decider, clock, topic=self.topic)
        pipe.open(partition, store)
        ts_field = self.topology.time_field
        last_offset = -1
        try:
            async for batch in batches:
                last_offset = batch[-1].offset
                for part in _split(batch, emit_from):
                    # decided_at = newest event time seen: deterministic, unlike the wall clock
                    clock.advance(_max_event_ts(part, ts_field) - clock.now_ms())
                    result = pipe.process({partition: part}, self.profiles).partitions[partition]
                    store.apply(result.changes)
                    self.progress.advance(len(part))
                    if part[0].offset < emit_from:
                        self.summary.warmup_events += len(part)
                        continue
                    self.summary.events += len(part)
                    self.summary.decisions += len(result.decisions)
                    self.summary.duplicates += result.duplicates
                    self.summary.late += len(result.late)
                    self.summary.dlq += len(result.dlq)
                    if result.decisions:
                        yield result.decisions
            # End of the range: events an event_time reorder buffer still holds are decided
            # too (a replay never leaves an event without a decision).
            tail = pipe.flush(self.profiles).partitions.get(partition)
            if tail is None:
                return
            store.apply(tail.changes)
            if last_offset >= emit_from and tail.decisions:
                self.summary.decisions += len(tail.decisions)
                yield tail.decisions
        finally:
            store.close()


async def _write_in_order(streams: dict[int, AsyncGenerator[list[tuple[bytes, bytes]], None]],
                          sink: _Sink, merge_by_event_time: bool) -> None:
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
    pending: dict[int, deque[tuple[int, tuple[bytes, bytes]]]] = {}
    heads: list[tuple[int, int]] = []

    async def refill(p: int) -> None:
        async for decisions in streams[p]:
            if decisions:
                pending[p] = deque((_event_ts(raw), (k, raw)) for k, raw in decisions)
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


def _max_event_ts(records: list[Record], ts_field: str) -> int:
    newest = 0
    for r in records:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
            ts = orjson.loads(r.value or b"null").get(ts_field)
            if isinstance(ts, int) and ts > newest:
                newest = ts
    return newest


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


def check_output(output: str, kafka: bool) -> None:
    """Refuse an output the replay could not write, before any work starts."""
    if output.startswith("topic:"):
        if not kafka:
            raise ConfigError("--output topic:NAME needs Kafka input, not --input")
        if not output[len("topic:"):]:
            raise ConfigError("--output topic: needs a topic name")
    elif Path(output).suffix not in (".parquet", ".jsonl"):
        raise ConfigError(f"--output must end in .parquet or .jsonl, or be topic:NAME; "
                          f"not {output}")


def _open_sink(output: str, topology: Topology, producer: AIOKafkaProducer | None) -> _Sink:
    check_output(output, kafka=producer is not None or not output.startswith("topic:"))
    if output.startswith("topic:"):
        return TopicSink(producer, output[len("topic:"):])
    path = Path(output)
    if path.suffix == ".parquet":
        return ParquetSink(path, topology.features.names)
    return JsonlSink(path)


async def replay_kafka(bootstrap: str, topology: Topology, decider: Decider, prefix: str,
                       rng: ReplayRange, output: str, partitions: int) -> ReplaySummary:
    topics = topology.topics(prefix)
    profiles: dict = {}
    async for chunk in read_to_end(bootstrap, topics.profiles):
        apply_profile_records(profiles, chunk)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topics.events, p) for p in range(partitions)]
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
    finally:
        await consumer.stop()

    producer = None
    if output.startswith("topic:"):
        await ensure_topics(bootstrap, [TopicSpec(output[6:], partitions, {})])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    max_batch_size=1 << 20)
        await producer.start()
    summary = ReplaySummary(partitions=list(range(partitions)))
    sink = _open_sink(output, topology, producer)
    workdir = Path(tempfile.mkdtemp(prefix="streamwise-replay-"))
    total = sum(stops[p] - warm_starts.get(p, starts[p]) for p in stops)
    progress = _Progress(max(total, 0))
    runner = _Runner(topology, decider, profiles, workdir, summary, progress, topics.events)
    t0 = time.monotonic()
    streams: dict[int, AsyncGenerator[list[tuple[bytes, bytes]], None]] = {}
    try:
        for p in range(partitions):
            first = warm_starts.get(p, starts[p])
            if stops[p] > first:
                source = _read_range(bootstrap, topics.events, p, first, stops[p])
                streams[p] = runner.decisions(p, _rechunk(source, BATCH), emit_from=starts[p])
        await _write_in_order(streams, sink, _merges(topology))
    finally:
        for stream in streams.values():
            await stream.aclose()  # closes the stores of partitions cut short by an error
        progress.end()
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


async def _read_range(bootstrap: str, topic: str, partition: int, start: int, stop: int
                      ) -> AsyncIterator[list]:
    async for chunk in read_to_end(bootstrap, topic, [partition], start_offsets={partition: start}):
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
        recs.append(Record(str(path), p, len(recs), key, value, 0))
    return out


async def replay_file(path: Path, topology: Topology, decider: Decider, profiles: dict,
                      output: str, partitions: int) -> ReplaySummary:
    """Batch scoring of a file with no Kafka at all."""
    by_partition = _file_records(path, topology, partitions)
    summary = ReplaySummary(partitions=sorted(by_partition))
    sink = _open_sink(output, topology, None)
    workdir = Path(tempfile.mkdtemp(prefix="streamwise-replay-"))
    progress = _Progress(sum(len(v) for v in by_partition.values()))
    runner = _Runner(topology, decider, profiles, workdir, summary, progress, str(path))
    t0 = time.monotonic()
    streams = {p: runner.decisions(p, _chunks(by_partition[p]), emit_from=0)
               for p in sorted(by_partition)}
    try:
        await _write_in_order(streams, sink, _merges(topology))
    finally:
        for stream in streams.values():
            await stream.aclose()  # closes the stores of partitions cut short by an error
        progress.end()
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)
    summary.elapsed_s = time.monotonic() - t0
    return summary


async def _chunks(records: list[Record]) -> AsyncIterator[list[Record]]:
    for i in range(0, len(records), BATCH):
        yield records[i:i + BATCH]
