"""StagedStore: staged change sets are read before they are written, and written in order."""

from __future__ import annotations

from pathlib import Path

from engine.state import MemoryStore, RocksStore, StagedStore


def test_reads_see_staged_changes_newest_first_until_applied() -> None:
    inner = MemoryStore()
    inner.apply({b"a": b"0", b"gone": b"x"})
    store = StagedStore(inner)
    store.stage({b"a": b"1", b"b": b"1", b"gone": None})
    store.stage({b"a": b"2"})

    assert (store.get(b"a"), store.get(b"b"), store.get(b"gone")) == (b"2", b"1", None)
    # "gone": deleted in a staged set; "b": only staged so far, listed in key order
    assert list(store.items_between(b"a", b"z")) == [(b"a", b"2"), (b"b", b"1")]
    assert inner.get(b"a") == b"0" and store.staged == 2

    store.apply_oldest(changelog_offset=41)
    assert (inner.get(b"a"), inner.get(b"b"), inner.get(b"gone")) == (b"1", b"1", None)
    assert inner.changelog_offset == 41 and store.get(b"a") == b"2" and store.staged == 1

    store.apply_oldest(changelog_offset=42)
    assert inner.get(b"a") == b"2" and inner.changelog_offset == 42 and store.staged == 0


def test_rocksdb_without_wal_keeps_applied_batches_across_a_clean_reopen(tmp_path: Path) -> None:
    store = StagedStore(RocksStore(tmp_path / "p0"))
    store.stage({b"k": b"v"})
    store.apply_oldest(changelog_offset=7)
    store.close()  # memtables are flushed on close: the WAL is off
    reopened = RocksStore(tmp_path / "p0")
    try:
        assert reopened.get(b"k") == b"v" and reopened.changelog_offset == 7
    finally:
        reopened.close()



def test_range_reads_merge_staged_keys_in_order_as_the_store_will_hold_them() -> None:
    """A lookup during a write must see the tile its entity's newest event just created: the
    chaos suite's readers got an entity's new last_ts_ms without its new tile (#13)."""
    inner = MemoryStore()
    inner.apply({b"t/a1": b"s1", b"t/a3": b"s3", b"t/a5": b"s5", b"t/b1": b"other"})
    store = StagedStore(inner)
    store.stage({b"t/a0": b"n0", b"t/a3": b"n3", b"t/a4": b"n4", b"t/a9": b"n9",
                 b"t/b0": b"out of range"})
    store.stage({b"t/a4": None, b"t/a6": b"n6", b"t/a5": None})
    want = [(b"t/a0", b"n0"), (b"t/a1", b"s1"), (b"t/a3", b"n3"), (b"t/a6", b"n6"),
            (b"t/a9", b"n9")]
    assert list(store.items_between(b"t/a", b"t/b")) == want
    for offset in (10, 11):  # the same view while the staged sets reach the store
        store.apply_oldest(changelog_offset=offset)
        assert list(store.items_between(b"t/a", b"t/b")) == want
    assert list(inner.items_between(b"t/a", b"t/b")) == want
    assert list(store.items_between(b"t/a2", b"t/a4")) == [(b"t/a3", b"n3")]
