"""Prometheus metrics of a worker, built against a registry passed in (tests use their own)."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["EngineMetrics", "STAGE_BUCKETS_S"]

# Fine below 1 ms (p99 of cheap stages) and up to 1 s (a stalled batch).
STAGE_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.003, 0.005,
                   0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)


class EngineMetrics(NamedTuple):
    events: Counter          # outcome: accepted | late | duplicate | dlq
    dlq: Counter             # reason
    decisions: Counter       # path, decision
    stage_seconds: Histogram  # stage
    batch_records: Histogram
    watermark_ms: Gauge      # partition
    assigned_partitions: Gauge
    restored_records: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, topology: str) -> EngineMetrics:
        labels = {"registry": registry}
        return cls(
            events=Counter("streamwise_events", "Input records by outcome",
                           ["topology", "outcome"], **labels),
            dlq=Counter("streamwise_dlq_records", "Records sent to the dead-letter topic",
                        ["topology", "reason"], **labels),
            decisions=Counter("streamwise_decisions", "Decisions emitted (duplicates included)",
                              ["topology", "path", "decision"], **labels),
            stage_seconds=Histogram("streamwise_stage_seconds",
                                    "Per-batch time of each pipeline stage",
                                    ["topology", "stage"], buckets=STAGE_BUCKETS_S, **labels),
            batch_records=Histogram("streamwise_batch_records", "Records per pipeline batch",
                                    ["topology"], buckets=(1, 10, 50, 100, 250, 500, 1000,
                                                           2000, 5000), **labels),
            watermark_ms=Gauge("streamwise_watermark_ms", "Event-time watermark per partition",
                               ["topology", "partition"], **labels),
            assigned_partitions=Gauge("streamwise_assigned_partitions",
                                      "Input partitions owned by this worker", ["topology"],
                                      **labels),
            restored_records=Counter("streamwise_changelog_restored_records",
                                     "Changelog records applied while restoring state",
                                     ["topology"], **labels),
        )
