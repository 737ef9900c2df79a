"""Every key and value of a partition's state, in one place (no other module knows their bytes).

Keys (``e`` = the entity key as UTF-8, length-prefixed so any key is safe in a prefix scan):

- ``t/<table>.v<version>.<tile_ms>/<len:2><e><start:8>`` -> one tile (`pack_tile`); the start is
  stored with its sign bit flipped, big-endian, so an entity's tiles sort by time.
- ``e/<len:2><e>`` -> the entity: its newest accepted event time and its last decision.
- ``d/<event_id>`` -> a decided (or late, unscored) event: its event time, where it came from
  (partition, offset, late) and the decision bytes emitted for it, re-emitted for a duplicate.
- ``x/<max_ts:016d>/<seq:016d>`` -> the event ids one batch marked seen; once the watermark has
  passed ``max_ts`` by the dedup TTL, the record and every ``d/`` key it lists are deleted.
- ``m/max_ts`` -> the partition's largest accepted event time (its watermark's source).
- ``a/<table>/<key>`` -> a row of an agent's table (`engine.agents`): a JSON object.
- ``a\x00/<agent>`` -> the offset up to which an agent has applied its topic's records here.
- ``\\x00meta/...`` -> local bookkeeping, never changelogged: the changelog offset a store is at
  and the state format version.

`STATE_FORMAT_VERSION` changes whenever any of this changes; a store or changelog written in
another format is refused with a clear error rather than misread.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..errors import StateError

__all__ = [
    "AGENT",
    "CHANGELOG_OFFSET_KEY",
    "ENTITY",
    "EXPIRY",
    "FORMAT_HEADER",
    "FORMAT_KEY",
    "NO_TS",
    "SEEN",
    "STATE_FORMAT_VERSION",
    "WATERMARK_KEY",
    "Seen",
    "Tile",
    "agent_key",
    "agent_position_key",
    "check_format",
    "entity_key",
    "expiry_key",
    "expiry_max_ts",
    "pack_entity",
    "pack_expiry",
    "pack_seen",
    "pack_tile",
    "seen_key",
    "table_prefix",
    "tile_key",
    "tile_range",
    "tile_start_of",
    "unpack_entity",
    "unpack_expiry",
    "unpack_seen",
    "unpack_tile",
]

STATE_FORMAT_VERSION = 2
FORMAT_KEY = b"\x00meta/format"
FORMAT_HEADER = "streamwise.format"  # on every changelog batch's end record
CHANGELOG_OFFSET_KEY = b"\x00meta/changelog_offset"
WATERMARK_KEY = b"m/max_ts"
TILE = b"t/"
ENTITY = b"e/"
SEEN = b"d/"
EXPIRY = b"x/"
AGENT = b"a/"
NO_TS = -(1 << 63)  # "no event yet" where an int64 time is stored

_SIGN = 1 << 63
_TILE = struct.Struct("<qdddqdH")  # count, sum, min, max, last_ts, last, n distinct
_LEN = struct.Struct("<H")
_SEEN = struct.Struct("<qiq?")  # ts_ms, partition, offset, late
_ENTITY = struct.Struct("<q")  # last_ts_ms (NO_TS: none)


class Tile(NamedTuple):
    """One tile's aggregates; `distinct` is None for a table without a distinct field."""

    count: int
    sum: float
    min: float
    max: float
    last_ts: int
    last: float
    distinct: tuple[str, ...] | None


class Seen(NamedTuple):
    """A dedup entry: the event's time and origin, and the decision emitted for it (b"" for
    a late event the topology does not score)."""

    ts_ms: int
    partition: int
    offset: int
    late: bool
    decision: bytes


def check_format(found: bytes | None, where: str) -> None:
    """Refuse state written in another format (None: a new store, fine)."""
    if found is not None and found != str(STATE_FORMAT_VERSION).encode():
        raise StateError(
            f"{where} holds state format {found.decode(errors='replace')}, this version reads "
            f"format {STATE_FORMAT_VERSION}: delete the data directory and the topology's "
            "changelog topic, then replay the input to rebuild the state")


def _entity(entity: bytes) -> bytes:
    if len(entity) > 0xFFFF:
        raise ValueError(f"entity key of {len(entity)} bytes")
    return _LEN.pack(len(entity)) + entity


# -- tiles --------------------------------------------------------------------------------


