"""Entity profiles from the compacted ``T.profiles`` topic, as live and replay both read them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson

from .features import PROFILE_TS_FIELD

__all__ = ["apply_profile_records"]

log = logging.getLogger("streamwise.profiles")


def apply_profile_records(profiles: MutableMapping[str, Any], records: Iterable) -> None:
    """Fold Kafka records (key = entity, value = JSON object or None) into `profiles`.

    A tombstone deletes; a value that is not a JSON object is logged and ignored. Each profile
    keeps its record time under ``_ts_ms``, which the feature set's max age is checked against.
    """
    for m in records:
        if m.key is None:
            continue
        key = m.key.decode("utf-8", "replace")
        if m.value is None:
            profiles.pop(key, None)
            continue
        try:
            value = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            log.warning("profile for %s is not a JSON object; ignored", key)
            continue
        value[PROFILE_TS_FIELD] = m.timestamp
        profiles[key] = value
