"""Early-exit policy: which confidence signal, which thresholds, and what they cost and buy.

Everything here works on `ExitRecords` — every exit's detections and confidence signals for
every image of a split, collected once (visiondoctor/early_exit/analysis.py does that with the
model) — and on measured path latencies, so a policy can be evaluated for any thresholds without
running the network again, and tested on synthetic records.

The policy: image i leaves at the first early exit k with `confidence[i, k] >= thresholds[k]`
(threshold +inf: nobody leaves there, and the exit's head is not even run); the full model (the
last exit) takes the rest. Its accuracy is the COCO mAP@[.5:.95] of the routed predictions (each
image's detections from the exit it left at, ranked together as COCO does); its cost is the mean
per-image latency, predicted from the exit distribution and the measured latency of every path
(leave at exit k, with which earlier heads having run): `PathCost`.

Calibration (`sweep` + `calibrate`): candidate thresholds per early exit are the confidences that
let 1/levels, 2/levels, ..., all of the images reaching that exit pass (plus +inf), every
combination is evaluated on the calibration split (distinct exit assignments only), and the
budget picks the point: `max_map_drop` (AP lost vs the full model, in AP units: 0.01 = 1 point)
-> the lowest predicted latency within it; `target_latency_ms` -> the highest mAP within it. When
no point meets the budget the closest one is returned with `budget_met = False`.

Signal choice (`signal_correlations`): for each candidate signal and early exit, the Spearman
rank correlation on the calibration split between the signal and (a) that exit's per-image AP and
(b) its per-image AP gap to the full model (AP_k - AP_full). (b) is what the policy needs — a
high confidence should mean leaving early costs nothing — so the signal with the highest mean
(b) over the early exits is chosen.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from visiondoctor.evaluation.coco import coco_evaluation
from visiondoctor.evaluation.consistency import spearman


@dataclass
class ExitRecords:
    """Every exit's detections and confidences on every image of one split.

    gt: the split as a COCO dict; image_ids: row order; predictions[k][i]: COCO results of image i
    at exit k; signals[name]: confidences [images, exits] for each candidate signal."""

    gt: dict
    exit_names: list[str]
    image_ids: list[int]
    predictions: list[list[list[dict]]]
    signals: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        n, e = len(self.image_ids), len(self.exit_names)
        if len(self.predictions) != e or any(len(p) != n for p in self.predictions):
            raise ValueError(f"predictions must be [exits={e}][images={n}]")
        for name, conf in self.signals.items():
            self.signals[name] = conf = np.asarray(conf, dtype=np.float64)
            if conf.shape != (n, e):
                raise ValueError(f"signal {name!r}: shape {conf.shape}, expected ({n}, {e})")

    @property
    def num_exits(self) -> int:
        return len(self.exit_names)

    def subset_gt(self) -> dict:
        keep = set(self.image_ids)
        return {**self.gt, "images": [im for im in self.gt["images"] if im["id"] in keep],
                "annotations": [a for a in self.gt.get("annotations", []) if a["image_id"] in keep]}


# ----- routing and accuracy ---------------------------------------------------------------------------
def assign_exits(confidences: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """The exit each image leaves at: the first early exit k with confidence >= thresholds[k], else the last."""
    confidences = np.asarray(confidences, dtype=np.float64)
    n, e = confidences.shape
    if len(thresholds) != e - 1:
        raise ValueError(f"need {e - 1} thresholds for {e} exits, got {len(thresholds)}")
    exits = np.full(n, e - 1, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    for k, t in enumerate(thresholds):
        leave = undecided & (confidences[:, k] >= t)
        exits[leave] = k
        undecided &= ~leave
    return exits


def routed_predictions(records: ExitRecords, exits: Sequence[int]) -> list[dict]:
    return [d for i, k in enumerate(exits) for d in records.predictions[int(k)][i]]


def routed_metrics(records: ExitRecords, exits: Sequence[int]) -> dict[str, Any]:
    """COCO metrics of the routed predictions (each image from the exit it left at)."""
    return coco_evaluation(records.subset_gt(), routed_predictions(records, exits)).metrics


def exit_metrics(records: ExitRecords) -> list[dict[str, Any]]:
    """COCO metrics of each exit when every image is forced to leave there."""
    return [routed_metrics(records, np.full(len(records.image_ids), k)) for k in range(records.num_exits)]


def distribution(exits: Sequence[int], num_exits: int) -> list[float]:
    counts = np.bincount(np.asarray(exits, dtype=np.int64), minlength=num_exits)
    return [round(float(c) / max(1, len(exits)), 4) for c in counts]


# ----- the confidence signal --------------------------------------------------------------------------
def per_image_ap(records: ExitRecords) -> np.ndarray:
    """AP@[.5:.95] of every image at every exit ([images, exits]; NaN for an image without ground
    truth, where COCO AP is undefined). Each image is evaluated alone by the project's COCO evaluation."""
    gt = records.subset_gt()
    images = {im["id"]: im for im in gt["images"]}
    annotations: dict[int, list[dict]] = {}
    for a in gt.get("annotations", []):
        annotations.setdefault(a["image_id"], []).append(a)
    out = np.full((len(records.image_ids), records.num_exits), np.nan)
    for i, image_id in enumerate(records.image_ids):
        if not annotations.get(image_id):
            continue
        one = {**gt, "images": [images[image_id]], "annotations": annotations[image_id]}
        for k in range(records.num_exits):
            value = coco_evaluation(one, records.predictions[k][i]).metrics["map"]
            out[i, k] = np.nan if value is None else value
    return out


