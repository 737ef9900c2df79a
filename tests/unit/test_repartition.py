"""Records not on their entity's partition (#13 item 2): the partitioners, the pipeline's
forwarding, and a replay's routing spool. The live round trip through the repartition topic
is tests/integration/test_fraud_stream.py's (the oracle with null-keyed and CRC32 producers)."""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import murmur2
from hypothesis import given
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.partitioning import partition_for, router
from engine.pipeline import Pipeline, Record
from engine.pipeline.records import FORWARDED, forwarded_position, origin
from engine.policy import RulesOnly
from engine.replay_routing import RoutingSpool
from engine.state import MemoryStore
from engine.topology import TimeSettings
from topologies.fraud import TOPOLOGY

T0 = 1_700_000_000_000
EVENTS = "fraud.events"
REPARTITION = "fraud.repartition"
PARTITIONS = 4


def payment(eid: str, card: str, ts: int) -> bytes:
    return orjson.dumps({"event_id": eid, "card_id": card, "merchant_id": "m1", "amount": 10.0,
                         "currency": "USD", "country": "US", "ts_ms": ts})


def cards_of(partition: int, n: int) -> list[str]:
    """`n` card ids whose murmur2 partition is `partition`."""
    out, i = [], 0
    while len(out) < n:
        card = f"c{i}"
        if partition_for(card.encode(), PARTITIONS) == partition:
            out.append(card)
        i += 1
    return out


def pipeline(topology=TOPOLOGY, partitions=(0, 1, 2, 3)) -> tuple[Pipeline, dict]:
    pipe = Pipeline(topology, RulesOnly(topology.rules, topology.features.versioned_name),
                    ManualClock(T0), topic=EVENTS, route=router(PARTITIONS))
    stores = {p: MemoryStore() for p in partitions}
    for p in partitions:
        pipe.open(p, stores[p])
    return pipe, stores


# -- partitioners ----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "java"), [  # Kafka's UtilsTest.testMurmur2
    (b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971), (b"abc", 479470107)])
def test_murmur2_is_the_java_clients(key: bytes, java: int) -> None:
    for n in (1, 3, 8, 12, 1000, 2**31 - 1):
        assert partition_for(key, n) == (java & 0x7FFFFFFF) % n


@given(st.binary(max_size=64), st.integers(1, 10_000))
def test_murmur2_equals_aiokafkas(key: bytes, n: int) -> None:
    assert partition_for(key, n, "murmur2") == (murmur2(key) & 0x7FFFFFFF) % n


def test_crc32_is_librdkafkas() -> None:
    # CRC-32/ISO-HDLC check value of "123456789" (librdkafka's rd_crc32, zlib's crc32)
    assert partition_for(b"123456789", 2**31 - 1, "crc32") == 0xCBF43926 % (2**31 - 1)
    assert router(7, "crc32")(b"card-1") == zlib.crc32(b"card-1") % 7


