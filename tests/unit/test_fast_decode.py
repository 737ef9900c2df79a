"""The decoder's fast path accepts exactly what pydantic accepts, with the same values, and
leaves every rejection (reason and detail) to pydantic."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from engine.schemas import EventDecoder
from topologies.fraud.schema import CardPayment

KEYS = ("card_id", "event_id")


def _decoders() -> tuple[EventDecoder, EventDecoder]:
    fast = EventDecoder(CardPayment, KEYS, 1 << 20)
    slow = EventDecoder(CardPayment, KEYS, 1 << 20)
    slow._checks = None  # noqa: SLF001 (pydantic alone: the reference)
    assert fast._checks is not None  # noqa: SLF001 (the fraud contract has a fast path)
    return fast, slow


FAST, SLOW = _decoders()

_numbers = st.one_of(
    st.integers(-(1 << 64), 1 << 64), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 0.0, -0.0, 1e9, 1e9 - 1e-7, (1 << 53) - 1, 1 << 53, (1 << 53) + 1,
                     -1, 2 ** 63, 12.5, 1e-320]),
    st.booleans(), st.none(), st.text(max_size=4).map(lambda s: s + "1"))
_strings = st.one_of(st.text(max_size=130), st.sampled_from(["", "US", "USD", "x" * 128,
                                                              "x" * 129, "é" * 128]),
                     st.integers(), st.booleans(), st.none())
_FIELDS = {"event_id": _strings, "card_id": _strings, "merchant_id": _strings,
           "amount": _numbers, "currency": _strings, "country": _strings, "ts_ms": _numbers}


@st.composite
def documents(draw) -> bytes:
    doc = {}
    for name, values in _FIELDS.items():
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing field
        doc[name] = draw(values) if draw(st.booleans()) else draw(_good[name])
    if draw(st.booleans()):
        doc[draw(st.text(max_size=5))] = draw(_numbers)
    return json.dumps(doc).encode()


_good = {"event_id": st.text(min_size=1, max_size=128), "card_id": st.just("c1"),
         "merchant_id": st.just("m1"), "amount": st.floats(0.01, 1e6),
         "currency": st.just("USD"), "country": st.just("US"),
         "ts_ms": st.integers(0, (1 << 53) - 1)}


@given(documents())
def test_fast_path_and_pydantic_agree_on_every_document(raw: bytes) -> None:
    assert FAST.decode(raw) == SLOW.decode(raw)


def test_fast_path_and_pydantic_agree_on_hostile_values() -> None:
    base = b'{"event_id":"e","card_id":"c","merchant_id":"m","amount":AMOUNT,"currency":"USD",' \
           b'"country":"US","ts_ms":1}'
    for amount in (b"12.5", b'"12.5"', b"true", b"1e400", b"-1e400", b"NaN", b"1.0", b"12",
                   b"9007199254740993", b"1e9", b"0", b"1e-400", b"[1]", b"{}", b"null",
                   b"1.0,\"amount\":2.5", b"0.1e1"):
        raw = base.replace(b"AMOUNT", amount)
        assert FAST.decode(raw) == SLOW.decode(raw), amount
    for raw in (b"[]", b"1", b'"x"', b"{", b"\xff", b'{"event_id":"\\ud800"}', b"null"):
        assert FAST.decode(raw) == SLOW.decode(raw), raw
