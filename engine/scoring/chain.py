"""The fallback chain: primary model → last known score → backup model → rules → abstain.

One call per pipeline batch. Rows with a missing, non-finite or stale feature never reach a
model. Each model call runs in a worker thread behind a timeout and its own circuit breaker;
a timed-out call is aborted (onnxruntime's run terminate flag) and never retried, since its
budget is spent; an error is retried at most `retries` times. Every verdict records its path
and why it was taken.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import orjson

from ..clock import Clock
from ..policy import DeciderHealth, DeciderStats, Rules, ScoringRows, Thresholds, Verdict, abstain
from .breaker import BreakerSettings, BreakerState, CircuitBreaker

__all__ = ["CheapFirst", "FallbackChain", "Model", "ScoringSettings"]


class Model(Protocol):
    ref: str
    manifest: object

    def score_many(self, rows: np.ndarray, run_options: object = None) -> np.ndarray: ...

    def run_options(self) -> object: ...


@dataclass(frozen=True)
class CheapFirst:
    """Low-risk routing: score with the cheap model first; only rows whose cheap score is at
    least `primary_above` go to the primary. Rows below are decided by the cheap model."""

    primary_above: float


@dataclass(frozen=True)
class ScoringSettings:
    """How a topology scores. Times in ms; `last_score_max_age_ms` is in event time."""

    primary: str = "primary"
    backup: str | None = "backup"
    timeout_ms: int = 30
    backup_timeout_ms: int = 6  # model calls of a batch end by timeout_ms + this; the rest of
    # the 10 ms slack is for thread wake-ups on a loaded machine (a backup call takes ~0.1 ms)
    retries: int = 1
    last_score_max_age_ms: int = 600_000
    breaker: BreakerSettings = BreakerSettings()
    cheap_first: CheapFirst | None = None


@dataclass
class _Guard:
    """A model's breaker, and whether its calls may run inline.

    A call runs in a worker thread that the caller stops waiting for at its timeout, unless
    the model itself (not counting the hand-off) has answered within a quarter of its
    timeout in each of its last `_INLINE_AFTER` calls: then it runs inline in the caller's thread (no thread hop, whose GIL hand-offs cost
    a busy worker ~10 us per decision at 10 ms polls). An inline call that overruns anyway is
    counted as a timeout, and the model goes back to the guarded thread for `_GUARDED_S`.
    """

    breaker: CircuitBreaker
    calls: int = 0
    fast: int = 0  # consecutive calls within a quarter of their timeout
    guarded_until: float = 0.0  # perf_counter seconds

    def inline(self, now: float) -> bool:
        return self.fast >= _INLINE_AFTER and now >= self.guarded_until

    def took(self, took_s: float, timeout_s: float, timed_out: bool) -> bool:
        """Record how long the model itself took (not the hand-off); False when the call
        overran its timeout."""
        if timed_out or took_s > timeout_s:
            self.fast = 0
            self.guarded_until = time.perf_counter() + _GUARDED_S
            return False
        self.fast = self.fast + 1 if took_s <= timeout_s / 4 else 0
        return True


def _timed(score_many: Callable, matrix: np.ndarray, opts: object) -> tuple[np.ndarray, float]:
    """Scores and the seconds the model itself took (measured where it runs)."""
    t0 = time.perf_counter()
    scores = score_many(matrix, opts)
    return scores, time.perf_counter() - t0


_INLINE_AFTER = 100
_GUARDED_S = 60.0


ChainStats = DeciderStats  # the chain's counts are the Decider port's


class FallbackChain:
    """A `Decider` for the pipeline. `models(name)` returns the active model or None, so hot
    reload is just the registry swapping what that lookup returns."""

    def __init__(self, settings: ScoringSettings, rules: Rules, feature_set: str,
                 models: Callable[[str], Model | None], clock: Clock,
                 wrap: Callable[[Model], Model] | None = None) -> None:
        self.settings = settings
        self.feature_set = feature_set
        self._rules = rules
        self._models = models
        self._wrap = wrap  # fault injection in chaos tests; None in production
        self._clock = clock
        self._guards = {name: _Guard(CircuitBreaker(settings.breaker, clock, name))
                        for name in (settings.primary, settings.backup) if name}
        # Enough threads that a backup call never queues behind timed-out primary calls that
        # are still winding down (onnxruntime's terminate flag ends them, not at once).
        self._pool = cf.ThreadPoolExecutor(max_workers=16, thread_name_prefix="inference")
        self.stats = ChainStats()
        self._thresholds: dict[str, Thresholds] = {}

    def twin(self) -> FallbackChain:
        """Same models, settings and rules; its own breakers, statistics and threads (the
        online path scores with a twin so it never shares mutable state with the stream)."""
        return FallbackChain(self.settings, self._rules, self.feature_set, self._models,
                             self._clock, self._wrap)

    def breaker_names(self) -> list[str]:
        return list(self._guards)

    def breaker_state(self, name: str) -> BreakerState:
        return self._guards[name].breaker.state

    def drain_stats(self) -> DeciderStats:
        """The counts since the last call; counting starts afresh."""
        stats, self.stats = self.stats, DeciderStats()
        return stats

    def health(self) -> DeciderHealth:
        breakers = {}
        for name in self._guards:
            state = self.breaker_state(name)
            breakers[name] = (state.name.lower(), state.value)
        return DeciderHealth(tuple(self.usable()), breakers, has_models=True)

    def usable(self) -> list[str]:
        return [n for n in self._guards if self._models(n) is not None]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the batch --------------------------------------------------------------------------

    def decide(self, rows: ScoringRows) -> list[Verdict]:
        """A verdict per row, in order. The fallbacks' "last known score" of an entity is its
        newest model score before the row in processing order (an earlier row of this batch,
        else the stored last decision), so how the stream is cut into batches never changes
        a decision."""
        s = self.settings
        n = len(rows)
        if n == 0:
            return []
        # The backup gets what is left of the stage's budget (primary + backup timeouts), not
        # a timeout of its own: late wake-ups before it are absorbed, not added, and a primary
        # that failed fast (missing, breaker open) leaves the backup most of the budget.
        deadline = time.perf_counter() + (s.timeout_ms + s.backup_timeout_ms) / 1000
        out: list[Verdict | None] = [None] * n
        why: list[tuple[str, ...]] = [()] * n
        matrix = rows.matrix
        finite = np.isfinite(matrix)
        usable = finite.all(axis=1)
        for i in np.flatnonzero(~usable).tolist():
            bad = [rows.names[j] for j in np.flatnonzero(~finite[i]).tolist()]
            why[i] = (f"missing_features:{','.join(bad)}",)
            self.stats.fallbacks["missing_features"] += 1
        batch = _Rows(matrix, usable.tolist())
        todo = [i for i in range(n) if batch.usable[i]]

        if todo and s.cheap_first is not None and s.backup:
            cheap, reason = self._score(s.backup, todo, batch)
            if cheap is not None:
                model = self._models(s.backup)
                keep = []
                for i, score in zip(todo, cheap, strict=True):
                    if score < s.cheap_first.primary_above:
                        out[i] = self._verdict(model, score, "model", ("low_risk_cheap_model",))
                    else:
                        keep.append(i)
                self.stats.primary_skipped += len(todo) - len(keep)
                todo = keep

        if todo:
            scores, reason = self._score(s.primary, todo, batch)
            if scores is not None:
                model = self._models(s.primary)
                for i, score in zip(todo, scores.tolist(), strict=True):
                    out[i] = self._verdict(model, score, "model", ())
            else:
                self.stats.fallbacks[reason] += len(todo)
                for i in todo:
                    why[i] = (reason,)
        if all(v is not None for v in out):
            return out  # type: ignore[return-value]

        # Fallbacks, in the declared order, for every row still undecided. First the rows
        # that will need the backup (no fresh last score, even counting this batch's earlier
        # rows as if the backup scores them), one call for all; then, in order, each row's
        # path with the backup's answer known.
        last = _LastScores(rows.last_decision)
        backup_rows = []
        for i in range(n):
            key, ts = rows.keys[i], rows.ts_ms[i]
            if out[i] is not None:
                last.note(key, ts, out[i])
            elif last.fresh(key, ts, s.last_score_max_age_ms) is None and batch.usable[i]:
                backup_rows.append(i)
                last.note(key, ts, None)
            else:
                last.note(key, ts, _UNSCORED)  # last score or rules: no score of its own
        backup: dict[int, float] = {}
        backup_failed = ""
        if backup_rows and s.backup:
            scores, backup_failed = self._score(s.backup, backup_rows, batch, deadline)
            if scores is not None:
                backup = dict(zip(backup_rows, scores.tolist(), strict=True))
        last = _LastScores(rows.last_decision)
        for i in range(n):
            v = out[i]
            if v is None:
                key, ts = rows.keys[i], rows.ts_ms[i]
                fresh = last.fresh(key, ts, s.last_score_max_age_ms)
                if fresh is not None:
                    score, decision, model_ref, age = fresh
                    self.stats.fallbacks["last_score"] += 1
                    v = Verdict(score, decision, model_ref, "fallback:last_score",
                                (*why[i], f"last_score_age_ms={age}"))
                elif i in backup:
                    v = self._verdict(self._models(s.backup), backup[i], "fallback:backup_model",
                                      why[i])
                elif batch.usable[i] and s.backup:
                    v = self._rules_verdict(rows, i, (*why[i], f"backup:{backup_failed}"))
                else:
                    v = self._rules_verdict(rows, i, why[i])
                out[i] = v
            last.note(rows.keys[i], rows.ts_ms[i], v)
        return out  # type: ignore[return-value]

    def _rules_verdict(self, rows: ScoringRows, i: int, why: tuple[str, ...]) -> Verdict:
        try:
            return self._rules.decide(rows.vector(i), why)
        except Exception:  # a rules bug must not lose the event
            return abstain((*why, "rules_failed"))

    # -- pieces ------------------------------------------------------------------------------

    def _verdict(self, model: Model, score: float, path: str, why: tuple[str, ...]) -> Verdict:
        thresholds = self._thresholds.get(model.ref)
        if thresholds is None:
            t = model.manifest.thresholds  # type: ignore[attr-defined]
            thresholds = self._thresholds[model.ref] = Thresholds(t.review_at, t.decline_at)
        return Verdict(float(score), thresholds.outcome(score), model.ref, path, why)

    def _score(self, name: str, idx: list[int], rows: _Rows, deadline: float | None = None
               ) -> tuple[np.ndarray | None, str]:
        """Scores for rows `idx` from model `name`, or (None, reason). With a `deadline`
        (`time.perf_counter` seconds) each attempt may run until it; past it: "timeout".
        Without one, an attempt gets the model's own timeout."""
        base_timeout_s = (self.settings.timeout_ms if name == self.settings.primary
                          else self.settings.backup_timeout_ms) / 1000
        model = self._models(name)
        if model is None:
            return None, "model_unavailable"
        if self._wrap is not None:
            model = self._wrap(model)
        guard = self._guards[name]
        if not guard.breaker.allow():
            return None, "breaker_open"
        matrix = rows.matrix[idx].astype(np.float32)
        attempts = 1 + self.settings.retries
        reason = "model_error"
        for _ in range(attempts):
            timeout_s = base_timeout_s
            if deadline is not None:
                timeout_s = deadline - time.perf_counter()
                if timeout_s <= 0:
                    return None, "timeout"
            opts = model.run_options()
            self.stats.call_timeouts_s.append((name, timeout_s))
            t0 = time.perf_counter()  # the clock's whole ms are too coarse for a model call
            try:
                if guard.inline(t0):  # steadily fast: no thread hop (GIL hand-offs)
                    scores, took_s = _timed(model.score_many, matrix, opts)
                else:
                    scores, took_s = self._pool.submit(
                        _timed, model.score_many, matrix, opts).result(timeout=timeout_s)
            except cf.TimeoutError:
                opts.terminate = True  # type: ignore[attr-defined]
                guard.took(timeout_s, timeout_s, timed_out=True)
                guard.breaker.record(False)
                return None, "timeout"  # the budget is spent: no retry
            except Exception:
                guard.breaker.record(False)
                reason = "model_error"
                if guard.breaker.state is not BreakerState.CLOSED:
                    break
                continue
            if not guard.took(took_s, timeout_s, timed_out=False):
                # an inline call that overran: a timeout all the same (the result is late)
                guard.breaker.record(False)
                return None, "timeout"
            if scores.shape != (len(idx),) or not np.all(np.isfinite(scores)) or np.any(
                    (scores < 0) | (scores > 1)):
                guard.breaker.record(False)
                return None, "bad_output"
            guard.breaker.record(True)
            self.stats.rows_scored[model.ref] += len(idx)
            self.stats.inference_s.append((model.ref, time.perf_counter() - t0))
            return scores, ""
        return None, reason