def test_unknown_partitioner_and_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown partitioner 'fnv'"):
        router(4, "fnv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="partitions must be > 0"):
        partition_for(b"k", 0)


# -- the pipeline ----------------------------------------------------------------------------


def test_a_record_of_another_partitions_entity_is_forwarded_untouched() -> None:
    pipe, stores = pipeline()
    here, there = cards_of(0, 1)[0], cards_of(2, 1)[0]
    recs = [Record(EVENTS, 0, i, key, payment(f"e{i}", card, T0 + i), T0 + i)
            for i, (key, card) in enumerate([(here.encode(), here), (None, there),
                                             (there.encode(), there), (b"junk", here)])]
    res = pipe.process({0: recs}, {}).partitions[0]
    assert [orjson.loads(v)["event_id"] for _, v in res.decisions] == ["e0", "e3"]
    assert [(kb, r.offset) for kb, r in res.forward] == [(there.encode(), 1),
                                                         (there.encode(), 2)]
    assert res.commit_offset == 4 and res.forwarded_commit is None
    assert not any(there.encode() in k for k in res.changes)  # no state of the other card

    # at its card's partition, read from the repartition topic: decided, never sent on again
    fwd = [Record(REPARTITION, 2, forwarded_position(2, o), kb, r.value, r.timestamp)
           for o, (kb, r) in enumerate(res.forward, start=40)]
    other = pipe.process({2: fwd}, {}).partitions[2]
    assert [orjson.loads(v)["event_id"] for _, v in other.decisions] == ["e1", "e2"]
    assert other.forward == [] and other.commit_offset is None
    assert other.forwarded_commit == 42  # the repartition topic's own offset, past the last


def test_a_forwarded_record_is_never_forwarded_again() -> None:
    pipe, _ = pipeline()
    card = cards_of(3, 1)[0]
    rec = Record(REPARTITION, 1, forwarded_position(1, 0), card.encode(),
                 payment("e1", card, T0), T0)
    res = pipe.process({1: [rec]}, {}).partitions[1]  # partition 1 disagrees: still decided
    assert len(res.decisions) == 1 and res.forward == []


def test_dead_letters_and_late_records_of_forwarded_records_name_where_they_were_read() -> None:
    pipe, _ = pipeline()
    card = cards_of(1, 1)[0]
    own = Record(EVENTS, 1, 5, card.encode(), payment("e0", card, T0 + 600_000), T0 + 600_000)
    late = Record(REPARTITION, 1, forwarded_position(1, 7), card.encode(),
                  payment("e1", card, T0), T0)
    future = Record(REPARTITION, 1, forwarded_position(1, 8), card.encode(),
                    payment("e2", card, T0 + 10**9), T0)
    res = pipe.process({1: [late, future, own]}, {}).partitions[1]
    assert len(res.dlq) == 1 and len(res.late) == 0  # e1 came before e0 moved the watermark
    headers = dict(res.dlq[0].headers)
    assert (headers["streamwise.reason"], headers["streamwise.topic"],
            headers["streamwise.partition"], headers["streamwise.offset"]) == (
        b"future_time", REPARTITION.encode(), b"1", b"8")
    again = pipe.process({1: [Record(REPARTITION, 1, forwarded_position(1, 9), card.encode(),
                                     payment("e3", card, T0), T0)]}, {}).partitions[1]
    headers = dict(again.late[0].headers)
    assert (headers["streamwise.topic"], headers["streamwise.offset"]) == (REPARTITION.encode(),
                                                                           b"9")
    assert origin(late, EVENTS) == (REPARTITION, 1, 7) and origin(own, EVENTS) == (EVENTS, 1, 5)


def test_event_time_ordering_holds_each_topics_commit_at_its_oldest_held_record() -> None:
    topo = dataclasses.replace(TOPOLOGY, time=TimeSettings(2_000, 58_000, "event_time"))
    pipe, _ = pipeline(topo)
    card = cards_of(0, 1)[0]
    fwd = [Record(REPARTITION, 0, forwarded_position(0, 10 + i), card.encode(),
                  payment(f"f{i}", card, T0 + 10_000 * i), T0) for i in range(3)]
    own = [Record(EVENTS, 0, 20 + i, card.encode(), payment(f"o{i}", card, T0 + 5_000 * i), T0)
           for i in range(3)]
    res = pipe.process({0: fwd + own}, {}).partitions[0]
    # watermark = 20,000 - 2,000: f2 (20,000) is held, o0..o2 (<= 10,000) and f0, f1 released
    assert res.forwarded_commit == 12 and res.commit_offset == 23
    assert FORWARDED > 10**12


# -- a replay's routing spool ----------------------------------------------------------------


def test_the_replay_spool_routes_merges_by_timestamp_and_puts_warm_up_first(tmp_path: Path
                                                                            ) -> None:
    spool = RoutingSpool(tmp_path, TOPOLOGY, EVENTS, router(PARTITIONS))
    a, b = cards_of(0, 1)[0], cards_of(1, 1)[0]

    def rec(p: int, o: int, card: str, ts: int, value: bytes | None = None):
        return Record(EVENTS, p, o, None, value or payment(f"{p}-{o}", card, ts), ts)

    spool.add(0, [rec(0, 0, a, T0), rec(0, 1, b, T0 + 5), rec(0, 2, a, T0 + 9),
                  rec(0, 3, a, T0 + 1, b"{junk")], emit_from=1)
    spool.finish()
    spool.add(1, [rec(1, 0, a, T0 + 3), rec(1, 1, b, T0 + 4), rec(1, 2, b, T0 + 7)],
              emit_from=0)
    spool.finish()
    assert spool.routed == 2 and spool.partitions() == [0, 1]
    got = {p: [(warm, [(r.partition, r.offset, r.timestamp) for r in batch])
               for warm, batch in spool.batches(p, size=3)] for p in (0, 1)}
    # partition 0's own records keep their order (the junk one stays where it was produced)
    assert got[0] == [(True, [(0, 0, T0)]),
                      (False, [(0, forwarded_position(1, 0), T0 + 3), (0, 2, T0 + 9),
                               (0, 3, T0 + 1)])]
    assert got[1] == [(False, [(1, 1, T0 + 4), (1, forwarded_position(0, 1), T0 + 5),
                               (1, 2, T0 + 7)])]
