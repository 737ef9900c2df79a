"""`streamwise`: the one entry point. Flags, then STREAMWISE_* environment, then defaults."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from .config import ApiConfig, EngineConfig, KafkaConfig, StateConfig
from .errors import EngineError

__all__ = ["main"]

ENV_PREFIX = "STREAMWISE_"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def _add_kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=_env("BROKER", os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                   help="bootstrap HOST:PORT (env STREAMWISE_BROKER or KAFKA_BOOTSTRAP_SERVERS; "
                        "default 127.0.0.1:9092)")
    p.add_argument("--topic-prefix", default=_env("TOPIC_PREFIX", ""),
                   help="prefix for every topic and group name (isolates test runs)")
    p.add_argument("--partitions", type=int, default=_env("PARTITIONS"),
                   help="partitions of the topology's topics (default: the topology's, 8)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamwise", description=__doc__)
    ap.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    k = sub.add_parser("kafka", help="the local single-node Apache Kafka for development")
    k.add_argument("action", choices=["up", "down", "status", "logs"])

    w = sub.add_parser("worker", help="run a stream worker of a topology")
    w.add_argument("topology")
    _add_kafka_flags(w)
    w.add_argument("--web-host", default=_env("WEB_HOST", "127.0.0.1"))
    w.add_argument("--web-port", type=int, default=int(_env("WEB_PORT", "6066")))
    w.add_argument("--data-dir", default=_env("DATA_DIR", "data"),
                   help="RocksDB state directory (one per worker)")
    w.add_argument("--api-token", default=_env("API_TOKEN"),
                   help="bearer token required on /v1/* (env STREAMWISE_API_TOKEN; prefer the "
                        "environment: flags show in the process list)")
    w.add_argument("--advertise-url", default=_env("ADVERTISE_URL"),
                   help="URL other workers forward lookups to (default http://HOST:PORT as "
                        "bound; set it when binding 0.0.0.0 in a container)")
    w.add_argument("--max-batch", type=int, default=int(_env("MAX_BATCH", "2000")),
                   help="max records per pipeline batch")
    w.add_argument("--fetch-max-wait-ms", type=int,
                   default=int(_env("FETCH_MAX_WAIT_MS", "5")),
                   help="how long a fetch may wait for data (default 5)")
    w.add_argument("--cycle-ms", type=float, default=float(_env("CYCLE_MS", "10")),
                   help="pipeline work per poll to aim at: the record limit of a poll adapts "
                        "to it (default 10)")
    w.add_argument("--model", action="append", default=[], metavar="NAME=VERSION",
                   help="pin a model version (default: the newest valid one), e.g. primary=1")
    w.add_argument("--models-dir", default=_env("MODELS_DIR"),
                   help="model registry folder (default: the topology's models/)")
    w.add_argument("--inject-faults", default=_env("INJECT_FAULTS", ""),
                   help=argparse.SUPPRESS)  # chaos tests only; see engine/scoring/faults.py

    pr = sub.add_parser("produce", help="produce the reference workload (or a file) to a topology")
    pr.add_argument("topology")
    _add_kafka_flags(pr)
    pr.add_argument("--events", type=int, default=10_000)
    pr.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    pr.add_argument("--seed", type=int, default=7)
    pr.add_argument("--duplicates", type=float, default=0.02)
    pr.add_argument("--disorder", type=float, default=0.05)
    pr.add_argument("--late", type=float, default=0.005)
    pr.add_argument("--file", help="JSONL file of events to produce instead of the generator")
    pr.add_argument("--no-profiles", action="store_true", help="do not (re)load profiles")

    r = sub.add_parser("replay", help="re-run the pipeline over offsets, a time range or a file")
    r.add_argument("topology")
    _add_kafka_flags(r)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-beginning", action="store_true")
    src.add_argument("--from-time", help="ISO-8601 or epoch ms (Kafka record time)")
    src.add_argument("--from-offsets", help="P:O,P:O,...")
    src.add_argument("--input", help="events.jsonl or events.parquet: no Kafka at all")
    end = r.add_mutually_exclusive_group()
    end.add_argument("--to-time", help="ISO-8601 or epoch ms (default: the end at start)")
    end.add_argument("--to-offsets", help="P:O,P:O,... (exclusive)")
    r.add_argument("--model", action="append", default=[], metavar="NAME=VERSION",
                   help="score with this model version, e.g. primary=2 (backfill a new model)")
    r.add_argument("--models-dir", default=_env("MODELS_DIR"))
    r.add_argument("--profiles", help="JSON file {key: profile} for --input (default: none)")
    r.add_argument("--output", required=True,
                   help="out.parquet, out.jsonl or topic:NAME")
    r.set_defaults(inject_faults="")

    d = sub.add_parser("demo", help="the README's main job: Kafka, a worker, events, a report")
    d.add_argument("--events", type=int, default=10_000)
    d.add_argument("--keep", action="store_true", help="leave Kafka and the worker running")
    d.add_argument("--web-port", type=int, default=6066)

    from .bench import add_arguments as _bench_arguments
    _bench_arguments(sub.add_parser("bench", help="throughput and latency next to the Kafka "
                                                  "ceiling and idiomatic Faust baselines"))
    return ap


def _config(args: argparse.Namespace) -> EngineConfig:
    kafka = KafkaConfig(bootstrap=args.broker or "127.0.0.1:9092",
                        topic_prefix=args.topic_prefix or "",
                        partitions=int(args.partitions) if args.partitions else None,
                        **({"max_batch_records": args.max_batch,
                            "fetch_max_wait_ms": args.fetch_max_wait_ms,
                            "cycle_ms": args.cycle_ms}
                           if args.command == "worker" else {}))
    if args.command != "worker":
        return EngineConfig(kafka=kafka)
    return EngineConfig(kafka=kafka, state=StateConfig(data_dir=Path(args.data_dir)),
                        api=ApiConfig(host=args.web_host, port=args.web_port,
                                      token=args.api_token or None),
                        log_level=args.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        if args.command == "kafka":
            return _kafka(args.action)
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(events=args.events, keep=args.keep, web_port=args.web_port)
        if args.command == "bench":
            from .bench import run_command
            return run_command(args)
        cfg = _config(args)
        import topologies
        topology = topologies.get(args.topology)
        if args.command in ("worker", "replay"):
            _tune_gc()
        if args.command == "worker":
            return asyncio.run(_worker(cfg, topology, args))
        if args.command == "produce":
            from .produce import produce
            return asyncio.run(produce(cfg, topology, args))
        if args.command == "replay":
            return asyncio.run(_replay(cfg, topology, args))
    except ValidationError as exc:
        err = exc.errors()[0]
        print(f"streamwise: invalid {'.'.join(map(str, err['loc']))}: {err['msg']}",
              file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"streamwise: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _tune_gc() -> None:
    """Fewer, larger young collections. The pipeline allocates a few hundred container
    objects per event; with CPython's default thresholds (700, 10, 10) the collector took
    ~16 us of every event and paused up to ~130 ms in a full collection over the entity
    cache. (50000, 20, 100) measured ~6 us per event and ~65 ms at most (60,000 reference
    events through the pipeline alone). Cyclic garbage is still collected."""
    gc.set_threshold(50_000, 20, 100)


async def _replay(cfg: EngineConfig, topology, args: argparse.Namespace) -> int:
    from .clock import SystemClock
    from .errors import ConfigError
    from .replay import (
        ReplayRange,
        check_output,
        parse_offsets,
        parse_time,
        replay_file,
        replay_kafka,
    )

    check_output(args.output, kafka=not args.input)
    decider, _ = _build_decider(topology, args, SystemClock(), batch_mode=True)
    partitions = cfg.kafka.partitions or topology.default_partitions
    if args.input:
        profiles = {}
        if args.profiles:
            import orjson
            try:
                profiles = orjson.loads(Path(args.profiles).read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise ConfigError(f"cannot read profiles {args.profiles}: {exc}") from None
        summary = await replay_file(Path(args.input), topology, decider, profiles,
                                    args.output, partitions)
    else:
        from .kafka_io import connect_check
        rng = ReplayRange(  # arguments first: a typo should not wait for a broker
            from_beginning=args.from_beginning,
            from_time_ms=parse_time(args.from_time) if args.from_time else None,
            from_offsets=parse_offsets(args.from_offsets) if args.from_offsets else None,
            to_time_ms=parse_time(args.to_time) if args.to_time else None,
            to_offsets=parse_offsets(args.to_offsets) if args.to_offsets else None)
        await connect_check(cfg.kafka.bootstrap)
        summary = await replay_kafka(cfg.kafka.bootstrap, topology, decider,
                                     cfg.kafka.topic_prefix, rng, args.output, partitions)
    print(summary.line(), file=sys.stderr)
    return 0


def _kafka(action: str) -> int:
    script = REPO_ROOT / "scripts" / "kafka-local.sh"
    if not script.exists():
        print("streamwise: the local Kafka needs a source checkout (scripts/kafka-local.sh)",
              file=sys.stderr)
        return 2
    verb = {"up": "start", "down": "stop", "status": "status", "logs": "logs"}[action]
    return subprocess.call(["bash", str(script), verb])


def _build_decider(topology, args: argparse.Namespace, clock, batch_mode: bool = False):
    """The fallback chain over the model registry, or rules alone when the topology has no
    scoring section. `batch_mode` (replay) lifts the latency timeouts: a backfill has no
    request waiting, and a timeout would make its output depend on machine load."""
    from .errors import ConfigError
    from .policy import RulesOnly

    fs = topology.features.versioned_name
    models_dir = Path(args.models_dir) if args.models_dir else topology.models_dir
    if topology.scoring is None or models_dir is None:
        return RulesOnly(topology.rules, fs), None
    from .scoring.chain import FallbackChain
    from .scoring.faults import FaultInjector, FaultSpec
    from .scoring.registry import ModelRegistry

    pinned = {}
    for item in args.model:
        name, sep, version = item.partition("=")
        if not sep or not name or not version:
            raise ConfigError(f"--model takes NAME=VERSION, not {item!r}")
        pinned[name] = version
    registry = ModelRegistry(models_dir, topology.features.names, fs, pinned=pinned)
    registry.refresh()  # failures are logged; the chain falls back for what is missing
    spec = FaultSpec.parse(args.inject_faults) if args.inject_faults else None
    settings = topology.scoring
    if batch_mode:
        from dataclasses import replace
        settings = replace(settings, timeout_ms=60_000, backup_timeout_ms=60_000)
    chain = FallbackChain(settings, topology.rules, fs, registry.get, clock,
                          wrap=FaultInjector(spec) if spec else None)
    return chain, registry


async def _worker(cfg: EngineConfig, topology, args: argparse.Namespace) -> int:
    from aiohttp import web

    from .api import build_app
    from .clock import SystemClock
    from .kafka_io import connect_check
    from .online import OnlineScorer
    from .scoring.chain import FallbackChain
    from .worker import Worker

    clock = SystemClock()
    # The pipeline runs in a thread beside the event loop (HTTP); a 1 ms GIL switch interval
    # (default 5 ms) keeps online answers from waiting behind a long batch.
    sys.setswitchinterval(0.001)
    decider, registry = _build_decider(topology, args, clock)
    await connect_check(cfg.kafka.bootstrap)
    worker = Worker(cfg, topology, decider, clock=clock, models=registry)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    online_decider = decider.twin() if isinstance(decider, FallbackChain) else decider
    online = OnlineScorer(worker, online_decider)
    runner = web.AppRunner(build_app(worker, online, cfg.api.token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.api.host, cfg.api.port)
    await site.start()
    host, port = runner.addresses[0][:2]  # the port actually bound (--web-port 0: any free)
    worker.url = args.advertise_url or f"http://{host}:{port}"
    logging.getLogger("streamwise").info("worker %s: %s, topics %s*, group %s",
                                         topology.name, worker.url,
                                         worker.topics.events.rsplit(".", 1)[0],
                                         worker.topics.group)
    try:
        await worker.start()
        gc.freeze()  # profiles, models and modules are loaded: no collection ever scans them
        await worker.run()
    finally:
        await worker.close()
        await runner.cleanup()
    return 0