class _LastScores:
    """What each entity's last decision says for the last-score fallback, in processing
    order: the stored last decision, then the rows noted so far. Only a last decision that a
    model scored (model or backup path) offers its score; any other path hides older ones."""

    __slots__ = ("_batch", "_load", "_stored")

    def __init__(self, load: Callable[[Hashable], bytes | None]) -> None:
        self._load = load
        self._stored: dict[Hashable, tuple | None] = {}
        self._batch: dict[Hashable, tuple | None] = {}

    def note(self, key: Hashable, ts_ms: int, v: Verdict | None) -> None:
        """The row of `key` at `ts_ms` was decided with `v` (None: the backup will score it,
        assumed to succeed)."""
        if v is None:
            self._batch[key] = (None, None, None, ts_ms)
        elif v.path in _SCORED_PATHS and v.score is not None:
            self._batch[key] = (v.score, v.decision, v.model, ts_ms)
        else:
            self._batch[key] = None

    def fresh(self, key: Hashable, ts_ms: int, max_age_ms: int) -> tuple | None:
        """(score, decision, model, age ms) when the last decision was scored at most
        `max_age_ms` before `ts_ms` in event time, else None."""
        if key in self._batch:
            last = self._batch[key]
        else:
            if key not in self._stored:
                self._stored[key] = _stored_score(self._load(key))
            last = self._stored[key]
        if last is None:
            return None
        age = ts_ms - last[3]
        return (*last[:3], age) if 0 <= age <= max_age_ms else None


_SCORED_PATHS = ("model", "fallback:backup_model")
_UNSCORED = Verdict(None, "review", "none", "abstain", ())  # stands for any unscored path


def _stored_score(raw: bytes | None) -> tuple | None:
    if not raw:
        return None
    last = orjson.loads(raw)
    # Only a model's own score is reused, never a fallback's reuse or a rules score.
    if last.get("path") not in _SCORED_PATHS or last.get("score") is None:
        return None
    return last["score"], last["decision"], last["model"], last["event_ts_ms"]


@dataclass(frozen=True, slots=True)
class _Rows:
    """A batch's feature matrix (float64, NaN for None) and which rows a model may score."""

    matrix: np.ndarray
    usable: list[bool]
