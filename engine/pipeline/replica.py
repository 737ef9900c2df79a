"""A read-only view of a partition another worker decides: a standby replica's store, as the
online reads (`table_view`, `features_now`, `last_decision`) read a `PartitionState`.

A replica's store is written by the changelog's tail, not by a pipeline, so nothing here is
held in memory across reads: the watermark is read from the store at each call, and the tile
kernels are only templates (`preview._Private` builds its own per read).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

from ..kernel import TileState
from ..kernel.specs import window_specs
from ..ordering import Watermark
from ..state import layout
from ..topology import Topology
from .partition import Store

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..kernel import WindowSpec
    from .fold import FeaturePlan

__all__ = ["ReplicaView", "StandbyRead"]


class ReplicaView:
    """One partition's state as a standby replica holds it (reads only)."""

    def __init__(self, topology: Topology, partition: int, store: Store) -> None:
        self.topology = topology
        self.partition = partition
        self.store = store
        layout.check_format(store.get(layout.FORMAT_KEY),
                            f"partition {partition}'s standby replica")
        self.tables = [(tb, layout.table_prefix(tb.name, tb.version, tb.tile_ms),
                        TileState(tb.tile_ms, window_specs(topology, tb),
                                  tb.distinct_field is not None))
                       for tb in topology.tables]

    @property
    def watermark(self) -> Watermark:
        """The watermark as of the replica's last applied changelog batch."""
        t = self.topology.time
        raw = self.store.get(layout.WATERMARK_KEY)
        return Watermark(t.max_out_of_orderness_ms, t.allowed_lateness_ms,
                         int(raw) if raw is not None else None)

    @property
    def windows(self) -> list[tuple[str, Sequence[WindowSpec]]]:
        return [(tb.name, kernel.windows) for tb, _, kernel in self.tables]

    @functools.cached_property
    def plan(self) -> FeaturePlan:
        from .fold import FeaturePlan  # fold imports partition; as PartitionState.plan does
        return FeaturePlan.of(self.topology.features, self.windows)

    def last_ts(self, entity: str) -> int | None:
        raw = self.store.get(layout.entity_key(entity.encode()))
        return None if raw is None else layout.unpack_entity(raw)[0]


class StandbyRead(NamedTuple):
    """What a worker answers a lookup from when it keeps a standby of the key's partition."""

    view: ReplicaView
    lag_records: int  # changelog records past the replica's last applied batch (last fetch)
    lag_ms: int  # 0 while the replica was at the changelog's end at its last fetch; else the
    # ms since it last was (since it opened, if never)
    caught_up: bool = True  # it has reached the changelog's end at least once since it opened
