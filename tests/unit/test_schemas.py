"""engine.schemas: decoding raw values with the fraud CardPayment contract; decision ids."""

from __future__ import annotations

import hashlib
from typing import Literal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from engine.schemas import EventDecoder, Rejection, decision_id
from topologies.fraud.schema import CardPayment

LIMIT = 4_096

GOOD = {"event_id": "e-1", "card_id": "c-1", "merchant_id": "m-1", "amount": 12.5,
        "currency": "USD", "country": "US", "ts_ms": 1_700_000_000_000}


_DROP = object()  # marks a field to leave out


@pytest.fixture
def decoder() -> EventDecoder:
    return EventDecoder(CardPayment, ("card_id", "event_id"), LIMIT)


def raw(**changes: object) -> bytes:
    doc = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in doc.items() if v is not _DROP})


def with_literal(field: str, literal: str) -> bytes:
    """The good event with `field` set to a raw JSON literal (e.g. NaN, which JSON lacks)."""
    doc = dict(GOOD)
    doc[field] = "@@"
    return orjson.dumps(doc).replace(b'"@@"', literal.encode())


def test_good_event_decodes(decoder: EventDecoder) -> None:
    ev = decoder.decode(raw())
    assert isinstance(ev, decoder.event_type)  # a named tuple of the contract's fields
    assert (ev.event_id, ev.card_id, ev.amount, ev.ts_ms) == ("e-1", "c-1", 12.5, 1_700_000_000_000)


def test_unknown_fields_are_ignored(decoder: EventDecoder) -> None:
    assert isinstance(decoder.decode(raw(extra="x")), decoder.event_type)


@pytest.mark.parametrize("value", [b"", None])
def test_empty(decoder: EventDecoder, value: bytes | None) -> None:
    assert decoder.decode(value).reason == "empty"


def test_oversized(decoder: EventDecoder) -> None:
    big = raw(merchant_id="m", pad="x" * LIMIT)
    r = decoder.decode(big)
    assert isinstance(r, Rejection)
    assert r.reason == "oversized"
    assert str(len(big)) in r.detail and str(LIMIT) in r.detail


def test_exactly_at_limit_is_not_oversized() -> None:
    value = raw()
    dec = EventDecoder(CardPayment, ("card_id", "event_id"), len(value))
    assert isinstance(dec.decode(value), dec.event_type)
    assert EventDecoder(CardPayment, ("card_id", "event_id"),
                        len(value) - 1).decode(value).reason == "oversized"


@pytest.mark.parametrize("value", [b"\xff\xfe{}", b"\xff\xfe\x00\x01",
                                   raw(merchant_id="@@").replace(b"@@", b"\xff\xfe")])
def test_not_utf8(decoder: EventDecoder, value: bytes) -> None:
    r = decoder.decode(value)
    assert r.reason == "not_utf8", r


@pytest.mark.parametrize("value", [b"{", b"not json", b'{"event_id": "e"', b"{'a': 1}",
                                   b'{"a": 1,}'])
def test_invalid_json(decoder: EventDecoder, value: bytes) -> None:
    assert decoder.decode(value).reason == "invalid_json"


@pytest.mark.parametrize("literal", ['"NaN"', '"inf"', '"12.5"'])
def test_numbers_in_strings_are_refused(decoder: EventDecoder, literal: str) -> None:
    # The contract is strict: a number is a JSON number.
    assert decoder.decode(with_literal("amount", literal)).reason == "schema"


@pytest.mark.parametrize("value", [
    with_literal("amount", "NaN"),
    with_literal("amount", "Infinity"),
    with_literal("amount", "-Infinity"),
    with_literal("amount", "1e999"),
])
def test_non_finite(decoder: EventDecoder, value: bytes) -> None:
    r = decoder.decode(value)
    assert r.reason == "non_finite", r
    assert "amount" in r.detail


@pytest.mark.parametrize(("value", "field"), [
    (raw(card_id=""), "card_id"),
    (raw(event_id=_DROP), "event_id"),
    (raw(card_id=_DROP), "card_id"),
    (raw(event_id=""), "event_id"),
])
def test_missing_key(decoder: EventDecoder, value: bytes, field: str) -> None:
    r = decoder.decode(value)
    assert r.reason == "missing_key", r
    assert r.detail.startswith(field)


@pytest.mark.parametrize(("value", "field"), [
    (raw(amount="abc"), "amount"),
    (raw(ts_ms=1.5), "ts_ms"),
    (raw(amount=-1), "amount"),
    (raw(amount=0), "amount"),
    (raw(currency="US"), "currency"),
    (raw(merchant_id=""), "merchant_id"),  # not a key field: a plain schema error
    (raw(merchant_id=_DROP), "merchant_id"),
    (raw(ts_ms=-1), "ts_ms"),
    (raw(ts_ms=2**53), "ts_ms"),
])
def test_schema(decoder: EventDecoder, value: bytes, field: str) -> None:
    r = decoder.decode(value)
    assert r.reason == "schema", r
    assert r.detail.startswith(field)


@pytest.mark.parametrize("value", [b"[1]", b"null", b"42", b'"str"'])
def test_not_an_object_is_schema(decoder: EventDecoder, value: bytes) -> None:
    assert decoder.decode(value).reason == "schema"


