"""Bytes in, typed events or a rejection out; decisions and their deterministic ids."""

from __future__ import annotations

import hashlib
import math
from collections import namedtuple
from collections.abc import Callable
from typing import Any, NamedTuple

import annotated_types as at
import orjson
from pydantic import BaseModel, ValidationError

__all__ = ["EventDecoder", "Rejection", "decision_id"]


class Rejection(NamedTuple):
    """Why a record cannot become an event; the record goes to the dead-letter topic.

    Reasons: ``empty`` (no value), ``oversized``, ``not_utf8``, ``invalid_json``, ``non_finite``
    (NaN or infinity), ``missing_key`` (empty or absent entity key or event id), ``schema``
    (anything else the contract refuses). Admission adds ``future_time`` (see
    `engine.ordering.too_far_ahead`).
    """

    reason: str
    detail: str


class EventDecoder:
    """Decode one raw Kafka value with a pydantic contract into an event: a named tuple with the
    model's fields (attribute access as on the model).

    The model should set ``allow_inf_nan=False`` so NaN/inf never reach features or models.

    Fast path: when every field is a plain ``str``, ``int`` or ``float`` with length or bound
    constraints only (no validators), `orjson` parses the value and the fields are checked
    here. Anything the fast path does not accept as is (a wrong type, a missing field, a bound
    broken, a number it cannot read exactly) goes to pydantic, which decides and explains the
    rejection; so the accepted events, their values and every rejection reason are pydantic's.
    """

    def __init__(self, model: type[BaseModel], key_fields: tuple[str, ...],
                 max_record_bytes: int) -> None:
        self._validate = model.model_validate_json
        self._key_fields = key_fields
        self._max = max_record_bytes
        self._fields = tuple(model.model_fields)
        self.event_type = namedtuple(f"{model.__name__}Event", self._fields)  # noqa: PYI024
        self._checks = _fast_checks(model)

    def decode(self, raw: bytes | None) -> Any | Rejection:
        if not raw:
            return Rejection("empty", "record has no value")
        if len(raw) > self._max:
            return Rejection("oversized", f"{len(raw)} bytes > limit {self._max}")
        checks = self._checks
        if checks is not None:
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                doc = None
            if type(doc) is dict:
                values = []
                for name, check in checks:
                    value = doc.get(name, _MISSING)
                    value = check(value)
                    if value is _MISSING:
                        break
                    values.append(value)
                else:
                    return self.event_type._make(values)
        try:
            model = self._validate(raw)
        except ValidationError as exc:
            return self._reject(raw, exc)
        return self.event_type._make([getattr(model, f) for f in self._fields])

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


_MISSING: Any = object()


class FieldSpec(NamedTuple):
    """What the fast path checks of one field: its JSON type (``str``, ``int``, ``float``)
    and its bounds (None: no such bound)."""

    name: str
    kind: str
    min_length: int | None = None
    max_length: int | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None


def fast_specs(model: type[BaseModel]) -> tuple[FieldSpec, ...] | None:
    """The fields' specs in model order; None when some field or the model is beyond what the
    fast path knows (validators, aliases, defaults, other types or constraints)."""
    decorators = model.__pydantic_decorators__
    if any((decorators.validators, decorators.field_validators, decorators.root_validators,
            decorators.model_validators)):
        return None
    if model.model_config.get("extra") == "forbid" or model.model_config.get(
            "allow_inf_nan", True):
        return None
    specs = []
    kinds = {str: "str", int: "int", float: "float"}
    for name, info in model.model_fields.items():
        if not info.is_required() or info.alias not in (None, name):
            return None
        kind = kinds.get(info.annotation)
        if kind is None:
            return None
        bounds: dict[str, Any] = {}
        for meta in info.metadata:
            attr = {at.MinLen: "min_length", at.MaxLen: "max_length", at.Gt: "gt", at.Ge: "ge",
                    at.Lt: "lt", at.Le: "le"}.get(type(meta))
            if attr is None:
                return None
            bounds[attr] = getattr(meta, attr)
        lengths = "min_length" in bounds or "max_length" in bounds
        numbers = any(k in bounds for k in ("gt", "ge", "lt", "le"))
        if (kind == "str" and numbers) or (kind != "str" and lengths):
            return None
        specs.append(FieldSpec(name, kind, **bounds))
    return tuple(specs)


def _fast_checks(model: type[BaseModel]) -> tuple[tuple[str, Callable[[Any], Any]], ...] | None:
    """Per field, a function returning the accepted value or `_MISSING` (let pydantic decide);
    None when the model has no fast path. The plain-Python reference of the compiled path."""
    specs = fast_specs(model)
    return None if specs is None else tuple((f.name, _check_for(f)) for f in specs)


def _check_for(f: FieldSpec) -> Callable[[Any], Any]:
    lo_len, hi_len = f.min_length or 0, f.max_length
    gt, ge, lt, le = f.gt, f.ge, f.lt, f.le

    def in_bounds(x: float) -> bool:
        return ((gt is None or x > gt) and (ge is None or x >= ge)
                and (lt is None or x < lt) and (le is None or x <= le))

    if f.kind == "str":
        def check_str(v: Any) -> Any:
            if type(v) is str and len(v) >= lo_len and (hi_len is None or len(v) <= hi_len):
                return v
            return _MISSING
        return check_str
    if f.kind == "int":
        def check_int(v: Any) -> Any:
            return v if type(v) is int and in_bounds(v) else _MISSING
        return check_int

    def check_float(v: Any) -> Any:
        t = type(v)
        if t is int:  # exact only where a float holds the integer exactly
            v = float(v) if -_EXACT < v < _EXACT else _MISSING
        elif t is not float or not math.isfinite(v):
            return _MISSING
        return v if v is not _MISSING and in_bounds(v) else _MISSING
    return check_float


_EXACT = 1 << 53


def decision_id(event_id: str, model_version: str, feature_set: str) -> str:
    """Deterministic id of a decision: the same event, model and feature set give the same id."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{event_id}\x1f{model_version}\x1f{feature_set}".encode())
    return h.hexdigest()
