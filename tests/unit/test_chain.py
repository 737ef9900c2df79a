"""The fallback chain with real (tiny) ONNX models: primary → last score → backup → rules →
abstain. Failures come from a wrapper around the real model (`Scripted`), told per model what
to do; no test depends on how fast the machine is: timeouts are provoked by calls that block
until the test releases them, and budgets are read from what the chain gave each call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import orjson
import pytest

import topologies
from engine.clock import ManualClock
from engine.errors import ModelError
from engine.policy import ScoringRows
from engine.scoring.breaker import BreakerSettings, BreakerState
from engine.scoring.chain import CheapFirst, FallbackChain, ScoringSettings
from engine.scoring.registry import ModelRegistry
from tests.unit.onnx_factory import linear_model_bytes, write_model

TOPO = topologies.get("fraud")
NAMES = TOPO.features.names
FS = TOPO.features.versioned_name
# sigmoid(12 * 0.01 - 3) and sigmoid(12 * 0.01 - 1): the two tiny models' score of a row of 1.0s
PRIMARY_SCORE = 0.0531511
BACKUP_SCORE = 0.2931778
MAX_AGE_MS = 600_000
EVENT_TS_MS = 1_000_000


class Scripted:
    """A real model behind a switch: ``ok`` (the real score), ``fail`` (raises ModelError),
    ``block`` (waits until `release` is set, then scores), ``nan`` / ``above_one`` /
    ``below_zero`` / ``short`` (a bad output), ``zero_one`` (0.0 and 1.0 alternately, the
    bounds). Records every call and the run options it was given."""

    def __init__(self, model) -> None:
        self._model = model
        self.ref = model.ref
        self.manifest = model.manifest
        self.mode = "ok"
        self.fail_first = 0  # this many calls fail before `mode` applies
        self.calls = 0
        self.threads: list[str] = []
        self.options: list[object] = []
        self.release = threading.Event()

    def run_options(self):
        return self._model.run_options()

    def score_many(self, rows: np.ndarray, run_options=None) -> np.ndarray:
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        self.options.append(run_options)
        if self.fail_first:
            self.fail_first -= 1
            raise ModelError(f"{self.ref}: scripted failure")
        if self.mode == "fail":
            raise ModelError(f"{self.ref}: scripted failure")
        if self.mode == "block":
            self.release.wait(timeout=30)
        scores = self._model.score_many(rows, run_options)
        if self.mode == "nan":
            return np.full_like(scores, np.nan)
        if self.mode == "above_one":
            return scores + 1.0
        if self.mode == "below_zero":
            return scores - 1.0
        if self.mode == "zero_one":
            return (np.arange(len(scores)) % 2).astype(scores.dtype)
        if self.mode == "short":
            return scores[:-1]
        return scores


class Rig:
    """A chain over a temp registry with a `Scripted` wrapper per model."""

    def __init__(self, tmp_path, settings: ScoringSettings | None = None,
                 models: tuple[str, ...] = ("primary", "backup"), clock=None,
                 thresholds: tuple[float, float] = (0.5, 0.9)) -> None:
        for name in models:
            write_model(tmp_path, name, "1", NAMES,
                        linear_model_bytes(12, bias=-3.0 if name == "primary" else -1.0),
                        thresholds=thresholds)
        self.registry = ModelRegistry(tmp_path, NAMES, FS)
        self.registry.refresh()
        self.scripted: dict[str, Scripted] = {}
        self.clock = clock or ManualClock(0)
        self.chain = FallbackChain(settings or ScoringSettings(timeout_ms=10_000), TOPO.rules, FS,
                                   self.registry.get, self.clock, wrap=self._wrap)

    def _wrap(self, model):
        name = model.ref.split(":")[0]
        s = self.scripted.get(name)
        if s is None or s._model is not model:  # noqa: SLF001 (the test's own class)
            s = self.scripted[name] = Scripted(model)
        return s

    def model(self, name: str) -> Scripted:
        """The wrapper of model `name` (made before its first call, so a test can script it)."""
        return self._wrap(self.registry.get(name))

    def decide(self, vectors, last: dict[str, bytes] | None = None, ts: int = EVENT_TS_MS):
        n = len(vectors)
        return self.chain.decide(ScoringRows.of_vectors(
            [f"k{i}" for i in range(n)], vectors, [ts] * n, [False] * n,
            lambda key: (last or {}).get(key)))

    def given(self) -> list[str]:
        """The models called, in call order."""
        return [name for name, _ in self.chain.stats.call_timeouts_s]

    def release(self) -> None:
        for s in self.scripted.values():
            s.release.set()


@pytest.fixture
def rig(tmp_path):
    made: list[Rig] = []

    def make(**kw) -> Rig:
        r = Rig(tmp_path / f"reg{len(made)}", **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.release()
        r.chain.close()


def _vector(**over) -> dict:
    v = dict.fromkeys(NAMES, 1.0)
    v.update(over)
    return v


def _last(path: str = "model", score: float | None = 0.42, age_ms: int = 100,
          decision: str = "approve", model: str = "primary:1") -> bytes:
    """An entity's stored last decision, `age_ms` of event time before the event."""
    return orjson.dumps({"path": path, "score": score, "decision": decision, "model": model,
                         "event_ts_ms": EVENT_TS_MS - age_ms})


