"""A topology's window features as the tile kernel's window list."""

from __future__ import annotations

from ..features import WindowFeature
from ..topology import Topology
from ..windows import Hopping, Sliding, TileTable, Tumbling
from .reference import HOPPING, SLIDING, TUMBLING, WindowSpec

__all__ = ["window_of", "window_specs"]


def window_of(w: Tumbling | Hopping | Sliding, distinct: bool) -> WindowSpec:
    if isinstance(w, Tumbling):
        return WindowSpec(TUMBLING, w.duration_ms, 0, distinct)
    if isinstance(w, Hopping):
        return WindowSpec(HOPPING, w.duration_ms, w.step_ms, distinct)
    return WindowSpec(SLIDING, w.duration_ms, 0, distinct)


def window_specs(topology: Topology, table: TileTable) -> list[WindowSpec]:
    """The distinct windows the topology's features read from `table`, in first-use order;
    a window's distinct count is computed only when some feature reads it."""
    order: dict = {}
    for f in topology.features.features:
        if isinstance(f, WindowFeature) and f.table == table.name:
            order[f.window] = order.get(f.window, False) or f.agg == "distinct_count"
    return [window_of(w, distinct) for w, distinct in order.items()]
