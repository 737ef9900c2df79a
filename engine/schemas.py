"""Bytes in, typed events or a rejection out; decisions and their deterministic ids."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

__all__ = ["EventDecoder", "Rejection", "decision_id"]


class Rejection(NamedTuple):
    """Why a record cannot become an event; the record goes to the dead-letter topic.

    Reasons: ``empty`` (no value), ``oversized``, ``not_utf8``, ``invalid_json``, ``non_finite``
    (NaN or infinity), ``missing_key`` (empty or absent entity key or event id), ``schema``
    (anything else the contract refuses).
    """

    reason: str
    detail: str


class EventDecoder:
    """Decode one raw Kafka value with a pydantic contract.

    The model should set ``allow_inf_nan=False`` so NaN/inf never reach features or models.
    """

    def __init__(self, model: type[BaseModel], key_fields: tuple[str, ...],
                 max_record_bytes: int) -> None:
        self._validate = model.model_validate_json
        self._key_fields = key_fields
        self._max = max_record_bytes

    def decode(self, raw: bytes | None) -> Any | Rejection:
        if not raw:
            return Rejection("empty", "record has no value")
        if len(raw) > self._max:
            return Rejection("oversized", f"{len(raw)} bytes > limit {self._max}")
        try:
            return self._validate(raw)
        except ValidationError as exc:
            return self._reject(raw, exc)

    def _reject(self, raw: bytes, exc: ValidationError) -> Rejection:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        kind = first["type"]
        where = ".".join(str(p) for p in first["loc"])
        detail = f"{where}: {first['msg']}" if where else first["msg"]
        if kind == "json_invalid":
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return Rejection("not_utf8", f"invalid UTF-8 at byte {err.start}")
            return Rejection("invalid_json", detail)
        if any(e["type"] == "finite_number" for e in errors):
            return Rejection("non_finite", detail)
        for e in errors:
            if e["loc"] and e["loc"][0] in self._key_fields and e["type"] in (
                    "missing", "string_too_short"):
                return Rejection("missing_key", f"{e['loc'][0]}: {e['msg']}")
        return Rejection("schema", detail[:300])


def decision_id(event_id: str, model_version: str, feature_set: str) -> str:
    """Deterministic id of a decision: the same event, model and feature set give the same id."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{event_id}\x1f{model_version}\x1f{feature_set}".encode())
    return h.hexdigest()
