"""Partition owners from member announcements."""

from engine.routing import Member, OwnerMap


def _ann(m: OwnerMap, wid: str, parts: set[int], gen: int) -> None:
    m.apply(wid, Member(wid, f"http://{wid}", frozenset(parts), gen).encode())


def test_newest_generation_wins_and_tombstones_remove() -> None:
    m = OwnerMap()
    _ann(m, "a", {0, 1, 2, 3}, 1)
    assert m.owner(2).worker_id == "a"
    _ann(m, "b", {2, 3}, 2)  # b joined; a has not re-announced yet (or crashed)
    assert m.owner(2).worker_id == "b" and m.owner(0).worker_id == "a"
    _ann(m, "a", {0, 1}, 2)
    assert [m.owner(p).worker_id for p in range(4)] == ["a", "a", "b", "b"]
    _ann(m, "b", set(), 3)  # b between assignments: claims nothing
    assert m.owner(2) is None
    m.apply("a", None)
    assert m.owner(0) is None and [x.worker_id for x in m.members] == ["b"]


def test_garbage_records_are_ignored() -> None:
    m = OwnerMap()
    _ann(m, "a", {0}, 1)
    m.apply("a", b"not json")
    m.apply_all([(None, b"{}"), (b"c", b'{"url": 1}')])
    assert m.owner(0).url == "http://a"


def test_standby_placement_is_the_next_workers_on_the_ring_of_owners() -> None:
    from engine.routing import standby_partitions
    m = OwnerMap()
    _ann(m, "a", {0, 1, 2}, 1)
    _ann(m, "b", {3, 4, 5}, 1)
    # two workers, one replica: each keeps exactly the other's partitions
    assert standby_partitions(m, "a", 1, 6) == {3, 4, 5}
    assert standby_partitions(m, "b", 1, 6) == {0, 1, 2}
    assert standby_partitions(m, "a", 0, 6) == set()
    _ann(m, "c", {5}, 2)  # three owners: ring a -> b -> c -> a
    _ann(m, "b", {3, 4}, 2)
    assert standby_partitions(m, "a", 1, 6) == {5}  # c's
    assert standby_partitions(m, "b", 1, 6) == {0, 1, 2}  # a's
    assert standby_partitions(m, "c", 1, 6) == {3, 4}  # b's
    # as many replicas as other workers: every partition not owned, never one owned
    assert standby_partitions(m, "a", 2, 6) == {3, 4, 5}
    assert standby_partitions(m, "a", 8, 6) == {3, 4, 5}
    # a worker that owns nothing yet is on the ring too
    assert standby_partitions(m, "d", 1, 6) == {5}  # after c: d, then a
    _ann(m, "c", set(), 3)  # c between assignments: 5 has no owner; a keeps what it holds
    assert standby_partitions(m, "a", 1, 6, held=frozenset({5})) == {3, 4, 5}
    assert 5 not in standby_partitions(m, "a", 1, 6)
