"""engine.dedup: seen-id keys, the time index and its expiry range."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.dedup import Dedup
from engine.state import MemoryStore

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
