"""The one-screen table of a bench report."""

from __future__ import annotations

from typing import Any

from .systems import SYSTEMS

__all__ = ["render"]


def _f(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(report: dict[str, Any]) -> str:
    meta = report.get("meta", {})
    lines = [f"streamwise bench: {meta.get('events', 0):,} events, {meta.get('partitions')} "
             f"partitions, {meta.get('repeat')} repeat(s), medians; latency open loop at "
             f"{meta.get('latency_share', 0) * 100:.0f}% of each system's events/s "
             f"for {meta.get('latency_s')} s",
             "",
             f"{'system':<28}{'events/s':>11}{'p50 ms':>10}{'p99 ms':>10}{'rate/s':>10}"
             f"{'RSS MB':>9}",
             "-" * 78]
    behind = short = False
    for s in SYSTEMS:
        p = report.get(s.key)
        if p is None:
            continue
        rate, sent = p.get("open_loop_rate_per_s"), p.get("open_loop_sent_per_s")
        mark = "*" if rate and sent and sent < 0.9 * rate else " "
        behind = behind or mark == "*"
        coarse = "+" if (p.get("backlog_s") or 0) < 1.0 else " "
        short = short or coarse == "+"
        lines.append(f"{s.label:<28}{_f(p.get('events_per_s'), ',.0f'):>11}{coarse}"
                     f"{_f(p.get('p50_ms'), '.1f'):>9}{_f(p.get('p99_ms'), '.1f'):>10}"
                     f"{_f(rate, ',.0f'):>10}{mark}{_f(p.get('peak_rss_mb'), ',.0f'):>8}")
        if s.key == "streamwise" and report.get("replay"):
            rp = report["replay"]
            lines.append(f"{'streamwise replay (batch)':<28}"
                         f"{_f(rp.get('events_per_s'), ',.0f'):>11} {'-':>9}{'-':>10}{'-':>10} "
                         f"{_f(rp.get('peak_rss_mb'), ',.0f'):>8}")
    if behind:
        lines.append("* the harness's producer fell more than 10% behind this rate (shared "
                     "cores): latency is measured at the rate it reached")
    if short:
        lines.append("+ the backlog drained in under 1 s: a coarse events/s (use more --events)")
    n = meta.get("events", 0)
    skipped = [f"{s.label} {n - p['backlog_outputs']:,} of {n:,}" for s in SYSTEMS
               if (p := report.get(s.key)) and (p.get("backlog_outputs") or n) < n]
    if skipped:
        lines.append("backlog events with no output record: " + "; ".join(skipped))
    r = report.get("ratios", {})
    lines += ["", "streamwise / ceiling " + _f(r.get("vs_ceiling"), ".2f") + "x   "
              "streamwise / faust per-event " + _f(r.get("vs_baseline"), ".1f") + "x   "
              "streamwise / faust batched " + _f(r.get("vs_baseline_batched"), ".1f") + "x",
              "streamwise / quix streams " + _f(r.get("vs_quix"), ".1f") + "x   "
              "replay / live worker (same round) " + _f(r.get("replay_vs_live"), ".2f") + "x",
              "streamwise --processes 2 / one process " + _f(r.get("processes_vs_one"), ".2f") + "x"]
    sw = report.get("streamwise", {})
    for key, title in (("stage_p99_ms", "open loop"), ("stage_p99_ms_backlog", "backlog")):
        stages = sw.get(key)
        if stages:
            body = "  ".join(f"{k} {_f(v, 'g')}" for k, v in stages.items())
            lines.append(f"streamwise stage p99 ms ({title}, per batch, bucket bound): {body}")
    us = sw.get("stage_us_per_event_backlog")
    if us:
        body = "  ".join(f"{k} {_f(v, 'g')}" for k, v in us.items())
        lines.append(f"streamwise us/event by stage (backlog): {body}")
    if sw.get("agents_catch_up_s") is not None:
        lines.append(f"streamwise agents (paused while the backlog drained) caught up "
                     f"{_f(sw['agents_catch_up_s'], 'g')} s after it; latency is measured "
                     "from then on")
    for share, res in sorted((sw.get("latency_by_share") or {}).items(),
                             key=lambda kv: float(kv[0])):
        parts = res.get("latency_parts_ms") or {}
        body = "  ".join(f"{k} {_f(v.get('p50'), 'g')}/{_f(v.get('p99'), 'g')}"
                         for k, v in parts.items())
        lines.append(f"streamwise open loop at {float(share):.0%} "
                     f"({_f(res.get('open_loop_rate_per_s'), ',.0f')}/s): p50 "
                     f"{_f(res.get('p50_ms'), 'g')} ms, p99 {_f(res.get('p99_ms'), 'g')} ms;"
                     f" p50/p99 ms: {body}")
    online = report.get("online")
    if online:
        for name, res in online.items():
            if isinstance(res, dict) and "mode" in res:  # vegeta, with the stream running
                load = (f"open loop at {res['rate_per_s']:,}/s" if res["mode"] == "open"
                        else f"closed loop, {res['clients']} clients")
                lines.append(f"online {name}: {load}, stream at {res['stream_share']:.0%} "
                             f"({_f(res['stream_events_per_s'], ',.0f')} events/s): "
                             f"{_f(res['requests_per_s'], ',.0f')} req/s, p50 "
                             f"{_f(res['p50_ms'], '.2f')} ms, p99 {_f(res['p99_ms'], '.2f')} "
                             f"ms, max {_f(res['max_ms'], '.1f')} ms, {res['errors']} errors; "
                             f"vegeta used {res['loadgen_cores']} cores")
            elif isinstance(res, dict):
                lines.append(f"online {name}: {res['concurrency']} clients, "
                             f"{_f(res['requests_per_s'], ',.0f')} req/s, p50 "
                             f"{_f(res['p50_ms'], '.2f')} ms, p99 {_f(res['p99_ms'], '.2f')} ms, "
                             f"status {res['status']}")
            else:
                lines.append(f"online {name}: {res}")
    lines.append(f"wall time {meta.get('wall_s')} s")
    return "\n".join(lines)
