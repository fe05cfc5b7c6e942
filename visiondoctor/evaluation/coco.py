"""COCO detection metrics through faster-coco-eval, with the stable keys of `metrics.json`.

    evaluate_detections(gt, predictions, max_images=0, seed=0) -> metrics dict
    pr_curves(gt, predictions, max_images=0, seed=0) -> {"iou": 0.5, "curves": {class: {...}}}
    coco_evaluation(gt, predictions, max_images=0, seed=0) -> CocoEvaluation (both, one run)

Conventions (those of COCO, kept on purpose so figures compare with published ones):
- A category with no ground truth in the evaluated images has no AP: it is reported as None
  and left out of every mean (COCOeval writes -1 there; every -1 becomes None / JSON null).
  Detections of such a category therefore cost nothing.
- AP is the 101-point interpolated average over IoU 0.50:0.95 (`map`), at 0.50 (`map50`) and
  0.75; small/medium/large use the ground-truth `area` (w*h when the file has none) with
  COCO's limits 32² and 96²; recall is at most 1, 10, 100 detections per image and class.
- The whole split is evaluated unless `max_images` > 0; then a deterministic sample
  (numpy generator seeded with `seed`) is evaluated and `subset` records its size.

The ground truth is copied with annotation ids renumbered from 1: COCO's matcher marks
"unmatched" with id 0, so an annotation whose id is 0 (Roboflow exports start at 0) would be
matched but not counted by pycocotools; see tests/test_evaluation_coco.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from visiondoctor.evaluation.predictions import category_names, check_predictions

logger = logging.getLogger(__name__)

METRIC_KEYS = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")
# faster-coco-eval's stats_as_dict labels for the default area ranges and maxDets [1, 10, 100].
_FCE_LABELS = ("AP_all", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large", "AR_all", "AR_second", "AR_third")


@dataclass
class CocoEvaluation:
    """The metrics (stable keys) and the per-class precision-recall curves of one COCOeval run."""

    metrics: dict[str, Any]
    curves: dict[str, Any]


def sample_images(image_ids: list[int], max_images: int, seed: int) -> list[int]:
    """All ids (sorted) when max_images <= 0 or covers them; else a deterministic sample of max_images."""
    ids = sorted(image_ids)
    if max_images <= 0 or max_images >= len(ids):
        return ids
    rng = np.random.default_rng(seed)
    return sorted(int(ids[i]) for i in rng.choice(len(ids), size=max_images, replace=False))


def _none_if_undefined(value: float) -> float | None:
    value = float(value)
    return None if value < 0 or not np.isfinite(value) else value


def _prepare(gt: dict, predictions: list[dict], image_ids: list[int]) -> tuple[dict, list[dict]]:
    """Minimal copies for COCOeval (it mutates what it is given), restricted to `image_ids`."""
    keep = set(image_ids)
    images = [{"id": im["id"], "width": im.get("width", 0), "height": im.get("height", 0)}
              for im in gt["images"] if im["id"] in keep]
    annotations = []
    for a in gt.get("annotations", []):
        if a["image_id"] not in keep:
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        annotations.append({"id": len(annotations) + 1, "image_id": a["image_id"], "category_id": a["category_id"],
                            "bbox": [x, y, w, h], "area": float(a.get("area") or w * h),
                            "iscrowd": int(a.get("iscrowd", 0))})
    categories = [{"id": c["id"], "name": str(c["name"])} for c in gt["categories"]]
    dets = [{"image_id": p["image_id"], "category_id": p["category_id"], "bbox": [float(v) for v in p["bbox"]],
             "score": float(p["score"])} for p in predictions if p["image_id"] in keep]
    return {"images": images, "annotations": annotations, "categories": categories}, dets


def _run_cocoeval(gt: dict, dets: list[dict]):
    quiet = logging.getLogger("faster_coco_eval").debug
    coco_gt = COCO(gt, print_function=quiet)
    coco_dt = coco_gt.loadRes(dets)
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=quiet)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def coco_evaluation(gt: dict, predictions: list[dict], max_images: int = 0, seed: int = 0) -> CocoEvaluation:
    """Evaluate COCO results against a COCO ground-truth dict; metrics and PR curves from one run."""
    for key in ("images", "categories"):
        if not isinstance(gt.get(key), list):
            raise ValueError(f"ground truth: '{key}' must be a list (a COCO dict has images, annotations, categories)")
    all_ids = [im["id"] for im in gt["images"]]
    check_predictions(predictions, set(all_ids), {c["id"] for c in gt["categories"]})
    image_ids = sample_images(all_ids, max_images, seed)
    gt_copy, dets = _prepare(gt, predictions, image_ids)
    names = category_names(gt)

    metrics: dict[str, Any] = {k: None for k in METRIC_KEYS}
    per_class: dict[str, dict[str, float | None]] = {names[cid]: {"ap": None, "ap50": None} for cid in sorted(names)}
    curves: dict[str, Any] = {}
    if gt_copy["images"] and gt_copy["categories"]:
        evaluator = _run_cocoeval(gt_copy, dets)
        stats = evaluator.stats_as_dict
        for key, label in zip(METRIC_KEYS, _FCE_LABELS):
            metrics[key] = _none_if_undefined(stats[label])
        precision = np.asarray(evaluator.eval["precision"])  # [IoU T, recall R, class K, area A, maxDets M]
        scores = np.asarray(evaluator.eval["scores"])
        recall_points = [float(r) for r in evaluator.params.recThrs]
        for k, cid in enumerate(evaluator.params.catIds):
            p = precision[:, :, k, 0, -1]
            if not (p > -1).any():
                continue  # no ground truth of this class: AP undefined (None), no curve
            per_class[names[cid]] = {"ap": float(p[p > -1].mean()), "ap50": float(p[0][p[0] > -1].mean())}
            curves[names[cid]] = {
                "recall": recall_points,
                "precision": [float(v) for v in p[0]],
                "precision_50_95": [float(v) for v in p.mean(axis=0)],
                "scores": [float(v) for v in scores[0, :, k, 0, -1]],
                "ap50": per_class[names[cid]]["ap50"],
            }
    metrics["per_class"] = per_class
    metrics["num_images"] = len(image_ids)
    metrics["num_detections"] = len(dets)
    if max_images > 0:
        metrics["subset"] = {"evaluated_images": len(image_ids), "total_images": len(all_ids), "seed": seed}
    return CocoEvaluation(metrics, {"iou": 0.5, "curves": curves})


def evaluate_detections(gt: dict, predictions: list[dict], max_images: int = 0, seed: int = 0) -> dict:
    """The stable metrics.json keys: map, map50, map75, map_small/medium/large, mar_1/10/100,
    per_class (name -> {ap, ap50}), num_images, num_detections, and `subset` when max_images > 0.
    Undefined values (no ground truth) are None."""
    return coco_evaluation(gt, predictions, max_images, seed).metrics


def pr_curves(gt: dict, predictions: list[dict], max_images: int = 0, seed: int = 0) -> dict:
    """Per-class precision at COCO's 101 recall points: {"iou": 0.5, "curves": {class: {"recall",
    "precision" (IoU 0.5), "precision_50_95" (mean over IoU 0.50:0.95), "scores" (the score
    reached at each recall point, 0 where never reached), "ap50"}}}. Precision is COCO's
    interpolated precision (0 beyond the highest recall reached). Classes without ground truth
    have no curve."""
    return coco_evaluation(gt, predictions, max_images, seed).curves
