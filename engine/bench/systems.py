"""The rows of the bench: how each system is started, which consumer group it commits under
and how it reports consume time."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.config import KafkaConfig
from engine.topology import TopicNames

__all__ = ["FETCH_MAX_WAIT_MS", "SYSTEMS", "System", "streamwise_system"]

# The worker's default fetch wait, passed to every row (the worker's too, so that a
# STREAMWISE_FETCH_MAX_WAIT_MS in the environment cannot set it apart).
FETCH_MAX_WAIT_MS: int = KafkaConfig.model_fields["fetch_max_wait_ms"].default


@dataclass(frozen=True)
class System:
    """One row. `progress` is how the harness sees that a backlog is done: "outputs" (one
    output per input) or "committed" (the group's committed offsets reach the input's end).
    `worker` marks a Streamwise worker: its /metrics give the stage p99 and latency parts.
    `needs` are the modules the row imports beyond the engine's own (the `bench` extra)."""

    key: str      # JSON key
    label: str    # table row
    short: str    # topic-prefix part
    progress: str
    argv: Callable[[str, str, Path, int, int], list[str]]  # prefix, broker, data, P, port
    consumed_at_ms: Callable[[dict], float | None]
    group: Callable[[str], str]  # the consumer group under a topic prefix
    worker: bool = False
    needs: tuple[str, ...] = ()


def _ceiling(prefix: str, broker: str, data: Path, partitions: int, port: int) -> list[str]:
    t = TopicNames.of("fraud", prefix)
    return [sys.executable, "-m", "engine.bench.ceiling", "--broker", broker,
            "--source", t.events, "--sink", t.decisions, "--group", f"{prefix}bench-ceiling",
            "--fetch-max-wait-ms", str(FETCH_MAX_WAIT_MS)]


def _faust(batched: bool):
    def argv(prefix: str, broker: str, data: Path, partitions: int, port: int) -> list[str]:
        t = TopicNames.of("fraud", prefix)
        return [sys.executable, "-m", "engine.bench.faust_baseline", "--broker", broker,
                "--source", t.events, "--sink", t.decisions, "--app-id", f"{prefix}bench-faust",
                "--data-dir", str(data), "--partitions", str(partitions),
                "--fetch-max-wait-ms", str(FETCH_MAX_WAIT_MS),
                *(["--batched"] if batched else [])]
    return argv


def _quix(prefix: str, broker: str, data: Path, partitions: int, port: int) -> list[str]:
    t = TopicNames.of("fraud", prefix)
    return [sys.executable, "-m", "engine.bench.quix_baseline", "--broker", broker,
            "--source", t.events, "--sink", t.decisions, "--group", f"{prefix}bench-quix",
            "--state-dir", str(data), "--fetch-max-wait-ms", str(FETCH_MAX_WAIT_MS)]


def _batch_start_ms(doc: dict) -> float | None:
    """A Streamwise decision says when it was decided and how long its batch had run."""
    decided = doc.get("decided_at_ms")
    if decided is None:
        return None
    return decided - float((doc.get("stage_ms") or {}).get("total", 0.0))


def _consumed_at_ms(doc: dict) -> float | None:
    return doc.get("consumed_at_ms")


def streamwise_system(key: str = "streamwise", label: str = "streamwise worker",
                      short: str = "s", worker_flags: Sequence[str] = ()) -> System:
    """A `streamwise worker fraud` row (or the variant `workload.use` named); `worker_flags`
    are appended to its command line."""
    flags = list(worker_flags)

    def argv(prefix: str, broker: str, data: Path, partitions: int, port: int) -> list[str]:
        from . import workload  # not at import: the CLI's parser needs SYSTEMS only

        return [sys.executable, "-m", "engine", "--log-level", "WARNING", "worker",
                workload.BENCH_TOPOLOGY,
                "--broker", broker, "--topic-prefix", prefix, "--partitions", str(partitions),
                "--web-host", "127.0.0.1", "--web-port", str(port), "--data-dir", str(data),
                "--fetch-max-wait-ms", str(FETCH_MAX_WAIT_MS), *flags]

    return System(key, label, short, "committed", argv, _batch_start_ms,
                  lambda prefix: TopicNames.of("fraud", prefix).group, worker=True)


SYSTEMS: tuple[System, ...] = (
    System("ceiling", "ceiling (aiokafka, no work)", "c", "outputs", _ceiling, _consumed_at_ms,
           lambda prefix: f"{prefix}bench-ceiling"),
    System("baseline", "faust per-event", "f", "outputs", _faust(False), _consumed_at_ms,
           lambda prefix: f"{prefix}bench-faust", needs=("faust",)),
    System("baseline_batched", "faust take_events(1000)", "b", "outputs", _faust(True),
           _consumed_at_ms, lambda prefix: f"{prefix}bench-faust", needs=("faust",)),
    # "committed": Quix skips an event whose window its card's newest event closed (no output).
    System("quix", "quix streams", "q", "committed", _quix, _consumed_at_ms,
           lambda prefix: f"{prefix}bench-quix", needs=("quixstreams",)),
    streamwise_system(),
    streamwise_system("processes", "streamwise --processes 2", "p", ("--processes", "2")),
)