# --------------------------------------------------------------------------- the primary


def test_primary_scores_every_complete_row_with_its_manifest_thresholds(rig):
    r = rig()
    out = r.decide([_vector(), _vector(amount=50.0)])
    assert [(v.path, v.model, v.reasons) for v in out] == [("model", "primary:1", ())] * 2
    assert out[0].score == pytest.approx(PRIMARY_SCORE, abs=1e-6)
    assert out[1].score == pytest.approx(1 / (1 + np.exp(-(0.11 + 0.5 - 3))), abs=1e-6)
    assert [v.decision for v in out] == ["approve", "approve"]
    assert r.chain.stats.rows_scored == Counter({"primary:1": 2})
    assert r.chain.stats.fallbacks == Counter()
    assert len(r.chain.stats.inference_s) == 1  # one call for the batch
    assert r.chain.feature_set == FS
    assert r.model("primary").threads[0].startswith("inference")  # the chain's own pool
    r.decide([_vector(), _vector()])
    assert r.chain.stats.rows_scored == Counter({"primary:1": 4})  # counts add up


@pytest.mark.parametrize(("thresholds", "decision"), [
    ((0.05, 0.9), "review"), ((0.01, 0.05), "decline"), ((0.06, 0.9), "approve")])
def test_the_serving_models_thresholds_decide(rig, thresholds, decision):
    (v,) = rig(thresholds=thresholds).decide([_vector()])
    assert (v.path, v.decision) == ("model", decision)


def test_an_empty_batch_decides_nothing_and_calls_no_model(rig):
    r = rig()
    assert r.chain.decide(ScoringRows.of_vectors([], [], [])) == []
    assert r.given() == []


def test_missing_or_non_finite_features_never_reach_a_model(rig):
    r = rig()
    out = r.decide([_vector(amount_over_avg=None, is_foreign=None), _vector(sum_1h=float("nan")),
                    _vector(amount=float("inf")), _vector()])
    assert [v.path for v in out] == ["fallback:rules"] * 3 + ["model"]
    assert out[0].reasons[0] == "missing_features:amount_over_avg,is_foreign"
    assert out[1].reasons[0] == "missing_features:sum_1h"
    assert out[2].reasons[0] == "missing_features:amount"
    assert r.chain.stats.fallbacks == Counter({"missing_features": 3})
    assert r.chain.stats.rows_scored == Counter({"primary:1": 1})  # only the complete row


def test_a_row_with_missing_features_reuses_a_fresh_last_score_but_never_reaches_a_model(rig):
    r = rig()
    fresh, stale = r.decide([_vector(count_10m=None), _vector(count_10m=None)],
                            last={"k0": _last(), "k1": _last(age_ms=MAX_AGE_MS + 1)})
    assert (fresh.path, fresh.reasons) == ("fallback:last_score", (
        "missing_features:count_10m", "last_score_age_ms=100"))
    assert (stale.path, stale.reasons[0]) == ("fallback:rules", "missing_features:count_10m")
    assert r.given() == []


