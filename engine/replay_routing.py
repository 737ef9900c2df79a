"""A replay's routing: each record of the range decided on its entity's partition.

Live workers forward a record produced to another partition than its entity's (another
partitioner, a null key, a key that is not the entity) through the repartition topic before
it touches state. A replay does the same without Kafka in between: it reads the range once,
spools every record under its entity's partition (files in the replay's work directory, as
large as the range), then hands each partition its records: its own in offset order, merged
with those routed to it from other partitions by Kafka timestamp (as they would have arrived
there live), warm-up records first. With every producer keyed by the entity, each partition
gets exactly its own records, in offset order.
"""

from __future__ import annotations

import heapq
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .pipeline import Record
from .pipeline.records import forwarded_position
from .pipeline.routing import EntityRouter
from .topology import Topology

__all__ = ["RoutingSpool"]

_FLUSH_RECORDS = 2_000  # records buffered per (owner, source) before they go to disk


class RoutingSpool:
    """Records of a range by (entity partition, source partition), on disk."""

    def __init__(self, folder: Path, topology: Topology, topic: str,
                 route: Callable[[bytes], int]) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._topic = topic
        self._router = EntityRouter(topology, route)
        self._buffers: dict[tuple[int, int], list[tuple]] = {}
        self._files: set[tuple[int, int]] = set()
        self.routed = 0  # records spooled under another partition than their own

    def add(self, source: int, records: Sequence[Any], emit_from: int) -> None:
        """Spool records of partition `source` in offset order; those before `emit_from` are
        warm-up (they rebuild windows; their decisions are not written)."""
        for m in records:
            owner = self._router.partition_of(m.value)
            if owner is None:  # no event: dead-lettered where it landed
                owner = source
            elif owner != source:
                self.routed += 1
            buf = self._buffers.setdefault((owner, source), [])
            buf.append((m.offset < emit_from, m.offset, m.key, m.value, m.timestamp))
            if len(buf) >= _FLUSH_RECORDS:
                self._flush((owner, source))

    def finish(self) -> None:
        """Write what is buffered (after each source partition: memory holds at most one
        source's buffers)."""
        for lane in list(self._buffers):
            self._flush(lane)

    def partitions(self) -> list[int]:
        """The partitions that have records to decide."""
        return sorted({owner for owner, _ in self._files})

    def batches(self, owner: int, size: int) -> Iterator[tuple[bool, list[Record]]]:
        """(warm-up?, up to `size` records) for partition `owner`, warm-up batches first."""
        sources = sorted(src for own, src in self._files if own == owner)
        merged = heapq.merge(*(self._read(owner, src) for src in sources),
                             key=lambda r: (not r[0], r[1].timestamp or 0))
        batch: list[Record] = []
        warm = True
        for is_warm, rec in merged:
            if batch and (is_warm != warm or len(batch) >= size):
                yield warm, batch
                batch = []
            warm = is_warm
            batch.append(rec)
        if batch:
            yield warm, batch

    def _path(self, lane: tuple[int, int]) -> Path:
        return self._folder / f"{lane[0]:05d}-{lane[1]:05d}.spool"

    def _flush(self, lane: tuple[int, int]) -> None:
        buf = self._buffers.pop(lane, None)
        if buf:
            with self._path(lane).open("ab") as f:
                pickle.dump(buf, f, protocol=pickle.HIGHEST_PROTOCOL)
            self._files.add(lane)

    def _read(self, owner: int, source: int) -> Iterator[tuple[bool, Record]]:
        topic = self._topic
        with self._path((owner, source)).open("rb") as f:
            while True:
                try:
                    frame = pickle.load(f)
                except EOFError:
                    return
                for warm, offset, key, value, ts in frame:
                    pos = offset if owner == source else forwarded_position(source, offset)
                    yield warm, Record(topic, owner, pos, key, value, ts)
