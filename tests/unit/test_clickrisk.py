"""The clickrisk topology without Kafka: its settings, its reference workload, its models, its
OpenAPI document, and its tumbling and hopping windows in event-time order on a hand-checked
stream (engine.testing.feed, the worker's own pipeline)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import orjson
import pytest
from pydantic import ConfigDict

from engine import Hopping, Sliding, Tumbling, WindowFeature
from engine.api.openapi import document
from engine.errors import TopologyError
from engine.testing import feed, records_of
from engine.topology_loader import load_topology
from topologies.clickrisk import FEATURES, TOPOLOGY
from topologies.clickrisk.schema import ACTIONS, ClickEvent
from topologies.clickrisk.workload import generate

T0 = 1_767_225_600_000  # a whole hour (and minute, 2 and 5 minutes) in epoch ms


# -- settings, by value --------------------------------------------------------------------------


def test_it_loads_by_module_path_with_its_shipped_settings() -> None:
    topo = load_topology("topologies.clickrisk:TOPOLOGY")
    assert topo is TOPOLOGY
    assert (topo.name, topo.key_field, topo.event_id_field, topo.time_field) == (
        "clickrisk", "user_id", "event_id", "ts_ms")
    t = topo.time
    assert (t.ordering, t.max_out_of_orderness_ms, t.allowed_lateness_ms) == (
        "event_time", 5_000, 10_000)
    assert topo.profiles is None and topo.dedup_ttl_ms == 21_600_000
    assert [(tb.name, tb.tile_ms, tb.value_field, tb.distinct_field) for tb in topo.tables] == [
        ("activity", 10_000, "dwell_ms", "device_id"), ("geo", 60_000, "value", "ip_country")]
    windows = {f.window for f in FEATURES.features if isinstance(f, WindowFeature)}
    assert windows == {Tumbling(60_000), Tumbling(3_600_000), Hopping(600_000, 120_000),
                       Hopping(900_000, 300_000)}
    assert not any(isinstance(w, Sliding) for w in windows)  # fraud's kind: not here
    assert FEATURES.versioned_name == "clickrisk:v1"


@pytest.mark.parametrize("change, message", [
    (lambda t: {"tables": (dataclasses.replace(t.tables[0], distinct_field="device"),
                           t.tables[1])}, "'device' is not a field"),
    (lambda t: {"features": dataclasses.replace(t.features, features=(
        WindowFeature("x", "activity", "count", Hopping(600_000, 15_000)),))},
     "positive multiples of the table's tile"),
    (lambda t: {"features": dataclasses.replace(t.features, features=(
        WindowFeature("x", "geo", "count", Tumbling(2 * 3_600_000)),))},
     "longer than table geo's retain_ms"),
    (lambda t: {"key_field": "user"}, "key_field='user' is not a field"),
])
def test_its_validation_refuses_what_it_cannot_run(change, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        dataclasses.replace(TOPOLOGY, **change(TOPOLOGY))


def test_a_contract_that_allows_nan_is_refused() -> None:
    class Loose(ClickEvent):
        model_config = ConfigDict(allow_inf_nan=True)

    with pytest.raises(TopologyError, match="allow_inf_nan=False"):
        dataclasses.replace(TOPOLOGY, schema=Loose)


def test_the_models_match_the_feature_set() -> None:
    assert TOPOLOGY.models_dir is not None
    for name in ("primary", "backup"):
        folder = TOPOLOGY.models_dir / name / "1"
        manifest = json.loads((folder / "model.json").read_text())
        assert manifest["features"] == list(FEATURES.names)
        assert manifest["feature_set"] == "clickrisk:v1"
        blob = (folder / "model.onnx").read_bytes()
        assert manifest["sha256"] == hashlib.sha256(blob).hexdigest()
        assert manifest["metrics"]["auc_holdout"] > 0.95


def test_its_openapi_document_describes_its_own_contract() -> None:
    doc = document(TOPOLOGY)
    event = doc["components"]["schemas"]["ClickriskEvent"]
    assert event["properties"]["action"]["enum"] == list(ACTIONS)
    assert event["examples"][0]["user_id"].startswith("u")
    request = doc["components"]["schemas"]["FeaturesRequest"]
    assert request["properties"]["features"]["items"]["enum"] == list(FEATURES.names)


# -- the workload --------------------------------------------------------------------------------


def test_the_workload_is_deterministic_for_its_arguments() -> None:
    a, b = generate(3_000, seed=5), generate(3_000, seed=5)
    assert orjson.dumps(a.events) == orjson.dumps(b.events) and a.labels == b.labels
    assert orjson.dumps(generate(3_000, seed=6).events) != orjson.dumps(a.events)
    # What `streamwise produce` calls: the keyword shares.
    c = TOPOLOGY.workload(3_000, 5, duplicates=0.02, disorder=0.05, late=0.005)
    assert orjson.dumps(c.events) == orjson.dumps(a.events)


def test_the_workload_has_the_shape_it_says() -> None:
    w = generate(10_000, seed=3, duplicates=0.05, disorder=0.1, late=0.01)
    assert len(w.events) == 10_000 and w.profiles == {}
    ids = [e["event_id"] for e in w.events]
    assert len(ids) - len(set(ids)) == 500  # duplicates are counted in n_events
    assert set(w.labels) == set(ids) and set(w.labels.values()) == {0, 1}
    assert 0.015 < sum(w.labels.values()) / len(w.labels) < 0.035
    assert w.events[0]["ts_ms"] == T0
    for e in w.events:
        ClickEvent.model_validate_json(orjson.dumps(e))  # every event meets the contract
    # Disorder and late shares: events older than the newest before them by so much.
    newest, behind = 0, []
    for e in w.events:
        behind.append(newest - e["ts_ms"])
        newest = max(newest, e["ts_ms"])
    late = sum(1 for d in behind if d >= 30_000)
    assert 50 <= late <= 150, late
    assert sum(1 for d in behind if 0 < d < 5_000) > 500


@pytest.mark.parametrize("kwargs", [{"duplicates": 1.5}, {"late": -0.1},
                                    {"disorder": 0.7, "late": 0.5}, {"mean_gap_ms": 0}])
def test_the_workload_refuses_bad_shares(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate(10, **kwargs)


# -- windows in event-time order, by hand ----------------------------------------------------------


def _click(eid: str, ts: int, dwell: int, device: str = "d1", country: str = "US",
           action: str = "view", value: float = 0.0) -> dict:
    return {"event_id": eid, "user_id": "u1", "session_id": "s1", "action": action,
            "ip_country": country, "device_id": device, "dwell_ms": dwell, "value": value,
            "ts_ms": ts}


def test_tumbling_and_hopping_windows_in_event_time_order() -> None:
    clicks = [
        _click("a", T0 + 50_000, 2_000),
        _click("b", T0 + 47_000, 500, device="d2"),      # older: released before a
        _click("c", T0 + 70_000, 1_000, country="FR", action="add_to_cart", value=30.0),
        _click("d", T0 + 130_000, 800),                  # watermark T0+125 s: a, b, c out
        _click("e", T0 + 1_000, 100),                    # below 125 s - 10 s: late
    ]
    for poll in (1, 5):
        out = feed(TOPOLOGY, records_of(TOPOLOGY, clicks), poll_records=poll)
        docs = [orjson.loads(b) for b in out.decisions[0]]
        assert [d["event_id"] for d in docs] == ["b", "a", "c", "e", "d"]
        f = {d["event_id"]: d["features"] for d in docs}
        # b: alone in minute [T0, +1 min) and in the hopping window [T0, +10 min)
        assert (f["b"]["clicks_1m"], f["b"]["clicks_10m"], f["b"]["secs_since_last"]) == (
            1, 1, -1.0)
        # a: with b in both; two devices; 3 s after b in event time
        assert (f["a"]["clicks_1m"], f["a"]["min_dwell_1m"], f["a"]["clicks_10m"],
                f["a"]["mean_dwell_10m"], f["a"]["devices_10m"], f["a"]["secs_since_last"]
                ) == (2, 500.0, 2, 1_250.0, 2, 3.0)
        # c: a new minute [T0+60 s, +1 min); the same 10-minute hop; a second country
        assert (f["c"]["clicks_1m"], f["c"]["clicks_10m"], f["c"]["countries_1h"],
                f["c"]["spend_1h"], f["c"]["max_value_15m"]) == (1, 3, 2, 30.0, 30.0)
        # e is late: decided at once without itself; b and a are in its minute
        late = docs[3]
        assert "late_event" in late["reasons"]
        assert (f["e"]["clicks_1m"], f["e"]["min_dwell_1m"], f["e"]["secs_since_last"]) == (
            2, 500.0, (1_000 - 70_000) / 1_000)
        # d (drained at the end): the hop that starts at T0+120 s holds d alone
        assert (f["d"]["clicks_1m"], f["d"]["clicks_10m"], f["d"]["countries_1h"]) == (1, 1, 2)
        assert [orjson.loads(r.value)["event_id"] for r in out.late[0]] == ["e"]


def test_a_partition_pipelines_records_name_its_own_input_topic() -> None:
    """Dead letters name the topology's own input topic by default (it was fraud's)."""
    from engine.clock import ManualClock
    from engine.pipeline import PartitionPipeline, Record
    from engine.policy import RulesOnly
    from engine.state import MemoryStore

    pipe = PartitionPipeline(TOPOLOGY, 0, MemoryStore(),
                             RulesOnly(TOPOLOGY.rules, FEATURES.versioned_name), ManualClock(0))
    res = pipe.process([Record("x", 0, 0, b"u1", b"{not json", T0)], {})
    assert res.dlq_reasons == ["invalid_json"]
    assert dict(res.dlq[0].headers)["streamwise.topic"] == b"clickrisk.events"


def test_it_is_registered_under_the_topologies_entry_points() -> None:
    """`streamwise worker clickrisk` after an install: the name maps to this TOPOLOGY."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    registered = project["project"]["entry-points"]["streamwise.topologies"]
    assert registered["clickrisk"] == "topologies.clickrisk:TOPOLOGY"
    assert load_topology(registered["clickrisk"]) is TOPOLOGY


