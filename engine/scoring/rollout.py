"""The rollout decider: the serving fallback chain, plus a candidate model in shadow or canary.

It wraps two `FallbackChain`s over the same rules and settings: the serving chain, whose
model lookups return each slot's serving version, and the candidate chain, whose lookup
returns the candidate for the slot under rollout (and the serving versions for the others).
One decision per row, one call of each chain per batch:

* ``shadow``: every row is decided by the serving chain, exactly as without a rollout; then
  the candidate scores the rows with every feature present (or a share of entities) in one
  batched call, and each decision carries ``shadow: {model, score, decision}``. It never acts.
* ``canary`` / ``ramp``: rows of entities in the canary slice (`in_canary`, a hash of the key)
  go to the candidate chain, whose model path is recorded as ``path: canary``; the rest to
  the serving chain. Both sides are recorded in the guardrail window.

What it does is a `Plan`, built from the rollout state by `apply` and swapped whole; each
batch reads the plan once, so a change (a promote, a rollback) takes effect between batches:
no event is left undecided and none is decided by half of a plan.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..clock import Clock
from ..errors import ModelError
from ..policy import DeciderHealth, DeciderStats, Rules, ScoringRows, Thresholds, Verdict
from ..rollout.guardrails import GuardWindow, SideStats
from ..rollout.settings import Guardrails
from ..rollout.state import RolloutState, in_canary
from .breaker import CircuitBreaker
from .cache import CachingWrap, PredictionCache
from .chain import FallbackChain, Model, ScoringSettings

__all__ = ["Plan", "RolloutDecider", "RolloutStats"]

log = logging.getLogger("streamwise.rollout")

_CANDIDATE_STAGES = ("shadow", "canary", "ramp")


class _Registry:  # the part of ModelRegistry the decider uses (a Protocol in spirit)
    def get(self, name: str) -> Model | None: ...
    def serve(self, name: str, version: str) -> Model: ...
    def load_version(self, name: str, version: str) -> Model: ...


@dataclass(frozen=True)
class Plan:
    """What the decider does now: the rollout state of every slot, each managed slot's
    serving model, and the candidate (one slot at a time) with its guardrail window."""

    states: Mapping[str, RolloutState] = field(default_factory=dict)
    serving: Mapping[str, Model] = field(default_factory=dict)
    rollout: RolloutState | None = None  # the slot with a candidate in shadow/canary/ramp
    candidate: Model | None = None  # None while the candidate does not load
    candidate_error: str | None = None
    window: GuardWindow | None = None
    errors: Mapping[str, str] = field(default_factory=dict)  # slot -> why its version failed

    @property
    def candidate_ref(self) -> str | None:
        r = self.rollout
        return None if r is None else f"{r.slot}:{r.candidate}"


@dataclass
class RolloutStats:
    """Shadow and canary counts since the last drain (the rollout metrics read them)."""

    shadow: Counter = field(default_factory=Counter)  # (candidate ref, decision or "none")
    shadow_disagreements: Counter = field(default_factory=Counter)  # candidate ref
    canary_rows: Counter = field(default_factory=Counter)  # candidate ref


class _Holder:
    """The plan shared by a decider and its twins (the online path)."""

    def __init__(self) -> None:
        self.plan = Plan()
        self.step_rows = 0  # candidate decisions in the current ramp step (stream only)
        self.step_key: tuple | None = None


class RolloutDecider:
    """A `Decider`: the serving chain, a candidate in shadow or canary, guardrail records."""

    def __init__(self, settings: ScoringSettings, rules: Rules, feature_set: str,
                 registry: _Registry, clock: Clock, guardrails: Guardrails | None = None,
                 wrap: Callable[[Model], Model] | None = None, record: bool = True,
                 holder: _Holder | None = None) -> None:
        self.settings = settings
        self.feature_set = feature_set
        self.guardrails = guardrails or Guardrails()
        self._rules = rules
        self._registry = registry
        self._clock = clock
        self._wrap = wrap
        self._record = record  # the stream records guardrail statistics; twins do not
        self._holder = holder or _Holder()
        self._active = self._holder.plan
        self.chain = FallbackChain(settings, rules, feature_set, self._serving_model, clock, wrap)
        self.candidate_chain = FallbackChain(settings, rules, feature_set,
                                             self._candidate_model, clock, wrap)
        self._shadow_breaker = CircuitBreaker(settings.breaker, clock, "shadow")
        self._pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="shadow")
        self._thresholds: dict[str, Thresholds] = {}
        self.rollout_stats = RolloutStats()
        self._stats_lock = threading.Lock()

    # -- the plan -----------------------------------------------------------------------------

    @property
    def plan(self) -> Plan:
        return self._holder.plan

    def apply(self, states: Mapping[str, RolloutState]) -> Plan:
        """Build and switch to the plan for `states` (slot -> state): each slot's serving
        version is made the registry's active one, the candidate is loaded. A serving version
        that does not load keeps what served before (its error is in `plan.errors`)."""
        old = self._holder.plan
        serving: dict[str, Model] = {}
        errors: dict[str, str] = {}
        rollout = candidate = window = None
        candidate_error = None
        for slot, state in sorted(states.items()):
            try:
                serving[slot] = self._registry.serve(slot, state.serving)
            except ModelError as exc:
                errors[slot] = str(exc)
                if slot in old.serving:
                    serving[slot] = old.serving[slot]
                log.error("rollout %s: serving version %s does not load: %s", slot,
                          state.serving, exc)
            if state.candidate is not None and state.stage in _CANDIDATE_STAGES \
                    and rollout is None:
                rollout = state
                try:
                    candidate = self._registry.load_version(slot, state.candidate)
                except ModelError as exc:
                    candidate_error = str(exc)
                    log.error("rollout %s: candidate %s does not load: %s", slot,
                              state.candidate, exc)
        if rollout is not None and rollout.stage != "shadow":
            ref = f"{rollout.slot}:{rollout.candidate}"
            keep = old.window if old.window is not None and old.window.candidate == ref else None
            window = keep or GuardWindow(self.guardrails, ref)
            step = (ref, rollout.step, rollout.stage)
            if self._holder.step_key != step:
                self._holder.step_key, self._holder.step_rows = step, 0
        plan = Plan(dict(states), serving, rollout, candidate, candidate_error, window, errors)
        self._holder.plan = plan
        return plan

    @property
    def step_rows(self) -> int:
        """Candidate decisions this worker made in the current ramp step."""
        return self._holder.step_rows

    def _serving_model(self, name: str) -> Model | None:
        model = self._active.serving.get(name)
        return model if model is not None else self._registry.get(name)

    def _candidate_model(self, name: str) -> Model | None:
        plan = self._active
        if plan.rollout is not None and name == plan.rollout.slot:
            return plan.candidate
        return self._serving_model(name)

    # -- the Decider port ---------------------------------------------------------------------

    def decide(self, rows: ScoringRows) -> list[Verdict]:
        plan = self._active = self._holder.plan
        r = plan.rollout
        if r is None or len(rows) == 0:
            return self.chain.decide(rows)
        if r.stage == "shadow":
            verdicts = self.chain.decide(rows)
            return self._shadow(rows, verdicts, plan)
        return self._canary(rows, plan)

    def drain_stats(self) -> DeciderStats:
        a, b = self.chain.drain_stats(), self.candidate_chain.drain_stats()
        a.fallbacks.update(b.fallbacks)
        a.rows_scored.update(b.rows_scored)
        a.primary_skipped += b.primary_skipped
        a.inference_s += b.inference_s
        a.call_timeouts_s += b.call_timeouts_s
        return a

    def drain_rollout_stats(self) -> RolloutStats:
        with self._stats_lock:
            stats, self.rollout_stats = self.rollout_stats, RolloutStats()
        return stats

    def health(self) -> DeciderHealth:
        return self.chain.health()

    def usable(self) -> list[str]:
        return self.chain.usable()

    def twin(self, cache: PredictionCache | None = None) -> RolloutDecider:
        """Same plan (it follows every change), own chains, breakers and counts, no
        guardrail records: the online path's decider; with `cache`, identical rows within
        its TTL are not scored again (see `CachedModel` for where that is valid)."""
        wrap = CachingWrap(cache, self._clock.now_ms, self._wrap) if cache else self._wrap
        return RolloutDecider(self.settings, self._rules, self.feature_set, self._registry,
                              self._clock, self.guardrails, wrap, record=False,
                              holder=self._holder)

    def close(self) -> None:
        self.chain.close()
        self.candidate_chain.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- canary -------------------------------------------------------------------------------

    def _canary(self, rows: ScoringRows, plan: Plan) -> list[Verdict]:
        r = plan.rollout
        assert r is not None and r.candidate is not None
        ref = plan.candidate_ref
        n = len(rows)
        picked = [in_canary(r.slot, r.candidate, _entity(rows.keys[i]), r.percent)
                  for i in range(n)]
        canary_idx = [i for i in range(n) if picked[i]]
        serving_idx = [i for i in range(n) if not picked[i]]
        out: list[Verdict | None] = [None] * n
        calls = {}
        for chain, idx, relabel in ((self.chain, serving_idx, False),
                                    (self.candidate_chain, canary_idx, True)):
            if not idx:
                continue
            before = len(chain.stats.inference_s)
            verdicts = chain.decide(_subset(rows, idx))
            calls[relabel] = [s for m, s in chain.stats.inference_s[before:]
                              if m == (ref if relabel else _serving_ref(plan, r.slot, self))]
            for i, v in zip(idx, verdicts, strict=True):
                if relabel and v.path == "model" and v.model == ref:
                    v = v._replace(path="canary")
                out[i] = v
        verdicts = out  # type: ignore[assignment]
        if self._record and plan.window is not None:
            eligible = np.isfinite(rows.matrix).all(axis=1)
            serving_ref = _serving_ref(plan, r.slot, self)
            canary = _side(verdicts, canary_idx, eligible, ("canary",), ref, plan.window)
            serving = _side(verdicts, serving_idx, eligible, ("model",), serving_ref,
                            plan.window)
            canary.call_s, serving.call_s = calls.get(True, []), calls.get(False, [])
            plan.window.record(self._clock.now_ms() / 1000, canary, serving)
            self._holder.step_rows += len(canary_idx)
            with self._stats_lock:
                self.rollout_stats.canary_rows[ref] += len(canary_idx)
        return verdicts  # type: ignore[return-value]

    # -- shadow -------------------------------------------------------------------------------

    def _shadow(self, rows: ScoringRows, verdicts: list[Verdict], plan: Plan) -> list[Verdict]:
        r = plan.rollout
        assert r is not None and r.candidate is not None
        ref = plan.candidate_ref
        n = len(rows)
        sampled = [r.shadow_sample >= 1 or in_canary(r.slot, "shadow\x1f" + r.candidate,
                                                     _entity(rows.keys[i]),
                                                     r.shadow_sample * 100)
                   for i in range(n)]
        eligible = np.isfinite(rows.matrix).all(axis=1)
        idx = [i for i in range(n) if sampled[i] and eligible[i]]
        scores, why = self._shadow_scores(plan, rows.matrix, idx)
        by_row = dict(zip(idx, scores, strict=True)) if scores is not None else {}
        out = []
        tally: Counter = Counter()
        disagree = 0
        for i, v in enumerate(verdicts):
            if not sampled[i]:
                out.append(v)
                continue
            score = by_row.get(i)
            if score is None:
                doc = {"model": ref, "score": None, "decision": None,
                       "reason": why if eligible[i] else "missing_features"}
                tally[(ref, "none")] += 1
            else:
                decision = self._outcome(plan.candidate, score)
                doc = {"model": ref, "score": score, "decision": decision}
                tally[(ref, decision)] += 1
                disagree += decision != v.decision
            out.append(v._replace(shadow=doc))
        if self._record:
            with self._stats_lock:
                self.rollout_stats.shadow.update(tally)
                self.rollout_stats.shadow_disagreements[ref] += disagree
        return out

    def _shadow_scores(self, plan: Plan, matrix: np.ndarray, idx: Sequence[int]
                       ) -> tuple[list[float] | None, str]:
        """One batched call of the candidate on rows `idx` (timeout and breaker of its own;
        a failure only empties the shadow fields, never touches a decision)."""
        model = plan.candidate
        if model is None:
            return None, "model_unavailable"
        if not idx:
            return [], ""
        if self._wrap is not None:
            model = self._wrap(model)
        if not self._shadow_breaker.allow():
            return None, "breaker_open"
        opts = model.run_options()
        x = matrix[list(idx)].astype(np.float32)
        t0 = time.perf_counter()
        future = self._pool.submit(model.score_many, x, opts)
        try:
            scores = future.result(timeout=self.settings.timeout_ms / 1000)
        except cf.TimeoutError:
            opts.terminate = True  # type: ignore[attr-defined]
            self._shadow_breaker.record(False)
            return None, "timeout"
        except Exception:
            self._shadow_breaker.record(False)
            return None, "model_error"
        if scores.shape != (len(idx),) or not np.all(np.isfinite(scores)) \
                or np.any((scores < 0) | (scores > 1)):
            self._shadow_breaker.record(False)
            return None, "bad_output"
        self._shadow_breaker.record(True)
        stats = self.chain.stats
        stats.rows_scored[model.ref] += len(idx)
        stats.inference_s.append((model.ref, time.perf_counter() - t0))
        return scores.tolist(), ""

    def _outcome(self, model: Model, score: float) -> str:
        t = self._thresholds.get(model.ref)
        if t is None:
            m = model.manifest.thresholds  # type: ignore[attr-defined]
            t = self._thresholds[model.ref] = Thresholds(m.review_at, m.decline_at)
        return t.outcome(score)


def _entity(key: object) -> str:
    """The entity of an opaque row key: the pipeline's keys are (partition, entity)."""
    return str(key[1]) if isinstance(key, tuple) else str(key)


