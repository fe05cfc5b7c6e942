"""A TIDE-style split of the AP a detector misses into error types (Bolya et al., ECCV 2020).

Method (IoU 0.5 foreground threshold t_f, 0.1 background threshold t_b, as in TIDE):
1. Matching, as COCO's AP50 does it: per image, detections in descending score order (at most
   `max_dets` per image and class); a detection is a true positive when an unmatched
   ground-truth box of its class overlaps it with IoU >= t_f (the best such box is taken).
   Crowd boxes are not ground truth; a detection they explain (same class, IoU >= t_f) is ignored.
2. Each false positive gets one type, checked in this order, with IoU_same / IoU_other the
   largest IoU with a ground-truth box of the same / of another class:
     duplicate       IoU_same >= t_f (that box is already matched by a higher-scored detection)
     classification  IoU_other >= t_f (right place, wrong class)
     localisation    t_b <= IoU_same < t_f (right class, box off)
     both            t_b <= IoU_other < t_f (wrong class and box off)
     background      everything else (IoU < t_b with every box)
   A ground-truth box never matched is *missed* unless it is the target (best-overlapping box)
   of a classification or localisation error: fixing that error would find it.
3. The AP gained by fixing each type (ΔAP, "dap"), with every other error left as it is, is the
   change in mAP50 (mean over classes with ground truth) after an oracle correction:
     classification  the detection takes the class of its target box and becomes a true positive,
                     unless that box is already matched (or claimed by a higher-scored fix): then removed
     localisation    the detection becomes a true positive of its target box, with the same proviso
     both, duplicate, background   the detection is removed
     missed          the missed boxes are taken out of the ground-truth count
   Two further oracles: all false positives removed, and all false negatives removed.
   AP is COCO's 101-point interpolated AP; without any crowd box it equals faster-coco-eval's AP50
   (tested). When a fix leaves a class with no ground truth its AP counts as 0 (TIDE's convention).

`classify_image` (steps 1 and 2 on one image) is shared with the per-image quality and the
detection confusion matrix (confusion.py), so every view of a run's errors uses one definition.

Hand-written because the reference implementation (tidecv) is unmaintained and pins old
dependencies; the IoUs come from torchvision.ops.box_iou.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from visiondoctor.evaluation.predictions import ImageBoxes, box_iou, category_names, group_by_image

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
FP_TYPES = ERROR_TYPES[:-1]  # the types of a false positive
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def average_precision(scores: np.ndarray, true_positive: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated AP of one class (detections in any order; stable sort by score)."""
    if num_gt <= 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    tp = np.asarray(true_positive, bool)[order]
    if not len(tp):
        return 0.0
    tps, fps = np.cumsum(tp), np.cumsum(~tp)
    recall = tps / num_gt
    precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


@dataclass
class BoxError:
    """One kept detection of an image, as the matching judged it."""

    category: int
    score: float
    tp: bool
    error: str | None = None  # one of FP_TYPES for a false positive
    target: tuple[int, int] | None = None  # (image id, gt index): the box it found (tp) or points at (cls/loc)
    target_category: int | None = None
    index: int = -1  # position in the predictions list


@dataclass
class ImageErrors:
    """classify_image's verdict on one image. GT indices count the non-crowd boxes only."""

    image_id: int
    detections: list[BoxError]  # kept detections, descending score; crowd-explained ones left out
    gt_boxes: np.ndarray  # (G, 4) xyxy, non-crowd
    gt_classes: np.ndarray  # (G,)
    matched: np.ndarray  # (G,) bool: found by a true positive
    missed: np.ndarray  # (G,) bool: not found, and no classification/localisation error points at it
    ignored_crowd: int = 0
    beyond_max_dets: int = 0


