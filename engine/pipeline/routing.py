"""Which partition a raw record belongs to: its entity's, as live workers route it.

A live worker decodes each record and forwards one whose entity key belongs to another
partition (`admit`, then the repartition topic). Replay and `engine.testing.feed` route without
Kafka in between and ask this first, from the raw bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from ..schemas import EventDecoder, Rejection
from ..topology import Topology

__all__ = ["EntityRouter"]


class EntityRouter:
    """`partition_of(value)`: the partition `route` gives the record's entity key, or None for
    a record that is no event (it is dead-lettered where it landed)."""

    def __init__(self, topology: Topology, route: Callable[[bytes], int]) -> None:
        self._route = route
        self._key_field = topology.key_field
        self._decoder = EventDecoder(topology.schema,
                                     (topology.key_field, topology.event_id_field),
                                     topology.max_record_bytes)

    def partition_of(self, value: bytes | None) -> int | None:
        try:
            doc = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return None
        key = doc.get(self._key_field) if type(doc) is dict else None
        if type(key) is not str or not key:  # the contract decides, as the worker's decoder
            event = self._decoder.decode(value)
            if type(event) is Rejection:
                return None
            key = getattr(event, self._key_field)
        return self._route(key.encode())
