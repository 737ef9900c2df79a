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
