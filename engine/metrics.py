"""Prometheus metrics of a worker, built against a registry passed in (tests use their own)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .scoring.chain import ChainStats

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
    fallbacks: Counter       # reason
    breaker_state: Gauge     # model: 0 closed, 1 half-open, 2 open
    inference_seconds: Histogram  # model
    model_rows: Counter      # model (name:version)
    model_load_failures: Counter  # model
    primary_skipped: Counter
    stage_budget_seconds: Gauge  # stage, quantile
    http_requests: Counter   # route, status
    http_seconds: Histogram  # route
    online_fallbacks: Counter  # reason

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
            fallbacks=Counter("model_fallback", "Rows that left the primary model path, by reason",
                              ["topology", "reason"], **labels),
            breaker_state=Gauge("streamwise_breaker_state",
                                "Circuit breaker per model: 0 closed, 1 half-open, 2 open",
                                ["topology", "model"], **labels),
            inference_seconds=Histogram("streamwise_inference_seconds",
                                        "Duration of one batched model call",
                                        ["topology", "model"], buckets=STAGE_BUCKETS_S,
                                        **labels),
            model_rows=Counter("streamwise_model_rows", "Rows scored by each model version",
                               ["topology", "model"], **labels),
            model_load_failures=Counter("streamwise_model_load_failures",
                                        "Model files rejected at load or reload",
                                        ["topology", "model"], **labels),
            primary_skipped=Counter("streamwise_primary_skipped",
                                    "Rows decided by the cheap model (low-risk routing)",
                                    ["topology"], **labels),
            stage_budget_seconds=Gauge("streamwise_stage_budget_seconds",
                                       "Configured latency budget per stage and quantile",
                                       ["topology", "stage", "quantile"], **labels),
            http_requests=Counter("streamwise_http_requests", "HTTP requests by route and status",
                                  ["topology", "route", "status"], **labels),
            http_seconds=Histogram("streamwise_http_seconds",
                                   "HTTP request duration by route (forwarding included)",
                                   ["topology", "route"], buckets=STAGE_BUCKETS_S, **labels),
            online_fallbacks=Counter("streamwise_online_fallbacks",
                                     "Online-scored rows that left the primary model path",
                                     ["topology", "reason"], **labels),
        )

    def observe_online_chain(self, topology: str, stats: ChainStats) -> None:
        for reason, count in stats.fallbacks.items():
            self.online_fallbacks.labels(topology, reason).inc(count)
