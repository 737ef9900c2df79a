"""engine.topology: validation at load, with clear messages; topic names."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from pydantic import BaseModel, ConfigDict

from engine.errors import ConfigError, TopologyError
from engine.features import EventFeature, FeatureSet, SinceLastFeature, WindowFeature
from engine.pipeline import Record
from engine.testing import feed
from engine.topology import StageBudget, TimeSettings, TopicNames, Topology
from engine.windows import Hopping, Sliding, TileTable, Tumbling
from topologies.fraud import TOPOLOGY, WITH_MERCHANT_RISK
from topologies.fraud.schema import CardPayment

MINUTE = 60_000
HOUR = 60 * MINUTE
VELOCITY = TOPOLOGY.table("velocity")


def features(*feats, critical: tuple[str, ...] = ()) -> FeatureSet:
    return FeatureSet("t", 1, tuple(feats), critical)


def variant(**changes) -> Topology:
    """A copy of the fraud topology with some fields changed (validated on construction)."""
    return dataclasses.replace(TOPOLOGY, **changes)


def count(name: str, window) -> WindowFeature:
    return WindowFeature(name, "velocity", "count", window)


def check(match: str, **changes) -> TopologyError:
    with pytest.raises(TopologyError, match=match) as info:
        variant(**changes)
    assert str(info.value).startswith("topology 'fraud': ")
    return info.value


def test_fraud_topology_is_valid() -> None:
    assert TOPOLOGY.schema is CardPayment
    assert TOPOLOGY.table("velocity").tile_ms == MINUTE
    assert TOPOLOGY.features.versioned_name == "fraud:v1"
    assert TOPOLOGY.time.ordering == "arrival"
    assert issubclass(TopologyError, ConfigError)


def test_topic_names() -> None:
    t = TOPOLOGY.topics("x.")
    assert t == TopicNames(events="x.fraud.events", decisions="x.fraud.decisions",
                           dlq="x.fraud.dlq", late="x.fraud.late", profiles="x.fraud.profiles",
                           control="x.fraud.control", changelog="x.fraud.changelog",
                           members="x.fraud.members", repartition="x.fraud.repartition",
                           progress="x.fraud.progress",
                           group="x.streamwise-fraud")
    assert TOPOLOGY.topics().events == "fraud.events"


def test_unknown_partitioner_is_refused() -> None:
    with pytest.raises(TopologyError, match="partitioner must be one of murmur2, crc32"):
        dataclasses.replace(TOPOLOGY, partitioner="fnv")


@pytest.mark.parametrize("what", ["key_field", "event_id_field", "time_field"])
def test_unknown_field(what: str) -> None:
    check(rf"{what}='nope' is not a field of CardPayment", **{what: "nope"})


def test_unknown_table_value_field() -> None:
    table = dataclasses.replace(VELOCITY, value_field="amountt")
    check(r"table velocity: 'amountt' is not a field of the schema", tables=(table,))
    table = dataclasses.replace(VELOCITY, distinct_field="merchant")
    check(r"table velocity: 'merchant' is not a field of the schema", tables=(table,))


@pytest.mark.parametrize("window", [Sliding(90_000), Tumbling(MINUTE + 1), Sliding(0),
                                    Hopping(10 * MINUTE, 90_000), Hopping(90_000, MINUTE)])
def test_window_not_a_multiple_of_tile(window) -> None:
    check(r"feature c: window sizes must be positive multiples of the table's tile "
          r"\(60000 ms\)", features=features(count("c", window)))


@pytest.mark.parametrize("window", [Sliding(2 * HOUR), Tumbling(HOUR + MINUTE),
                                    Hopping(2 * HOUR, MINUTE)])
def test_window_longer_than_retain(window) -> None:
    check(r"feature c: window \d+ ms is longer than table velocity's retain_ms 3600000",
          features=features(count("c", window)))


def test_window_equal_to_retain_is_fine() -> None:
    table = TileTable("velocity", MINUTE, "amount", HOUR)
    fs = features(count("c", Sliding(HOUR)))
    topo = variant(tables=(table,), features=fs)
    assert topo.features == fs


def test_duplicate_feature_names() -> None:
    check(r"feature 'c' defined twice",
          features=features(count("c", Sliding(MINUTE)), count("c", Sliding(2 * MINUTE))))
    check(r"feature 'amount' defined twice",
          features=features(EventFeature("amount", lambda e: 1.0),
                            SinceLastFeature("amount", "velocity")))


def test_unknown_critical_feature() -> None:
    err = check(r"critical features not defined: \['count_1d', 'zzz'\]",
                features=features(count("c", Sliding(MINUTE)), critical=("c", "zzz", "count_1d")))
    assert "zzz" in str(err)


def test_unknown_table_in_feature() -> None:
    check(r"feature c: unknown table 'speed'",
          features=features(WindowFeature("c", "speed", "count", Sliding(MINUTE))))
    check(r"feature s: unknown table 'speed'",
          features=features(SinceLastFeature("s", "speed")))


class LaxPayment(BaseModel):
    event_id: str
    card_id: str
    merchant_id: str
    amount: float
    ts_ms: int


class ExplicitlyLaxPayment(LaxPayment):
    model_config = ConfigDict(allow_inf_nan=True)


@pytest.mark.parametrize("schema", [LaxPayment, ExplicitlyLaxPayment])
def test_schema_must_refuse_inf_nan(schema: type[BaseModel]) -> None:
    check(rf"{schema.__name__} must set allow_inf_nan=False", schema=schema)


@pytest.mark.parametrize(("changes", "match"), [
    ({"name": "fraud-v2"}, "name must be alphanumeric or underscore"),
    ({"dedup_ttl_ms": 0}, "dedup_ttl_ms must be > 0"),
    ({"time": TimeSettings(-1, 0)}, "out-of-orderness and allowed lateness must be >= 0"),
    ({"time": TimeSettings(0, -1)}, "out-of-orderness and allowed lateness must be >= 0"),
    ({"time": TimeSettings(0, 0, ordering="processing")}, "ordering must be 'arrival' or "),
    ({"tables": (VELOCITY, VELOCITY)}, "table names must be unique"),
    ({"tables": (dataclasses.replace(VELOCITY, tile_ms=0),)}, "tile_ms must be > 0"),
    ({"budgets": {"scoring": StageBudget(1, 2)}}, "budget for unknown stage 'scoring'"),
    ({"budgets": {"total": StageBudget(5, 2)}}, "budget of total: need 0 < p95_ms <= p99_ms"),
    ({"budgets": {"total": StageBudget(0, 2)}}, "budget of total: need 0 < p95_ms <= p99_ms"),
])
def test_other_validation_errors(changes: dict, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        variant(**changes)


def test_a_second_topology_does_not_change_the_first_ones_features() -> None:
    """Two topologies built from one FeatureSet with different tilings stay independent."""

    class Ev(BaseModel):
        model_config = ConfigDict(allow_inf_nan=False)
        event_id: str
        key: str
        amount: float
        ts_ms: int

    fs = FeatureSet("alias", 1, (WindowFeature("sum_10m", "t", "sum", Sliding(10 * MINUTE)),))

    def topo(tile_ms: int) -> Topology:
        table = TileTable("t", tile_ms, "amount", HOUR)
        # out-of-orderness of an hour: every event below is on time
        return dataclasses.replace(TOPOLOGY, name="alias", schema=Ev, key_field="key",
                                   tables=(table,), features=fs, time=TimeSettings(HOUR, 0))

    t0 = 472_222 * HOUR  # hour aligned
    events = [(t0 - 3 * MINUTE, 1.0), (t0 + 8 * MINUTE, 100.0), (t0 + 5 * MINUTE, 0.0)]

    def sum_10m(topology: Topology) -> float:
        """sum_10m of the last event, t0 + 5 min (3 min behind the newest)."""
        out = feed(topology, [Record("t", 0, i, None, orjson.dumps(
            {"event_id": f"e{i}", "key": "k", "amount": a, "ts_ms": ts}), None)
            for i, (ts, a) in enumerate(events)])
        return orjson.loads(out.decisions[0][-1])["features"]["sum_10m"]

    first = topo(MINUTE)
    # 1-minute tiles: [t0 - 4m, t0 + 6m) holds 1.0 and the event's 0.0, not the later 100.0
    assert sum_10m(first) == 1.0
    second = topo(10 * MINUTE)  # same FeatureSet, 10-minute tiles
    assert sum_10m(first) == 1.0
    # 10-minute tiles: [t0, t0 + 10m) holds the event and 100.0, not t0 - 3 min
    assert sum_10m(second) == 100.0


def test_the_fraud_topology_ships_these_settings() -> None:
    """Every operational number of the reference topology, written out: a change to any of
    them is a change of the product and must change this test too."""
    t = TOPOLOGY
    s = t.scoring
    assert s is not None
    assert (s.primary, s.backup, s.cheap_first) == ("primary", "backup", None)
    assert (s.timeout_ms, s.backup_timeout_ms, s.retries) == (30, 6, 1)
    assert s.last_score_max_age_ms == 600_000
    b = s.breaker
    assert (b.consecutive_failures, b.failure_rate, b.window_ms, b.min_calls,
            b.cool_down_ms) == (5, 0.5, 10_000, 20, 5_000)
    assert (t.time.max_out_of_orderness_ms, t.time.allowed_lateness_ms) == (2_000, 58_000)
    assert (t.time.ordering, t.time.reorder_capacity) == ("arrival", 10_000)
    assert t.dedup_ttl_ms == 86_400_000
    assert t.score_late is True
    assert (t.max_record_bytes, t.default_partitions) == (1_048_576, 8)
    assert (t.key_field, t.event_id_field, t.time_field) == ("card_id", "event_id", "ts_ms")
    (velocity,) = t.tables
    assert (velocity.name, velocity.tile_ms, velocity.retain_ms, velocity.value_field,
            velocity.distinct_field, velocity.version) == (
        "velocity", 60_000, 3_600_000, "amount", "merchant_id", 1)
    assert {stage: (b.p95_ms, b.p99_ms) for stage, b in t.budgets.items()} == {
        "validate": (5, 10), "dedup": (5, 10), "features": (15, 30), "inference": (10, 30),
        "policy": (5, 10), "total": (40, 80)}
    fs = t.features
    assert (fs.name, fs.version, fs.profile_max_age_ms) == ("fraud", 1, 691_200_000)
    assert fs.critical == ("count_10m", "count_1h", "amount_over_avg", "is_foreign")
    assert fs.names == ("count_10m", "sum_10m", "max_10m", "count_1h", "sum_1h", "mean_1h",
                        "distinct_merchants_1h", "secs_since_last", "amount_over_avg",
                        "is_foreign", "amount", "hour_of_day")
    assert t.decision_context == () and not t.reads_agent_tables
    assert [(a.name, a.topic, a.tables, a.local_tables) for a in t.agents] == [
        ("card_outcomes", "outcomes", ("card_outcomes",), ("merchant_reports",))]
    # the merchant features, opt-in: the same stream, two more features, their own models
    m = WITH_MERCHANT_RISK
    assert m.features.versioned_name == "fraud:v2" and m.reads_agent_tables
    assert m.features.names == (*fs.names, "merchant_amount_z", "merchant_risk")
    assert m.decision_context == ("merchant_id",) and m.models_dir.name == "models_merchant_risk"
    assert [(a.name, a.topic, a.local_tables) for a in m.agents[1:]] == [
        ("merchant_decisions", "decisions", ("merchant_stats",))]
    assert (m.name, m.tables, m.time, m.scoring) == (t.name, t.tables, t.time, t.scoring)
    windows = {f.name: (f.table, f.agg, f.window) for f in fs.features
               if isinstance(f, WindowFeature)}
    assert windows == {
        "count_10m": ("velocity", "count", Sliding(600_000)),
        "sum_10m": ("velocity", "sum", Sliding(600_000)),
        "max_10m": ("velocity", "max", Sliding(600_000)),
        "count_1h": ("velocity", "count", Sliding(3_600_000)),
        "sum_1h": ("velocity", "sum", Sliding(3_600_000)),
        "mean_1h": ("velocity", "mean", Sliding(3_600_000)),
        "distinct_merchants_1h": ("velocity", "distinct_count", Sliding(3_600_000)),
    }
    r = t.rules
    assert (r.version, r.thresholds.review_at, r.thresholds.decline_at) == ("v1", 0.5, 0.9)
    assert t.profiles is not None and t.profiles.fields == ("avg_amount_90d", "home_country")
