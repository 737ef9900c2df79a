"""When the decoder's fast path is taken: every valid fraud event, bounds included, decodes
without pydantic; a contract the fast path cannot check exactly (validators, extra="forbid",
NaN allowed, optional or aliased fields, other types or constraints) always goes to pydantic.

test_fast_decode.py shows that both paths agree; this file shows the fast one is used, which
is its whole point (a fast path that always deferred would agree too)."""

from __future__ import annotations

from typing import Literal

import orjson
import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.schemas import EventDecoder
from topologies.fraud.schema import CardPayment

GOOD = {"event_id": "e", "card_id": "c", "merchant_id": "m", "amount": 12.5,
        "currency": "USD", "country": "US", "ts_ms": 0}


def _no_pydantic(raw: bytes) -> None:
    raise AssertionError(f"pydantic was asked to validate {raw[:80]!r}")


@pytest.fixture
def fast_only() -> EventDecoder:
    dec = EventDecoder(CardPayment, ("card_id", "event_id"), 1 << 20)
    dec._validate = _no_pydantic  # noqa: SLF001 (the path under test must not reach it)
    return dec


@pytest.mark.parametrize("changes", [
    {},
    {"event_id": "x" * 128, "card_id": "c" * 128, "merchant_id": "m" * 128},
    {"event_id": "é" * 128},
    {"amount": 5e-324}, {"amount": 999_999_999.9999999}, {"amount": 7},
    {"amount": 999_999_999}, {"ts_ms": (1 << 53) - 1}, {"ts_ms": 1},
    {"extra": {"ignored": [1, 2]}},
])
def test_valid_events_at_every_bound_take_the_fast_path(fast_only: EventDecoder,
                                                        changes: dict) -> None:
    doc = {**GOOD, **changes}
    ev = fast_only.decode(orjson.dumps(doc))
    assert ev == tuple({k: v for k, v in doc.items() if k != "extra"}.values())
    assert type(ev.amount) is float and type(ev.ts_ms) is int


@pytest.mark.parametrize("changes", [
    {"event_id": ""}, {"merchant_id": "m" * 129}, {"currency": "US"}, {"country": "USA"},
    {"amount": 0}, {"amount": 0.0}, {"amount": 1e9}, {"amount": -1.0}, {"amount": True},
    {"amount": "1"}, {"amount": 1 << 53}, {"ts_ms": -1}, {"ts_ms": 1 << 53}, {"ts_ms": 1.0},
    {"ts_ms": True}, {"card_id": 5}, {"card_id": None},
])
def test_anything_out_of_bounds_or_of_another_type_is_left_to_pydantic(changes: dict) -> None:
    calls: list[bytes] = []
    dec = EventDecoder(CardPayment, ("card_id", "event_id"), 1 << 20)
    validate = dec._validate  # noqa: SLF001

    def spy(raw: bytes):
        calls.append(raw)
        return validate(raw)

    dec._validate = spy  # noqa: SLF001
    raw = orjson.dumps({**GOOD, **changes})
    dec.decode(raw)
    assert calls == [raw]


def test_a_missing_field_is_left_to_pydantic() -> None:
    dec = EventDecoder(CardPayment, ("card_id", "event_id"), 1 << 20)
    assert dec.decode(orjson.dumps({k: v for k, v in GOOD.items() if k != "country"})) \
        .reason == "schema"


class _Strict(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)
    event_id: str = Field(min_length=1)
    n: int = Field(ge=0)


class _Validated(_Strict):
    @field_validator("event_id")
    @classmethod
    def upper(cls, v: str) -> str:
        return v.upper()


class _ModelValidated(_Strict):
    @model_validator(mode="after")
    def n_below_ten(self) -> _ModelValidated:
        if self.n >= 10:
            raise ValueError("n too big")
        return self


class _Forbid(_Strict):
    model_config = ConfigDict(allow_inf_nan=False, strict=True, extra="forbid")


class _NaNAllowed(BaseModel):
    model_config = ConfigDict(strict=True)
    event_id: str
    x: float


class _Optional(_Strict):
    note: str = "none"


class _Aliased(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)
    event_id: str = Field(alias="id")


class _Literal(_Strict):
    kind: Literal["a", "b"]


class _Pattern(_Strict):
    code: str = Field(pattern=r"^[A-Z]+$")


class _IntLength(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)
    event_id: str
    items: list[int] = Field(max_length=2)


def _one_field(annotation: type, **constraints: object) -> type[BaseModel]:
    """A strict contract of event_id plus one field `x` with these constraints."""
    return type("OneField", (BaseModel,), {
        "__annotations__": {"event_id": str, "x": annotation}, "x": Field(**constraints),
        "model_config": ConfigDict(allow_inf_nan=False, strict=True)})


@pytest.mark.parametrize("model", [
    _Validated, _ModelValidated, _Forbid, _NaNAllowed, _Optional, _Aliased, _Literal, _Pattern,
    _IntLength,
    # bounds the fast path does not compare for that type: str ordering, lengths of numbers
    _one_field(str, gt="m"), _one_field(str, ge="m"), _one_field(str, lt="m"),
    _one_field(str, le="m"), _one_field(int, max_length=2), _one_field(float, min_length=1),
], ids=lambda m: m.__name__ + str(getattr(m.model_fields.get("x"), "metadata", "")))
def test_a_contract_the_fast_path_cannot_check_goes_to_pydantic(model: type[BaseModel]) -> None:
    assert EventDecoder(model, ("event_id",), 1 << 20)._checks is None  # noqa: SLF001


def test_plain_bounded_fields_get_a_fast_path() -> None:
    assert EventDecoder(_Strict, ("event_id",), 1 << 20)._checks is not None  # noqa: SLF001


def test_validators_and_forbidden_extras_are_applied() -> None:
    assert EventDecoder(_Validated, ("event_id",), 1 << 20).decode(
        b'{"event_id": "abc", "n": 1}').event_id == "ABC"
    assert EventDecoder(_ModelValidated, ("event_id",), 1 << 20).decode(
        b'{"event_id": "abc", "n": 10}').reason == "schema"
    assert EventDecoder(_Forbid, ("event_id",), 1 << 20).decode(
        b'{"event_id": "abc", "n": 1, "x": 2}').reason == "schema"


class _Unbounded(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)
    event_id: str  # no length bounds
    x: float  # no bounds
    n: int = Field(le=10)


def test_fields_without_bounds_and_an_upper_bound_le_take_the_fast_path() -> None:
    dec = EventDecoder(_Unbounded, ("event_id",), 1 << 20)
    dec._validate = _no_pydantic  # noqa: SLF001
    assert tuple(dec.decode(b'{"event_id": "", "x": -1e300, "n": 10}')) == ("", -1e300, 10)
    assert tuple(dec.decode(b'{"event_id": "e", "x": 3, "n": -7}')) == ("e", 3.0, -7)


def test_a_value_past_le_is_refused_as_pydantic_refuses_it() -> None:
    r = EventDecoder(_Unbounded, ("event_id",), 1 << 20).decode(
        b'{"event_id": "e", "x": 1.0, "n": 11}')
    assert r == ("schema", "n: Input should be less than or equal to 10")


def test_a_nested_location_is_dotted_in_the_detail() -> None:
    r = EventDecoder(_IntLength, ("event_id",), 1 << 20).decode(
        b'{"event_id": "e", "items": [1, "a"]}')
    assert r == ("schema", "items.1: Input should be a valid integer")
