"""The dedup filter never forgets an id within the TTL (no false negatives), however many ids
come, whatever their times, and however far the watermark moves; it forgets whole generations
only when the TTL rule says every id in them has expired."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from engine.dedup import Dedup
from engine.kernel import SeenFilter

TTL = 86_400_000


@given(st.lists(st.tuples(st.text(min_size=1, max_size=12),
                          st.integers(-10 * TTL, 10 * TTL)), max_size=300),
       st.lists(st.integers(-10 * TTL, 20 * TTL), max_size=5))
def test_no_id_within_the_ttl_is_ever_reported_unseen(added, watermarks):
    f = SeenFilter(TTL, segment_ids=16)  # tiny segments: many of them
    f.add([i for i, _ in added], np.array([t for _, t in added], dtype=np.int64))
    wm = None
    for w in sorted(watermarks):
        f.expire(w)
        wm = w
    alive = [i for i, t in added if not Dedup(TTL).expired(t, wm)]
    assert all(f.maybe(alive))


def test_ids_never_added_are_mostly_reported_unseen():
    f = SeenFilter(TTL)
    n = 20_000
    f.add([f"a{i}" for i in range(n)], np.arange(n, dtype=np.int64))
    false_positives = sum(f.maybe([f"b{i}" for i in range(n)]))
    assert false_positives < n * 0.02  # ~1% by design


def test_expired_generations_are_dropped_and_their_memory_freed():
    f = SeenFilter(TTL)
    f.add(["old"], np.array([0], dtype=np.int64))
    f.add(["new"], np.array([3 * TTL], dtype=np.int64))
    held = f.nbytes
    f.expire(3 * TTL)  # "old" is 3 TTLs behind: expired
    assert f.maybe(["new"]) == [True]
    assert f.nbytes < held


def test_past_its_memory_cap_it_answers_maybe_instead_of_forgetting():
    f = SeenFilter(TTL, max_bytes=10_000, segment_ids=1_000)
    ids = [f"id{i}" for i in range(50_000)]
    f.add(ids, np.zeros(len(ids), dtype=np.int64))
    assert f.nbytes <= 10_000
    assert all(f.maybe(ids))
    assert all(f.maybe(["never-added"]))
