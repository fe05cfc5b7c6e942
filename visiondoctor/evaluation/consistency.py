"""Score-IoU consistency: do a detector's scores rank its boxes by quality?

For each detection (score >= min_score), its IoU with the best-overlapping ground-truth box
of the same class in the same image (0 when there is none; not one-to-one, so a duplicate
of a good box also scores a high IoU). A healthy detector gives a clearly positive Spearman
rank correlation between score and IoU; a population of confident detections on nothing
(score >= 0.5, IoU < 0.3) points at a train/inference inconsistency (a different
pre-processing, box decoding or score activation at inference than in training).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from visiondoctor.evaluation.predictions import box_iou, category_names, group_by_image

HIGH_SCORE = 0.5
LOW_IOU = 0.3
HIST_BINS = 10
MAX_PAIRS = 2000  # pairs kept for a scatter plot


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation over the pairs where both are finite; None when undefined
    (fewer than 3 pairs, or a constant side, e.g. a head whose confidence never changes)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return None
    return float(spearmanr(x[ok], y[ok]).statistic)


def best_iou_per_detection(gt: dict, predictions: list[dict], min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, ious, category ids) of the detections with score >= min_score, in the predictions' order."""
    keep, scores, ious, classes = [], [], [], []
    for boxes in group_by_image(gt, predictions, min_score).values():
        if len(boxes.dt_boxes) == 0:
            continue
        usable = ~boxes.gt_crowd
        iou = box_iou(boxes.dt_boxes, boxes.gt_boxes[usable])
        same = boxes.dt_classes[:, None] == boxes.gt_classes[usable][None, :]
        best = np.where(same, iou, 0.0).max(axis=1) if iou.shape[1] else np.zeros(len(boxes.dt_boxes))
        keep.append(boxes.dt_index)
        scores.append(boxes.dt_scores)
        ious.append(best)
        classes.append(boxes.dt_classes)
    if not keep:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    order = np.argsort(np.concatenate(keep), kind="mergesort")
    return np.concatenate(scores)[order], np.concatenate(ious)[order], np.concatenate(classes)[order]


def score_iou_consistency(gt: dict, predictions: list[dict], min_score: float = 0.05) -> dict:
    """Rank correlation of score and best same-class IoU, the high-score/low-IoU population, histograms.

    Returns: n, spearman (None if undefined), mean_iou, high_score_low_iou {count, share_of_high_score,
    share_of_all, score_threshold, iou_threshold}, high_score_low_iou_share (= share_of_high_score),
    mean_iou_by_score_bin {bins, mean_iou, count}, iou_histogram {bins, counts},
    joint_histogram {score_bins, iou_bins, counts[score][iou]}, per_class {name: {n, spearman, mean_iou}},
    pairs {score, iou} (at most 2000, an evenly spaced sample in score order, for a scatter plot).
    """
    scores, ious, classes = best_iou_per_detection(gt, predictions, min_score)
    n = len(scores)
    high = scores >= HIGH_SCORE
    bad = high & (ious < LOW_IOU)
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    score_bin = np.clip(np.digitize(scores, edges[1:-1]), 0, HIST_BINS - 1)
    iou_bin = np.clip(np.digitize(ious, edges[1:-1]), 0, HIST_BINS - 1)
    joint = np.zeros((HIST_BINS, HIST_BINS), np.int64)
    np.add.at(joint, (score_bin, iou_bin), 1)
    bin_counts = joint.sum(axis=1)
    bin_iou_sum = np.bincount(score_bin, weights=ious, minlength=HIST_BINS)
    names = category_names(gt)
    per_class = {}
    for cid in np.unique(classes):
        sel = classes == cid
        per_class[names[int(cid)]] = {"n": int(sel.sum()), "spearman": spearman(scores[sel], ious[sel]),
                                      "mean_iou": float(ious[sel].mean())}
    by_score = np.argsort(scores, kind="mergesort")
    sample = by_score if n <= MAX_PAIRS else by_score[np.linspace(0, n - 1, MAX_PAIRS).round().astype(int)]
    share_high = float(bad.sum() / high.sum()) if high.any() else 0.0
    return {
        "n": n,
        "min_score": min_score,
        "spearman": spearman(scores, ious),
        "mean_iou": float(ious.mean()) if n else None,
        "high_score_low_iou_share": share_high,
        "high_score_low_iou": {"count": int(bad.sum()), "share_of_high_score": share_high,
                               "share_of_all": float(bad.mean()) if n else 0.0,
                               "score_threshold": HIGH_SCORE, "iou_threshold": LOW_IOU},
        "mean_iou_by_score_bin": {"bins": [float(e) for e in edges], "count": [int(c) for c in bin_counts],
                                  "mean_iou": [float(s / c) if c else None for s, c in zip(bin_iou_sum, bin_counts)]},
        "iou_histogram": {"bins": [float(e) for e in edges], "counts": [int(c) for c in joint.sum(axis=0)]},
        "joint_histogram": {"score_bins": [float(e) for e in edges], "iou_bins": [float(e) for e in edges],
                            "counts": joint.tolist()},
        "per_class": per_class,
        "pairs": {"score": [float(scores[i]) for i in sample], "iou": [float(ious[i]) for i in sample]},
    }