# --------------------------------------------------------------------------- fallback order


def test_primary_failure_with_a_fresh_last_score_uses_it_before_the_backup(rig):
    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=0))
    r.model("primary").mode = "fail"
    (v,) = r.decide([_vector()], last={"k0": _last(age_ms=100)})
    assert (v.path, v.score, v.decision, v.model) == (
        "fallback:last_score", 0.42, "approve", "primary:1")
    assert v.reasons == ("model_error", "last_score_age_ms=100")
    assert r.given() == ["primary"]  # the backup was never called
    assert r.model("backup").calls == 0
    assert r.chain.stats.fallbacks == Counter({"model_error": 1, "last_score": 1})
    r.decide([_vector(), _vector()], last={"k0": _last(), "k1": _last()})
    assert r.chain.stats.fallbacks == Counter({"model_error": 3, "last_score": 3})


@pytest.mark.parametrize("age_ms", [0, 1, MAX_AGE_MS])
def test_a_last_score_up_to_the_max_age_is_fresh(rig, age_ms):
    r = rig()
    r.model("primary").mode = "fail"
    (v,) = r.decide([_vector()], last={"k0": _last(age_ms=age_ms)})
    assert v.path == "fallback:last_score"
    assert v.reasons[-1] == f"last_score_age_ms={age_ms}"


@pytest.mark.parametrize("last", [
    _last(age_ms=MAX_AGE_MS + 1),            # stale
    _last(age_ms=-1),                        # newer than the event (out of order)
    None,                                    # no earlier decision
    b"",                                     # an empty stored value
    _last(path="fallback:rules"),            # a rules score is never reused
    _last(path="fallback:last_score"),       # nor a reuse of a reuse
    _last(path="abstain", score=None),
    _last(path="model", score=None),
], ids=["stale", "future", "absent", "empty", "rules", "reuse", "abstain", "no_score"])
def test_without_a_usable_last_score_the_backup_serves(rig, last):
    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=0))
    r.model("primary").mode = "fail"
    (v,) = r.decide([_vector()], last={"k0": last} if last is not None else None)
    assert (v.path, v.model, v.reasons) == ("fallback:backup_model", "backup:1", ("model_error",))
    assert v.score == pytest.approx(BACKUP_SCORE, abs=1e-6)
    assert r.given() == ["primary", "backup"]
    assert r.chain.stats.rows_scored == Counter({"backup:1": 1})


def test_a_backup_models_own_score_is_reused_as_the_last_score(rig):
    r = rig()
    r.model("primary").mode = "fail"
    (v,) = r.decide([_vector()], last={"k0": _last(path="fallback:backup_model", score=0.7,
                                                   decision="review", model="backup:1")})
    assert (v.path, v.score, v.decision, v.model) == ("fallback:last_score", 0.7, "review",
                                                      "backup:1")


def test_backup_failure_goes_to_rules_with_both_reasons(rig):
    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=0))
    r.model("primary").mode = "fail"
    r.model("backup").mode = "fail"
    (v,) = r.decide([_vector(count_10m=9.0)])
    assert (v.path, v.model, v.score, v.decision) == ("fallback:rules", "rules:v1", 0.95,
                                                      "decline")
    assert v.reasons == ("model_error", "backup:model_error", "velocity_10m>=8")
    assert r.given() == ["primary", "backup"]


def test_failing_rules_abstain_to_review(rig):
    def explode(_):
        raise RuntimeError("bug")

    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=0))
    r.chain._rules = replace(TOPO.rules, evaluate=explode)  # noqa: SLF001
    r.model("primary").mode = "fail"
    r.model("backup").mode = "fail"
    (v,) = r.decide([_vector()])
    assert (v.path, v.decision, v.score, v.model) == ("abstain", "review", None, "none")
    assert v.reasons == ("model_error", "backup:model_error", "rules_failed")


