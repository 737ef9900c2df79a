"""`streamwise bench`: every system against one broker and one data set, phase by phase.

Per system and repeat, with a private topic prefix (own group, outputs, state):
1. the data set's exact bytes are produced to the system's input topic (a backlog);
2. the system is started as its own process and drains the backlog: events/s is the backlog
   size over first consume → last output record (Kafka timestamp);
3. still running, it gets fresh events open loop at `latency_share` of its own measured
   rate for `latency_s`: latency = output record timestamp − input record timestamp, matched
   by event id; then its peak RSS (VmHWM) is read and it is stopped by PID.
Streamwise's per-stage p99 comes from its /metrics histograms (backlog and open-loop phase).
4. After the Streamwise worker is stopped, `streamwise replay` re-decides its backlog (the
   same topics, up to the backlog's end offsets) as its own process: the replay row.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka.errors import KafkaError

from engine.kafka_io import new_admin
from engine.topology import TopicNames

from . import measure, online_load, workload
from .replay_run import ReplayFailed, measure_replay, replay_argv
from .systems import SYSTEMS, System

__all__ = ["BenchOptions", "BenchError", "dumps", "run"]

log = logging.getLogger("streamwise.bench")


@dataclass(frozen=True)
class BenchOptions:
    broker: str
    events: int = 50_000
    partitions: int = 8
    repeat: int = 1
    latency_s: float = 10.0
    latency_share: float = 0.5   # of the system's own measured events/s
    # the Streamwise worker is also measured at these shares (phases one after the other)
    extra_latency_shares: tuple[float, ...] = (0.25, 0.75)
    max_open_loop_rate: float = 50_000.0  # what the harness's one producer sustains here
    online: bool = False
    online_s: float = 5.0
    online_concurrency: int = 32
    # the open-loop rows (vegeta): this many requests per second for this long, each while
    # the stream runs at online_stream_share of the worker's measured events/s
    online_rate: int = 2_000
    online_open_s: float = 30.0
    online_closed_s: float = 10.0
    online_stream_share: float = 0.5
    seed: int = 7
    phase_timeout_s: float = 240.0
    systems: tuple[str, ...] = field(default_factory=lambda: tuple(s.key for s in SYSTEMS))


# The open-loop phase is shorter than latency_s for a system this fast (harness memory).
_MAX_OPEN_LOOP_EVENTS = 300_000


class BenchError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class _Proc:
    """A system's process: started by us, stopped by us, by PID."""

    def __init__(self, argv: list[str], logfile: Path) -> None:
        self.logfile = logfile
        self._fh = open(logfile, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.logfile.read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.popen.args[2]} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._fh.close()


async def _progress(o: BenchOptions, sysm: System, t: TopicNames, group: str) -> int:
    if sysm.progress == "committed":
        return await measure.committed_total(o.broker, group, t.events)
    return sum((await measure.end_offsets(o.broker, t.decisions, o.partitions)).values())


