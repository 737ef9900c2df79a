"""What `streamwise worker` and `streamwise replay` do once the CLI has a validated
EngineConfig: build the decider over the model registry (pins checked against it), then run.

Every check that can fail without Kafka runs before Kafka is contacted, and every check that
needs Kafka before anything is written: a typo costs seconds and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .clock import Clock, SystemClock
from .config import EngineConfig, ModelConfig
from .errors import ConfigError, EngineError, StateError

if TYPE_CHECKING:
    from .pipeline import Decider
    from .scoring.registry import ModelRegistry
    from .topology import Topology

__all__ = ["EmptyRange", "ReplayRequest", "build_decider", "run_replay", "run_worker"]

log = logging.getLogger("streamwise")


class EmptyRange(EngineError):
    """The replay range holds no event: nothing to decide (exit 1 unless --allow-empty)."""

    exit_code = 1


def build_decider(topology: Topology, models: ModelConfig, clock: Clock,
                  batch_mode: bool = False) -> tuple[Decider, ModelRegistry | None]:
    """The fallback chain over the model registry, or rules alone when the topology has no
    scoring section. A pinned model must exist and load, or this refuses (ConfigError).
    `batch_mode` (replay) lifts the latency timeouts: a backfill has no request waiting, and a
    timeout would make its output depend on machine load."""
    from .policy import RulesOnly

    fs = topology.features.versioned_name
    models_dir = models.models_dir or topology.models_dir
    if topology.scoring is None or models_dir is None:
        if models.pins:
            raise ConfigError(f"--model: topology {topology.name} scores with rules only")
        return RulesOnly(topology.rules, fs), None
    from .scoring.faults import FaultInjector, FaultSpec
    from .scoring.registry import ModelRegistry
    from .scoring.rollout import RolloutDecider

    if models.models_dir is not None and not models_dir.is_dir():
        raise ConfigError(f"--models-dir {models_dir} is not a folder")
    registry = ModelRegistry(models_dir, topology.features.names, fs, pinned=dict(models.pins))
    registry.refresh()  # failures are logged; the chain falls back for what is missing
    _check_pins(registry, models.pins, models_dir)
    spec = FaultSpec.parse(models.faults) if models.faults else None
    settings = topology.scoring
    if batch_mode:
        settings = replace(settings, timeout_ms=60_000, backup_timeout_ms=60_000)
    # The fallback chain inside a rollout decider: with no rollout state on T.control it is
    # the chain alone (serving the newest valid versions); see engine/scoring/rollout.py.
    decider = RolloutDecider(settings, topology.rules, fs, registry, clock,
                             topology.rollout.guardrails,
                             wrap=FaultInjector(spec) if spec else None, record=not batch_mode)
    return decider, registry


def _check_pins(registry: ModelRegistry, pins: dict[str, str], models_dir: Path) -> None:
    """Every `--model NAME=VERSION` names a model and a version of the registry that loaded:
    a typo must not silently score with the fallback chain."""
    names = sorted(p.name for p in models_dir.iterdir() if p.is_dir())
    for name, version in pins.items():
        pin = f"--model {name}={version}"
        if name not in names:
            raise ConfigError(f"{pin}: no model {name!r} in {models_dir} "
                              f"(models: {', '.join(names) or 'none'})")
        versions = sorted(p.name for p in (models_dir / name).iterdir() if p.is_dir())
        if version not in versions:
            raise ConfigError(f"{pin}: model {name} has no version {version!r} "
                              f"(versions: {', '.join(versions) or 'none'})")
        slot = registry.slots.get(name)
        if slot is None or slot.active is None or slot.active.ref != f"{name}:{version}":
            why = slot.last_error if slot is not None else "not loaded"
            raise ConfigError(f"{pin}: that version does not load: {why}")


# -- worker ------------------------------------------------------------------------------------


async def run_worker(cfg: EngineConfig, topology: Topology, shared_port: bool = False) -> int:
    """Bind the HTTP port (a busy port fails before Kafka is asked anything), check the broker
    and the input topic, then run until SIGTERM / SIGINT.

    `shared_port`: this worker is one member of `--processes N` (engine.supervisor): it
    listens on the port with SO_REUSEPORT beside its siblings, and on a private port of its
    own, the one it advertises for forwarded lookups."""
    from aiohttp import web

    from .api import ApiRunner, build_app
    from .kafka_io import MissingTopicError, connect_check, missing_topics
    from .logs import release_held_logs
    from .online import OnlineScorer
    from .worker import Worker

    clock = SystemClock()
    # The pipeline runs in a thread beside the event loop (HTTP); a 1 ms GIL switch interval
    # (default 5 ms) keeps online answers from waiting behind a long batch.
    sys.setswitchinterval(0.001)
    decider, registry = build_decider(topology, cfg.models, clock)
    worker = Worker(cfg, topology, decider, clock=clock, models=registry)
    online_decider = decider.twin()  # own breakers and counts: never shared with the stream
    if registry is not None:  # models score online: identical rows within 60 s are cached
        from .metrics import PredictionCacheCollector
        from .scoring.cache import PredictionCache
        cache: PredictionCache[float] = PredictionCache(max_entries=10_000, ttl_ms=60_000)
        online_decider = decider.twin(cache=cache)
        worker.registry.register(PredictionCacheCollector(topology.name, cache))
    online = OnlineScorer(worker, online_decider)
    token = cfg.api.token.get_secret_value() if cfg.api.token else None
    runner = ApiRunner(build_app(worker, online, token), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, cfg.api.host, cfg.api.port, reuse_port=shared_port or None)
        try:
            await site.start()
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            raise ConfigError(f"cannot listen on {cfg.api.host}:{cfg.api.port}: "
                              f"{'address already in use' if busy else exc.strerror or exc}"
                              f"{' (pass another --web-port)' if busy else ''}") from None
        if shared_port:  # siblings share the public port: forwards need this member's own
            await web.TCPSite(runner, cfg.api.host, 0).start()
        host, port = runner.addresses[-1][:2]  # the port bound last (--web-port 0: any)
        worker.url = cfg.api.advertise_url or f"http://{host}:{port}"
        await connect_check(cfg.kafka)
        if not cfg.kafka.create_input_topic:  # Worker.start refuses it too; say so early
            absent = await missing_topics(cfg.kafka, [worker.topics.events])
            if absent:
                raise MissingTopicError(
                    f"input topic {absent[0]} does not exist at {cfg.kafka.bootstrap} (check "
                    "--topic-prefix and --broker; `streamwise produce` creates it, or pass "
                    "--create-input-topic)")
        release_held_logs()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        log.info("worker %s: %s, topics %s*, group %s", topology.name, worker.url,
                 worker.topics.events.rsplit(".", 1)[0], worker.topics.group)
        try:
            await worker.start()
            gc.freeze()  # profiles, models and modules are loaded: no collection scans them
            await worker.run()
        except StateError as exc:  # a write failed: said once, then the same way out
            worker.fail(str(exc))
        finally:
            await worker.close()
    finally:
        await runner.cleanup()
    if worker.failure is not None:  # state that cannot be opened or written: one line, exit 2
        raise StateError(f"{worker.failure} (the worker left its group; its partitions "
                         "restore from the changelog wherever they run next)")
    return 0


# -- replay ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayRequest:
    """The replay's range, input and output, as given on the command line."""

    output: str
    from_beginning: bool = False
    from_time: str | None = None
    from_offsets: str | None = None
    input: Path | None = None
    to_time: str | None = None
    to_offsets: str | None = None
    profiles: Path | None = None
    labels: Path | None = None
    allow_empty: bool = False


