"""engine.kernel.specs: a topology's window features as the tile kernel's window list."""

from __future__ import annotations

import dataclasses

from engine.features import EventFeature, FeatureSet, SinceLastFeature, WindowFeature
from engine.kernel import HOPPING, SLIDING, TUMBLING, WindowSpec
from engine.kernel.specs import window_of, window_specs
from engine.windows import Hopping, Sliding, TileTable, Tumbling
from topologies.fraud import TOPOLOGY

MINUTE = 60_000
HOUR = 60 * MINUTE


def test_each_window_kind_becomes_its_spec() -> None:
    assert window_of(Tumbling(5 * MINUTE), False) == WindowSpec(TUMBLING, 5 * MINUTE, 0, False)
    assert window_of(Hopping(6 * MINUTE, 2 * MINUTE), True) == WindowSpec(
        HOPPING, 6 * MINUTE, 2 * MINUTE, True)
    assert window_of(Sliding(10 * MINUTE), True) == WindowSpec(SLIDING, 10 * MINUTE, 0, True)


def test_each_window_of_a_table_once_in_first_use_order_distinct_when_any_feature_reads_it(
        ) -> None:
    other = TileTable("other", MINUTE, "amount", HOUR)
    fs = FeatureSet("f", 1, (
        WindowFeature("a", "velocity", "distinct_count", Sliding(10 * MINUTE)),
        WindowFeature("b", "velocity", "sum", Tumbling(5 * MINUTE)),
        WindowFeature("c", "velocity", "count", Sliding(10 * MINUTE)),  # after the distinct one
        SinceLastFeature("since", "velocity"),
        WindowFeature("d", "other", "count", Hopping(6 * MINUTE, 2 * MINUTE)),
        WindowFeature("e", "velocity", "max", Hopping(6 * MINUTE, 2 * MINUTE)),
        WindowFeature("f", "velocity", "distinct_count", Hopping(6 * MINUTE, 2 * MINUTE)),
        EventFeature("amount", lambda e: e.amount),
    ))
    topo = dataclasses.replace(TOPOLOGY, tables=(TOPOLOGY.table("velocity"), other), features=fs)
    assert window_specs(topo, topo.table("velocity")) == [
        WindowSpec(SLIDING, 10 * MINUTE, 0, True),
        WindowSpec(TUMBLING, 5 * MINUTE, 0, False),
        WindowSpec(HOPPING, 6 * MINUTE, 2 * MINUTE, True),
    ]
    assert window_specs(topo, other) == [WindowSpec(HOPPING, 6 * MINUTE, 2 * MINUTE, False)]