async def _wait_for(o: BenchOptions, sysm: System, t: TopicNames, group: str, proc: _Proc,
                    target: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        proc.check()
        done = await _progress(o, sysm, t, group)
        if done >= target:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{sysm.key}: {done:,}/{target:,} after {timeout_s:.0f}s")
        await asyncio.sleep(0.25)


async def _agents_caught_up(o: BenchOptions, prefix: str, group: str, proc: _Proc,
                            timeout_s: float = 300.0) -> float | None:
    """Seconds until the worker's group has committed the end of every agent topic (the
    benched topology's side streams, paused while the backlog drained); None: no agents."""
    topo = workload.topology()
    topics = sorted({topo.agent_topic(a.topic, prefix) for a in topo.agents if not a.in_process})
    if not topics:
        return None
    start = time.monotonic()
    while True:
        proc.check()
        pairs = [await measure.progress(o.broker, group, tp, o.partitions) for tp in topics]
        if all(done >= end for done, end in pairs):
            took = time.monotonic() - start
            _say(f"agents caught up on {', '.join(topics)} {took:.1f}s after the backlog")
            return round(took, 2)
        if time.monotonic() - start > timeout_s:
            raise BenchError(f"agents behind after {timeout_s:.0f}s: {pairs}")
        await asyncio.sleep(0.25)


async def _scrape(port: int) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, \
            s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


async def _one(o: BenchOptions, sysm: System, ds: workload.DataSet, run_prefix: str, r: int,
               work: Path, online: bool) -> dict[str, Any]:
    prefix = f"{run_prefix}{sysm.short}{r}."
    t = TopicNames.of("fraud", prefix)
    group = sysm.group(prefix)
    n = len(ds.events)
    await workload.produce_backlog(o.broker, t, ds)
    in_ends = await measure.end_offsets(o.broker, t.events, o.partitions)
    port = _free_port()
    data = work / f"{sysm.key}-{r}"
    data.mkdir(parents=True, exist_ok=True)
    proc = _Proc(sysm.argv(prefix, o.broker, data, o.partitions, port), work / f"{sysm.key}-{r}.log")
    result: dict[str, Any] = {}
    try:
        # 1. backlog → events/s
        await _wait_for(o, sysm, t, group, proc, n, max(o.phase_timeout_s, n / 200))
        outs = await measure.read_outputs(o.broker, t.decisions)
        first = measure.first_consumed_ms(outs, sysm.consumed_at_ms)
        last = max(ts for _, ts, _ in outs)
        eps = n / max((last - first) / 1000, 1e-3)
        result["events_per_s"] = round(eps, 1)
        result["backlog_s"] = round((last - first) / 1000, 3)
        result["backlog_outputs"] = len(outs)  # < events where a system skips some
        _say(f"{sysm.key} #{r + 1}: {n:,} events in {(last - first) / 1000:.2f}s "
             f"= {eps:,.0f} events/s")
        if sysm.worker:
            text = await _scrape(port)
            result["stage_p99_ms_backlog"] = measure.stage_p99_ms(measure.stage_buckets(text))
            result["stage_us_per_event_backlog"] = measure.stage_us_per_event(text, n)
            # agents yield to a backlog: latency is measured once they have caught up too
            result["agents_catch_up_s"] = await _agents_caught_up(o, prefix, group, proc)
        # 2. open loop → latency, at latency_share of the system's rate (and, for the
        # Streamwise worker, at the other shares too, one phase after the other)
        shares = [o.latency_share, *(x for x in o.extra_latency_shares
                                     if x != o.latency_share and sysm.key == "streamwise")]
        start_ms, done = None, n
        for i, share in enumerate(shares):
            phase = await _open_loop_phase(o, sysm, ds, t, group, proc, port, eps, share,
                                           r * 10 + i, start_ms, done)
            start_ms, done = phase.pop("next_start_ms"), phase.pop("done")
            if i == 0:
                result.update(phase)
            else:
                result.setdefault("latency_by_share", {})[str(share)] = {
                    k: phase[k] for k in ("p50_ms", "p99_ms", "open_loop_rate_per_s",
                                          "latency_parts_ms") if k in phase}
        if sysm.worker:
            result.setdefault("latency_by_share", {})[str(o.latency_share)] = {
                k: result[k] for k in ("p50_ms", "p99_ms", "open_loop_rate_per_s",
                                       "latency_parts_ms") if k in result}
        if online and sysm.key == "streamwise":
            result["online"] = await _online(o, port, ds, t, eps, start_ms)
        result["peak_rss_mb"] = _r(measure.peak_rss_mb(proc.popen.pid))
        if sysm.key == "streamwise":
            proc.stop()  # the replay gets the cores the live worker had
            result["replay"] = await _replay(o, prefix, in_ends, work, r, n)
    finally:
        proc.stop()
        await _delete_topics(o.broker, prefix)
    return result


async def _open_loop_phase(o: BenchOptions, sysm: System, ds: workload.DataSet,
                           t: TopicNames, group: str, proc: _Proc, port: int, eps: float,
                           share: float, seed: int, start_ms: int | None, done: int
                           ) -> dict[str, Any]:
    """Fresh events open loop at `share` of `eps` for latency_s; latency of each one matched
    by event id (output record time − input record time), and for a worker row its stage p99
    and latency parts over the phase."""
    in_ends = await measure.end_offsets(o.broker, t.events, o.partitions)
    out_ends = await measure.end_offsets(o.broker, t.decisions, o.partitions)
    before = measure.stage_buckets(await _scrape(port)) if sysm.worker else None
    rate = max(1.0, min(eps * share, o.max_open_loop_rate))
    fresh = workload.open_loop_events(
        ds, max(1, min(int(rate * o.latency_s), _MAX_OPEN_LOOP_EVENTS)), o.seed + 1000 + seed,
        start_ms)
    sent, send_s = await workload.open_loop(o.broker, t.events, fresh, rate, o.latency_s * 3)
    await _wait_for(o, sysm, t, group, proc, done + sent, max(60.0, o.latency_s * 6))
    inputs = await measure.read_input_times(o.broker, t.events, in_ends)
    lat_outs = await measure.read_outputs(o.broker, t.decisions, out_ends)
    lat = measure.latencies_ms(inputs, lat_outs)
    out: dict[str, Any] = dict(
        p50_ms=_r(measure.percentile(lat, 50)), p99_ms=_r(measure.percentile(lat, 99)),
        open_loop_rate_per_s=round(rate, 1),
        open_loop_sent_per_s=round(sent / max(send_s, 1e-3), 1), latency_samples=len(lat),
        next_start_ms=workload.newest_event_ms(fresh) + 10_000, done=done + sent)
    _say(f"{sysm.key} #{seed // 10 + 1}: {sent:,} events at {rate:,.0f}/s ({share:.0%}; sent "
         f"{out['open_loop_sent_per_s']:,.0f}/s): p50 {out['p50_ms']} ms, "
         f"p99 {out['p99_ms']} ms ({len(lat):,} matched)")
    if sysm.worker:
        after = measure.stage_buckets(await _scrape(port))
        out["stage_p99_ms"] = measure.stage_p99_ms(after, before)
        out["latency_parts_ms"] = measure.latency_parts_ms(inputs, lat_outs,
                                                           sysm.consumed_at_ms)
        _say(f"{sysm.key}: where the latency goes: {out['latency_parts_ms']}")
    return out


async def _replay(o: BenchOptions, prefix: str, stops: dict[int, int], work: Path, r: int,
                  n: int) -> dict[str, Any]:
    argv = replay_argv(o.broker, prefix, o.partitions, stops, work / f"replay-{r}.jsonl")
    try:
        out = await measure_replay(argv, work / f"replay-{r}.log", max(o.phase_timeout_s, n / 200))
    except ReplayFailed as exc:
        raise BenchError(str(exc)) from None
    _say(f"replay #{r + 1}: {out['events']:,} events in {out['elapsed_s']}s = "
         f"{out['events_per_s']:,.0f} events/s (command {out['command_s']}s with start-up), "
         f"peak RSS {out['peak_rss_mb']:,.0f} MB")
    return out


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    """Best effort: leave nothing of this run on a shared broker (Faust's own topics, and
    Quix's `changelog__<group>--...`, whose group carries the prefix)."""
    admin = new_admin(bootstrap, request_timeout_ms=15_000)
    try:
        await asyncio.wait_for(admin.start(), 15)
        names = [n for n in await admin.list_topics() if prefix in n]
        if names:
            await admin.delete_topics(names, timeout_ms=15_000)
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("could not delete the topics of %s*: %s", prefix, exc)
    finally:
        await admin.close()


async def _online(o: BenchOptions, port: int, ds: workload.DataSet, t: TopicNames,
                  eps: float, start_ms: int | None) -> dict[str, Any]:
    """Lookups and scores: closed loops of Python clients on an idle stream (the rows the
    issues' baselines were measured with), then, with vegeta, each kind open loop at
    `online_rate` and closed loop at `online_concurrency` clients while the stream runs at
    `online_stream_share` of the worker's measured events/s."""
    base = f"http://127.0.0.1:{port}"
    table = workload.topology().tables[0].name
    keys = list(dict.fromkeys(k.decode() for _, k, _ in ds.events))[:2000]
    lookups = [("GET", f"/v1/tables/{table}/{k}", None) for k in keys]
    out: dict[str, Any] = {"lookup": await online_load.closed_loop(
        base, lookups, o.online_concurrency, o.online_s)}
    _say(f"online lookups: {out['lookup']}")
    fresh = workload.open_loop_events(ds, 2000, o.seed + 5000, start_ms)
    start_ms = workload.newest_event_ms(fresh) + 10_000
    scores = [("POST", "/v1/score", value) for _, _, value in fresh]
    status = await online_load.probe(base, *scores[0])
    if status in (0, 404, 405):
        out["score"] = f"not available (POST /v1/score answered {status or 'nothing'})"
        scores = []
    else:
        out["score"] = await online_load.closed_loop(base, scores, o.online_concurrency,
                                                     o.online_s)
    _say(f"online score: {out['score']}")
    binary = online_load.find_vegeta()
    if binary is None:
        out["open_loop"] = "not measured: vegeta not found (scripts/load-tools.sh installs it)"
        return out
    rate = max(1.0, min(eps * o.online_stream_share, o.max_open_loop_rate))
    rows = [("lookup_open", lookups, o.online_open_s, {"rate_per_s": o.online_rate}),
            ("lookup_closed", lookups, o.online_closed_s, {"clients": o.online_concurrency})]
    if scores:
        rows += [("score_open", scores, o.online_open_s, {"rate_per_s": o.online_rate}),
                 ("score_closed", scores, o.online_closed_s,
                  {"clients": o.online_concurrency})]
    for i, (name, requests, duration_s, load) in enumerate(rows):
        # the stream's load: fresh events at the share of its rate, from a second before the
        # requests start to their end
        events = workload.open_loop_events(
            ds, min(int(rate * (duration_s + 2)), _MAX_OPEN_LOOP_EVENTS),
            o.seed + 6000 + i, start_ms)
        start_ms = workload.newest_event_ms(events) + 10_000
        stream = asyncio.create_task(workload.open_loop(o.broker, t.events, events, rate,
                                                        duration_s + 2))
        await asyncio.sleep(1.0)
        try:
            res = await asyncio.to_thread(online_load.vegeta, binary, base, requests,
                                          duration_s, **load)
        finally:
            sent, send_s = await stream
        res["stream_events_per_s"] = round(sent / max(send_s, 1e-3), 1)
        res["stream_share"] = o.online_stream_share
        out[name] = res
        _say(f"online {name}: {res}")
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric field over repeats (per stage for stage maps); anything else
    (the online part, run once) from the last repeat that has it."""
    out: dict[str, Any] = {}
    for k in dict.fromkeys(k for run in runs for k in run):
        vals = [run[k] for run in runs if run.get(k) is not None]
        if vals and all(isinstance(v, int | float) for v in vals):
            out[k] = _r(statistics.median(vals))
        elif vals and k.startswith("stage_p99"):
            stages = dict.fromkeys(s for v in vals for s in v)
            out[k] = {s: _r(statistics.median(xs)) if (xs := [v[s] for v in vals
                                                             if v.get(s) is not None])
                      else None for s in stages}
        else:
            out[k] = vals[-1] if vals else None
    return out


async def _run(o: BenchOptions) -> dict[str, Any]:
    t0 = time.monotonic()
    ds = workload.build(o.events, o.partitions, o.seed)
    _say(f"data set: {len(ds.events):,} events, {len(ds.profiles):,} profiles, "
         f"{o.partitions} partitions, broker {o.broker}; Streamwise runs "
         f"{workload.BENCH_TOPOLOGY}")
    run_prefix = f"bench{secrets.token_hex(3)}."
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="streamwise-bench-") as tmp:
        work = Path(tmp)
        chosen = [s for s in SYSTEMS if s.key in o.systems]
        runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in chosen}
        # Round robin (all systems, then again): on shared cores, a noisy minute then hurts
        # one repeat of every system rather than every repeat of one.
        for r in range(o.repeat):
            for sysm in chosen:
                runs[sysm.key].append(await _one(o, sysm, ds, run_prefix, r, work,
                                                 online=o.online and r == o.repeat - 1))
        if "streamwise" in runs:
            runs["replay"] = [_replay_vs_live(run) for run in runs["streamwise"]]
        for key, done in runs.items():
            report[key] = _median(done)
            if o.repeat > 1:
                report[key]["repeats"] = [{k: run.get(k) for k in (
                    "events_per_s", "p50_ms", "p99_ms", "peak_rss_mb", "vs_live") if k in run}
                    for run in done]
    sw = report.get("streamwise", {}).get("events_per_s")
    ratios = {}
    for name, key in (("vs_ceiling", "ceiling"), ("vs_baseline", "baseline"),
                      ("vs_baseline_batched", "baseline_batched"), ("vs_quix", "quix")):
        base = report.get(key, {}).get("events_per_s")
        ratios[name] = round(sw / base, 3) if sw and base else None
    ratios["replay_vs_live"] = report.get("replay", {}).get("vs_live")
    many = report.get("processes", {}).get("events_per_s")
    ratios["processes_vs_one"] = round(many / sw, 3) if many and sw else None
    report["ratios"] = ratios
    online = report.get("streamwise", {}).pop("online", None)
    if online is not None:
        report["online"] = online
    report["meta"] = {"events": len(ds.events), "partitions": o.partitions,
                      "repeat": o.repeat, "latency_s": o.latency_s,
                      "latency_share": o.latency_share, "seed": o.seed,
                      "wall_s": round(time.monotonic() - t0, 1)}
    return report


def _replay_vs_live(live: dict[str, Any]) -> dict[str, Any]:
    """The replay of one round, with its ratio to the live worker of that same round (the
    two ran back to back, so a noisy minute on shared cores skews both alike)."""
    replay = live.pop("replay")
    eps = live.get("events_per_s")
    replay["vs_live"] = round(replay["events_per_s"] / eps, 3) if eps else None
    return replay


def run(o: BenchOptions) -> dict[str, Any]:
    """Run the bench; returns the report (see `report.render` for the table)."""
    return asyncio.run(_run(o))


def dumps(report: dict[str, Any]) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2)
