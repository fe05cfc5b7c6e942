"""The detection inputs several report sections share: ground truth, image folders, category
names, the display threshold, and the confusion matrix / per-image quality of
evaluation/detection_quality.py.

The last two are read from detection_confusion.json / detection_per_image.json; a run written
before those files existed gets them computed here from gt.json and predictions.json at the
display threshold (same function, so the figures are the same).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from visiondoctor.evaluation.detection_quality import (CONFUSION_FILE, PER_IMAGE_FILE, detection_confusion,
                                                       per_image_quality)
from visiondoctor.evaluation.predictions import PredictionError
from visiondoctor.report.inputs import ReportInputError, cfg, finite, read_config, read_json, read_json_file
from visiondoctor.rundir import RunDir


def display_threshold(run: RunDir, stats: Mapping[str, Any]) -> float:
    """detection_stats.json's display_threshold, else config eval.display_threshold, else 0.5."""
    for value in (stats.get("display_threshold"), cfg(read_config(run), "eval.display_threshold")):
        if finite(value) is not None:
            return float(value)
    return 0.5


def run_display_threshold(run: RunDir) -> float:
    stats = read_json(run, "detection_stats.json")
    return display_threshold(run, stats if isinstance(stats, dict) else {})


def load_ground_truth(run: RunDir) -> dict[str, Any] | None:
    """gt.json from the run dir, or the COCO file that config.yaml's data.path names."""
    gt = read_json(run, "gt.json")
    if gt is None:
        path = cfg(read_config(run), "data.path")
        if isinstance(path, str) and path.endswith(".json") and Path(path).is_file():
            gt = read_json_file(Path(path))
            if isinstance(gt, dict):
                gt.setdefault("image_root", str(Path(path).parent))
    return gt if isinstance(gt, dict) and isinstance(gt.get("images"), list) else None


def image_roots(run: RunDir, gt: dict[str, Any]) -> list[Path]:
    """Folders the image file names may be relative to, most specific first: gt.json's
    image_root, the evaluated split's annotation folder and the dataset root from
    data_summary.json, config.yaml's data.path."""
    summary = read_json(run, "data_summary.json") or {}
    split = cfg(read_config(run), "eval.split", "val")
    source = cfg(summary, f"splits.{split}.source") if isinstance(summary, dict) else None
    candidates = [gt.get("image_root"), source, summary.get("root") if isinstance(summary, dict) else None,
                  cfg(read_config(run), "data.path")]
    roots = []
    for c in candidates:
        if isinstance(c, str) and c:
            p = Path(c) if Path(c).is_absolute() else run.path / c
            p = p.parent if p.is_file() else p
            if p not in roots:
                roots.append(p)
    return roots


def category_names(run: RunDir, gt: dict[str, Any]) -> dict[int, str]:
    """Dataset category id -> name, from the ground truth, else categories.json."""
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt.get("categories") or [] if isinstance(c, dict) and "id" in c}
    cats = read_json(run, "categories.json")
    if isinstance(cats, dict) and not names:
        names = dict(zip(cats.get("dataset_ids", []), map(str, cats.get("names", []))))
    return names


def _computed(run: RunDir, compute: Any) -> dict[str, Any] | None:
    preds = read_json(run, "predictions.json")
    gt = load_ground_truth(run)
    if not isinstance(preds, list) or gt is None:
        return None
    if not gt.get("categories"):  # an old gt.json: the names of categories.json
        gt = {**gt, "categories": [{"id": i, "name": n} for i, n in category_names(run, gt).items()]}
    try:
        return compute(gt, preds, run_display_threshold(run))
    except (PredictionError, KeyError, TypeError) as exc:
        raise ReportInputError(f"{run.path / 'predictions.json'} against the ground truth: {exc}") from None


def read_confusion(run: RunDir) -> dict[str, Any] | None:
    """detection_confusion.json, or the same computed from gt.json + predictions.json; None without them."""
    data = read_json(run, CONFUSION_FILE)
    return data if isinstance(data, dict) else _computed(run, detection_confusion)


def read_per_image(run: RunDir) -> dict[str, Any] | None:
    """detection_per_image.json, or the same computed from gt.json + predictions.json; None without them."""
    data = read_json(run, PER_IMAGE_FILE)
    return data if isinstance(data, dict) else _computed(run, per_image_quality)