@pytest.mark.parametrize("poll_records", [97, 2_000])
def test_the_pipeline_agrees_with_the_independent_oracle(poll_records: int) -> None:
    """The reference workload (duplicates, disorder, late) on 4 partitions, cut into polls
    two ways: every decision's features and each partition's release order are the oracle's
    (tests/integration/clickrisk_oracle.py, which imports no engine code)."""
    import math

    from tests.integration.clickrisk_oracle import FEATURE_NAMES, INT_FEATURES, run_oracle

    recs = records_of(TOPOLOGY, generate(6_000, seed=17).events, partitions=4)
    out = feed(TOPOLOGY, recs, poll_records=poll_records)
    oracle = run_oracle([(r.partition, r.offset, r.value) for r in recs])
    assert len(oracle.duplicates) == 120 and oracle.late and oracle.held
    wrong = []
    for p, bodies in out.decisions.items():
        docs = [orjson.loads(b) for b in bodies]
        first = list(dict.fromkeys(d["event_id"] for d in docs))
        assert first[:len(oracle.order[p])] == oracle.order[p]  # then the drained ones
        assert set(first[len(oracle.order[p]):]) <= oracle.held
        assert len(docs) == len(first) + sum(1 for q, _, _ in oracle.duplicates if q == p)
        for d in docs:
            want = oracle.features.get(d["event_id"])
            for name in FEATURE_NAMES if want is not None else ():
                e, g = want[name], d["features"][name]
                ok = (g is None if e is None else
                      (type(g) is int and g == e) if name in INT_FEATURES else
                      g is not None and math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-9))
                if not ok:
                    wrong.append((d["event_id"], name, e, g))
    assert not wrong, (len(wrong), wrong[:5])