def classify_image(image_id: int, b: ImageBoxes, t_f: float = 0.5, t_b: float = 0.1, max_dets: int = 100) -> ImageErrors:
    """Steps 1 and 2 of the module docstring on one image's boxes (detections in descending score)."""
    real = ~b.gt_crowd
    gt_boxes, gt_cls = b.gt_boxes[real], b.gt_classes[real]
    per_class_seen: dict[int, int] = defaultdict(int)
    keep = []
    for d, c in enumerate(b.dt_classes):
        per_class_seen[int(c)] += 1
        if per_class_seen[int(c)] <= max_dets:
            keep.append(d)
    dt_boxes, dt_cls, dt_scores, dt_index = b.dt_boxes[keep], b.dt_classes[keep], b.dt_scores[keep], b.dt_index[keep]
    iou = box_iou(dt_boxes, gt_boxes)
    crowd_iou = box_iou(dt_boxes, b.gt_boxes[~real])
    crowd_same = (b.gt_classes[~real][None, :] == dt_cls[:, None]) & (crowd_iou >= t_f)
    used = np.zeros(len(gt_boxes), bool)
    out = ImageErrors(image_id, [], gt_boxes, gt_cls, used, np.zeros(len(gt_boxes), bool),
                      beyond_max_dets=len(b.dt_classes) - len(keep))
    for d in range(len(dt_boxes)):
        c, score, index = int(dt_cls[d]), float(dt_scores[d]), int(dt_index[d])
        same = gt_cls == c
        row = iou[d] if len(gt_boxes) else np.zeros(0)
        free = np.where(same & ~used & (row >= t_f), row, -1.0)
        if free.size and free.max() >= 0:
            g = int(free.argmax())
            used[g] = True
            out.detections.append(BoxError(c, score, True, target=(image_id, g), target_category=c, index=index))
            continue
        if crowd_same[d].any():
            out.ignored_crowd += 1
            continue
        iou_same = np.where(same, row, 0.0)
        iou_other = np.where(~same, row, 0.0)
        best_same = float(iou_same.max()) if row.size else 0.0
        best_other = float(iou_other.max()) if row.size else 0.0
        det = BoxError(c, score, False, index=index)
        if best_same >= t_f:
            det.error = "duplicate"
        elif best_other >= t_f:
            det.error, g = "classification", int(iou_other.argmax())
            det.target, det.target_category = (image_id, g), int(gt_cls[g])
        elif best_same >= t_b:
            det.error, g = "localisation", int(iou_same.argmax())
            det.target, det.target_category = (image_id, g), c
        elif best_other >= t_b:
            det.error = "both"
        else:
            det.error = "background"
        out.detections.append(det)
    covered = {d.target[1] for d in out.detections if d.error in ("classification", "localisation") and d.target}
    out.missed[:] = [not used[g] and g not in covered for g in range(len(gt_boxes))]
    return out


@dataclass
class _Split:
    detections: list[BoxError] = field(default_factory=list)
    num_gt: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    matched: set[tuple[int, int]] = field(default_factory=set)
    missed: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    ignored_crowd: int = 0
    beyond_max_dets: int = 0


def _classify(gt: dict, predictions: list[dict], t_f: float, t_b: float, max_dets: int, min_score: float) -> _Split:
    split = _Split()
    for image_id, b in group_by_image(gt, predictions, min_score).items():
        image = classify_image(image_id, b, t_f, t_b, max_dets)
        for c in image.gt_classes:
            split.num_gt[int(c)] += 1
        for c in image.gt_classes[image.missed]:
            split.missed[int(c)] += 1
        split.matched.update((image_id, int(g)) for g in np.flatnonzero(image.matched))
        split.detections += image.detections
        split.ignored_crowd += image.ignored_crowd
        split.beyond_max_dets += image.beyond_max_dets
    return split


def _class_aps(dets: list[tuple[int, float, bool]], num_gt: dict[int, int], classes: list[int]) -> dict[int, float]:
    by_class: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for c, s, tp in dets:
        by_class[c].append((s, tp))
    out = {}
    for c in classes:
        rows = by_class.get(c, [])
        out[c] = average_precision(np.array([s for s, _ in rows]), np.array([t for _, t in rows], bool), num_gt.get(c, 0))
    return out


