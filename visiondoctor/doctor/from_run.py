"""Evaluation checks on what a finished run wrote (metrics.json, history.csv, consistency.json,
errors.json, detection_stats.json): the doctor's findings for any run directory, with no model."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from visiondoctor.doctor.checks import run_stage
from visiondoctor.doctor.findings import Finding


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


def run_findings(run_dir: str | Path, metric_key: str | None = None) -> list[Finding]:
    """Every run-stage check whose input file exists in `run_dir`."""
    run = Path(run_dir)
    metrics = _json(run / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else None
    if metrics is not None:
        metric_key = metric_key or ("miou" if "miou" in metrics else "map")
    files = {"consistency": _json(run / "consistency.json"), "tide": _json(run / "errors.json"),
             "detection_stats": _json(run / "detection_stats.json")}
    findings = run_stage("run", metrics=metrics, history=read_history(run / "history.csv") or None,
                         metric_key=metric_key, **{k: v if isinstance(v, dict) else None for k, v in files.items()})
    return [f for f in findings if not (isinstance(f.evidence.get("value"), float) and math.isnan(f.evidence["value"]))]
