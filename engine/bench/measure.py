"""What the harness reads back: progress, outputs, latencies, peak RSS, stage histograms."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np
import orjson
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from engine.kafka_io import new_admin, new_consumer, read_to_end

__all__ = ["Output", "committed_total", "end_offsets", "first_consumed_ms", "latencies_ms",
           "latency_parts_ms", "peak_rss_mb", "percentile", "progress", "read_input_times",
           "read_outputs", "stage_buckets", "stage_p99_ms"]

Output = tuple[str, int, dict]  # event id, Kafka timestamp (ms), decoded value


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = new_consumer(bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: o for tp, o in ends.items()}
    finally:
        await consumer.stop()


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on `topic` (0 before its first commit)."""
    admin = new_admin(bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        return sum(m.offset for tp, m in committed.items() if tp.topic == topic and m.offset > 0)
    finally:
        await admin.close()


async def progress(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[int, int]:
    """(the group's committed offsets, the end offsets), each summed over `topic`."""
    ends = await end_offsets(bootstrap, topic, partitions)
    return await committed_total(bootstrap, group, topic), sum(ends.values())


async def read_outputs(bootstrap: str, topic: str, start: dict[int, int] | None = None,
                       ) -> list[Output]:
    """Every output record from `start` (default: the beginning) to the current end."""
    out: list[Output] = []
    async for chunk in read_to_end(bootstrap, topic, start_offsets=start):
        for m in chunk:
            doc = orjson.loads(m.value)
            out.append((doc["event_id"], m.timestamp, doc))
    return out


async def read_input_times(bootstrap: str, topic: str, start: dict[int, int],
                           ) -> list[tuple[str, int]]:
    """(event id, produce timestamp in ms) of each input record from `start` on."""
    out = []
    async for chunk in read_to_end(bootstrap, topic, start_offsets=start):
        out += [(orjson.loads(m.value)["event_id"], m.timestamp) for m in chunk]
    return out


def latencies_ms(inputs: Iterable[tuple[str, int]], outputs: Iterable[Output]) -> list[int]:
    """Decision time minus produce time, pairing the n-th input of an event id (a duplicate
    is sent twice) with the n-th output of that id, both in time order."""
    sent: dict[str, list[int]] = defaultdict(list)
    for eid, ts in inputs:
        sent[eid].append(ts)
    got: dict[str, list[int]] = defaultdict(list)
    for eid, ts, _ in outputs:
        got[eid].append(ts)
    lat = []
    for eid, outs in got.items():
        ins = sorted(sent.get(eid, ()))
        lat += [o - i for i, o in zip(ins, sorted(outs), strict=False)]
    return lat


def latency_parts_ms(inputs: Iterable[tuple[str, int]], outputs: Iterable[Output],
                     batch_start: Callable[[dict], float | None]) -> dict[str, dict]:
    """Where a decision's latency goes, for events sent and decided once: `before_batch`
    (produce → the start of the batch that decided it: fetch wait and queueing), `pipeline`
    (batch start → decision) and `after_decision` (decision → output record timestamp:
    everything the worker awaits before producing it). p50 and p99 of each, in ms."""
    sent: dict[str, list[int]] = defaultdict(list)
    for eid, ts in inputs:
        sent[eid].append(ts)
    parts: dict[str, list[float]] = {"before_batch": [], "pipeline": [], "after_decision": []}
    for eid, ts, doc in outputs:
        ins = sent.get(eid)
        start, decided = batch_start(doc), doc.get("decided_at_ms")
        if ins is None or len(ins) != 1 or start is None or decided is None:
            continue
        parts["before_batch"].append(start - ins[0])
        parts["pipeline"].append(decided - start)
        parts["after_decision"].append(ts - decided)
    return {k: {"p50": _r1(percentile(v, 50)), "p99": _r1(percentile(v, 99))}
            for k, v in parts.items()}


def _r1(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, in MB, plus that of its children (a
    supervisor's members); None once it is gone."""
    own = _vm_hwm_mb(pid)
    if own is None:
        return None
    return own + sum(_vm_hwm_mb(child) or 0.0 for child in _children(pid))


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stage_buckets(metrics_text: str, name: str = "streamwise_stage_seconds",
                  ) -> dict[str, list[tuple[float, float]]]:
    """Cumulative (upper bound in s, count) per stage of a Prometheus histogram."""
    stages: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for s in family.samples:
            if s.name == f"{name}_bucket":
                stages[s.labels["stage"]].append((float(s.labels["le"]), s.value))
    return {k: sorted(v) for k, v in stages.items()}


def stage_us_per_event(metrics_text: str, events: int,
                       name: str = "streamwise_stage_seconds") -> dict[str, float]:
    """Per stage, the histogram's total seconds over `events`, in microseconds per event (each
    batch's stage time spread over its events)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            for s in family.samples:
                if s.name == f"{name}_sum":
                    out[s.labels["stage"]] = round(s.value * 1e6 / max(events, 1), 2)
    return out


def stage_p99_ms(after: dict[str, list[tuple[float, float]]],
                 before: dict[str, list[tuple[float, float]]] | None = None,
                 q: float = 0.99) -> dict[str, float | None]:
    """Per stage, the upper bound (ms) of the bucket holding the q-quantile of the batches
    observed between two scrapes (a histogram only knows its buckets)."""
    out: dict[str, float | None] = {}
    for stage, buckets in after.items():
        prev = dict((before or {}).get(stage, ()))
        counts = [(le, c - prev.get(le, 0.0)) for le, c in buckets]
        total = counts[-1][1] if counts else 0.0
        out[stage] = _bound_ms(counts, total * q) if total > 0 else None
    return out


def _bound_ms(counts: list[tuple[float, float]], rank: float) -> float:
    for le, c in counts:
        if c >= rank:
            return le * 1000 if le != float("inf") else float("inf")
    return float("inf")


def first_consumed_ms(outputs: list[Output], get: Callable[[dict], float | None]) -> float:
    """Earliest consume time the outputs report (each system says it its own way)."""
    times = [t for t in (get(doc) for _, _, doc in outputs) if t is not None]
    return min(times) if times else min(ts for _, ts, _ in outputs)
