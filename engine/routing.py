"""Which worker owns which input partition, as the workers announce it (pure).

Every worker publishes one member record to the topology's compacted members topic each time
its assignment changes: `{worker_id, url, partitions, generation}` with the consumer group's
generation; an empty partition list while it is between assignments; a tombstone when it
stops. Owner of a partition = the member with the highest generation that claims it, so a
crashed worker's leftover claim loses to its successor's as soon as that one announces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

__all__ = ["Member", "OwnerMap", "standby_partitions"]


@dataclass(frozen=True, slots=True)
class Member:
    worker_id: str
    url: str  # base URL its HTTP API answers at, e.g. http://127.0.0.1:6066
    partitions: frozenset[int]
    generation: int

    def encode(self) -> bytes:
        return orjson.dumps({"worker_id": self.worker_id, "url": self.url,
                             "partitions": sorted(self.partitions),
                             "generation": self.generation})

    @classmethod
    def decode(cls, raw: bytes) -> Member:
        d = orjson.loads(raw)
        return cls(str(d["worker_id"]), str(d["url"]), frozenset(int(p) for p in d["partitions"]),
                   int(d["generation"]))


class OwnerMap:
    """The latest member record per worker id, and the owner of each partition."""

    def __init__(self) -> None:
        self._members: dict[str, Member] = {}
        self._owners: dict[int, Member] = {}

    def apply(self, worker_id: str, raw: bytes | None) -> None:
        """One members-topic record: a member's announcement, or a tombstone (None)."""
        if raw is None:
            self._members.pop(worker_id, None)
        else:
            try:
                self._members[worker_id] = Member.decode(raw)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                return  # not ours to interpret: ignore rather than drop routing
        self._rebuild()

    def apply_all(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        for key, value in records:
            if key:
                self.apply(key.decode(errors="replace"), value)

    def owner(self, partition: int) -> Member | None:
        return self._owners.get(partition)

    @property
    def members(self) -> list[Member]:
        return sorted(self._members.values(), key=lambda m: m.worker_id)

    def _rebuild(self) -> None:
        owners: dict[int, Member] = {}
        for m in self._members.values():
            for p in m.partitions:
                best = owners.get(p)
                if best is None or (m.generation, m.worker_id) > (best.generation,
                                                                  best.worker_id):
                    owners[p] = m
        self._owners = owners


def standby_partitions(owners: OwnerMap, me: str, replicas: int, partitions: int,
                       held: frozenset[int] = frozenset()) -> set[int]:
    """The partitions worker `me` keeps a standby replica of.

    The workers that own a partition now, and `me`, form a ring in worker-id order; a
    partition's standbys are the `replicas` workers after its owner on that ring (so with two
    workers and one replica each keeps the other's partitions; with `replicas` at least the
    ring's size minus one, every worker keeps every partition it does not own). Every worker
    computes the same placement from the members topic, and no two standbys of a partition
    sit on one worker. A partition with no owner right now (a rebalance) keeps the replicas
    already `held`: that is when they are needed. Never a partition `me` owns.
    """
    if replicas <= 0:
        return set()
    owner_of = {p: owners.owner(p) for p in range(partitions)}
    ring = sorted({m.worker_id for m in owner_of.values() if m is not None} | {me})
    out: set[int] = set()
    for p, owner in owner_of.items():
        if owner is None:
            if p in held:
                out.add(p)
            continue
        if owner.worker_id == me:
            continue
        i = ring.index(owner.worker_id)
        after = [ring[(i + k) % len(ring)] for k in range(1, min(replicas, len(ring) - 1) + 1)]
        if me in after:
            out.add(p)
    return out
