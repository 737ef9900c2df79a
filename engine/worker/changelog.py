"""A partition's state changelog: how a batch's changes are written to it, and how a store is
brought up to its end (restore)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from ..kafka_io import KafkaTarget, OutRecord, read_to_end
from ..state import RocksStore, layout

__all__ = ["apply_whole_batches", "changelog_records", "restore"]

log = logging.getLogger("streamwise.worker")

END_OF_BATCH = ("streamwise.end", b"1")
FORMAT = (layout.FORMAT_HEADER, str(layout.STATE_FORMAT_VERSION).encode())


def changelog_records(changes: Mapping[bytes, bytes | None]) -> Iterator[OutRecord]:
    """One batch's changelog records; the last carries the end-of-batch marker and the state
    format version."""
    items = list(changes.items())
    for key, value in items[:-1]:
        yield key, value, []
    key, value = items[-1]
    yield key, value, [END_OF_BATCH, FORMAT]


async def restore(kafka: KafkaTarget, topic: str, partition: int, store: RocksStore,
                  restored: Counter, restoring: Gauge) -> int:
    """Bring `store` up to the end of the partition's changelog; returns the records applied.

    Only whole batches are applied: a batch's records count once its end marker is read. A
    trailing group without one was cut by a crash before its input offsets were committed;
    the input is re-processed, so the fragment is dropped. A changelog written in another
    state format is refused (StateError) rather than misread.
    """
    local = store.changelog_offset
    start = {partition: local + 1} if local is not None else None
    applied = 0
    group: dict[bytes, bytes | None] = {}
    restoring.inc()
    try:
        async for chunk in read_to_end(kafka, topic, [partition], start_offsets=start):
            n = apply_whole_batches(chunk, group, store, topic)
            applied += n
            restored.inc(n)
    finally:
        restoring.dec()
    if group:
        log.warning("partition %d: dropped %d changelog records of an unfinished batch",
                    partition, len(group))
    return applied


def apply_whole_batches(records: Iterable[Any], group: dict[bytes, bytes | None],
                        store: RocksStore, topic: str) -> int:
    """Add changelog `records` (in offset order) to the unfinished batch `group`, writing each
    batch to `store` in one write once its end marker is read, with the marker's offset;
    returns the records written. What follows the last marker stays in `group` (emptied of
    what was written). A batch of another state format raises StateError."""
    applied = 0
    for m in records:
        group[m.key] = m.value
        if END_OF_BATCH in m.headers:
            if FORMAT not in m.headers:
                layout.check_format(dict(m.headers).get(layout.FORMAT_HEADER, b"1"),
                                    f"changelog {topic}")
            store.apply(group, changelog_offset=m.offset)
            applied += len(group)
            group.clear()
    return applied
