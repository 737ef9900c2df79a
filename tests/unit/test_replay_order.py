"""Replay output order: partition after partition, or a k-way merge by event time."""

from __future__ import annotations

import asyncio
import random

import orjson
from hypothesis import given
from hypothesis import strategies as st

from engine.replay import _Sink, _write_in_order


class ListSink(_Sink):
    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int]] = []  # (partition, event_ts_ms, seq)
        self.flushes = 0

    def write(self, partition: int, decisions: list[tuple[bytes, bytes]]) -> None:
        for _, raw in decisions:
            d = orjson.loads(raw)
            self.rows.append((partition, d["event_ts_ms"], d["seq"]))

    async def flush(self) -> None:
        self.flushes += 1


def _streams(parts: dict[int, list[list[int]]]):
    async def gen(p: int, batches: list[list[int]]):
        seq = 0
        for batch in batches:
            out = []
            for ts in batch:
                out.append((b"k", orjson.dumps({"event_ts_ms": ts, "seq": seq})))
                seq += 1
            yield out
    return {p: gen(p, b) for p, b in parts.items()}


def _write(parts: dict[int, list[list[int]]], merge: bool) -> ListSink:
    sink = ListSink()
    asyncio.run(_write_in_order(_streams(parts), sink, merge))
    return sink


def _reference_merge(parts: dict[int, list[list[int]]]) -> list[tuple[int, int, int]]:
    """The definition: each step takes the head with the oldest event time, lower partition
    first on ties; every partition keeps its own order."""
    queues = {p: [(p, ts, i) for i, ts in enumerate(t for b in bs for t in b)]
              for p, bs in parts.items()}
    out = []
    while any(queues.values()):
        p = min((q[0][1], p) for p, q in queues.items() if q)[1]
        out.append(queues[p].pop(0))
    return out


batches = st.lists(st.lists(st.integers(0, 50), max_size=6), max_size=5)


@given(st.dictionaries(st.integers(0, 7), batches, max_size=5))
def test_merge_is_the_oldest_head_first_and_keeps_partition_order(parts) -> None:
    assert _write(parts, merge=True).rows == _reference_merge(parts)


@given(st.dictionaries(st.integers(0, 7), batches, max_size=5))
def test_without_merge_partitions_follow_one_another(parts) -> None:
    want = [(p, ts, i) for p in parts for i, ts in enumerate(t for b in parts[p] for t in b)]
    assert _write(parts, merge=False).rows == want


def test_sorted_partitions_merge_into_one_sorted_stream() -> None:
    rng = random.Random(5)
    parts = {p: [sorted(rng.randrange(10_000) for _ in range(100)) for _ in range(3)]
             for p in range(4)}
    for p in parts:  # each partition sorted across its batches too
        flat = sorted(t for b in parts[p] for t in b)
        parts[p] = [flat[i:i + 100] for i in range(0, 300, 100)]
    rows = _write(parts, merge=True).rows
    assert [ts for _, ts, _ in rows] == sorted(ts for _, ts, _ in rows)
    assert len(rows) == 1200
