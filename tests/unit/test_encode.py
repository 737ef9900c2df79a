"""The compiled decision encoder writes what the plain-Python path writes: the same JSON
document (same keys in order, values that read back identical, floats to the bit), the same
decision id as an independent BLAKE2b-128, and the state values that carry it."""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from engine import kernel
from engine.kernel import encode_decisions
from engine.pipeline.decide import decision_doc
from engine.pipeline.partition import Row
from engine.pipeline.records import Record
from engine.policy import Verdict

decision_id = kernel._rows.decision_id  # the compiled one (tested against hashlib below)

NAMES = ("count", "sum", "max", "since", "ratio", "flag", "hour")
KINDS = b"iffffoo"  # count, three floats, a function float, two function values

_text = st.text(max_size=40)
_float = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1e16, 1e-7, 123456789.123, 5e-324, 1.7976931348623157e308, 0.1, 1.5])


@st.composite
def rows(draw):
    n = draw(st.integers(1, 6))
    out = []
    for i in range(n):
        matrix_row = [float(draw(st.integers(0, 10**9))), draw(_float),
                      draw(_float | st.just(math.nan)), draw(_float),
                      draw(_float | st.just(math.nan)), math.nan, math.nan]
        objects = {5: draw(st.sampled_from([None, 0, 1, True, False])),
                   6: draw(st.integers(-5, 10**12) | st.none())}
        verdict = Verdict(draw(st.none() | _float), draw(st.sampled_from(
            ["approve", "review", "decline"])), draw(_text), draw(_text),
            tuple(draw(st.lists(_text, max_size=3))))
        notes = tuple(draw(st.lists(_text, max_size=2)))
        out.append((draw(_text) or f"e{i}", draw(_text) or "k", draw(st.integers(0, 2**53)),
                    matrix_row, objects, verdict, notes, draw(st.integers(-2**62, 2**62))))
    return out


@given(rows(), _text, st.integers(0, 2**62))
def test_compiled_and_python_encoders_agree(batch, feature_set, now_ms):
    n = len(batch)
    matrix = np.array([r[3] for r in batch], dtype=np.float64)
    objects = [None] * len(NAMES)
    objects[4] = [r[3][4] if r[3][4] == r[3][4] else None for r in batch]
    objects[5] = [r[4][5] for r in batch]
    objects[6] = [r[4][6] for r in batch]
    stage = {"validate": 1.25, "total": 3.5}
    bodies, seen, entity = encode_decisions(
        [r[0] for r in batch], [r[1] for r in batch], np.array([r[2] for r in batch]),
        [r[5].score for r in batch], [r[5].decision for r in batch],
        [r[5].model for r in batch], [r[5].path for r in batch],
        [(*r[6], *r[5].reasons) for r in batch], NAMES, matrix, KINDS, objects,
        feature_set, orjson.dumps(stage), now_ms, np.arange(n), np.arange(n) * 10,
        [bool(i % 2) for i in range(n)], np.array([r[7] for r in batch]))
    for i, r in enumerate(batch):
        row = Row(Record("t", i, i * 10, None, None, 0), None, r[1], r[0], r[2], bool(i % 2))
        row.notes = r[6]
        features = {NAMES[0]: int(r[3][0]), NAMES[1]: r[3][1],
                    NAMES[2]: None if r[3][2] != r[3][2] else r[3][2], NAMES[3]: r[3][3],
                    NAMES[4]: objects[4][i], NAMES[5]: r[4][5], NAMES[6]: r[4][6]}
        want = orjson.dumps(decision_doc(row, r[5], features, feature_set, stage, now_ms))
        got = bodies[i]
        assert list(orjson.loads(got)) == list(orjson.loads(want))  # key order
        assert _exact(orjson.loads(got)) == _exact(orjson.loads(want))
        assert seen[i] == struct.pack("<qiq?", r[2], i, i * 10, bool(i % 2)) + got
        assert entity[i] == struct.pack("<q", r[7]) + got


def _exact(value):
    """Floats as their bits, so -0.0 and 0.0 (or any rounding) never compare equal."""
    if isinstance(value, float):
        return ("f", struct.pack("<d", value))
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return value


@given(st.text(), st.text(), st.text())
def test_decision_id_is_blake2b_128_of_the_unit_separated_fields(event_id, model, fs):
    h = hashlib.blake2b(f"{event_id}\x1f{model}\x1f{fs}".encode(), digest_size=16)
    assert decision_id(event_id, model, fs) == h.hexdigest()


def test_decision_id_of_a_long_input_crosses_blocks():
    for size in (0, 1, 127, 128, 129, 255, 256, 257, 1000):
        eid = "x" * size
        h = hashlib.blake2b(f"{eid}\x1fm\x1ff".encode(), digest_size=16)
        assert decision_id(eid, "m", "f") == h.hexdigest(), size


_shadow = st.none() | st.fixed_dictionaries({
    "model": _text, "score": st.none() | _float,
    "decision": st.none() | st.sampled_from(["approve", "review", "decline"])})


@given(st.lists(_shadow, min_size=1, max_size=5), _text)
def test_shadow_field_is_written_as_the_python_path_writes_it(shadows, feature_set):
    """A rollout's shadow goes after the features, only on the rows that have one; a batch
    without any shadow writes documents without the field (what the golden files hold)."""
    n = len(shadows)
    verdicts = [Verdict(0.25, "approve", "m:1", "model", (), s) for s in shadows]
    matrix = np.zeros((n, 1))
    args = ([f"e{i}" for i in range(n)], ["k"] * n, np.arange(n), [v.score for v in verdicts],
            [v.decision for v in verdicts], [v.model for v in verdicts],
            [v.path for v in verdicts], [() for _ in verdicts], ("x",), matrix, b"f", [None],
            feature_set, b"{}", 5, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
            [False] * n, np.zeros(n, dtype=np.int64))
    with_field, _, _ = encode_decisions(*args, shadows)
    without, _, _ = encode_decisions(*args)
    for i, v in enumerate(verdicts):
        row = Row(Record("t", 0, 0, None, None, 0), None, "k", f"e{i}", i, False)
        want = orjson.dumps(decision_doc(row, v, {"x": 0.0}, feature_set, {}, 5))
        assert with_field[i] == want
        assert ("shadow" in orjson.loads(with_field[i])) == (v.shadow is not None)
        plain = orjson.dumps(decision_doc(row, v._replace(shadow=None), {"x": 0.0},
                                          feature_set, {}, 5))
        assert without[i] == plain
        if v.shadow is not None:  # the field is all that differs
            assert with_field[i].replace(b',"shadow":' + orjson.dumps(v.shadow), b"") == plain
