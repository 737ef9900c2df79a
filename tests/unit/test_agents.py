"""Agents (`engine.agents`): tables over a partition's store, effectively-once application of a
topic's records, key ownership, and their declaration on a topology."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest

from engine.agents import (
    DECISIONS,
    Agent,
    AgentBatch,
    OwnershipError,
    ProgressHistory,
    progress_doc,
    read_row,
    run_agent,
    run_decision_agents,
)
from engine.errors import TopologyError
from engine.partitioning import router
from engine.pipeline import Record
from engine.replay_agents import AgentSchedule
from engine.state import MemoryStore, layout
from engine.testing import feed, records_of
from topologies.fraud import TOPOLOGY as FRAUD
from topologies.fraud import WITH_CARD_RISK, WITH_MERCHANT_RISK
from topologies.fraud.anomaly import RECENT_IDS, card_decisions, card_outcomes

PARTITIONS = 4
ROUTE = router(PARTITIONS, "murmur2")


def _key_on(partition: int, n: int = 3) -> list[str]:
    keys = [f"k{i}" for i in range(200) if ROUTE(f"k{i}".encode()) == partition]
    return keys[:n]


def _records(docs: list[dict], first_offset: int = 0) -> list[tuple]:
    return [(first_offset + i, d.get("key", "").encode(), orjson.dumps(d), 1_000 + i)
            for i, d in enumerate(docs)]


def _counting_agent(seen: list):
    async def count(batch: AgentBatch) -> None:
        table = batch.table("counts")
        for r in batch:
            seen.append(r.offset)
            row = table.get(r.value["key"], {"n": 0})
            table.set(r.value["key"], {"n": row["n"] + 1, "last": r.value["v"]})
    return Agent("count", "things", count, ("counts",))


def _run(agent, store, records, partition=0, route=ROUTE):
    return asyncio.run(run_agent(agent, partition, store, records, route))


def test_an_agent_writes_its_rows_and_its_position_in_one_change_set() -> None:
    seen: list[int] = []
    agent = _counting_agent(seen)
    a, b = _key_on(0, 2)
    store = MemoryStore()
    changes, end = _run(agent, store, _records([{"key": a, "v": 1}, {"key": a, "v": 2},
                                                {"key": b, "v": 3}], first_offset=10))
    assert end == 13 and seen == [10, 11, 12]
    assert changes[layout.agent_position_key("count")] == b"13"
    assert nothing_stored(store)  # written only with the poll's change set
    store.apply(changes)
    assert read_row(store, "counts", a) == {"n": 2, "last": 2}
    assert read_row(store, "counts", b) == {"n": 1, "last": 3}
    assert read_row(store, "counts", "nobody") is None


def nothing_stored(store: MemoryStore) -> bool:
    return not list(store.items())


def test_records_below_the_stored_position_were_applied_and_are_skipped() -> None:
    """A crash after the change set reached the changelog but before the offsets were
    committed re-delivers the records: they change nothing the second time."""
    seen: list[int] = []
    agent = _counting_agent(seen)
    (a,) = _key_on(0, 1)
    store = MemoryStore()
    docs = [{"key": a, "v": i} for i in range(5)]
    changes, _ = _run(agent, store, _records(docs[:3]))
    store.apply(changes)
    seen.clear()
    changes, end = _run(agent, store, _records(docs))  # re-delivered from offset 0
    assert seen == [3, 4] and end == 5
    store.apply(changes)
    assert read_row(store, "counts", a) == {"n": 5, "last": 4}
    seen.clear()
    changes, end = _run(agent, store, _records(docs[:5]))  # all applied already
    assert seen == [] and changes == {} and end == 5


def test_an_agent_may_not_write_a_key_of_another_partition() -> None:
    agent = _counting_agent([])
    (other,) = _key_on(1, 1)
    with pytest.raises(OwnershipError, match="belongs to partition 1, not 0"):
        _run(agent, MemoryStore(), _records([{"key": other, "v": 1}]))


def test_a_value_is_a_json_object_and_an_undeclared_table_is_named() -> None:
    async def bad(batch: AgentBatch) -> None:
        batch.table("counts").set(_key_on(0, 1)[0], [1, 2])  # type: ignore[arg-type]

    async def undeclared(batch: AgentBatch) -> None:
        batch.table("other")

    make = Agent
    with pytest.raises(TypeError, match="a value is a JSON object"):
        _run(make("bad", "things", bad, ("counts",)), MemoryStore(), _records([{"key": "x"}]))
    with pytest.raises(KeyError, match="did not declare table 'other'"):
        _run(make("u", "things", undeclared, ("counts",)), MemoryStore(),
             _records([{"key": "x"}]))


def test_a_record_that_is_not_json_reaches_the_agent_as_none_with_its_bytes() -> None:
    got = []

    async def keep(batch: AgentBatch) -> None:
        got.extend((r.value, r.raw, r.key, r.timestamp_ms) for r in batch)

    agent = Agent("keep", "things", keep, ())
    _run(agent, MemoryStore(), [(0, b"k", b"not json", -1), (1, None, None, 5)])
    assert got == [(None, b"not json", "k", None), (None, None, None, 5)]


def test_topology_agents_are_declared_once_with_tables_of_their_own() -> None:
    topo = dataclasses.replace(FRAUD, agents=())
    assert topo.agents == ()

    @topo.agent("things", tables=("things_seen",))
    async def things(batch: AgentBatch) -> None:
        pass

    assert [(a.name, a.topic, a.tables) for a in topo.agents] == [
        ("things", "things", ("things_seen",))]
    assert topo.agent_topic(topo.agents[0].topic, "t1.") == "t1.fraud.things"
    assert topo.agent_table("things_seen") is topo.agents[0]
    assert topo.agent_table("velocity") is None  # a windowed table, not an agent's
    with pytest.raises(TopologyError, match="agent things declared twice"):
        topo.agent("other")(things)
    with pytest.raises(TopologyError, match="table 'velocity' is declared twice"):
        topo.agent("other", tables=("velocity",))(_renamed(things, "b"))
    with pytest.raises(TopologyError, match="topic 'events' must match"):
        topo.agent("events")(_renamed(things, "c"))
    with pytest.raises(TopologyError, match="table name 'Bad-Name' must match"):
        topo.agent("x", tables=("Bad-Name",))(_renamed(things, "d"))


def _renamed(fn, name: str):
    async def wrapper(batch: AgentBatch) -> None:
        await fn(batch)
    wrapper.__name__ = name
    return wrapper


# -- the fraud topology's anomaly agents --------------------------------------------------


def _decision(card: str, n: int, decision: str, score: float, decided_at_ms: int = 0) -> dict:
    return {"decision_id": f"d{card}{n}", "event_id": f"e{card}{n}", "key": card,
            "score": score, "decision": decision, "event_ts_ms": 1_000 * n,
            "decided_at_ms": decided_at_ms or 50_000 + n}


def test_card_risk_counts_each_decision_once_and_flags_the_card() -> None:
    agent = next(a for a in WITH_CARD_RISK.agents if a.fn is card_decisions)
    (card,) = _key_on(0, 1)
    store = MemoryStore()
    docs = [_decision(card, 1, "approve", 0.05), _decision(card, 2, "approve", 0.1),
            _decision(card, 3, "decline", 0.95), _decision(card, 4, "decline", 0.97)]
    changes, _ = _run(agent, store, _records(docs))
    store.apply(changes)
    # the same decisions re-emitted (a re-delivered payment) at new offsets count nothing
    changes, _ = _run(agent, store, _records(docs[2:], first_offset=4))
    store.apply(changes)
    row = read_row(store, "card_risk", card)
    assert (row["decisions"], row["approve"], row["decline"], row["review"]) == (4, 2, 2, 0)
    assert row["flags"] == ["repeated_declines", "score_spike"]
    assert row["last_decision"] == "decline" and row["last_event_ts_ms"] == 4_000
    ewma = 0.05
    for s in (0.1, 0.95, 0.97):
        ewma = 0.2 * s + 0.8 * ewma
    assert row["score_ewma"] == pytest.approx(ewma)


def test_card_outcomes_counts_reports_once_and_marks_the_card_compromised() -> None:
    agent = next(a for a in FRAUD.agents if a.fn is card_outcomes)
    (card,) = _key_on(0, 1)
    store = MemoryStore()
    docs = [{"event_id": "e1", "card_id": card, "kind": "chargeback", "amount": 12.5,
             "reported_ms": 5},
            {"event_id": "e1", "card_id": card, "kind": "chargeback", "amount": 12.5,
             "reported_ms": 6},  # reported twice
            {"event_id": "e2", "card_id": card, "kind": "confirmed_fraud", "reported_ms": 9},
            {"event_id": "e3", "card_id": card, "kind": "unknown", "reported_ms": 9},
            {"card_id": card, "kind": "chargeback"}]  # not an outcome: ignored
    changes, _ = _run(agent, store, _records(docs))
    store.apply(changes)
    row = read_row(store, "card_outcomes", card)
    assert (row["chargeback"], row["confirmed_fraud"], row["chargeback_amount"]) == (1, 1, 12.5)
    assert row["compromised"] is True and row["last_reported_ms"] == 9


def test_an_old_decision_re_emitted_after_the_card_s_recent_ids_is_not_counted() -> None:
    """A duplicate payment long after its original gets the original's bytes, first decided
    more than a minute before the card's newest decision: not a new decision."""
    agent = next(a for a in WITH_CARD_RISK.agents if a.fn is card_decisions)
    (card,) = _key_on(0, 1)
    store = MemoryStore()
    first = _decision(card, 0, "review", 0.6, decided_at_ms=1_000)
    later = [_decision(card, n, "approve", 0.1, decided_at_ms=100_000 + n)
             for n in range(1, RECENT_IDS + 2)]  # pushes `first` out of the recent ids
    reemitted = dict(first)
    new_but_skewed = _decision(card, 99, "approve", 0.1, decided_at_ms=100_000 - 30_000)
    changes, _ = _run(agent, store, _records([first, *later, reemitted, new_but_skewed]))
    store.apply(changes)
    row = read_row(store, "card_risk", card)
    assert (row["decisions"], row["review"], row["approve"]) == (RECENT_IDS + 3, 1,
                                                                RECENT_IDS + 2)