def test_a_missing_primary_falls_back_and_a_missing_backup_is_skipped(rig):
    only_backup = rig(models=("backup",))
    (v,) = only_backup.decide([_vector()])
    assert (v.path, v.model, v.reasons) == ("fallback:backup_model", "backup:1",
                                            ("model_unavailable",))
    assert only_backup.chain.stats.fallbacks == Counter({"model_unavailable": 1})
    assert only_backup.chain.usable() == ["backup"]
    nothing = rig(models=())
    (v,) = nothing.decide([_vector()])
    assert v.path == "fallback:rules"
    assert v.reasons[:2] == ("model_unavailable", "backup:model_unavailable")
    assert nothing.chain.usable() == []


def test_without_a_backup_the_chain_goes_from_last_score_to_rules(rig):
    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=0, backup=None))
    r.model("primary").mode = "fail"
    out = r.decide([_vector(), _vector()], last={"k0": _last()})
    assert [v.path for v in out] == ["fallback:last_score", "fallback:rules"]
    assert out[1].reasons[0] == "model_error"
    assert r.chain.breaker_names() == ["primary"]


def test_each_row_of_a_batch_takes_its_own_path_in_input_order(rig):
    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=0))
    r.model("primary").mode = "fail"
    out = r.decide([_vector(), _vector(count_10m=None), _vector(), _vector()],
                   last={"k0": _last(), "k3": _last(age_ms=MAX_AGE_MS + 1)})
    assert [v.path for v in out] == ["fallback:last_score", "fallback:rules",
                                     "fallback:backup_model", "fallback:backup_model"]
    assert r.model("backup").calls == 1  # rows 2 and 3 in one call


# --------------------------------------------------------------------------- retries, outputs


def test_an_error_is_retried_once_then_the_model_serves(rig):
    r = rig()  # retries=1 by default
    r.model("primary").fail_first = 1
    (v,) = r.decide([_vector()])
    assert v.path == "model"
    assert r.model("primary").calls == 2
    assert r.given() == ["primary", "primary"]


def test_errors_past_the_retries_fall_back(rig):
    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=2))
    r.model("primary").fail_first = 3
    (v,) = r.decide([_vector()])
    assert (v.path, v.reasons) == ("fallback:backup_model", ("model_error",))
    assert r.model("primary").calls == 3


def test_retries_stop_once_the_breaker_leaves_closed(rig):
    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=5, breaker=BreakerSettings(
        consecutive_failures=2, min_calls=100)))
    r.model("primary").mode = "fail"
    (v,) = r.decide([_vector()])
    assert v.path == "fallback:backup_model"
    assert r.model("primary").calls == 2  # the second failure opened the breaker
    assert r.chain.breaker_state("primary") is BreakerState.OPEN


@pytest.mark.parametrize("mode", ["nan", "above_one", "below_zero", "short"])
def test_a_bad_output_is_refused_and_counts_as_a_failure(rig, mode):
    r = rig(settings=ScoringSettings(timeout_ms=10_000, breaker=BreakerSettings(
        consecutive_failures=1)))
    r.model("primary").mode = mode
    out = r.decide([_vector(), _vector()])
    assert [(v.path, v.reasons) for v in out] == [("fallback:backup_model", ("bad_output",))] * 2
    assert r.model("primary").calls == 1  # a bad output is not retried
    assert r.chain.breaker_state("primary") is BreakerState.OPEN
    assert r.chain.stats.rows_scored == Counter({"backup:1": 2})


def test_scores_of_exactly_zero_and_one_are_accepted(rig):
    r = rig()
    r.model("primary").mode = "zero_one"
    out = r.decide([_vector(), _vector()])
    assert [(v.path, v.score, v.decision) for v in out] == [("model", 0.0, "approve"),
                                                           ("model", 1.0, "decline")]


# --------------------------------------------------------------------------- time budget


def test_the_primary_gets_its_timeout(rig):
    r = rig(settings=ScoringSettings(timeout_ms=30, backup_timeout_ms=6))
    r.decide([_vector()])
    assert r.chain.stats.call_timeouts_s == [("primary", 0.030)]


