"""Rollout: the control-topic fold and its transitions, canary slices by key hash, and the
rollout decider with real (tiny) ONNX models: shadow never acts, canary rows go to the
candidate, guardrails see a candidate that declines everything, a promote switches between
batches."""

from __future__ import annotations

import numpy as np
import pytest

import topologies
from engine.clock import ManualClock
from engine.policy import ScoringRows
from engine.rollout.guardrails import GuardWindow, SideStats, psi
from engine.rollout.settings import Guardrails
from engine.rollout.state import (
    ControlLog,
    RampPlan,
    RolloutError,
    RolloutState,
    advance,
    canary,
    control_key,
    in_canary,
    promote,
    ramp,
    rollback,
    shadow,
)
from engine.scoring.chain import FallbackChain
from engine.scoring.registry import ModelRegistry
from engine.scoring.rollout import RolloutDecider
from tests.unit.onnx_factory import linear_model_bytes, write_model

TOPO = topologies.get("fraud")
NAMES = TOPO.features.names
FS = TOPO.features.versioned_name


# -- state ------------------------------------------------------------------------------------


def test_the_first_of_two_racing_writes_wins_everywhere_and_after_compaction():
    s1 = canary(None, "primary", "1", "2", 10, "cli", 1000)
    breach = rollback(s1, "primary", "worker:a", 2000, "guardrail", automatic=True)
    operator = promote(s1, "primary", "1", None, "cli", 2001)  # raced from the same state
    assert breach.seq == operator.seq == 2
    records = [(control_key("primary", s.seq, w), s.encode())
               for s, w in ((s1, "cli"), (breach, "worker-a"), (operator, "cli-2"))]
    live, restarted = ControlLog(), ControlLog()
    changed = [live.apply(k, v) for k, v in records]
    assert changed[2] is None  # the loser is ignored
    restarted.apply_all(records)  # distinct keys: compaction keeps every record
    assert live.slots["primary"] == restarted.slots["primary"] == breach
    assert breach.alarm and breach.serving == "1" and breach.candidate is None
    assert len({k for k, _ in records}) == 3


def test_transitions_keep_the_last_good_version_and_release_at_the_end_of_a_ramp():
    s = shadow(None, "primary", "1", "2", 1.0, "cli", 0)
    assert (s.stage, s.candidate, s.last_good) == ("shadow", "2", "1")
    r = ramp(s, "primary", "1", "2", RampPlan((5, 50, 100), 1, 10), "cli", 10)
    assert (r.stage, r.percent, r.seq) == ("ramp", 5, 2)
    r2 = advance(r, "w", 20, "ok")
    assert (r2.step, r2.percent, r2.stage) == (1, 50, "ramp")
    done = advance(r2, "w", 30, "ok")
    assert (done.stage, done.serving, done.candidate, done.last_good) == \
        ("released", "2", None, "1")
    back = rollback(done, "primary", "cli", 40)
    assert (back.stage, back.serving) == ("rolled_back", "1") and not back.alarm
    with pytest.raises(RolloutError):
        canary(done, "primary", "1", "2", 10, "cli", 0)  # 2 serves already
    with pytest.raises(RolloutError):
        RampPlan((50, 5))
    assert RolloutState.decode(r.encode()) == r


def test_canary_slice_is_the_percent_of_entities_and_grows_monotonically():
    keys = [f"c{i:06d}" for i in range(20_000)]
    ten = {k for k in keys if in_canary("primary", "2", k, 10)}
    assert abs(len(ten) / len(keys) - 0.10) < 0.01
    assert ten <= {k for k in keys if in_canary("primary", "2", k, 25)}
    other = {k for k in keys if in_canary("primary", "3", k, 10)}
    assert other != ten  # each candidate gets its own slice


def test_psi_is_zero_for_equal_histograms_and_large_for_a_shift():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([100, 0, 0], [0, 0, 100]) > 1


# -- the decider ------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path):
    root = tmp_path / "models"
    write_model(root, "primary", "1", NAMES, linear_model_bytes(len(NAMES), bias=-3.0))
    write_model(root, "backup", "1", NAMES, linear_model_bytes(len(NAMES), bias=-1.0))
    # a candidate that scores like the serving model but declines everything
    write_model(root, "primary", "2", NAMES, linear_model_bytes(len(NAMES), bias=-3.0),
                thresholds=(0.0001, 0.0002))
    reg = ModelRegistry(root, NAMES, FS, pinned={"primary": "1"})
    reg.refresh()
    return reg


def _rows(n: int, start: int = 0) -> ScoringRows:
    rng = np.random.default_rng(start)
    vectors = [dict(zip(NAMES, rng.uniform(0, 2, len(NAMES)).tolist(), strict=True))
               for _ in range(n)]
    keys = [(0, f"c{start + i:06d}") for i in range(n)]
    return ScoringRows.of_vectors(keys, vectors, [1_000_000 + i for i in range(n)])


