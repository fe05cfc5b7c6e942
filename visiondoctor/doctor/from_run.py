"""Evaluation checks on what a finished run wrote (metrics.json, history.csv, consistency.json,
errors.json, detection_stats.json): the doctor's findings for any run directory, with no model."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from visiondoctor.doctor.checks import consistency, evaluation
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.runner import run_check


def _json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.csv rows with numbers as floats (empty cells dropped)."""
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            for raw in csv.DictReader(fh):
                row: dict[str, Any] = {}
                for k, v in raw.items():
                    if v in (None, ""):
                        continue
                    try:
                        row[k] = float(v) if k not in ("split",) else v
                    except ValueError:
                        row[k] = v
                if "epoch" in row:
                    row["epoch"] = int(row["epoch"])
                rows.append(row)
    except OSError:
        return []
    return rows


def no_detection_at_threshold(stats: dict[str, Any], threshold: float = 0.5) -> list[Finding]:
    """output.background-collapse (warning) from detection_stats.json: no image has a detection at the display
    threshold while lower thresholds keep many — the score distribution never reaches it."""
    per_image = stats.get("per_image") or {}
    at = per_image.get(f"{threshold:g}")
    low = per_image.get(min(per_image, key=float)) if per_image else None
    if not at or not low or at.get("zero_share") != 1.0 or not low.get("mean"):
        return []
    return [Finding(
        id="output.background-collapse", severity="warning",
        title=f"No image has a detection at score {threshold:g}, although {low['mean']:.0f} per image pass a lower threshold",
        evidence={"detections_per_image": per_image, "score_max": stats.get("score_max"),
                  "num_images": stats.get("num_images")},
        cause="The classifier's scores stay below the threshold: too little training, or a classifier that did not learn "
              "where objects are (check assignment.low-iou-positives and the score histogram).",
        fix="If training was short, train longer; otherwise fix the assignment/loss balance rather than lowering the threshold.",
        where="detection_stats.json")]


def run_findings(run_dir: str | Path, metric_key: str | None = None) -> list[Finding]:
    """Every evaluation check whose input file exists in `run_dir`."""
    run = Path(run_dir)
    findings: list[Finding] = []
    metrics = _json(run / "metrics.json")
    if isinstance(metrics, dict):
        findings += run_check(evaluation.check_sample_size, metrics)
        metric_key = metric_key or ("miou" if "miou" in metrics else "map")
    history = read_history(run / "history.csv")
    if history:
        findings += run_check(evaluation.check_generalization_gap, history, "loss", metric_key)
    cons = _json(run / "consistency.json")
    if isinstance(cons, dict):
        findings += run_check(consistency.score_iou_findings, cons)
    errors = _json(run / "errors.json")
    if isinstance(errors, dict):
        findings += run_check(consistency.error_breakdown_findings, errors)
    stats = _json(run / "detection_stats.json")
    if isinstance(stats, dict):
        findings += run_check(no_detection_at_threshold, stats)
    return [f for f in findings if not (isinstance(f.evidence.get("value"), float) and math.isnan(f.evidence["value"]))]