def test_a_timed_out_call_is_aborted_not_retried_and_the_backup_gets_the_rest(rig):
    r = rig(settings=ScoringSettings(timeout_ms=20, backup_timeout_ms=10_000, retries=3,
                                     breaker=BreakerSettings(consecutive_failures=1)))
    primary = r.model("primary")
    primary.mode = "block"  # never answers within the test: the timeout must fire
    (v,) = r.decide([_vector()])
    assert (v.path, v.reasons) == ("fallback:backup_model", ("timeout",))
    assert primary.calls == 1  # the budget is spent: no retry
    assert primary.options[0].terminate is True  # onnxruntime's flag aborts the call
    assert r.given() == ["primary", "backup"]
    assert r.chain.stats.call_timeouts_s[0] == ("primary", 0.020)
    assert r.chain.stats.fallbacks == Counter({"timeout": 1})
    assert r.chain.breaker_state("primary") is BreakerState.OPEN  # a timeout is a failure


def test_a_backup_after_a_fast_primary_failure_gets_nearly_the_whole_budget(rig):
    # Primary missing (fails at once): the backup may use the stage budget of 10,000 + 5 ms,
    # not just its own 5 ms.
    r = rig(models=("backup",), settings=ScoringSettings(timeout_ms=10_000, backup_timeout_ms=5))
    (v,) = r.decide([_vector()])
    assert v.path == "fallback:backup_model"
    ((name, given_s),) = r.chain.stats.call_timeouts_s
    assert name == "backup" and given_s > 5 / 1000 and given_s <= 10.005


def test_with_the_shipped_budget_a_backup_after_a_missing_primary_serves(rig):
    r = rig(models=("backup",), settings=ScoringSettings())  # 30 + 6 ms
    (v,) = r.decide([_vector()])
    assert (v.path, v.reasons) == ("fallback:backup_model", ("model_unavailable",))


def test_timed_out_calls_still_running_never_starve_the_backup(rig):
    # Each batch leaves a primary call hanging in the pool (aborted, still winding down);
    # 15 of them, and the backup of every batch still gets a thread of its own.
    r = rig(settings=ScoringSettings(timeout_ms=1, backup_timeout_ms=10_000, breaker=(
        BreakerSettings(consecutive_failures=100, min_calls=1_000))))
    r.model("primary").mode = "block"
    out = [r.decide([_vector()])[0] for _ in range(15)]
    assert [v.path for v in out] == ["fallback:backup_model"] * 15
    assert r.model("primary").calls == 15


def test_close_returns_while_a_call_still_hangs(rig):
    r = rig(settings=ScoringSettings(timeout_ms=1, backup_timeout_ms=10_000))
    r.model("primary").mode = "block"
    r.decide([_vector()])
    r.chain.close()  # does not wait for the hanging call (the test releases it afterwards)
    assert r.model("primary").calls == 1


def test_the_spent_inference_time_is_recorded_per_model(rig):
    r = rig()
    before = time.perf_counter()
    r.decide([_vector()])
    after = time.perf_counter()
    ((ref, spent),) = r.chain.stats.inference_s
    assert ref == "primary:1" and 0 <= spent <= after - before


def test_the_backup_is_not_started_past_the_stage_deadline(rig):
    # Primary missing, then a last-score read that outlasts the whole stage budget (1 + 1 ms).
    r = rig(models=("backup",), settings=ScoringSettings(timeout_ms=1, backup_timeout_ms=1))
    past = threading.Event()

    def slow_read(key):
        past.wait(0.05)  # always waits the full 50 ms: the event is never set
        return None

    (v,) = r.chain.decide(ScoringRows.of_vectors(["k0"], [_vector()], [EVENT_TS_MS],
                                                 [False], slow_read))
    assert v.path == "fallback:rules"
    assert v.reasons[:2] == ("model_unavailable", "backup:timeout")
    assert r.given() == []  # no backup call was started
    (ok,) = rig(models=("backup",), settings=ScoringSettings(timeout_ms=10_000)).decide(
        [_vector()])
    assert ok.path == "fallback:backup_model"  # with the budget intact the same backup serves


