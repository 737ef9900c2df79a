"""engine.dedup: seen-id keys, the time index and its expiry range; and dedup as the pipeline
applies it (a duplicate re-emits the original decision byte for byte and changes nothing)."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.dedup import Dedup
from engine.pipeline import BatchResult, PartitionPipeline, Record
from engine.policy import RulesOnly
from engine.state import MemoryStore, layout
from topologies.fraud import TOPOLOGY

HOUR = 3_600_000

event_ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
# Realistic event times: up to year ~33000 (15 decimal digits of ms).
times = st.integers(min_value=0, max_value=10**15 - 1)


def test_key_layout_examples() -> None:
    assert Dedup.seen_key("ev-1") == b"d/ev-1"
    assert Dedup.index_key(1_700_000_000_000, "ev-1") == b"x/0001700000000000/ev-1"
    assert Dedup.index_key(0, "a") == b"x/0000000000000000/a"
    assert Dedup.index_key(-5, "a") == b"x/0000000000000000/a"  # clamped to 0
    assert Dedup.event_id_of_index(b"x/0001700000000000/ev-1") == "ev-1"
    assert Dedup.seen_key("é") == "d/é".encode()


@given(ts=times, eid=event_ids)
def test_index_key_round_trips_event_id(ts: int, eid: str) -> None:
    key = Dedup.index_key(ts, eid)
    assert key.startswith(b"x/")
    assert Dedup.event_id_of_index(key) == eid
    assert key[2:18] == b"%016d" % ts


@given(a=times, b=times, ea=event_ids, eb=event_ids)
def test_index_keys_sort_by_time(a: int, b: int, ea: str, eb: str) -> None:
    if a < b:
        assert Dedup.index_key(a, ea) < Dedup.index_key(b, eb)


def test_index_key_round_trips_at_the_schemas_largest_time() -> None:
    # CardPayment accepts ts_ms up to 2**53 - 1 (16 digits): the index must still decode.
    ts = 2**53 - 1
    key = Dedup.index_key(ts, "ev-1")
    assert Dedup.event_id_of_index(key) == "ev-1"
    assert Dedup.index_key(10**15 - 1, "z") < key


def test_expiry_range_example() -> None:
    d = Dedup(ttl_ms=24 * HOUR)
    lo, hi = d.expiry_range(25 * HOUR)
    assert lo == b"x/"
    assert hi == b"x/%016d" % HOUR
    # Ids at exactly watermark - ttl are kept, one ms older expire.
    assert lo <= d.index_key(HOUR - 1, "old") < hi
    assert not d.index_key(HOUR, "edge") < hi
    # Before the TTL has elapsed at all, nothing expires.
    lo, hi = d.expiry_range(HOUR)
    assert not d.index_key(0, "a") < hi


@given(ttl=st.integers(1, 10**10), wm=st.integers(-10**10, 10**14),
       entries=st.lists(st.tuples(st.integers(0, 10**14), event_ids), max_size=40))
def test_expiry_range_covers_exactly_ids_older_than_watermark_minus_ttl(
        ttl: int, wm: int, entries: list[tuple[int, str]]) -> None:
    d = Dedup(ttl)
    store = MemoryStore()
    store.apply({d.index_key(ts, eid): b"" for ts, eid in entries}
                | {d.seen_key(eid): b"{}" for _, eid in entries})
    lo, hi = d.expiry_range(wm)
    expired = {d.event_id_of_index(k) for k, _ in store.items_between(lo, hi)}
    assert all(k.startswith(b"x/") for k, _ in store.items_between(lo, hi))
    assert {(ts, eid) for ts, eid in entries if ts < wm - ttl} == {
        (int(k[2:18]), d.event_id_of_index(k)) for k, _ in store.items_between(lo, hi)}
    assert expired == {eid for ts, eid in entries if ts < wm - ttl}


# --------------------------------------------------------------------------- through the pipeline

T0 = 1_767_225_600_000


def _payment(eid: str, ts: int, amount: float = 10.0, card: str = "c1") -> bytes:
    return orjson.dumps({"event_id": eid, "card_id": card, "merchant_id": "m1",
                         "amount": amount, "currency": "USD", "country": "US", "ts_ms": ts})


class _Stream:
    """One partition's pipeline over a MemoryStore; each `send` is one batch, offsets go on.
    The wall clock moves 1 s per batch, so a decision made again would differ in
    `decided_at_ms` from the first one."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.clock = ManualClock(1_800_000_000_000)
        self.pipe = PartitionPipeline(TOPOLOGY, 0, self.store,
                                      RulesOnly(TOPOLOGY.rules, "fraud:v1"), self.clock)
        self.offset = 0

    def send(self, *values: bytes) -> BatchResult:
        recs = [Record("fraud.events", 0, self.offset + i, None, v, 0)
                for i, v in enumerate(values)]
        self.offset += len(values)
        res = self.pipe.process(recs, {})
        self.store.apply(res.changes)
        self.clock.advance(1_000)
        return res


