"""The fallback chain with real (tiny) ONNX models; failures come from the fault injector."""

from __future__ import annotations

import time
from dataclasses import replace

import orjson

import topologies
from engine.clock import ManualClock
from engine.scoring.breaker import BreakerSettings, BreakerState
from engine.scoring.chain import CheapFirst, FallbackChain, ScoringSettings
from engine.scoring.faults import FaultInjector, FaultSpec
from engine.scoring.registry import ModelRegistry
from tests.unit.onnx_factory import linear_model_bytes, write_model

TOPO = topologies.get("fraud")
NAMES = TOPO.features.names
FS = TOPO.features.versioned_name


def _vector(**over) -> dict:
    v = dict.fromkeys(NAMES, 1.0)
    v.update(over)
    return v


def _chain(tmp_path, settings: ScoringSettings | None = None, faults: str = "",
           models: tuple[str, ...] = ("primary", "backup"), clock=None):
    for name in models:
        write_model(tmp_path, name, "1", NAMES,
                    linear_model_bytes(12, bias=-3.0 if name == "primary" else -1.0))
    reg = ModelRegistry(tmp_path, NAMES, FS)
    reg.refresh()
    wrap = FaultInjector(FaultSpec.parse(faults)) if faults else None
    return FallbackChain(settings or ScoringSettings(timeout_ms=200), TOPO.rules, FS, reg.get,
                         clock or ManualClock(0), wrap=wrap)


def _decide(chain, vectors, last=None, ts=1_000):
    n = len(vectors)
    return chain.decide_many([f"k{i}" for i in range(n)], vectors, [ts] * n, [False] * n,
                             lambda key: (last or {}).get(key))


def test_primary_scores_everything_complete(tmp_path):
    out = _decide(_chain(tmp_path), [_vector(), _vector(amount=50.0)])
    assert [v.path for v in out] == ["model", "model"]
    assert all(v.model == "primary:1" for v in out)
    assert out[0].score != out[1].score


def test_missing_or_non_finite_features_never_reach_a_model(tmp_path):
    chain = _chain(tmp_path)
    out = _decide(chain, [_vector(amount_over_avg=None), _vector(sum_1h=float("nan")),
                          _vector(amount=float("inf"))])
    assert [v.path for v in out] == ["fallback:rules"] * 3
    assert out[0].reasons[0] == "missing_features:amount_over_avg"
    assert out[1].reasons[0] == "missing_features:sum_1h"
    assert chain.stats.rows_scored == {}


def test_primary_failure_goes_to_fresh_last_score_then_backup_then_rules(tmp_path):
    chain = _chain(tmp_path, faults="fail=1.0",
                   settings=ScoringSettings(timeout_ms=200, retries=0,
                                            last_score_max_age_ms=500, backup=None))
    fresh = orjson.dumps({"path": "model", "score": 0.42, "decision": "approve",
                          "model": "primary:1", "event_ts_ms": 900})
    stale = orjson.dumps({"path": "model", "score": 0.42, "decision": "approve",
                          "model": "primary:1", "event_ts_ms": 100})
    rules = orjson.dumps({"path": "fallback:rules", "score": 0.9, "decision": "decline",
                          "model": "rules:v1", "event_ts_ms": 999})
    out = _decide(chain, [_vector()] * 4, last={"k0": fresh, "k1": stale, "k2": rules})
    assert out[0].path == "fallback:last_score" and out[0].score == 0.42
    assert "model_error" in out[0].reasons and "last_score_age_ms=100" in out[0].reasons
    assert [v.path for v in out[1:]] == ["fallback:rules"] * 3


def test_backup_model_serves_when_primary_is_missing(tmp_path):
    chain = _chain(tmp_path, models=("backup",))
    out = _decide(chain, [_vector()])
    assert out[0].path == "fallback:backup_model"
    assert out[0].model == "backup:1"
    assert out[0].reasons == ("model_unavailable",)


def test_slow_inference_times_out_to_a_fallback(tmp_path):
    chain = _chain(tmp_path, faults="slow=1.0:400",
                   settings=ScoringSettings(timeout_ms=50, retries=0))
    out = _decide(chain, [_vector()])
    assert out[0].path in ("fallback:backup_model", "fallback:rules")
    assert out[0].reasons[0] == "timeout"


def test_breaker_opens_then_half_opens_and_closes(tmp_path):
    clock = ManualClock(0)
    settings = ScoringSettings(timeout_ms=200, retries=0, backup=None,
                               breaker=BreakerSettings(consecutive_failures=3, cool_down_ms=1000,
                                                       min_calls=100))
    chain = _chain(tmp_path, faults="fail_for_s=0.5", settings=settings, clock=clock)
    for _ in range(3):
        assert _decide(chain, [_vector()])[0].reasons == ("model_error",)
    assert chain.breaker_state("primary") is BreakerState.OPEN
    assert _decide(chain, [_vector()])[0].reasons == ("breaker_open",)
    time.sleep(0.6)  # the injected outage ends (wall clock); the breaker runs on `clock`
    assert _decide(chain, [_vector()])[0].reasons == ("breaker_open",)
    clock.advance(1000)
    out = _decide(chain, [_vector()])  # the half-open probe succeeds
    assert out[0].path == "model"
    assert chain.breaker_state("primary") is BreakerState.CLOSED


def test_cheap_first_routes_low_risk_rows_to_the_cheap_model(tmp_path):
    chain = _chain(tmp_path, settings=ScoringSettings(cheap_first=CheapFirst(primary_above=0.5)))
    low, high = _vector(**dict.fromkeys(NAMES, 0.0)), _vector(**dict.fromkeys(NAMES, 100.0))
    out = _decide(chain, [low, high])
    assert out[0].model == "backup:1" and "low_risk_cheap_model" in out[0].reasons
    assert out[1].model == "primary:1"
    assert chain.stats.primary_skipped == 1


def test_rules_failure_abstains(tmp_path):
    def explode(_):
        raise RuntimeError("bug")

    chain = _chain(tmp_path, models=())
    chain._rules = replace(TOPO.rules, evaluate=explode)  # noqa: SLF001
    out = _decide(chain, [_vector()])
    assert out[0].path == "abstain" and out[0].decision == "review"


def test_the_backup_gets_only_what_is_left_of_the_stage_budget(tmp_path):
    # Primary missing, then a store read (last score) that eats the whole stage budget of
    # 20 + 200 ms: the backup, fast as it is, is not started past the deadline.
    chain = _chain(tmp_path, models=("backup",),
                   settings=ScoringSettings(timeout_ms=20, backup_timeout_ms=200))

    def slow_read(key):
        time.sleep(0.25)
        return None

    (out,) = chain.decide_many(["k0"], [_vector()], [1_000], [False], slow_read)
    assert out.path == "fallback:rules"
    assert out.reasons[:2] == ("model_unavailable", "backup:timeout")
    # with the budget intact the same backup serves
    (ok,) = _decide(chain, [_vector()])
    assert ok.path == "fallback:backup_model"


def test_a_backup_after_a_fast_primary_failure_gets_the_rest_of_the_budget(tmp_path):
    # Primary missing (fails at once) and a backup that takes 30 ms, past its own 5 ms: the
    # stage budget of 200 + 5 ms is nearly whole when the backup starts, so it serves.
    chain = _chain(tmp_path, models=("backup",), faults="slow=1:30",
                   settings=ScoringSettings(timeout_ms=200, backup_timeout_ms=5))
    (out,) = _decide(chain, [_vector()])
    assert out.path == "fallback:backup_model"
    assert out.reasons == ("model_unavailable",)
