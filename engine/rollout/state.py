"""Rollout state per model slot, as kept on the topology's compacted `T.control` topic.

Each change is one record, keyed ``rollout/<slot>/<seq>/<writer>`` (unique, so compaction
never drops one), with the slot's whole new state as JSON. The state of a slot is the fold of
its records in log order: a record applies only when its `seq` is one more than the state's,
so of two writers that raced from the same state (an operator and a worker's guardrail, two
workers) the first in the log wins and the other's record is ignored, the same way on every
worker, after a restart, and in `streamwise rollout T status`. A writer that lost re-reads and
decides again from the new state.

Stages: ``shadow`` (the candidate scores beside the serving version and acts on nothing),
``canary`` (a percent of entities, chosen by a hash of the key, decided by the candidate),
``ramp`` (canary over a plan of percents with a dwell time and event count per step),
``released`` (the serving version alone), ``rolled_back`` (back on the last good version).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import orjson

from ..errors import ConfigError

__all__ = ["ControlLog", "RampPlan", "RolloutError", "RolloutState", "Stage", "advance",
           "canary", "control_key", "in_canary", "promote", "ramp", "rollback", "shadow"]

Stage = Literal["shadow", "canary", "ramp", "released", "rolled_back"]
PREFIX = "rollout/"


class RolloutError(ConfigError):
    """A rollout command that does not apply to the slot's state (say why, change nothing)."""


@dataclass(frozen=True)
class RampPlan:
    """Canary percents in order; each step lasts at least `dwell_s` seconds and
    `min_events` candidate decisions, and advances only while the guardrails hold. The
    step that reaches 100 is the release."""

    steps: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
    dwell_s: float = 60.0
    min_events: int = 1000

    def __post_init__(self) -> None:
        s = self.steps
        if not s or any(not 0 < p <= 100 for p in s) or list(s) != sorted(set(s)):
            raise RolloutError("ramp steps are increasing percents in (0, 100], e.g. "
                               "1,5,25,50,100")
        if self.dwell_s < 0 or self.min_events < 0:
            raise RolloutError("ramp dwell and event count must be >= 0")


@dataclass(frozen=True)
class RolloutState:
    """One slot's rollout: what serves, what is being tried and how far, and why."""

    slot: str
    serving: str
    seq: int = 1
    stage: Stage = "released"
    candidate: str | None = None
    percent: float = 0.0  # of entities decided by the candidate (canary, ramp)
    shadow_sample: float = 1.0  # share of rows the candidate shadows
    plan: RampPlan | None = None
    step: int = 0
    step_started_ms: int = 0
    last_good: str | None = None  # what a rollback returns to
    reason: str = ""
    by: str = ""
    at_ms: int = 0
    automatic: bool = False  # written by a worker (guardrail or ramp), not an operator

    @property
    def alarm(self) -> bool:
        """A guardrail rolled this slot back; cleared by the next operator command."""
        return self.stage == "rolled_back" and self.automatic

    def encode(self) -> bytes:
        doc = asdict(self)
        if self.plan is not None:
            doc["plan"]["steps"] = list(self.plan.steps)
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, raw: bytes) -> RolloutState:
        doc = orjson.loads(raw)
        plan = doc.get("plan")
        if plan is not None:
            doc["plan"] = RampPlan(tuple(float(p) for p in plan["steps"]), float(plan["dwell_s"]),
                                   int(plan["min_events"]))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in doc.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """The state as `/v1/models` and `status` show it."""
        doc = orjson.loads(self.encode())
        doc["alarm"] = self.alarm
        return doc


def control_key(slot: str, seq: int, writer: str) -> bytes:
    return f"{PREFIX}{slot}/{seq:010d}/{writer}".encode()


@dataclass
class ControlLog:
    """The fold of `T.control`: the current state of every slot."""

    slots: dict[str, RolloutState] = field(default_factory=dict)

    def apply(self, key: bytes | None, value: bytes | None) -> RolloutState | None:
        """Apply one record; returns the slot's new state when it changed, else None."""
        if key is None or value is None or not key.startswith(PREFIX.encode()):
            return None
        try:
            new = RolloutState.decode(value)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            return None  # not ours to understand; never fatal
        current = self.slots.get(new.slot)
        if new.seq != (current.seq if current else 0) + 1:
            return None  # raced and lost (or a replayed duplicate)
        self.slots[new.slot] = new
        return new

    def apply_all(self, records: Iterable[tuple[bytes | None, bytes | None]]
                  ) -> list[RolloutState]:
        return [s for k, v in records if (s := self.apply(k, v)) is not None]


