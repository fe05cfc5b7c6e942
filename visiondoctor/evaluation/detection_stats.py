"""Statistics of a detector's raw output, independent of the ground truth.

These are the numbers the hand-written post-mortems computed first (see the seeds: "0
detections at 0.5, 100 % of anchors at 0.4", "boxes outside the image"): how many
detections each image gets at several score thresholds, how the scores are distributed,
and how many boxes leave the image (a sign of box regression out of range).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from visiondoctor.evaluation.predictions import check_predictions

SCORE_BINS = 20


def _threshold_key(t: float) -> str:
    return f"{t:g}"


def detection_statistics(predictions: list[dict], images: list[dict],
                         thresholds: Sequence[float] = (0.05, 0.25, 0.5), outside_tolerance: float = 0.5) -> dict:
    """Detections per image at each threshold, the score histogram and the share of boxes outside the image.

    `images` are COCO image dicts (id, width, height); every image counts, with zero
    detections when it has none. A box is "partly outside" when it crosses an image border by
    more than `outside_tolerance` pixels (predictions rounded to 2 decimals stay inside).
    Returns:
      per_image: {"0.05": {"mean", "median", "max", "zero_share"}, ...} (keys are the thresholds as text)
      score_histogram: {"bins": 21 edges over [0, 1], "counts": 20 counts}; scores outside [0, 1]
        are counted in `scores_outside_unit_interval`, not in the histogram
      outside_image_share / outside_image_count: boxes partly outside (over all predictions)
      fully_outside_count, degenerate_count (width or height <= 0), num_detections, num_images,
      score_min / score_max / score_mean (None without predictions)
    """
    sizes = {im["id"]: (float(im.get("width") or 0), float(im.get("height") or 0)) for im in images}
    check_predictions(predictions, set(sizes))
    n = len(predictions)
    image_order = {image_id: i for i, image_id in enumerate(sizes)}
    image_index = np.array([image_order[p["image_id"]] for p in predictions], np.int64)
    scores = np.array([float(p["score"]) for p in predictions], np.float64)
    boxes = np.array([p["bbox"] for p in predictions], np.float64).reshape(-1, 4)

    per_image = {}
    for t in sorted(thresholds):
        counts = np.bincount(image_index[scores >= t], minlength=len(sizes)).astype(np.float64)
        if len(counts):
            per_image[_threshold_key(t)] = {"mean": float(counts.mean()), "median": float(np.median(counts)),
                                            "max": int(counts.max()), "zero_share": float((counts == 0).mean())}
        else:
            per_image[_threshold_key(t)] = {"mean": None, "median": None, "max": None, "zero_share": None}

    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    in_unit = (scores >= 0) & (scores <= 1)
    hist, _ = np.histogram(scores[in_unit], bins=edges)

    wh = np.array([sizes[p["image_id"]] for p in predictions], np.float64).reshape(-1, 2)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    tol = outside_tolerance
    outside = (x0 < -tol) | (y0 < -tol) | (x1 > wh[:, 0] + tol) | (y1 > wh[:, 1] + tol)
    fully_outside = (x1 <= 0) | (y1 <= 0) | (x0 >= wh[:, 0]) | (y0 >= wh[:, 1])
    degenerate = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)

    return {
        "num_images": len(sizes),
        "num_detections": n,
        "per_image": per_image,
        "score_histogram": {"bins": [float(e) for e in edges], "counts": [int(c) for c in hist]},
        "scores_outside_unit_interval": int((~in_unit).sum()),
        "score_min": float(scores.min()) if n else None,
        "score_max": float(scores.max()) if n else None,
        "score_mean": float(scores.mean()) if n else None,
        "outside_image_share": float(outside.mean()) if n else 0.0,
        "outside_image_count": int(outside.sum()),
        "fully_outside_count": int(fully_outside.sum()),
        "degenerate_count": int(degenerate.sum()),
    }
