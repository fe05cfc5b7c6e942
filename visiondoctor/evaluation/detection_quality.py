"""What a detector gets wrong at its display threshold: a confusion matrix with a background
row and column, and a per-image verdict (score, each box's error type) to show the worst
images first.

Both come from one matching, errors.classify_image (the TIDE-style rules of errors.py, IoU 0.5
foreground / 0.1 background, detections in descending score, crowd boxes not ground truth),
applied to the detections with score >= the display threshold, so the report's confusion
matrix, gallery and error split agree box for box.

Confusion matrix (rows = ground truth, columns = prediction; K classes then "background"):
    a true positive                      -> (its class, its class)
    a wrong-class prediction (TIDE "classification": IoU >= 0.5 with a box of another class)
                                         -> (that box's class, predicted class), when no prediction
                                            of the right class found that box and no higher-scored
                                            wrong-class prediction took it first (one-to-one)
    any other prediction (duplicate, poor localisation, background, both, or a wrong-class
    prediction on an already-taken box) -> (background, predicted class)
    a ground-truth box no prediction took -> (its class, background)
    Detections explained by a crowd box are not counted (as in COCO). Cell (background,
    background) is always 0.

Per-image score: F1 at the display threshold, 2·TP / (2·TP + FP + FN) with FN the ground-truth
boxes no prediction found, and 1.0 for an image with neither ground truth nor predictions. Not
per-image AP50: AP is undefined for an image without ground truth (yet its false positives are
errors worth seeing), and AP ranks an image by detections below the display threshold that the
gallery does not draw; F1 is defined for every image and judges exactly the drawn boxes.

Run-directory files (write_detection_quality):
    detection_confusion.json   detection_confusion()'s dict
    detection_per_image.json   per_image_quality()'s dict
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visiondoctor.evaluation.errors import ERROR_TYPES, FP_TYPES, ImageErrors, classify_image
from visiondoctor.evaluation.predictions import ImageBoxes, category_names, group_by_image
from visiondoctor.rundir import RunDir, write_json_atomic

BACKGROUND = "background"
TRUE_POSITIVE = "true_positive"
BOX_TYPES = (TRUE_POSITIVE, *ERROR_TYPES)  # the keys of per-image "counts"
CROWD = "crowd"  # a prediction explained by a crowd box (not counted), or a crowd ground-truth box
FOUND = "found"  # a ground-truth box found by a true positive
BACKGROUND_IOU = 0.1  # TIDE's t_b
MAX_DETS = 100  # per image and class, as COCO
EXAMPLES = 24  # images (worst first) whose boxes per_image_quality lists
CONFUSION_FILE = "detection_confusion.json"
PER_IMAGE_FILE = "detection_per_image.json"


@dataclass
class _Image:
    record: dict[str, Any]
    boxes: ImageBoxes
    errors: ImageErrors


def _classified(gt: dict, predictions: list[dict], score_threshold: float, iou_threshold: float,
                background_threshold: float, max_dets: int) -> list[_Image]:
    """Every image of gt, judged on its detections with score >= score_threshold."""
    grouped = group_by_image(gt, predictions, score_threshold)
    records = {im["id"]: im for im in gt.get("images", [])}
    return [_Image(records[i], b, classify_image(i, b, iou_threshold, background_threshold, max_dets))
            for i, b in grouped.items()]


def _confusion(images: list[_Image], gt: dict, score_threshold: float, iou_threshold: float) -> dict[str, Any]:
    names = category_names(gt)
    ids = sorted(names)
    position = {c: k for k, c in enumerate(ids)}
    bg = len(ids)
    matrix = np.zeros((bg + 1, bg + 1), np.int64)
    ignored = beyond = 0
    for image in images:
        e = image.errors
        taken = e.matched.copy()
        for d in e.detections:
            p = position[d.category]
            if d.tp:
                matrix[p, p] += 1
            elif d.error == "classification" and d.target is not None and not taken[d.target[1]]:
                taken[d.target[1]] = True
                matrix[position[int(e.gt_classes[d.target[1]])], p] += 1
            else:
                matrix[bg, p] += 1
        for g in np.flatnonzero(~taken):
            matrix[position[int(e.gt_classes[g])], bg] += 1
        ignored += e.ignored_crowd
        beyond += e.beyond_max_dets
    return {
        "classes": [names[c] for c in ids] + [BACKGROUND],
        "category_ids": ids,
        "matrix": matrix.tolist(),
        "rows": "ground-truth class; last row: predictions that match no ground-truth box",
        "columns": "predicted class; last column: ground-truth boxes that no prediction found",
        "score_threshold": float(score_threshold),
        "iou_threshold": float(iou_threshold),
        "num_images": len(images),
        "ignored_crowd": ignored,
        "beyond_max_dets": beyond,
    }


def detection_confusion(gt: dict, predictions: list[dict], score_threshold: float, iou_threshold: float = 0.5,
                        max_dets: int = MAX_DETS) -> dict[str, Any]:
    """The (K+1) x (K+1) confusion matrix of the detections with score >= score_threshold (module
    docstring). Returns {"classes": K names + "background", "category_ids": K dataset ids,
    "matrix": counts (rows = ground truth, columns = prediction), "rows", "columns" (what the
    axes mean), "score_threshold", "iou_threshold", "num_images", "ignored_crowd", "beyond_max_dets"}."""
    images = _classified(gt, predictions, score_threshold, iou_threshold, BACKGROUND_IOU, max_dets)
    return _confusion(images, gt, score_threshold, iou_threshold)


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _image_entry(image: _Image, predictions: list[dict], best: dict[Any, float], boxes: bool) -> dict[str, Any]:
    e, b = image.errors, image.boxes
    counts = {t: 0 for t in BOX_TYPES}
    for d in e.detections:
        counts[TRUE_POSITIVE if d.tp else str(d.error)] += 1
    counts["missed"] = int(e.missed.sum())
    tp = counts[TRUE_POSITIVE]
    fp = sum(counts[t] for t in FP_TYPES)
    fn = int((~e.matched).sum())
    entry: dict[str, Any] = {
        "image_id": image.record["id"],
        "file_name": str(image.record.get("file_name", "")),
        "width": image.record.get("width"),
        "height": image.record.get("height"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "num_gt": len(e.gt_classes),
        "num_predictions": len(e.detections),
        "max_score": best.get(image.record["id"]),
        "counts": counts,
        "ignored_crowd": e.ignored_crowd,
        "beyond_max_dets": e.beyond_max_dets,
    }
    if boxes:
        entry["predictions"] = [
            {"bbox": list(map(float, predictions[d.index]["bbox"])), "category_id": d.category, "score": d.score,
             "type": TRUE_POSITIVE if d.tp else d.error} for d in e.detections]
        entry["ground_truth"] = [{"bbox": _xywh(box), "category_id": int(c), "type": _gt_type(e, g)}
                                 for g, (box, c) in enumerate(zip(e.gt_boxes, e.gt_classes))]
        entry["ground_truth"] += [{"bbox": _xywh(box), "category_id": int(c), "type": CROWD}
                                  for box, c in zip(b.gt_boxes[b.gt_crowd], b.gt_classes[b.gt_crowd])]
    return entry


def _gt_type(e: ImageErrors, g: int) -> str:
    """found / missed / classification / localisation (a wrong-class or poorly placed prediction points at it)."""
    if e.matched[g]:
        return FOUND
    if e.missed[g]:
        return "missed"
    return next(d.error for d in e.detections if d.error in ("classification", "localisation")
                and d.target is not None and d.target[1] == g)


def _per_image(images: list[_Image], predictions: list[dict], score_threshold: float, iou_threshold: float,
               background_threshold: float, examples: int) -> dict[str, Any]:
    best: dict[Any, float] = {}
    for p in predictions:
        best[p["image_id"]] = max(best.get(p["image_id"], p["score"]), p["score"])
    entries = [_image_entry(im, predictions, best, boxes=False) for im in images]
    order = sorted(range(len(images)), key=lambda k: (entries[k]["f1"], -_errors(entries[k]), k))
    worst = set(order[:examples])
    ranked = [_image_entry(images[k], predictions, best, boxes=True) if k in worst else entries[k] for k in order]
    return {
        "score_threshold": float(score_threshold),
        "iou_threshold": float(iou_threshold),
        "background_threshold": float(background_threshold),
        "score": "f1 at score_threshold: 2TP / (2TP + FP + FN); 1.0 with neither ground truth nor predictions",
        "types": list(BOX_TYPES),
        "num_images": len(images),
        "images_with_boxes": min(examples, len(images)),
        "images": ranked,
    }


def _errors(entry: dict[str, Any]) -> int:
    return sum(n for t, n in entry["counts"].items() if t != TRUE_POSITIVE)


def per_image_quality(gt: dict, predictions: list[dict], score_threshold: float, iou_threshold: float = 0.5,
                      background_threshold: float = BACKGROUND_IOU, max_dets: int = MAX_DETS, examples: int = EXAMPLES) -> dict[str, Any]:
    """Every image's F1 and error counts at score_threshold, worst first (lowest F1; ties: more
    errors first, then the order of gt["images"]).

    Returns {"score_threshold", "iou_threshold", "background_threshold", "score" (its definition),
    "types": BOX_TYPES, "num_images", "images_with_boxes", "images": [{"image_id", "file_name",
    "width", "height", "f1", "num_gt", "num_predictions" (>= score_threshold), "max_score" (best
    score of the image at any threshold, null without predictions), "counts": {type: n}, "ignored_crowd",
    "beyond_max_dets"}, ...]}. The first `examples` images also list their boxes:
    "predictions": [{"bbox" (xywh), "category_id", "score", "type": true_positive | an error type}]
    and "ground_truth": [{"bbox", "category_id", "type": found | missed | classification |
    localisation (the error whose prediction points at it) | crowd}]."""
    images = _classified(gt, predictions, score_threshold, iou_threshold, background_threshold, max_dets)
    return _per_image(images, predictions, score_threshold, iou_threshold, background_threshold, examples)


def write_detection_quality(run: RunDir | Path, gt: dict, predictions: list[dict], score_threshold: float,
                            iou_threshold: float = 0.5, examples: int = EXAMPLES) -> tuple[Path, Path]:
    """Write detection_confusion.json and detection_per_image.json into the run directory (one
    matching for both) and return their paths."""
    folder = run.path if isinstance(run, RunDir) else Path(run)
    images = _classified(gt, predictions, score_threshold, iou_threshold, BACKGROUND_IOU, MAX_DETS)
    confusion = _confusion(images, gt, score_threshold, iou_threshold)
    per_image = _per_image(images, predictions, score_threshold, iou_threshold, BACKGROUND_IOU, examples)
    return (write_json_atomic(folder / CONFUSION_FILE, confusion),
            write_json_atomic(folder / PER_IMAGE_FILE, per_image))