# --------------------------------------------------------------------------- breaker


def test_breaker_opens_then_half_opens_and_closes(rig, caplog):
    caplog.set_level(logging.INFO, logger="streamwise.breaker")
    clock = ManualClock(0)
    r = rig(clock=clock, settings=ScoringSettings(
        timeout_ms=10_000, retries=0, backup=None,
        breaker=BreakerSettings(consecutive_failures=3, cool_down_ms=1000, min_calls=100)))
    primary = r.model("primary")
    primary.mode = "fail"
    for _ in range(3):
        assert r.decide([_vector()])[0].reasons[0] == "model_error"
    assert r.chain.breaker_state("primary") is BreakerState.OPEN
    assert r.decide([_vector()])[0].reasons[0] == "breaker_open"
    assert primary.calls == 3  # an open breaker lets no call through
    primary.mode = "ok"  # the outage ends; the breaker runs on `clock`, still cooling down
    clock.advance(999)
    assert r.decide([_vector()])[0].reasons[0] == "breaker_open"
    clock.advance(1)
    (v,) = r.decide([_vector()])  # the half-open probe succeeds
    assert v.path == "model"
    assert r.chain.breaker_state("primary") is BreakerState.CLOSED
    assert r.chain._guards["primary"].breaker.transitions == 3  # noqa: SLF001
    assert r.chain.stats.fallbacks["breaker_open"] == 2
    assert [m.getMessage() for m in caplog.records if m.name == "streamwise.breaker"] == [
        "circuit breaker primary: closed -> open", "circuit breaker primary: open -> half_open",
        "circuit breaker primary: half_open -> closed"]  # each breaker named for its model


def test_twin_has_its_own_breakers_and_statistics(rig):
    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=0, breaker=BreakerSettings(
        consecutive_failures=1)))
    twin = r.chain.twin()
    try:
        assert (twin.settings, twin.feature_set) == (r.chain.settings, r.chain.feature_set)
        r.model("primary").mode = "fail"
        r.decide([_vector()])
        assert r.chain.breaker_state("primary") is BreakerState.OPEN
        assert twin.breaker_state("primary") is BreakerState.CLOSED
        assert twin.stats.fallbacks == Counter()
        r.model("primary").mode = "ok"
        (v,) = twin.decide(ScoringRows.of_vectors(["k"], [_vector()], [EVENT_TS_MS]))
        assert (v.path, v.model) == ("model", "primary:1")
        r.model("primary").mode = "fail"  # the twin scores through the same wrapper
        v, rules = twin.decide(ScoringRows.of_vectors(
            ["k", "j"], [_vector(), _vector(count_10m=9.0, sum_1h=None)], [EVENT_TS_MS] * 2))
        assert (v.path, v.reasons) == ("fallback:backup_model", ("model_error",))
        assert (rules.path, rules.model) == ("fallback:rules", "rules:v1")  # the same rules
    finally:
        twin.close()


# --------------------------------------------------------------------------- cheap first


def test_cheap_first_routes_low_risk_rows_to_the_cheap_model(rig):
    r = rig(settings=ScoringSettings(timeout_ms=10_000,
                                     cheap_first=CheapFirst(primary_above=0.5)))
    low, high = _vector(**dict.fromkeys(NAMES, 0.0)), _vector(**dict.fromkeys(NAMES, 100.0))
    out = r.decide([low, high])
    assert (out[0].model, out[0].path, out[0].reasons) == ("backup:1", "model",
                                                           ("low_risk_cheap_model",))
    assert (out[1].model, out[1].path, out[1].reasons) == ("primary:1", "model", ())
    assert r.chain.stats.primary_skipped == 1
    assert r.chain.stats.rows_scored == Counter({"backup:1": 2, "primary:1": 1})
    # the cheap model runs on its own (backup) timeout, the primary on the primary's
    assert r.chain.stats.call_timeouts_s == [("backup", 0.006), ("primary", 10.0)]
    r.decide([low])
    assert r.chain.stats.primary_skipped == 2


