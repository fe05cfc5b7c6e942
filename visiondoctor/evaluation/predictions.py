"""Checks and groupings of COCO ground truth and COCO results shared by every evaluation module.

Ground truth is a COCO dict ({"images", "annotations", "categories"}); predictions are COCO
results ([{"image_id", "category_id" (the dataset's id), "bbox": [x, y, w, h], "score"}]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torchvision.ops import box_iou as tv_box_iou

REQUIRED_PREDICTION_KEYS = ("image_id", "category_id", "bbox", "score")


class PredictionError(ValueError):
    """Predictions that cannot be evaluated against the ground truth; names the record."""


def check_predictions(predictions: Iterable[dict], image_ids: set[int] | None = None,
                      category_ids: set[int] | None = None) -> None:
    """Raise PredictionError naming the first bad prediction (index and image id), if any."""
    for i, p in enumerate(predictions):
        where = f"prediction #{i}"
        if not isinstance(p, dict):
            raise PredictionError(f"{where}: expected a dict, got {type(p).__name__}")
        missing = [k for k in REQUIRED_PREDICTION_KEYS if k not in p]
        if missing:
            raise PredictionError(f"{where}: missing key(s) {missing}")
        where += f" (image_id {p['image_id']!r})"
        if image_ids is not None and p["image_id"] not in image_ids:
            raise PredictionError(f"{where}: image_id not in the ground truth")
        if category_ids is not None and p["category_id"] not in category_ids:
            raise PredictionError(f"{where}: category_id {p['category_id']!r} not in the ground truth categories "
                                  f"{sorted(category_ids)} (predictions must use the dataset's own ids)")
        box = p["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_finite(v) for v in box):
            raise PredictionError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {box!r}")
        if not _finite(p["score"]):
            raise PredictionError(f"{where}: score must be a finite number, got {p['score']!r}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def category_names(gt: dict) -> dict[int, str]:
    """Dataset category id -> a unique display name (the name, plus the id when two categories share it)."""
    cats = sorted(gt.get("categories", []), key=lambda c: c["id"])
    counts: dict[str, int] = {}
    for c in cats:
        counts[str(c["name"])] = counts.get(str(c["name"]), 0) + 1
    return {c["id"]: (str(c["name"]) if counts[str(c["name"])] == 1 else f"{c['name']} (id {c['id']})") for c in cats}


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


@dataclass
class ImageBoxes:
    """One image's ground truth and detections as arrays (boxes xyxy, dataset category ids)."""

    gt_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    gt_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    gt_crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    dt_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    dt_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dt_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dt_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # position in the predictions list


def group_by_image(gt: dict, predictions: list[dict], min_score: float = 0.0) -> dict[int, ImageBoxes]:
    """Per image id (every image of `gt`): its GT and its detections with score >= min_score,
    detections sorted by descending score (stable, as COCO sorts them)."""
    image_ids = [im["id"] for im in gt.get("images", [])]
    check_predictions(predictions, set(image_ids), {c["id"] for c in gt.get("categories", [])})
    gts: dict[int, list[dict]] = {i: [] for i in image_ids}
    for a in gt.get("annotations", []):
        if a["image_id"] in gts:
            gts[a["image_id"]].append(a)
    dts: dict[int, list[int]] = {i: [] for i in image_ids}
    for k, p in enumerate(predictions):
        if p["score"] >= min_score:
            dts[p["image_id"]].append(k)
    out = {}
    for i in image_ids:
        g, d = gts[i], dts[i]
        order = sorted(d, key=lambda k: -predictions[k]["score"])
        out[i] = ImageBoxes(
            gt_boxes=xywh_to_xyxy([a["bbox"] for a in g]),
            gt_classes=np.array([a["category_id"] for a in g], np.int64),
            gt_crowd=np.array([bool(a.get("iscrowd", 0)) for a in g], bool),
            dt_boxes=xywh_to_xyxy([predictions[k]["bbox"] for k in order]),
            dt_classes=np.array([predictions[k]["category_id"] for k in order], np.int64),
            dt_scores=np.array([predictions[k]["score"] for k in order], np.float64),
            dt_index=np.array(order, np.int64),
        )
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes, through torchvision.ops.box_iou."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    iou = tv_box_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()
    return np.nan_to_num(iou, nan=0.0)  # two empty boxes: 0/0
