"""`streamwise bench` as the CLI runs it: a private broker when none is given, the table,
the JSON file."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .systems import SYSTEMS

__all__ = ["add_arguments", "run_command"]

EXTRA_HINT = "streamwise: the bench needs the bench extra: pip install 'streamwise[bench]'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: an absent --broker is no setting at all (the CLI validates the ones present)
    p.add_argument("--broker", default=argparse.SUPPRESS,
                   help="bootstrap HOST:PORT (default: start a private local broker on free "
                        "ports and stop it at the end)")
    p.add_argument("--events", type=int, default=50_000, help="backlog size per system")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1, help="repeats per system; medians reported")
    p.add_argument("--latency-s", type=float, default=10.0,
                   help="open-loop phase per system, at --latency-share of its events/s")
    p.add_argument("--latency-share", type=float, default=0.5)
    p.add_argument("--online", action="store_true",
                   help="also lookups and POST /v1/score: 32 Python clients on an idle "
                        "stream; then, with vegeta (scripts/load-tools.sh), each open loop "
                        "at 2,000/s for 30 s and closed loop at 32 clients for 10 s while "
                        "the stream runs at 50%% of its measured rate")
    p.add_argument("--only", action="append", default=[],
                   choices=[s.key for s in SYSTEMS],
                   help="run only these rows (repeatable; the replay row comes with "
                        "streamwise)")
    p.add_argument("--json", metavar="OUT.json", help="write the report as JSON")
    p.add_argument("--topology", default="fraud", metavar="SPEC",
                   help="the fraud topology of the Streamwise rows, e.g. "
                        "topologies.fraud:WITH_MERCHANT_RISK (the baselines do not change)")


def run_command(args: argparse.Namespace) -> int:
    # Imported here: building the CLI parser should not load Kafka clients and numpy.
    from ..errors import EngineError
    from . import workload
    from .broker import LocalBroker
    from .report import render
    from .runner import BenchError, BenchOptions, dumps, run

    if args.events < 100 or args.repeat < 1 or args.partitions < 1:
        print("streamwise: bench needs --events >= 100, --repeat >= 1, --partitions >= 1",
              file=sys.stderr)
        return 2
    if not 0 < args.latency_share <= 1 or args.latency_s <= 0:
        print("streamwise: --latency-share must be in (0, 1] and --latency-s > 0",
              file=sys.stderr)
        return 2
    try:
        workload.use(args.topology)
    except (ValueError, EngineError) as exc:
        print(f"streamwise: {exc}", file=sys.stderr)
        return 2
    chosen = [s for s in SYSTEMS if not args.only or s.key in args.only]
    if any(importlib.util.find_spec(m) is None for s in chosen for m in s.needs):
        print(EXTRA_HINT, file=sys.stderr)
        return 2
    local = None
    broker = getattr(args, "broker", None)
    if not broker:
        local = LocalBroker()
        print("[bench] starting a private Kafka broker", flush=True)
        broker = local.start()
    try:
        opts = BenchOptions(broker=broker, events=args.events, partitions=args.partitions,
                            repeat=args.repeat, latency_s=args.latency_s,
                            latency_share=args.latency_share, online=args.online,
                            **({"systems": tuple(args.only)} if args.only else {}))
        try:
            report = run(opts)
        except BenchError as exc:
            print(f"streamwise: bench failed: {exc}", file=sys.stderr)
            return 1
    finally:
        if local is not None:
            local.stop()
    print()
    print(render(report))
    if args.json:
        Path(args.json).write_bytes(dumps(report))
    return 0
