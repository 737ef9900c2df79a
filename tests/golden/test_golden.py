"""The golden decisions, reproduced byte for byte from the committed input (no broker).

A failure here means the engine now decides something differently from when the golden files
were written. If that is intended, run `scripts/golden` to review the difference and
`scripts/golden --write` to accept it, and say why in the commit; otherwise it is a bug.
"""

from __future__ import annotations

import orjson
import pytest

from engine.kernel import ReferenceTileState
from tests.golden import fraud_golden as golden


@pytest.fixture(scope="module")
def golden_input():
    return golden.load_input()


@pytest.mark.parametrize("variant", golden.VARIANTS, ids=lambda v: v.name)
def test_the_engine_reproduces_the_golden_output_byte_for_byte(variant, golden_input):
    got = golden.canonical(golden.run(variant, *golden_input))
    want = golden.read_golden(variant)
    assert got == want, "\n".join(["differs from the golden file:",
                                   *golden.differences(want, got)])


@pytest.mark.parametrize("variant", golden.VARIANTS, ids=lambda v: v.name)
def test_the_golden_output_does_not_depend_on_how_the_stream_is_cut_into_polls(variant,
                                                                             golden_input):
    records, profiles = golden_input
    if variant.records is not None:
        records = records[:variant.records]
    chain = golden.decider(variant.without)
    try:
        result = golden.feed(golden.TOPOLOGY, records, profiles=profiles, decider=chain,
                             clock=golden.ManualClock(golden.NOW_MS), poll_records=137,
                             partitions=golden.PARTITIONS)
    finally:
        chain.close()
    assert golden.canonical(result) == golden.read_golden(variant)


def test_the_golden_input_covers_what_it_claims(golden_input):
    """The reference stream must keep exercising every path the golden file pins."""
    lines = golden.read_golden(golden.VARIANTS[0]).splitlines()
    no_primary = golden.read_golden(golden.VARIANTS[1]).splitlines()
    text = b"\n".join(lines)
    for reason in (b"empty", b"oversized", b"not_utf8", b"invalid_json", b"non_finite",
                   b"missing_key", b"schema"):
        assert b'"reason":"' + reason + b'"' in text, reason
    for path in (b'"path":"model"', b'"path":"fallback:rules"'):
        assert path in text, path
    for path in (b'"path":"fallback:backup_model"', b'"path":"fallback:last_score"'):
        assert any(path in line for line in no_primary), path
    for reason in (b'"late_event"', b'"stale_profile"', b'"no_profile"'):
        assert reason in text, reason
    assert sum(b'"kind":"late"' in line for line in lines) > 100
    tables = [orjson.loads(line) for line in lines if b'"kind":"table"' in line]
    cards = {row["key"] for row in tables}
    assert len(cards) == 300
    records, _ = golden_input
    assert len(records) > 19_000
    assert len({r.partition for r in records}) == golden.PARTITIONS
    # records produced to another partition than their card's (foreign keys), each decided on
    # its card's partition: no card's table is split over two partitions
    elsewhere = 0
    for r in records:
        card = golden._card(r.value)
        if card is not None and r.partition != golden.partition_for(card.encode(),
                                                                    golden.PARTITIONS):
            elsewhere += 1
    assert elsewhere > 50
    tb = {(row["table"], row["key"]) for row in tables}
    assert len(tb) == len(tables)
    for row in tables:
        assert row["partition"] == golden.partition_for(row["key"].encode(), golden.PARTITIONS)


def test_the_python_reference_kernel_reproduces_the_golden_output_too(golden_input):
    """The plain-Python tile kernel, which the compiled one is property-tested against, gives
    the same bytes over the whole reference stream."""
    records, profiles = golden_input
    full = golden.VARIANTS[0]
    chain = golden.decider()
    try:
        result = golden.feed(golden.TOPOLOGY, records, profiles=profiles, decider=chain,
                             clock=golden.ManualClock(golden.NOW_MS),
                             kernel=ReferenceTileState, partitions=golden.PARTITIONS)
    finally:
        chain.close()
    assert golden.canonical(result) == golden.read_golden(full)
