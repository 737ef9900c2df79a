"""One input partition's live state in the pipeline: its watermark, reorder buffer and the tile
kernels of its tables, over the partition's store (the `Store` port)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..dedup import Dedup
from ..kernel import SeenFilter, TileState, WindowSpec
from ..kernel.specs import window_specs
from ..ordering import ReorderBuffer, Watermark
from ..state import layout
from ..topology import Topology

if TYPE_CHECKING:
    from .fold import FeaturePlan

__all__ = ["DEDUP_SWEEP_IDS", "PartitionState", "Row", "Store"]

DEDUP_SWEEP_IDS = 4096


class Store(Protocol):
    """Read side of one partition's state (the adapter applies each batch's change set)."""

    def get(self, key: bytes) -> bytes | None: ...

    def items_between(self, lo: bytes, hi: bytes) -> Iterable[tuple[bytes, bytes]]:
        """Key/value pairs with ``lo <= key < hi`` in key order."""
        ...


class Row:
    """One event on its way through a batch (admitted, then decided)."""

    __slots__ = ("decision", "eid", "event", "horizon_ms", "kb", "key", "late", "notes",
                 "offset", "partition", "record", "ts_ms", "waiting_duplicates")

    def __init__(self, record: Any, event: Any, key: str, eid: str, ts_ms: int,
                 late: bool) -> None:
        self.record = record
        self.partition: int = record.partition
        self.offset: int = record.offset
        self.event = event
        self.key = key
        self.kb = key.encode()
        self.eid = eid
        self.ts_ms = ts_ms
        self.late = late
        self.horizon_ms = layout.NO_TS  # late events: tiles ending at or before it are unseen
        self.notes: tuple[str, ...] = ()
        self.decision: bytes | None = None
        self.waiting_duplicates = 0  # duplicates that arrived while it sat in the reorder buffer


class PartitionState:
    """Build one per assigned partition, after its store is restored; drop it on revoke."""

    def __init__(self, topology: Topology, partition: int, store: Store,
                 kernel: type[TileState] | None = None) -> None:
        self.topology = topology
        self.partition = partition
        self.store = store
        layout.check_format(store.get(layout.FORMAT_KEY), f"partition {partition}'s store")
        t = topology.time
        raw = store.get(layout.WATERMARK_KEY)
        self.persisted_max_ts = int(raw) if raw is not None else None
        self.watermark = Watermark(t.max_out_of_orderness_ms, t.allowed_lateness_ms,
                                   self.persisted_max_ts)
        self.reorder: ReorderBuffer[Row] | None = (
            ReorderBuffer(t.reorder_capacity) if t.ordering == "event_time" else None)
        self.buffered: dict[str, Row] = {}  # event id -> its row, while in the reorder buffer
        self.dedup = Dedup(topology.dedup_ttl_ms)
        self.seen = SeenFilter(topology.dedup_ttl_ms)  # ids never seen need no store read
        make = kernel or TileState
        self.tables = [(tb, layout.table_prefix(tb.name, tb.version, tb.tile_ms),
                        make(tb.tile_ms, window_specs(topology, tb), tb.distinct_field is not None))
                       for tb in topology.tables]
        self.retain_ms = max(tb.retain_ms for tb in topology.tables)
        self.last_expiry_horizon: int | None = None
        self.dedup_swept_to: int | None = None  # cutoff of the last completed dedup sweep
        self.dedup_sweep_ids = DEDUP_SWEEP_IDS  # expired ids a batch examines at most
        self._load_live_tiles()
        self._load_seen()

    @property
    def windows(self) -> list[tuple[str, Sequence[WindowSpec]]]:
        """(table name, the windows its kernel reads) per table, in kernel order."""
        return [(tb.name, kernel.windows) for tb, _, kernel in self.tables]

    @functools.cached_property
    def plan(self) -> FeaturePlan:
        """Where each feature comes from (fold.py imports this module, hence the late import)."""
        from .fold import FeaturePlan
        return FeaturePlan.of(self.topology.features, self.windows)

    def tile_horizon(self) -> int | None:
        """Tiles ending at or before this are expired (None before the first event)."""
        cutoff = self.watermark.late_before_ms
        return None if cutoff is None else cutoff - self.retain_ms

    # -- entities -----------------------------------------------------------------------------

    def _load_live_tiles(self) -> None:
        """Hold every stored entity that has a tile (restore, or a store opened again)."""
        for tb, prefix, kernel in self.tables:
            entity, tiles = None, []
            for key, raw in self.store.items_between(prefix, prefix + b"\xff"):
                ent = key[len(prefix) + 2: -8].decode()
                if ent != entity and entity is not None:
                    kernel.load(entity, self.last_ts(entity), tiles)
                    tiles = []
                entity = ent
                tiles.append((layout.tile_start_of(key),
                              *layout.unpack_tile(raw, tb.distinct_field is not None)))
            if entity is not None:
                kernel.load(entity, self.last_ts(entity), tiles)

    def _load_seen(self) -> None:
        """The dedup filter from the stored expiry records (each id under its batch's newest
        time, never earlier than its own: it is remembered at least as long as the TTL)."""
        for key, raw in self.store.items_between(layout.EXPIRY, layout.EXPIRY + b"\xff"):
            ids = layout.unpack_expiry(raw)
            self.seen.add(ids, np.full(len(ids), layout.expiry_max_ts(key), np.int64))

    def last_ts(self, entity: str) -> int | None:
        raw = self.store.get(layout.entity_key(entity.encode()))
        return None if raw is None else layout.unpack_entity(raw)[0]

    def hold(self, entities: Iterable[str]) -> None:
        """Make sure every kernel holds these entities: the ones it forgot (no live tile)
        come back from the store with their newest event time."""
        entities = list(entities)
        for _tb, _prefix, kernel in self.tables:
            for e in kernel.missing(entities):
                kernel.load(e, self.last_ts(e), ())