def test_non_finite_wins_over_other_errors(decoder: EventDecoder) -> None:
    doc = orjson.loads(raw(card_id=""))
    doc["amount"] = "@@"
    value = orjson.dumps(doc).replace(b'"@@"', b"NaN")
    assert decoder.decode(value).reason == "non_finite"


def test_missing_key_wins_over_schema(decoder: EventDecoder) -> None:
    assert decoder.decode(raw(card_id="", amount="abc")).reason == "missing_key"


def test_schema_detail_is_bounded(decoder: EventDecoder) -> None:
    r = decoder.decode(raw(currency="X" * 3_000))
    assert r.reason == "schema"
    assert len(r.detail) <= 300


@given(junk=st.binary(max_size=200))
def test_decoder_never_raises(junk: bytes) -> None:
    dec = EventDecoder(CardPayment, ("card_id", "event_id"), 100)
    r = dec.decode(junk)
    if isinstance(r, Rejection):
        assert r.reason in {"empty", "oversized", "not_utf8", "invalid_json", "non_finite",
                            "missing_key", "schema"}
    else:
        assert isinstance(r, dec.event_type)


# --------------------------------------------------------------------------- decision_id


def test_decision_id_example_is_stable() -> None:
    a = decision_id("e-1", "rules:v1", "fraud:v1")
    assert a == decision_id("e-1", "rules:v1", "fraud:v1")
    assert len(a) == 32
    int(a, 16)


ids = st.text(min_size=0, max_size=30)


@given(e=ids, m=ids, f=ids, other=ids)
def test_decision_id_deterministic_and_sensitive_to_each_input(e: str, m: str, f: str,
                                                               other: str) -> None:
    base = decision_id(e, m, f)
    assert base == decision_id(e, m, f)
    if other != e:
        assert decision_id(other, m, f) != base
    if other != m:
        assert decision_id(e, other, f) != base
    if other != f:
        assert decision_id(e, m, other) != base


def test_decision_id_not_just_concatenation() -> None:
    assert decision_id("ab", "c", "d") != decision_id("a", "bc", "d")
    assert decision_id("a", "bc", "d") != decision_id("a", "b", "cd")


def _blake2b_128(event_id: str, model: str, feature_set: str) -> str:
    """The documented formula, written independently of the engine."""
    joined = f"{event_id}\x1f{model}\x1f{feature_set}".encode()
    return hashlib.blake2b(joined, digest_size=16).hexdigest()


def test_decision_id_is_the_documented_blake2b_128_by_value() -> None:
    assert decision_id("e-1", "primary:1", "fraud:v1") == "53405a531a2bf3b1f07b70ececd1e036"
    assert decision_id("é-ü", "rules:v1", "fraud:v1") == "9b4c6474e971dda515f8fa76089c46de"


@given(e=ids, m=ids, f=ids)
def test_decision_id_equals_blake2b_128_of_the_unit_separated_fields(e: str, m: str,
                                                                     f: str) -> None:
    assert decision_id(e, m, f) == _blake2b_128(e, m, f)


# --------------------------------------------------------------------------- exact details


@pytest.mark.parametrize(("value", "reason", "detail"), [
    (b"", "empty", "record has no value"),
    (b"\xff\xfe{}", "not_utf8", "invalid UTF-8 at byte 0"),
    (b'{"a": "\xff"}', "not_utf8", "invalid UTF-8 at byte 7"),
    (b"{", "invalid_json", "Invalid JSON: EOF while parsing an object at line 1 column 1"),
    (b"[1]", "schema", "Input should be an object"),
    (raw(card_id=""), "missing_key", "card_id: String should have at least 1 character"),
    (raw(amount=-1.0), "schema", "amount: Input should be greater than 0"),
    (with_literal("amount", "NaN"), "non_finite", "amount: Input should be a finite number"),
])
def test_rejections_by_exact_reason_and_detail(decoder: EventDecoder, value: bytes, reason: str,
                                               detail: str) -> None:
    assert decoder.decode(value) == Rejection(reason, detail)


def test_oversized_detail_names_size_and_limit(decoder: EventDecoder) -> None:
    assert decoder.decode(b"x" * (LIMIT + 1)) == Rejection(
        "oversized", f"{LIMIT + 1} bytes > limit {LIMIT}")


def test_a_long_schema_detail_is_cut_at_300_characters() -> None:
    class Choice(BaseModel):
        model_config = ConfigDict(allow_inf_nan=False, strict=True)
        event_id: str
        kind: Literal[tuple(f"option-{i:03d}" for i in range(60))]  # type: ignore[valid-type]

    dec = EventDecoder(Choice, ("event_id",), LIMIT)
    r = dec.decode(b'{"event_id": "e", "kind": "other"}')
    assert r.reason == "schema"
    assert r.detail.startswith("kind: Input should be 'option-000', 'option-001'")
    assert len(r.detail) == 300


def test_a_missing_key_field_beats_schema_errors_only_for_key_fields() -> None:
    dec = EventDecoder(CardPayment, ("event_id",), LIMIT)  # card_id is not a key field here
    assert dec.decode(raw(card_id="")).reason == "schema"
    assert dec.decode(raw(event_id="")) == Rejection(
        "missing_key", "event_id: String should have at least 1 character")