def _serving_ref(plan: Plan, slot: str, decider: RolloutDecider) -> str | None:
    model = plan.serving.get(slot) or decider._registry.get(slot)  # noqa: SLF001
    return None if model is None else model.ref


def _subset(rows: ScoringRows, idx: list[int]) -> ScoringRows:
    vector = rows.vector
    return ScoringRows(rows.names, rows.matrix[idx], [rows.keys[i] for i in idx],
                       [rows.ts_ms[i] for i in idx], [rows.late[i] for i in idx],
                       lambda j: vector(idx[j]), rows.last_decision)


def _side(verdicts: Sequence[Verdict], idx: Sequence[int], eligible: np.ndarray,
          model_paths: tuple[str, ...], ref: str | None, window: GuardWindow) -> SideStats:
    side = SideStats(rows=len(idx))
    scores = []
    for i in idx:
        v = verdicts[i]
        if eligible[i]:
            side.eligible += 1
            if v.path not in model_paths and not (v.path == "model" and v.model != ref):
                side.errors += 1
        if v.decision == "decline":
            side.declines += 1
        if v.model == ref and v.score is not None:
            scores.append(v.score)
    side.hist = window.hist(np.asarray(scores, dtype=np.float64)) if scores else []
    side.batches = int(side.eligible > 0)
    side.failed_batches = int(side.errors > 0)
    return side