def _decider(registry, clock):
    return RolloutDecider(TOPO.scoring, TOPO.rules, FS, registry, clock,
                          Guardrails(window_s=10, min_rows=50, psi_min_rows=50))


def test_shadow_scores_every_row_and_changes_no_decision(registry):
    clock = ManualClock(0)
    plain = FallbackChain(TOPO.scoring, TOPO.rules, FS, registry.get, clock)
    d = _decider(registry, clock)
    d.apply({"primary": shadow(None, "primary", "1", "2", 1.0, "t", 0)})
    rows = _rows(200)
    got, want = d.decide(rows), plain.decide(rows)
    assert [v._replace(shadow=None) for v in got] == want
    assert all(v.shadow["model"] == "primary:2" for v in got)
    assert [v.shadow["score"] for v in got] == pytest.approx([v.score for v in want])
    assert {v.shadow["decision"] for v in got} == {"decline"}  # its own thresholds
    assert {v.decision for v in got} != {"decline"}
    stats = d.drain_rollout_stats()
    assert stats.shadow[("primary:2", "decline")] == 200


def test_canary_rows_are_the_slice_and_the_guardrails_see_the_declines(registry):
    clock = ManualClock(5_000)
    d = _decider(registry, clock)
    d.apply({"primary": canary(None, "primary", "1", "2", 20, "t", 0)})
    rows = _rows(1000)
    verdicts = d.decide(rows)
    for (_, key), v in zip(rows.keys, verdicts, strict=True):
        if in_canary("primary", "2", key, 20):
            assert (v.path, v.model, v.decision) == ("canary", "primary:2", "decline")
        else:
            assert (v.path, v.model) == ("model", "primary:1")
    breach, c, s = d.plan.window.judge(clock.now_ms() / 1000)
    assert c.rows + s.rows == 1000 and 150 < c.rows < 250
    assert breach is not None and breach.guardrail == "decline_rate"
    assert d.step_rows == c.rows


def test_a_promote_switches_the_serving_version_between_batches(registry):
    clock = ManualClock(0)
    d = _decider(registry, clock)
    online = d.twin()
    first = canary(None, "primary", "1", "2", 20, "t", 0)
    d.apply({"primary": first})
    d.apply({"primary": promote(first, "primary", "1", None, "t", 1)})
    verdicts, twin = d.decide(_rows(50)), online.decide(_rows(50))
    assert {(v.path, v.model) for v in verdicts} == {("model", "primary:2")}
    assert twin == verdicts  # the online twin follows the same plan
    assert registry.get("primary").ref == "primary:2"
    registry.refresh()  # a reload keeps the rollout's serving version
    assert registry.get("primary").ref == "primary:2"


def test_a_candidate_that_does_not_load_falls_back_and_breaches_the_error_rate(registry,
                                                                               tmp_path):
    clock = ManualClock(0)
    d = _decider(registry, clock)
    d.apply({"primary": canary(None, "primary", "1", "9", 50, "t", 0)})  # no version 9
    assert d.plan.candidate is None and "9" in d.plan.candidate_error
    verdicts = [v for i in range(20) for v in d.decide(_rows(20, 20 * i))]  # 20 batches
    assert "canary" not in {v.path for v in verdicts}
    breach, _, _ = d.plan.window.judge(0)
    assert breach is not None and breach.guardrail == "error_rate"


def test_guard_window_forgets_rows_older_than_the_window():
    w = GuardWindow(Guardrails(window_s=10, min_rows=1), "primary:2")
    w.record(100.0, SideStats(rows=50, declines=50), SideStats(rows=50))
    assert w.judge(105.0)[0] is not None
    assert w.judge(111.5)[0] is None  # nothing left in the window


class _Counting:
    def __init__(self, model) -> None:
        self._model, self.ref, self.manifest, self.rows = model, model.ref, model.manifest, 0

    def run_options(self):
        return self._model.run_options()

    def score_many(self, rows, run_options=None):
        self.rows += len(rows)
        return self._model.score_many(rows, run_options)


def test_online_prediction_cache_scores_a_repeated_row_once_within_its_ttl(registry):
    from engine.scoring.cache import CachingWrap, PredictionCache

    clock = ManualClock(0)
    cache: PredictionCache[float] = PredictionCache(max_entries=100, ttl_ms=1_000)
    inner = _Counting(registry.get("primary"))
    model = CachingWrap(cache, clock.now_ms)(inner)
    x = _rows(10).matrix.astype(np.float32)
    first = model.score_many(x)
    again = model.score_many(x)
    assert np.array_equal(first, again) and inner.rows == 10 and cache.hits == 10
    changed = x.copy()
    changed[0, 0] += 1
    model.score_many(changed)
    assert inner.rows == 11  # one changed feature: one miss
    clock.advance(1_000)
    model.score_many(x)
    assert inner.rows == 21  # past the TTL: scored again
    twin = _decider(registry, clock).twin(cache=cache)
    assert [v.model for v in twin.decide(_rows(5))] == ["primary:1"] * 5