def signal_correlations(records: ExitRecords, ap: np.ndarray | None = None, default: str | None = None) -> dict[str, Any]:
    """{"signals": {name: {exit_name: {"vs_ap": rho, "vs_gap": rho}, "mean_vs_gap": rho}}, "chosen": name,
    "images": n} over the early exits (see the module docstring). When no correlation is defined (e.g.
    every confidence constant) `default` (else the first signal) is chosen."""
    ap = per_image_ap(records) if ap is None else ap
    full = ap[:, -1]
    table: dict[str, Any] = {}
    for name, conf in records.signals.items():
        row: dict[str, Any] = {}
        gaps = []
        for k in range(records.num_exits - 1):
            vs_ap, vs_gap = spearman(conf[:, k], ap[:, k]), spearman(conf[:, k], ap[:, k] - full)
            row[records.exit_names[k]] = {"vs_ap": vs_ap, "vs_gap": vs_gap}
            if vs_gap is not None:
                gaps.append(vs_gap)
        row["mean_vs_gap"] = float(np.mean(gaps)) if gaps else None
        table[name] = row
    defined = [n for n in table if table[n]["mean_vs_gap"] is not None]
    fallback = default if default in table else next(iter(table))
    chosen = max(defined, key=lambda n: table[n]["mean_vs_gap"]) if defined else fallback
    return {"signals": table, "chosen": chosen, "images": int(np.isfinite(ap[:, -1]).sum())}


# ----- latency ---------------------------------------------------------------------------------------
@dataclass
class PathCost:
    """Measured cost per image (ms, or FLOPs) of each path: leave at exit k after the heads of the
    earlier exits in `ran_before` have run (exits with threshold +inf are skipped). Keys: (k, tuple of bools)."""

    mean: dict[tuple[int, tuple[bool, ...]], float]
    median: dict[tuple[int, tuple[bool, ...]], float] = field(default_factory=dict)

    @staticmethod
    def paths(num_exits: int) -> list[tuple[int, tuple[bool, ...]]]:
        """Every (exit, earlier heads that ran) combination a policy can produce."""
        return [(k, ran) for k in range(num_exits) for ran in itertools.product((True, False), repeat=k)]

    def cost(self, k: int, thresholds: Sequence[float], statistic: str = "mean") -> float:
        ran = tuple(t != math.inf for t in thresholds[:k])
        return (self.mean if statistic == "mean" else self.median)[(k, ran)]

    def expected(self, exits: Sequence[int], thresholds: Sequence[float], statistic: str = "mean") -> float:
        """Mean per-image cost predicted for images leaving at `exits` under `thresholds`."""
        exits = np.asarray(exits)
        if exits.size == 0:
            return 0.0
        return float(np.mean([self.cost(int(k), thresholds, statistic) for k in exits]))

    def to_json(self, unit: str = "ms") -> list[dict[str, Any]]:
        return [{"exit": k, "heads_run_before": list(ran), f"mean_{unit}": self.mean[(k, ran)],
                 f"median_{unit}": self.median.get((k, ran))} for k, ran in sorted(self.mean)]

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]], unit: str = "ms") -> "PathCost":
        def key(r: dict[str, Any]) -> tuple[int, tuple[bool, ...]]:
            return int(r["exit"]), tuple(bool(b) for b in r["heads_run_before"])

        return cls({key(r): float(r[f"mean_{unit}"]) for r in rows},
                   {key(r): float(r[f"median_{unit}"]) for r in rows if r.get(f"median_{unit}") is not None})


# ----- calibration -----------------------------------------------------------------------------------
@dataclass
class OperatingPoint:
    thresholds: list[float]  # one per early exit; +inf = never leave there
    map: float
    map_drop: float  # full-model mAP minus this point's, AP units
    latency_ms: float  # predicted mean per-image latency
    latency_cut: float  # 1 - latency / full-model latency
    distribution: list[float]  # share of images per exit
    budget_met: bool = True

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = [None if t == math.inf else round(t, 6) for t in self.thresholds]  # null = never leave
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "OperatingPoint":
        return cls(**{**d, "thresholds": [math.inf if t is None else float(t) for t in d["thresholds"]]})