async def run_replay(cfg: EngineConfig, topology: Topology, req: ReplayRequest) -> int:
    from .labels import load_labels
    from .replay import (
        ReplayRange,
        check_output,
        parse_offsets,
        parse_time,
        replay_file,
        replay_kafka,
    )

    # Everything that needs no broker first: a typo should not wait for one.
    check_output(req.output, kafka=req.input is None, labels=req.labels is not None)
    rng = ReplayRange(
        from_beginning=req.from_beginning,
        from_time_ms=parse_time(req.from_time) if req.from_time else None,
        from_offsets=parse_offsets(req.from_offsets) if req.from_offsets else None,
        to_time_ms=parse_time(req.to_time) if req.to_time else None,
        to_offsets=parse_offsets(req.to_offsets) if req.to_offsets else None)
    if req.input is not None and not req.input.is_file():
        raise ConfigError(f"no such input file: {req.input}")
    if req.profiles is not None and req.input is None:
        raise ConfigError("--profiles is for --input (a Kafka replay reads the profiles topic)")
    labels = load_labels(req.labels) if req.labels is not None else None
    decider, registry = build_decider(topology, cfg.models, SystemClock(), batch_mode=True)
    models = {} if registry is None else {
        n: s.active.ref for n, s in sorted(registry.slots.items()) if s.active is not None}
    partitions = cfg.kafka.partitions or topology.default_partitions
    if req.input is not None:
        profiles = {}
        if req.profiles is not None:
            import orjson
            try:
                profiles = orjson.loads(req.profiles.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise ConfigError(f"cannot read --profiles {req.profiles}: {exc}") from None
        summary = await replay_file(req.input, topology, decider, profiles, req.output,
                                    partitions, labels=labels, models=models,
                                    allow_empty=req.allow_empty)
    else:
        from .kafka_io import connect_check, missing_topics
        await connect_check(cfg.kafka)
        control = topology.topics(cfg.kafka.topic_prefix).control
        if hasattr(decider, "apply") and not await missing_topics(cfg.kafka, [control]):
            # The rollout as it stands (canary slices, shadow, serving versions), like the
            # profiles: a replay decides as the stream does now; a --model pin wins.
            from .rollout.control_io import read_control
            log_ = await read_control(cfg.kafka, control)
            states = {k: v for k, v in log_.slots.items() if k not in cfg.models.pins}
            if states:
                await asyncio.to_thread(decider.apply, states)
                models.update({n: s.active.ref for n, s in sorted(registry.slots.items())
                               if s.active is not None})
        # the topic's own partition count, unless --partitions says which to expect
        summary = await replay_kafka(cfg.kafka, topology, decider, cfg.kafka.topic_prefix, rng,
                                     req.output, cfg.kafka.partitions, labels=labels,
                                     models=models,
                                     allow_empty=req.allow_empty)
    print(summary.line(), file=sys.stderr)
    return 0
