"""Rollout metrics of a worker: the state as applied (read at scrape time), guardrail sides,
breaches and automatic rollbacks, shadow decisions. Same conventions as `engine.metrics`."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .state import RolloutState

__all__ = ["RolloutCollector", "RolloutMetrics"]

STAGES = ("shadow", "canary", "ramp", "released", "rolled_back")


class RolloutMetrics(NamedTuple):
    breaches: Counter  # model (slot), guardrail
    rollbacks: Counter  # model: automatic rollbacks this worker wrote
    shadow_decisions: Counter  # model (name:version), decision (none: not scored)
    shadow_disagreements: Counter  # model (name:version)
    side_decline_ratio: Gauge  # model, side (canary | serving)
    side_error_ratio: Gauge  # model, side
    side_rows: Gauge  # model, side
    score_psi: Gauge  # model
    apply_delay_seconds: Gauge  # record time on T.control -> applied here

    @classmethod
    def create(cls, registry: CollectorRegistry, topology: str) -> RolloutMetrics:
        kw = {"registry": registry}
        t = ["topology"]
        return cls(
            breaches=Counter("streamwise_rollout_guardrail_breaches",
                             "Guardrail breaches this worker saw (each rolls the candidate back)",
                             [*t, "model", "guardrail"], **kw),
            rollbacks=Counter("streamwise_rollout_automatic_rollbacks",
                              "Automatic rollbacks this worker wrote to the control topic",
                              [*t, "model"], **kw),
            shadow_decisions=Counter("streamwise_shadow_decisions",
                                     "Shadow candidate decisions (never acted on); decision "
                                     "none: the candidate did not score the row",
                                     [*t, "model", "decision"], **kw),
            shadow_disagreements=Counter("streamwise_shadow_disagreements",
                                         "Rows where the shadow candidate's decision differs "
                                         "from the one emitted", [*t, "model"], **kw),
            side_decline_ratio=Gauge("streamwise_rollout_decline_ratio",
                                     "Decline share over the guardrail window, canary and "
                                     "serving side", [*t, "model", "side"], **kw),
            side_error_ratio=Gauge("streamwise_rollout_error_ratio",
                                   "Share of the side's model calls (batches with complete "
                                   "rows) that failed, over the guardrail window", [*t, "model", "side"], **kw),
            side_rows=Gauge("streamwise_rollout_window_rows",
                            "Rows in the guardrail window per side", [*t, "model", "side"],
                            **kw),
            score_psi=Gauge("streamwise_rollout_score_psi",
                            "Population stability index, canary scores against serving scores, "
                            "over the guardrail window", [*t, "model"], **kw),
            apply_delay_seconds=Gauge("streamwise_rollout_apply_delay_seconds",
                                      "From the last control record's timestamp to its "
                                      "application on this worker", t, **kw),
        )


class RolloutCollector(Collector):
    """The applied rollout state of every slot, read at scrape time."""

    def __init__(self, topology: str, states: Callable[[], dict[str, RolloutState]]) -> None:
        self._topology = topology
        self._states = states

    def collect(self):
        t = self._topology
        states = self._states()
        info = GaugeMetricFamily("streamwise_rollout_info",
                                 "1 per model slot under rollout control: serving version, "
                                 "candidate, stage", labels=["topology", "model", "serving",
                                                             "candidate", "stage"])
        percent = GaugeMetricFamily("streamwise_rollout_canary_percent",
                                    "Percent of entities decided by the candidate",
                                    labels=["topology", "model"])
        seq = GaugeMetricFamily("streamwise_rollout_change_seq",
                                "Sequence number of the slot's rollout state applied here",
                                labels=["topology", "model"])
        alarm = GaugeMetricFamily("streamwise_rollout_alarm",
                                  "1 while the slot stands rolled back by a guardrail (until "
                                  "the next operator command)", labels=["topology", "model"])
        for slot, s in sorted(states.items()):
            info.add_metric([t, slot, s.serving, s.candidate or "", s.stage], 1.0)
            percent.add_metric([t, slot], s.percent if s.stage in ("canary", "ramp") else 0.0)
            seq.add_metric([t, slot], float(s.seq))
            alarm.add_metric([t, slot], 1.0 if s.alarm else 0.0)
        yield from (info, percent, seq, alarm)

    def describe(self):
        return []