# -- agents on the decisions, table features, progress records (#17 item 3) -------------------


def test_progress_records_keep_what_a_restarted_worker_wrote_last() -> None:
    """A restart re-reads from its committed offset and writes records for those offsets
    again: they replace what the earlier run wrote from there on."""
    h = ProgressHistory()
    for at, pos in [(0, 0), (100, 2), (250, 5), (400, 5), (250, 4), (330, 6)]:
        h.add(progress_doc(at, {"card_outcomes": pos}))
    h.add(b"not json")
    h.add(orjson.dumps({"agents": {}}))  # no offset: ignored
    assert h.at == [0, 100, 250, 330]
    assert [a["card_outcomes"] for a in h.agents] == [0, 2, 4, 6]


def test_an_agent_on_the_decisions_must_not_wait_on_io() -> None:
    async def waits(batch: AgentBatch) -> None:
        await asyncio.sleep(0)

    agent = Agent("waits", DECISIONS, waits, (), ("t",))
    body = orjson.dumps({"key": "k", "decision": "approve"})
    with pytest.raises(RuntimeError, match="waited on I/O"):
        run_decision_agents([agent], 0, MemoryStore(), {}, [(0, b"k", body)])


def _merchant_events(n: int) -> list[dict]:
    """Payments of four cards at one merchant, 10 s apart: amounts 10, 20, 30, 40, ..."""
    return [{"event_id": f"e{i}", "card_id": f"c{i % 4}", "merchant_id": "m1",
             "amount": 10.0 * (1 + i % 4), "currency": "EUR", "country": "FR",
             "ts_ms": 1_767_225_600_000 + 10_000 * i} for i in range(n)]


