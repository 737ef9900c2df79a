"""Offline validation of a model version before it is staged (`streamwise rollout T validate`).

Two gates. The contract: the registry's own checks (manifest, checksum, feature set and
order, one float32 input ``[N, n_features]``, one finite score per row). Then the held-out
labelled set, built through replay so it holds the very features the stream computes: AUC,
calibration (expected calibration error over equal-width bins, and the reliability table),
decision rates at the manifest's thresholds, latency per row and per batch, each next to the
serving version's, against the topology's minima (`ValidationMinima`).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import ModelError
from ..topology import Topology

__all__ = ["ModelReport", "Validation", "auc", "ece", "holdout_matrix", "validate"]

_LATENCY_ROWS = 300
_BATCH = 1000


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U), ties averaged."""
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ece(y: np.ndarray, s: np.ndarray, bins: int) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error over `bins` equal-width score bins, and the table."""
    idx = np.clip((s * bins).astype(int), 0, bins - 1)
    table, total = [], 0.0
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        if not n:
            continue
        mean, rate = float(s[m].mean()), float(y[m].mean())
        total += n / len(s) * abs(mean - rate)
        table.append({"bin": f"[{b / bins:.1f}, {(b + 1) / bins:.1f})", "rows": n,
                      "mean_score": round(mean, 4), "positive_rate": round(rate, 4)})
    return total, table


@dataclass
class ModelReport:
    ref: str
    auc: float
    ece: float
    reliability: list[dict[str, Any]]
    thresholds: dict[str, float]
    decision_rates: dict[str, float]
    us_per_row_single: float  # one row per call
    ms_per_batch: float  # one call of _BATCH rows
    rows_per_s_batched: float

    def line(self) -> str:
        r = self.decision_rates
        return (f"{self.ref}: AUC {self.auc:.4f}  ECE {self.ece:.4f}  approve {r['approve']:.4f} "
                f"review {r['review']:.4f} decline {r['decline']:.4f}  "
                f"{self.us_per_row_single:.0f} us/row single, {self.ms_per_batch:.2f} ms per "
                f"{_BATCH}-row batch ({self.rows_per_s_batched:,.0f} rows/s)")


@dataclass
class Validation:
    candidate: str
    contract_error: str | None = None
    rows: int = 0
    positives: int = 0
    report: ModelReport | None = None
    serving: ModelReport | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.contract_error is None and not self.failures

    def to_json(self) -> dict[str, Any]:
        def model(r: ModelReport | None) -> dict | None:
            return None if r is None else r.__dict__
        return {"candidate": self.candidate, "ok": self.ok, "contract_error": self.contract_error,
                "holdout_rows": self.rows, "holdout_positives": self.positives,
                "candidate_report": model(self.report), "serving_report": model(self.serving),
                "failures": self.failures}

    def text(self) -> str:
        if self.contract_error is not None:
            return f"{self.candidate}: REJECTED by the contract: {self.contract_error}"
        out = [f"held-out set: {self.rows:,} complete rows, {self.positives:,} positive"]
        for r in (self.report, self.serving):
            if r is not None:
                out.append("  " + r.line())
        if self.report is not None and self.serving is not None:
            c, s = self.report, self.serving
            out.append(f"  difference: AUC {c.auc - s.auc:+.4f}  ECE {c.ece - s.ece:+.4f}  "
                       + "  ".join(f"{k} {c.decision_rates[k] - s.decision_rates[k]:+.4f}"
                                   for k in ("approve", "review", "decline")))
        if self.report is not None:
            out.append("  reliability (candidate): " + ", ".join(
                f"{b['bin']} n={b['rows']} score {b['mean_score']} rate {b['positive_rate']}"
                for b in self.report.reliability))
        out.append(f"{self.candidate}: " + ("PASSED" if self.ok else
                                            "REJECTED: " + "; ".join(self.failures)))
        return "\n".join(out)


def holdout_matrix(path: Path, topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a replayed training set (Parquet with `feature_<name>` columns
    and `label`): the rows whose features are all present and that have a label."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = topology.features.names
    missing = [f"feature_{n}" for n in names if f"feature_{n}" not in table.column_names]
    if missing or "label" not in table.column_names:
        raise ModelError(f"{path}: not a labelled replay output (needs label and "
                         f"{', '.join(missing) or 'the feature columns'})")
    cols = [np.asarray(table.column(f"feature_{n}").to_numpy(zero_copy_only=False),
                       dtype=np.float64) for n in names]
    x = np.column_stack(cols) if cols else np.empty((table.num_rows, 0))
    label = table.column("label").to_pylist()
    keep = np.isfinite(x).all(axis=1) & np.array([v is not None for v in label], dtype=bool)
    y = np.array([float(v) if v is not None else 0.0 for v in label])[keep]
    return x[keep].astype(np.float32), (y >= 0.5).astype(np.int64)


def build_holdout(topology: Topology, out: Path) -> Path:
    """Replay the topology's held-out workload (`RolloutSettings.holdout`) with its labels
    into a Parquet training set at `out`: the features the stream computes."""
    from ..labels import load_labels
    from ..policy import RulesOnly
    from ..replay import replay_file

    make = topology.rollout.holdout
    if make is None:
        raise ModelError(f"topology {topology.name} has no held-out set: pass --holdout FILE "
                         "(a `streamwise replay ... --labels L --output F.parquet` output)")
    events, profiles, labels = make()
    work = out.parent
    events_path, labels_path = work / "holdout-events.jsonl", work / "holdout-labels.jsonl"
    ts = {e[topology.event_id_field]: e[topology.time_field] for e in events}
    events_path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    labels_path.write_bytes(b"".join(
        orjson.dumps({"event_id": eid, "label": int(v), "label_time": ts[eid] + 86_400_000})
        + b"\n" for eid, v in labels.items() if eid in ts))
    decider = RulesOnly(topology.rules, topology.features.versioned_name)
    asyncio.run(replay_file(events_path, topology, decider, profiles, str(out),
                            topology.default_partitions, labels=load_labels(labels_path),
                            models={}, allow_empty=False))
    return out


def _measure(model: Any, x: np.ndarray, y: np.ndarray, bins: int) -> ModelReport:
    scores = np.concatenate([model.score_many(x[i:i + _BATCH]) for i in range(0, len(x), _BATCH)])
    a = auc(y, scores)
    e, table = ece(y, scores, bins)
    t = model.manifest.thresholds
    decline = scores >= t.decline_at
    review = (scores >= t.review_at) & ~decline
    rates = {"approve": float((~decline & ~review).mean()), "review": float(review.mean()),
             "decline": float(decline.mean())}
    single = [np.ascontiguousarray(x[i:i + 1]) for i in range(min(len(x), _LATENCY_ROWS))]
    for r in single[:20]:
        model.score_many(r)
    t0 = time.perf_counter()
    for r in single:
        model.score_many(r)
    per_row = (time.perf_counter() - t0) / max(len(single), 1) * 1e6
    batch = np.ascontiguousarray(np.resize(x, (_BATCH, x.shape[1])))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        model.score_many(batch)
        best = min(best, time.perf_counter() - t0)
    return ModelReport(model.ref, a, e, table, {"review_at": t.review_at,
                                                "decline_at": t.decline_at},
                       rates, per_row, best * 1000, _BATCH / best)


def validate(topology: Topology, models_dir: Path, slot: str, version: str,
             against: str | None, holdout: Path | None) -> Validation:
    """Validate `slot`/`version` from `models_dir` against the serving version `against`
    (None: report the candidate alone) on `holdout` (None: build the topology's)."""
    from ..scoring.registry import load_model

    names, fs = topology.features.names, topology.features.versioned_name
    result = Validation(f"{slot}:{version}")
    folder = models_dir / slot / version
    if not folder.is_dir():
        result.contract_error = f"no such version: {folder}"
        return result
    try:
        candidate = load_model(folder, names, fs)
    except ModelError as exc:
        result.contract_error = str(exc)
        return result
    serving = None
    if against is not None and against != version:
        serving = load_model(models_dir / slot / against, names, fs)
    with tempfile.TemporaryDirectory(prefix="streamwise-validate-") as tmp:
        path = holdout if holdout is not None else build_holdout(topology,
                                                                 Path(tmp) / "holdout.parquet")
        x, y = holdout_matrix(path, topology)
    result.rows, result.positives = len(y), int(y.sum())
    if result.positives == 0 or result.positives == len(y):
        result.failures.append("the held-out set needs both labels")
        return result
    minima = topology.rollout.minima
    result.report = _measure(candidate, x, y, minima.ece_bins)
    if serving is not None:
        result.serving = _measure(serving, x, y, minima.ece_bins)
    r = result.report
    if r.ece > minima.max_ece:
        result.failures.append(f"ECE {r.ece:.4f} > {minima.max_ece}")
    if result.serving is not None and r.auc < result.serving.auc - minima.max_auc_drop:
        result.failures.append(f"AUC {r.auc:.4f} more than {minima.max_auc_drop} below the "
                               f"serving version's {result.serving.auc:.4f}")
    return result