def test_a_duplicate_in_a_later_batch_re_emits_the_original_decisions_exact_bytes() -> None:
    s = _Stream()
    (first,) = s.send(_payment("a", T0)).decisions
    again = s.send(_payment("a", T0 + 5_000, amount=999.0))  # same id, other content
    assert again.decisions == [first]  # key and bytes, decided_at_ms included
    assert (again.accepted, again.duplicates) == (0, 1)


def test_a_duplicate_in_the_same_batch_re_emits_the_first_ones_bytes() -> None:
    res = _Stream().send(_payment("a", T0), _payment("b", T0 + 1), _payment("a", T0 + 2))
    assert [orjson.loads(v)["event_id"] for _, v in res.decisions] == ["a", "b", "a"]
    assert res.decisions[2] == res.decisions[0]
    assert (res.accepted, res.duplicates) == (2, 1)


def test_a_duplicate_changes_no_aggregate_and_no_watermark() -> None:
    s = _Stream()
    s.send(_payment("a", T0, amount=10.0))
    velocity = TOPOLOGY.table("velocity")
    prefix = layout.table_prefix(velocity.name, velocity.version, velocity.tile_ms)

    def tiles() -> list[tuple[bytes, bytes]]:  # every stored tile of every card
        return list(s.store.items_between(prefix, prefix + b"\xff"))

    before = tiles()
    assert [layout.unpack_tile(v, True).count for _, v in before] == [1]
    watermark = s.store.get(layout.WATERMARK_KEY)
    entity = s.store.get(layout.entity_key(b"c1"))
    assert layout.unpack_entity(entity)[0] == T0
    s.send(_payment("a", T0 + 30_000, amount=999.0), _payment("a", T0 + 90_000, amount=5.0))
    assert tiles() == before
    assert s.store.get(layout.WATERMARK_KEY) == watermark == str(T0).encode()
    assert s.store.get(layout.entity_key(b"c1")) == entity
    (b,) = s.send(_payment("b", T0 + 1_000, amount=1.0)).decisions
    f = orjson.loads(b[1])["features"]
    assert (f["count_10m"], f["sum_10m"], f["max_10m"]) == (2, 11.0, 10.0)


def test_dedup_holds_for_the_ttl_behind_the_watermark_and_not_a_millisecond_longer() -> None:
    ttl = TOPOLOGY.dedup_ttl_ms
    lag = TOPOLOGY.time.max_out_of_orderness_ms
    s = _Stream()
    (first,) = s.send(_payment("a", T0)).decisions
    # watermark - ttl == T0: the id is kept (the event is late by now: dedup comes first)
    s.send(_payment("x", T0 + ttl + lag, card="c2"))
    again = s.send(_payment("a", T0))
    assert again.decisions == [first] and again.late == [] and again.duplicates == 1
    # watermark - ttl == T0 + 1: the id has expired, the event is new (and late)
    s.send(_payment("y", T0 + ttl + lag + 1, card="c2"))
    fresh = s.send(_payment("a", T0))
    assert fresh.duplicates == 0 and len(fresh.late) == 1
    (decision,) = fresh.decisions
    assert decision != first and orjson.loads(decision[1])["reasons"][0] == "late_event"


def test_expired_clamps_negative_times_to_zero_like_the_index() -> None:
    d = Dedup(ttl_ms=HOUR)
    assert d.expired(0, HOUR + 1) and d.expired(-5, HOUR + 1)  # 0 < 1
    assert not d.expired(0, HOUR) and not d.expired(-5, HOUR)  # 0 < 0 is false
    assert not d.expired(0, None)  # before any event nothing has expired