def in_canary(slot: str, candidate: str, key: str, percent: float) -> bool:
    """Whether the entity `key` is in the candidate's canary slice of `percent`: a hash of
    slot, candidate version and key, so the same entities on every worker, restart and
    replay, growing monotonically with the percent (a ramp keeps its earlier entities)."""
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    digest = hashlib.blake2b(f"{slot}\x1f{candidate}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < round(percent * 100)


# -- transitions (pure): the current state (None: the slot was never rolled out) -> the next --


def _next(cur: RolloutState | None, slot: str, default_serving: str, by: str, now_ms: int,
          **changes: Any) -> RolloutState:
    base = cur if cur is not None else RolloutState(slot=slot, serving=default_serving, seq=0)
    fields = {"plan": None, "step": 0, "step_started_ms": now_ms, "percent": 0.0,
              "shadow_sample": 1.0, "candidate": None, "automatic": False, **changes}
    return replace(base, seq=base.seq + 1, by=by, at_ms=now_ms, **fields)


def _candidate(cur: RolloutState | None, serving: str, version: str) -> None:
    if version == (cur.serving if cur else serving):
        raise RolloutError(f"version {version} is already the serving version")


def shadow(cur: RolloutState | None, slot: str, serving: str, version: str, sample: float,
           by: str, now_ms: int, reason: str = "") -> RolloutState:
    _candidate(cur, serving, version)
    if not 0 < sample <= 1:
        raise RolloutError("shadow sample is a share in (0, 1]")
    return _next(cur, slot, serving, by, now_ms, stage="shadow", candidate=version,
                 shadow_sample=sample, last_good=cur.serving if cur else serving,
                 reason=reason or f"shadow {slot}:{version}")


def canary(cur: RolloutState | None, slot: str, serving: str, version: str, percent: float,
           by: str, now_ms: int, reason: str = "") -> RolloutState:
    _candidate(cur, serving, version)
    if not 0 < percent < 100:
        raise RolloutError("canary percent is in (0, 100); 100 is `promote`")
    return _next(cur, slot, serving, by, now_ms, stage="canary", candidate=version,
                 percent=float(percent), last_good=cur.serving if cur else serving,
                 reason=reason or f"canary {slot}:{version} at {percent:g}%")


def ramp(cur: RolloutState | None, slot: str, serving: str, version: str, plan: RampPlan,
         by: str, now_ms: int, reason: str = "") -> RolloutState:
    _candidate(cur, serving, version)
    if plan.steps[0] >= 100:
        raise RolloutError("a ramp starts below 100%; use `promote` to release at once")
    return _next(cur, slot, serving, by, now_ms, stage="ramp", candidate=version, plan=plan,
                 percent=plan.steps[0], last_good=cur.serving if cur else serving,
                 reason=reason or f"ramp {slot}:{version} step 1/{len(plan.steps)} at "
                                  f"{plan.steps[0]:g}%")


def promote(cur: RolloutState | None, slot: str, serving: str, version: str | None, by: str,
            now_ms: int, reason: str = "", automatic: bool = False) -> RolloutState:
    """The candidate (or `version`, adopting it with no candidate staged) becomes the serving
    version; the one it replaces becomes the last good version."""
    old = cur.serving if cur else serving
    target = version or (cur.candidate if cur else None)
    if target is None:
        raise RolloutError(f"{slot}: no candidate to promote (name a version: {slot}=N)")
    if cur is not None and cur.candidate and version and version != cur.candidate:
        raise RolloutError(f"{slot}: the candidate is {cur.candidate}, not {version}")
    return _next(cur, slot, serving, by, now_ms, stage="released", serving=target,
                 last_good=old if old != target else (cur.last_good if cur else None),
                 automatic=automatic, reason=reason or f"released {slot}:{target}")


def rollback(cur: RolloutState | None, slot: str, by: str, now_ms: int, reason: str = "",
             automatic: bool = False) -> RolloutState:
    """Drop the candidate; with none staged, go back to the last good version."""
    if cur is None:
        raise RolloutError(f"{slot}: nothing to roll back (no rollout recorded)")
    if cur.candidate is not None:
        return _next(cur, slot, cur.serving, by, now_ms, stage="rolled_back",
                     automatic=automatic,
                     reason=reason or f"rolled back {slot}:{cur.candidate}")
    if cur.last_good is None or cur.last_good == cur.serving:
        raise RolloutError(f"{slot}: no candidate and no earlier good version to go back to")
    return _next(cur, slot, cur.serving, by, now_ms, stage="rolled_back",
                 serving=cur.last_good, last_good=None, automatic=automatic,
                 reason=reason or f"rolled back {slot}:{cur.serving} to {cur.last_good}")


def advance(cur: RolloutState, by: str, now_ms: int, why: str) -> RolloutState:
    """The next step of a ramp; the step that reaches 100% releases the candidate."""
    assert cur.plan is not None and cur.candidate is not None
    step = cur.step + 1
    if step >= len(cur.plan.steps) or cur.plan.steps[step] >= 100:
        return promote(cur, cur.slot, cur.serving, None, by, now_ms, automatic=True,
                       reason=f"released {cur.slot}:{cur.candidate} after the ramp ({why})")
    percent = cur.plan.steps[step]
    return replace(cur, seq=cur.seq + 1, step=step, percent=percent, step_started_ms=now_ms,
                   by=by, at_ms=now_ms, automatic=True,
                   reason=f"ramp {cur.slot}:{cur.candidate} step {step + 1}/"
                          f"{len(cur.plan.steps)} at {percent:g}% ({why})")


def summaries(states: Mapping[str, RolloutState]) -> list[dict[str, Any]]:
    return [states[s].summary() for s in sorted(states)]


def parse_steps(text: str | Sequence[float]) -> tuple[float, ...]:
    if isinstance(text, str):
        try:
            return tuple(float(p) for p in text.split(",") if p.strip())
        except ValueError:
            raise RolloutError(f"ramp steps look like 1,5,25,50,100, not {text!r}") from None
    return tuple(float(p) for p in text)
