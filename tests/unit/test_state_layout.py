"""engine.state.layout: every state key and value, by their bytes (written out here by hand, not
with the layout's own functions), and the keys the pipeline writes."""

from __future__ import annotations

import dataclasses

import orjson

from engine.clock import ManualClock
from engine.pipeline import PartitionPipeline, Record
from engine.policy import RulesOnly
from engine.state import MemoryStore, layout
from engine.windows import TileTable
from topologies.fraud import TOPOLOGY

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_767_225_600_000


# --------------------------------------------------------------------------- table prefixes


def test_table_prefix_changes_with_tiling_and_version() -> None:
    assert layout.table_prefix("velocity", 1, MINUTE) == b"t/velocity.v1.60000/"
    assert layout.table_prefix("velocity", 1, 30_000) == b"t/velocity.v1.30000/"
    assert layout.table_prefix("velocity", 2, MINUTE) == b"t/velocity.v2.60000/"
    assert layout.table_prefix("v", 1, MINUTE) == b"t/v.v1.60000/"


def _tile_keys(table: TileTable) -> list[bytes]:
    topo = dataclasses.replace(TOPOLOGY, tables=(table,))
    store = MemoryStore()
    pipe = PartitionPipeline(topo, 0, store, RulesOnly(topo.rules, "fraud:v1"), ManualClock(0))
    body = orjson.dumps({"event_id": "e1", "card_id": "c1", "merchant_id": "m1", "amount": 1.0,
                         "currency": "USD", "country": "US", "ts_ms": T0})
    store.apply(pipe.process([Record("fraud.events", 0, 0, b"c1", body, 0)], {}).changes)
    return [k for k, _ in store.items_between(b"t/", b"t0")]


def test_a_tables_tiles_are_stored_under_its_name_version_and_tile() -> None:
    """Changing a table's tiling or version moves its state: old tiles are never misread."""
    v1 = _tile_keys(TileTable("velocity", MINUTE, "amount", HOUR, "merchant_id"))
    assert v1 == [b"t/velocity.v1.60000/\x02\x00c1" + (T0 + (1 << 63)).to_bytes(8, "big")]
    v2 = _tile_keys(TileTable("velocity", MINUTE, "amount", HOUR, "merchant_id", version=2))
    assert [k.replace(b".v2.", b".v1.") for k in v2] == v1
    assert v2[0].startswith(b"t/velocity.v2.60000/")
