"""The four rows of the bench: how each system is started and how it reports consume time."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.topology import TopicNames

__all__ = ["SYSTEMS", "System"]


@dataclass(frozen=True)
class System:
    """One row. `progress` is how the harness sees that a backlog is done: "outputs" (one
    output per input) or "committed" (the group's committed offsets reach the input's end)."""

    key: str      # JSON key
    label: str    # table row
    short: str    # topic-prefix part
    progress: str
    argv: Callable[[str, str, Path, int, int], list[str]]  # prefix, broker, data, P, port
    consumed_at_ms: Callable[[dict], float | None]


def _ceiling(prefix: str, broker: str, data: Path, partitions: int, port: int) -> list[str]:
    t = TopicNames.of("fraud", prefix)
    return [sys.executable, "-m", "engine.bench.ceiling", "--broker", broker,
            "--source", t.events, "--sink", t.decisions, "--group", f"{prefix}bench-ceiling"]


def _faust(batched: bool):
    def argv(prefix: str, broker: str, data: Path, partitions: int, port: int) -> list[str]:
        t = TopicNames.of("fraud", prefix)
        return [sys.executable, "-m", "engine.bench.faust_baseline", "--broker", broker,
                "--source", t.events, "--sink", t.decisions, "--app-id", f"{prefix}bench-faust",
                "--data-dir", str(data), "--partitions", str(partitions),
                *(["--batched"] if batched else [])]
    return argv


def _streamwise(prefix: str, broker: str, data: Path, partitions: int, port: int,
                ) -> list[str]:
    return [sys.executable, "-m", "engine", "--log-level", "WARNING", "worker", "fraud",
            "--broker", broker, "--topic-prefix", prefix, "--partitions", str(partitions),
            "--web-host", "127.0.0.1", "--web-port", str(port), "--data-dir", str(data)]


def _batch_start_ms(doc: dict) -> float | None:
    """A Streamwise decision says when it was decided and how long its batch had run."""
    decided = doc.get("decided_at_ms")
    if decided is None:
        return None
    return decided - float((doc.get("stage_ms") or {}).get("total", 0.0))


SYSTEMS: tuple[System, ...] = (
    System("ceiling", "ceiling (aiokafka, no work)", "c", "outputs", _ceiling,
           lambda d: d.get("consumed_at_ms")),
    System("baseline", "faust per-event", "f", "outputs", _faust(False),
           lambda d: d.get("consumed_at_ms")),
    System("baseline_batched", "faust take_events(1000)", "b", "outputs", _faust(True),
           lambda d: d.get("consumed_at_ms")),
    System("streamwise", "streamwise worker", "s", "committed", _streamwise, _batch_start_ms),
)