def candidate_thresholds(confidences: np.ndarray, levels: int) -> list[float]:
    """+inf, then the confidences that let 1/levels, 2/levels, ..., all of the images pass."""
    ordered = np.sort(np.asarray(confidences, dtype=np.float64))[::-1]
    n = len(ordered)
    values = {float(ordered[max(0, math.ceil(j / levels * n) - 1)]) for j in range(1, levels + 1)} if n else set()
    return [math.inf, *sorted(values, reverse=True)]


def sweep(records: ExitRecords, signal: str, latency: PathCost, levels: int = 10) -> list[OperatingPoint]:
    """Every threshold combination of the candidate grid, evaluated on `records` (see module docstring)."""
    conf = records.signals[signal]
    e = records.num_exits
    full_exits = np.full(len(records.image_ids), e - 1)
    full_map = _map(routed_metrics(records, full_exits))
    full_ms = latency.expected(full_exits, [math.inf] * (e - 1))
    grids = [candidate_thresholds(conf[:, k], levels) for k in range(e - 1)]
    cache: dict[bytes, float] = {}
    points = []
    for thresholds in itertools.product(*grids):
        exits = assign_exits(conf, thresholds)
        # An exit no image reaches does not run: its threshold is irrelevant, normalise it to +inf.
        reached = [bool((exits >= k).any()) for k in range(e - 1)]
        thresholds = tuple(t if r else math.inf for t, r in zip(thresholds, reached))
        key = exits.tobytes()
        if key not in cache:
            cache[key] = _map(routed_metrics(records, exits))
        ms = latency.expected(exits, thresholds)
        points.append(OperatingPoint(list(thresholds), cache[key], full_map - cache[key], ms,
                                     1.0 - ms / full_ms if full_ms > 0 else 0.0, distribution(exits, e)))
    unique: dict[tuple, OperatingPoint] = {}
    for p in points:
        unique.setdefault((tuple(p.thresholds), tuple(p.distribution)), p)
    return sorted(unique.values(), key=lambda p: (p.latency_ms, -p.map))


def pareto_front(points: Sequence[OperatingPoint]) -> list[OperatingPoint]:
    """Points no other point beats on both latency (lower) and mAP (higher), fastest first."""
    front: list[OperatingPoint] = []
    for p in sorted(points, key=lambda p: (p.latency_ms, -p.map)):
        if not front or p.map > front[-1].map:
            front.append(p)
    return front


def calibrate(points: Sequence[OperatingPoint], max_map_drop: float | None = None,
              target_latency_ms: float | None = None) -> OperatingPoint:
    """The operating point for the budget (exactly one of the two; see the module docstring)."""
    if (max_map_drop is None) == (target_latency_ms is None):
        raise ValueError("give exactly one budget: max_map_drop or target_latency_ms")
    if not points:
        raise ValueError("no operating points to choose from")
    if max_map_drop is not None:
        if max_map_drop < 0:
            raise ValueError(f"max_map_drop={max_map_drop} must be >= 0 (AP units: 0.01 = 1 point)")
        within = [p for p in points if p.map_drop <= max_map_drop + 1e-12]
        if within:
            return min(within, key=lambda p: (p.latency_ms, -p.map))
        best = max(points, key=lambda p: (p.map, -p.latency_ms))
    else:
        within = [p for p in points if p.latency_ms <= target_latency_ms]
        if within:
            return max(within, key=lambda p: (p.map, -p.latency_ms))
        best = min(points, key=lambda p: (p.latency_ms, -p.map))
    return OperatingPoint(**{**asdict(best), "budget_met": False})


def evaluate_point(records: ExitRecords, signal: str, thresholds: Sequence[float], latency: PathCost,
                   reference_map: float | None = None) -> dict[str, Any]:
    """A policy on (held-out) records: mAP, drop vs the full model, predicted latency, exit distribution."""
    e = records.num_exits
    exits = assign_exits(records.signals[signal], thresholds)
    full_exits = np.full(len(exits), e - 1)
    full_map = reference_map if reference_map is not None else _map(routed_metrics(records, full_exits))
    value = _map(routed_metrics(records, exits))
    full_ms = latency.expected(full_exits, [math.inf] * (e - 1))
    ms = latency.expected(exits, thresholds)
    return {"map": value, "full_map": full_map, "map_drop": full_map - value, "latency_ms": ms,
            "full_latency_ms": full_ms, "latency_cut": 1.0 - ms / full_ms if full_ms > 0 else 0.0,
            "distribution": distribution(exits, e), "images": len(exits)}


def _map(metrics: dict[str, Any]) -> float:
    value = metrics.get("map")
    return 0.0 if value is None else float(value)