def table_prefix(name: str, version: int, tile_ms: int) -> bytes:
    """Key prefix of one windowed table; changes whenever its tiling changes."""
    return b"%s%s.v%d.%d/" % (TILE, name.encode(), version, tile_ms)


def tile_key(prefix: bytes, entity: bytes, start_ms: int) -> bytes:
    return prefix + _entity(entity) + ((start_ms + _SIGN) & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big")


def tile_range(prefix: bytes, entity: bytes) -> tuple[bytes, bytes]:
    """``[lo, hi)`` holding exactly the tiles of `entity`, oldest first."""
    lo = prefix + _entity(entity)
    return lo, lo + b"\xff" * 9


def tile_start_of(key: bytes) -> int:
    return int.from_bytes(key[-8:], "big") - _SIGN


def pack_tile(t: Tile | Sequence) -> bytes:
    count, total, lo, hi, last_ts, last, distinct = t
    out = [_TILE.pack(count, total, lo, hi, last_ts, last, len(distinct or ()))]
    if distinct is not None:
        for value in distinct:
            raw = value.encode()
            out += [_LEN.pack(len(raw)), raw]
    return b"".join(out)


def unpack_tile(raw: bytes, has_distinct: bool) -> Tile:
    count, total, lo, hi, last_ts, last, n = _TILE.unpack_from(raw)
    if not has_distinct:
        return Tile(count, total, lo, hi, last_ts, last, None)
    pos, values = _TILE.size, []
    for _ in range(n):
        (size,) = _LEN.unpack_from(raw, pos)
        values.append(raw[pos + 2: pos + 2 + size].decode())
        pos += 2 + size
    return Tile(count, total, lo, hi, last_ts, last, tuple(values))


# -- entities -----------------------------------------------------------------------------


def entity_key(entity: bytes) -> bytes:
    return ENTITY + _entity(entity)


def pack_entity(last_ts_ms: int | None, last_decision: bytes) -> bytes:
    return _ENTITY.pack(NO_TS if last_ts_ms is None else last_ts_ms) + last_decision


def unpack_entity(raw: bytes) -> tuple[int | None, bytes]:
    """(newest accepted event time or None, the entity's last decision or b"")."""
    (ts,) = _ENTITY.unpack_from(raw)
    return (None if ts == NO_TS else ts), raw[_ENTITY.size:]


# -- agent tables --------------------------------------------------------------------------


def agent_key(table: str, key: bytes) -> bytes:
    """A row of an agent table (the table name never holds ``/``)."""
    return b"%s%s/%s" % (AGENT, table.encode(), key)


def agent_position_key(agent: str) -> bytes:
    """Where `agent` has applied its topic's records up to (the next offset, as ASCII)."""
    return b"a\x00/" + agent.encode()


# -- dedup --------------------------------------------------------------------------------


def seen_key(event_id: str) -> bytes:
    return SEEN + event_id.encode()


def pack_seen(ts_ms: int, partition: int, offset: int, late: bool, decision: bytes) -> bytes:
    return _SEEN.pack(ts_ms, partition, offset, late) + decision


def unpack_seen(raw: bytes) -> Seen:
    ts, partition, offset, late = _SEEN.unpack_from(raw)
    return Seen(ts, partition, offset, late, raw[_SEEN.size:])


def expiry_key(max_ts_ms: int, seq: int) -> bytes:
    """The expiry record of one batch (ordered by the newest event time it lists)."""
    return b"%s%016d/%016d" % (EXPIRY, max(max_ts_ms, 0), seq)


def expiry_max_ts(key: bytes) -> int:
    return int(key[len(EXPIRY): len(EXPIRY) + 16])


def expiry_before(ts_ms: int) -> tuple[bytes, bytes]:
    """``[lo, hi)`` of the expiry records whose newest event time is below `ts_ms`."""
    return EXPIRY, b"%s%016d" % (EXPIRY, max(ts_ms, 0))


def pack_expiry(event_ids: Iterable[str]) -> bytes:
    out = []
    for eid in event_ids:
        raw = eid.encode()
        out += [_LEN.pack(len(raw)), raw]
    return b"".join(out)


def unpack_expiry(raw: bytes) -> list[str]:
    pos, ids = 0, []
    while pos < len(raw):
        (size,) = _LEN.unpack_from(raw, pos)
        ids.append(raw[pos + 2: pos + 2 + size].decode())
        pos += 2 + size
    return ids
