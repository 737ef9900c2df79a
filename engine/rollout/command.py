"""`streamwise rollout TOPOLOGY {status|validate|shadow|canary|ramp|promote|rollback}`.

Every subcommand reads the rollout state from `T.control`; the staging ones (shadow, canary,
ramp) first validate the version offline and refuse one that fails the contract or, unless
`--force`, the topology's minima; then they write the next state, which every worker applies.
`POST /v1/rollout` goes through `next_state` too.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config import EngineConfig
from ..errors import ConfigError
from ..topology import Topology
from . import state as st
from .state import ControlLog, RampPlan, RolloutError, RolloutState

__all__ = ["ACTIONS", "RolloutRequest", "next_state", "run_rollout"]

ACTIONS = ("status", "validate", "shadow", "canary", "ramp", "promote", "rollback")
STAGING = ("shadow", "canary", "ramp")


@dataclass(frozen=True)
class RolloutRequest:
    action: str
    target: str | None = None  # SLOT=VERSION, or SLOT (promote, rollback)
    percent: float | None = None
    sample: float = 1.0
    steps: str = "1,5,25,50,100"
    dwell_s: float = 60.0
    min_events: int = 1000
    reason: str = ""
    holdout: Path | None = None
    against: str | None = None
    force: bool = False
    as_json: bool = False


def parse_target(target: str | None, action: str, log: ControlLog) -> tuple[str, str | None]:
    """(slot, version) from ``SLOT=VERSION`` or ``SLOT``; promote and rollback default to
    the slot with a candidate staged."""
    if target:
        slot, sep, version = target.partition("=")
        if not slot or (sep and not version):
            raise RolloutError(f"takes SLOT=VERSION (e.g. primary=2), not {target!r}")
        return slot, version or None
    if action in ("promote", "rollback"):
        staged = [s.slot for s in log.slots.values() if s.candidate]
        if len(staged) == 1:
            return staged[0], None
        raise RolloutError(f"{action}: name the slot (e.g. {action} primary)")
    raise RolloutError(f"{action} takes SLOT=VERSION (e.g. primary=2)")


def next_state(log: ControlLog, req: RolloutRequest, serving_default: Any, by: str,
               now_ms: int) -> RolloutState:
    """The state a command writes, from the current one. `serving_default(slot)` is the
    version that serves a slot with no rollout record yet."""
    slot, version = parse_target(req.target, req.action, log)
    cur = log.slots.get(slot)
    serving = cur.serving if cur else serving_default(slot)
    if req.action in STAGING:
        if version is None:
            raise RolloutError(f"{req.action} takes SLOT=VERSION")
        busy = [s for s in log.slots.values() if s.candidate and s.slot != slot]
        if busy:
            raise RolloutError(f"{busy[0].slot} has candidate {busy[0].candidate} staged: "
                               "promote or roll it back first (one rollout at a time)")
        if cur is not None and cur.candidate and cur.candidate != version:
            raise RolloutError(f"{slot} has candidate {cur.candidate} staged: promote or roll "
                               "it back first")
    if req.action == "shadow":
        return st.shadow(cur, slot, serving, version, req.sample, by, now_ms, req.reason)
    if req.action == "canary":
        if req.percent is None:
            raise RolloutError("canary needs --percent P")
        return st.canary(cur, slot, serving, version, req.percent, by, now_ms, req.reason)
    if req.action == "ramp":
        plan = RampPlan(st.parse_steps(req.steps), req.dwell_s, req.min_events)
        return st.ramp(cur, slot, serving, version, plan, by, now_ms, req.reason)
    if req.action == "promote":
        return st.promote(cur, slot, serving, version, by, now_ms, req.reason)
    if req.action == "rollback":
        return st.rollback(cur, slot, by, now_ms, req.reason)
    raise RolloutError(f"unknown action {req.action!r}")


def _models_dir(cfg: EngineConfig, topology: Topology) -> Path:
    folder = cfg.models.models_dir or topology.models_dir
    if folder is None or not folder.is_dir():
        raise ConfigError(f"no model registry folder ({folder}); pass --models-dir")
    return folder


def newest_valid(topology: Topology, models_dir: Path, slot: str, exclude: str | None) -> str:
    """The version a worker without rollout state serves: the newest that loads (the
    candidate being staged excluded: it may be the newest already)."""
    from ..scoring.registry import ModelRegistry

    versions = sorted((p.name for p in (models_dir / slot).iterdir() if p.is_dir())
                      if (models_dir / slot).is_dir() else [],
                      key=lambda v: (0, int(v)) if v.isdigit() else (1, v), reverse=True)
    for v in versions:
        if v == exclude:
            continue
        reg = ModelRegistry(models_dir, topology.features.names,
                            topology.features.versioned_name, pinned={slot: v})
        reg.refresh()
        if reg.get(slot) is not None:
            return v
    raise RolloutError(f"{slot}: no valid version in {models_dir} besides {exclude}")


async def run_rollout(cfg: EngineConfig, topology: Topology, req: RolloutRequest) -> int:
    from ..kafka_io import connect_check
    from .control_io import change, read_control
    from .validate import validate

    topic = topology.topics(cfg.kafka.topic_prefix).control
    models_dir = _models_dir(cfg, topology)
    if req.action == "validate":
        slot, version = parse_target(req.target, "validate", ControlLog())
        against = req.against
        if against is None:
            try:
                against = _serving_version(topology, models_dir, slot, version, None)
            except RolloutError:
                against = None  # the only version there is: reported alone
        result = await asyncio.to_thread(validate, topology, models_dir, slot, version,
                                         against, req.holdout)
        print(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode()
              if req.as_json else result.text())
        return 0 if result.ok else 2
    await connect_check(cfg.kafka)
    if req.action == "status":
        log = await read_control(cfg.kafka, topic)
        _print_status(log, req.as_json)
        return 0
    if req.action in STAGING:
        log = await read_control(cfg.kafka, topic)
        slot, version = parse_target(req.target, req.action, log)
        cur = log.slots.get(slot)
        against = cur.serving if cur else _serving_version(topology, models_dir, slot, version,
                                                            None)
        result = await asyncio.to_thread(validate, topology, models_dir, slot, version,
                                         against, req.holdout)
        print(result.text(), file=sys.stderr)
        if result.contract_error is not None:
            raise RolloutError(f"refused: {slot}:{version} fails the contract: "
                               f"{result.contract_error}")
        if result.failures and not req.force:
            raise RolloutError(f"refused: {slot}:{version} fails the topology's minima "
                               f"({'; '.join(result.failures)}); --force stages it anyway")
    import getpass
    import time

    who = f"cli:{getpass.getuser()}"

    staged = req.target.partition("=")[2] or None if req.target else None

    def build(log: ControlLog) -> RolloutState:
        return next_state(log, req, lambda s: _serving_version(topology, models_dir, s, staged,
                                                               log),
                          who, time.time_ns() // 1_000_000)

    new = await change(cfg.kafka, topic, build, "cli")
    print(f"{new.slot}: seq {new.seq} {new.stage}: serving {new.serving}"
          f"{f', candidate {new.candidate}' if new.candidate else ''}"
          f"{f' at {new.percent:g}%' if new.stage in ('canary', 'ramp') else ''} ({new.reason})")
    return 0


def _serving_version(topology: Topology, models_dir: Path, slot: str, candidate: str | None,
                     log: ControlLog | None) -> str:
    if log is not None and slot in log.slots:
        return log.slots[slot].serving
    return newest_valid(topology, models_dir, slot, exclude=candidate)


def _print_status(log: ControlLog, as_json: bool) -> None:
    states = st.summaries(log.slots)
    if as_json:
        print(orjson.dumps({"slots": states}, option=orjson.OPT_INDENT_2).decode())
        return
    if not states:
        print("no rollout recorded: every worker serves the newest valid version of each model")
        return
    for s in states:
        extra = ""
        if s["stage"] in ("canary", "ramp"):
            extra = f" at {s['percent']:g}%"
            if s["plan"]:
                extra += f" (step {s['step'] + 1}/{len(s['plan']['steps'])} of " \
                         f"{','.join(f'{p:g}' for p in s['plan']['steps'])})"
        print(f"{s['slot']}: serving {s['serving']}, {s['stage']}"
              f"{' candidate ' + s['candidate'] if s['candidate'] else ''}{extra}; last good "
              f"{s['last_good']}; seq {s['seq']} by {s['by']}: {s['reason']}"
              f"{'  ALARM' if s['alarm'] else ''}")