def test_table_features_see_an_agents_rows_from_the_next_poll_and_only_fresh_ones() -> None:
    """The merchant agent folds each poll's decisions after it: the first poll's payments read
    no merchant row; later ones read the row as the previous polls left it. A row a day old is
    stale: the feature gets None (0.0 for merchant_amount_z) and the decision says so."""
    events = _merchant_events(12)
    late = {**events[-1], "event_id": "late", "ts_ms": events[-1]["ts_ms"] + 25 * 3_600_000}
    m = WITH_MERCHANT_RISK
    out = feed(m, records_of(m, [*events, late]), poll_records=6)
    docs = [orjson.loads(b) for b in out.decisions[0]]
    stats = out.agent_tables["merchant_stats"][0]["m1"]
    assert stats["payments"] == 13
    z = [d["features"]["merchant_amount_z"] for d in docs]
    assert z[:6] == [0.0] * 6  # no row yet
    assert all(v != 0.0 for v in z[6:12])  # six payments folded before the second poll
    assert z[12] == 0.0 and "stale_merchant_stats" in docs[12]["reasons"]
    assert not any("stale" in r for d in docs[:12] for r in d["reasons"])
    # the same stream cut into other polls, the agent fed where the first run's polls ended
    again = feed(m, records_of(m, [*events, late]), poll_records=4, agents_every=6)
    timed = [{k: v for k, v in orjson.loads(b).items() if k != "stage_ms"}
             for b in again.decisions[0]]
    assert timed == [{k: v for k, v in d.items() if k != "stage_ms"} for d in docs]


def test_a_replay_schedule_cuts_where_the_workers_polls_started() -> None:
    """Replay batches are cut at the recorded offsets (forwarded records never cut)."""
    s = AgentSchedule(0)
    for at in (0, 5, 7):
        s.history.add(progress_doc(at, {}))
    recs = [Record("t", 0, o, None, None, None) for o in range(10)]
    assert [[r.offset for r in piece] for piece in s.cut(recs)] == [
        [0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]