def test_cheap_first_sends_a_row_exactly_at_the_cut_to_the_primary(rig):
    probe = rig()
    cut = float(probe.registry.get("backup").score_many(np.ones((1, 12), np.float32))[0])
    r = rig(settings=ScoringSettings(timeout_ms=10_000, cheap_first=CheapFirst(
        primary_above=cut)))
    (v,) = r.decide([_vector()])
    assert (v.model, v.reasons) == ("primary:1", ())
    assert r.chain.stats.primary_skipped == 0


def test_cheap_first_without_the_cheap_model_scores_everything_with_the_primary(rig):
    r = rig(models=("primary",), settings=ScoringSettings(
        timeout_ms=10_000, cheap_first=CheapFirst(primary_above=0.5)))
    out = r.decide([_vector(), _vector()])
    assert [(v.model, v.path) for v in out] == [("primary:1", "model")] * 2
    assert r.chain.stats.primary_skipped == 0



def test_rows_of_one_entity_in_a_batch_see_each_others_decisions_in_order(rig):
    """Within a batch the last decision of an entity is its previous row's: a model-scored
    row (here the backup's) offers its score to the next; a reuse or a rules decision hides
    any older score, as it would across batches."""
    r = rig(settings=ScoringSettings(timeout_ms=10_000, retries=0))
    r.model("primary").mode = "fail"
    stored = orjson.dumps({"path": "model", "score": 0.42, "decision": "approve",
                           "model": "primary:1", "event_ts_ms": 900})
    out = r.chain.decide(ScoringRows.of_vectors(
        ["c", "c", "c", "d", "d"],
        [_vector(), _vector(), _vector(count_10m=None), _vector(count_10m=None), _vector()],
        [1_000, 2_000, 3_000, 1_000, 2_000],
        last_decision=lambda key: stored if key == "d" else None))
    assert [(v.path, v.reasons) for v in out] == [
        ("fallback:backup_model", ("model_error",)),
        ("fallback:last_score", ("model_error", "last_score_age_ms=1000")),  # row 0's score
        ("fallback:rules", ("missing_features:count_10m",)),  # row 1 was a reuse: hidden
        ("fallback:last_score", ("missing_features:count_10m", "last_score_age_ms=100")),
        ("fallback:backup_model", ("model_error",)),  # row 3 was a reuse: hidden
    ]
    assert out[1].score == out[0].score and out[1].model == "backup:1"
    assert out[3].score == 0.42
    assert r.chain.stats.rows_scored == Counter({"backup:1": 2})  # rows c0 and d1 only


def test_a_row_missing_features_reuses_the_score_of_its_entitys_earlier_row(rig):
    r = rig()
    model, missing = r.chain.decide(ScoringRows.of_vectors(
        ["c", "c"], [_vector(), _vector(count_10m=None)], [1_000, 1_500]))
    assert model.path == "model"
    assert (missing.path, missing.score, missing.reasons) == (
        "fallback:last_score", model.score,
        ("missing_features:count_10m", "last_score_age_ms=500"))


def test_a_steadily_fast_model_runs_inline_and_an_overrun_sends_it_back_to_the_thread(rig):
    """After 100 calls each within a quarter of its timeout, a model is called in the
    caller's thread (no thread hop); an inline call that overruns its timeout counts as a
    timeout, and the next calls run in the guarded thread again."""
    r = rig(settings=ScoringSettings(timeout_ms=2_000))
    caller = threading.current_thread().name
    for _ in range(100):
        assert r.decide([_vector()])[0].path == "model"
    model = r.scripted["primary"]
    assert caller not in model.threads  # guarded so far: every call in the pool
    assert r.decide([_vector()])[0].path == "model"
    assert model.threads[-1] == caller  # the 101st ran inline
    model.mode = "block"  # an inline call that hangs past its timeout
    threading.Timer(2.5, model.release.set).start()
    (v,) = r.decide([_vector()])
    assert v.path != "model" and "timeout" in v.reasons
    model.mode, model.release = "ok", threading.Event()
    assert r.decide([_vector()])[0].path == "model"
    assert model.threads[-1] != caller  # back in the guarded thread