def _fixed(split: _Split, fix: str) -> tuple[list[tuple[int, float, bool]], dict[int, int]]:
    """The (category, score, tp) list and GT counts after the oracle for `fix`."""
    num_gt = dict(split.num_gt)
    dets: list[tuple[int, float, bool]] = []
    claimed = set(split.matched)
    for d in sorted(split.detections, key=lambda d: -d.score):
        if d.tp:
            dets.append((d.category, d.score, True))
        elif fix == "false_positives" or d.error == fix:
            if fix in ("classification", "localisation") and d.target not in claimed:
                claimed.add(d.target)
                dets.append((d.target_category, d.score, True))
            # else: removed
        else:
            dets.append((d.category, d.score, False))
    if fix == "missed":
        for c, n in split.missed.items():
            num_gt[c] -= n
    if fix == "false_negatives":
        tp_count: dict[int, int] = defaultdict(int)
        for c, _, tp in dets:
            tp_count[c] += tp
        num_gt = {c: tp_count.get(c, 0) for c in num_gt}
    return dets, num_gt


def tide_errors(gt: dict, predictions: list[dict], iou_threshold: float = 0.5, background_threshold: float = 0.1,
                max_dets: int = 100, min_score: float = 0.0) -> dict:
    """Count each error type and the mAP50 gained by fixing it (see the module docstring for the method).

    Returns: map50 (this module's matching; COCO's AP50 without crowd boxes), dap {type: ΔmAP50},
    counts {type: n}, oracle {false_positives, false_negatives: ΔmAP50}, per_class {name: {ap50,
    num_gt, true_positives, <type>: count}}, per_class_dap {name: {type: ΔAP50 of that class}},
    num_detections, num_gt, true_positives, ignored_crowd, beyond_max_dets, iou_threshold,
    background_threshold. AP values are fractions in [0, 1], like metrics.json.
    """
    split = _classify(gt, predictions, iou_threshold, background_threshold, max_dets, min_score)
    names = category_names(gt)
    classes = sorted(c for c, n in split.num_gt.items() if n > 0)  # classes without GT have no AP (COCO)
    base_dets = [(d.category, d.score, d.tp) for d in split.detections]
    base = _class_aps(base_dets, split.num_gt, classes)
    base_map = float(np.mean([base[c] for c in classes])) if classes else None

    counts = {t: sum(d.error == t for d in split.detections) for t in FP_TYPES}
    counts["missed"] = sum(split.missed.values())
    dap, per_class_dap = {}, {names[c]: {} for c in classes}
    oracle = {}
    for fix in (*ERROR_TYPES, "false_positives", "false_negatives"):
        fixed = _class_aps(*_fixed(split, fix), classes)
        gain = float(np.mean([fixed[c] for c in classes]) - base_map) if classes else 0.0
        if fix in ERROR_TYPES:
            dap[fix] = gain
            for c in classes:
                per_class_dap[names[c]][fix] = fixed[c] - base[c]
        else:
            oracle[fix] = gain

    per_class = {}
    for c in sorted(set(classes) | {d.category for d in split.detections}):
        row = {"ap50": base.get(c), "num_gt": split.num_gt.get(c, 0),
               "true_positives": sum(d.tp and d.category == c for d in split.detections)}
        row.update({t: sum(d.error == t and d.category == c for d in split.detections) for t in FP_TYPES})
        row["missed"] = split.missed.get(c, 0)
        per_class[names[c]] = row
    return {
        "dap": dap,
        "counts": counts,
        "oracle": oracle,
        "map50": base_map,
        "per_class": per_class,
        "per_class_dap": per_class_dap,
        "num_detections": len(split.detections),
        "num_gt": sum(split.num_gt.values()),
        "true_positives": sum(d.tp for d in split.detections),
        "ignored_crowd": split.ignored_crowd,
        "beyond_max_dets": split.beyond_max_dets,
        "iou_threshold": iou_threshold,
        "background_threshold": background_threshold,
    }
