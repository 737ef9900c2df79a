"""engine.dedup and its keys in engine.state.layout: seen ids, the expiry records and the range
a sweep reads; and dedup as the pipeline applies it (a duplicate re-emits the original decision byte for byte and changes nothing)."""

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
offsets = st.integers(min_value=0, max_value=10**15 - 1)


def test_key_layout_examples() -> None:
    assert layout.seen_key("ev-1") == b"d/ev-1"
    assert layout.seen_key("é") == "d/é".encode()
    key = layout.expiry_key(1_700_000_000_000, 7)
    assert key == b"x/0001700000000000/0000000000000007"
    assert layout.expiry_max_ts(key) == 1_700_000_000_000
    assert layout.expiry_key(-5, 0) == b"x/0000000000000000/0000000000000000"  # clamped to 0


@given(a=times, b=times, sa=offsets, sb=offsets)
def test_expiry_records_sort_by_newest_event_time_then_first_offset(a: int, b: int, sa: int,
                                                                    sb: int) -> None:
    if (a, sa) < (b, sb):
        assert layout.expiry_key(a, sa) < layout.expiry_key(b, sb)


@given(ids=st.lists(event_ids, max_size=20))
def test_an_expiry_record_round_trips_its_ids_in_order(ids: list[str]) -> None:
    assert layout.unpack_expiry(layout.pack_expiry(ids)) == ids


def test_expiry_before_is_every_record_whose_newest_event_is_older() -> None:
    d = Dedup(ttl_ms=24 * HOUR)
    assert d.cutoff(25 * HOUR) == HOUR
    lo, hi = layout.expiry_before(d.cutoff(25 * HOUR))
    assert (lo, hi) == (b"x/", b"x/%016d" % HOUR)
    assert lo <= layout.expiry_key(0, 0) < layout.expiry_key(HOUR - 1, 10**15) < hi
    assert hi <= layout.expiry_key(HOUR, 0)


@given(ttl=st.integers(1, 10**10), wm=st.integers(-10**10, 10**14),
       records=st.lists(st.tuples(st.integers(0, 10**14), offsets), max_size=40))
def test_expiry_before_the_cutoff_covers_exactly_the_records_that_expired(
        ttl: int, wm: int, records: list[tuple[int, int]]) -> None:
    d = Dedup(ttl)
    store = MemoryStore()
    store.apply({layout.expiry_key(ts, first): b"" for ts, first in records}
                | {layout.seen_key(f"e{first}"): b"{}" for _, first in records})
    lo, hi = layout.expiry_before(d.cutoff(wm))
    found = {(layout.expiry_max_ts(k), int(k[-16:])) for k, _ in store.items_between(lo, hi)}
    assert found == {(ts, first) for ts, first in records if d.expired(ts, wm)}


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
