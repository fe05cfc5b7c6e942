"""Bootstrap intervals of COCO mAP over the evaluation images, and the paired test between two models
(visiondoctor.evaluation.bootstrap)."""
from __future__ import annotations

import numpy as np
import pytest

from visiondoctor.evaluation.bootstrap import (Interval, bootstrap_interval, compare_predictions, compare_scores,
                                               image_scores, resample_indices)
from visiondoctor.evaluation.coco import evaluate_detections


def ground_truth(num_images: int, seed: int, first_id: int = 1) -> dict:
    """COCO ground truth: 3 boxes per image, 2 classes, sides 8-50 px (some small)."""
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    for image_id in range(first_id, first_id + num_images):
        gt["images"].append({"id": image_id, "file_name": f"{image_id}.png", "width": 200, "height": 200})
        for _ in range(3):
            x, y, w = rng.uniform(0, 150), rng.uniform(0, 150), rng.uniform(8, 50)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "bbox": [x, y, w, w],
                                      "category_id": int(rng.integers(1, 3)), "area": w * w, "iscrowd": 0})
    return gt


def results(gt: dict, recall: float, seed: int) -> list[dict]:
    """A model that finds each box with probability `recall` (slightly shifted, higher scores) and
    adds two false positives per image: the same per-image quality whatever the number of images."""
    rng = np.random.default_rng(seed)
    predictions = []
    for a in gt["annotations"]:
        if rng.random() < recall:
            x, y, w, h = a["bbox"]
            predictions.append({"image_id": a["image_id"], "category_id": a["category_id"],
                                "score": float(rng.uniform(0.3, 1)),
                                "bbox": [x + rng.normal(0, 1.5), y + rng.normal(0, 1.5), w, h]})
    for image in gt["images"]:
        for _ in range(2):
            predictions.append({"image_id": image["id"], "category_id": int(rng.integers(1, 3)),
                                "score": float(rng.uniform(0, 0.6)),
                                "bbox": [rng.uniform(0, 150), rng.uniform(0, 150), 20.0, 20.0]})
    return predictions


def synthetic_split(num_images: int, recall: float, seed: int, first_id: int = 1) -> tuple[dict, list[dict]]:
    gt = ground_truth(num_images, seed, first_id)
    return gt, results(gt, recall, seed + 1)


def width(interval: Interval) -> float:
    return interval.high - interval.low


def test_without_resampling_the_per_image_accumulation_is_the_coco_evaluation():
    gt, predictions = synthetic_split(60, recall=0.7, seed=0)
    scores = image_scores(gt, predictions)
    keys = ("map", "map50", "map75", "map_small", "map_medium")
    reference = evaluate_detections(gt, predictions)
    assert scores.metrics(None, keys) == pytest.approx({k: reference[k] for k in keys}, abs=1e-12)
    # A resample without repeats is the evaluation of those images alone.
    subset = np.arange(0, 60, 3)
    ids = {gt["images"][i]["id"] for i in subset}
    sub_gt = {**gt, "images": [gt["images"][i] for i in subset]}
    on_subset = evaluate_detections(sub_gt, [p for p in predictions if p["image_id"] in ids])
    assert scores.metrics(subset, keys) == pytest.approx({k: on_subset[k] for k in keys}, abs=1e-12)


def test_interval_covers_the_point_estimate_and_shrinks_with_more_images():
    intervals = {n: bootstrap_interval(*synthetic_split(n, recall=0.7, seed=n), keys=("map", "map50"), resamples=300)
                 for n in (40, 400)}
    for n, by_metric in intervals.items():
        for key, iv in by_metric.items():
            assert iv.low < iv.value < iv.high, (n, key, iv)
    for key in ("map", "map50"):  # ten times the images: about a third of the width (1 / sqrt(10))
        assert width(intervals[400][key]) < 0.6 * width(intervals[40][key]), (key, intervals)
        assert width(intervals[400][key]) > 0


def test_paired_test_flags_a_clearly_better_model_and_not_identical_ones():
    gt = ground_truth(80, seed=3)
    good, poor = results(gt, recall=0.9, seed=4), results(gt, recall=0.4, seed=5)
    result = compare_predictions(gt, {"poor": poor, "good": good, "twin": list(good)}, resamples=300)
    better = result.difference("good", "poor", "map")
    assert better.a == "good" and better.b == "poor" and better.value > 0 and better.significant
    assert better.low > 0
    twins = result.difference("good", "twin", "map50")
    assert twins.value == 0 and not twins.significant
    assert result.intervals["good"]["map"].value > result.intervals["poor"]["map"].value
    assert "300 resamples" in result.describe() and "80 evaluated images" in result.describe()
    assert result.to_dict()["differences"][0]["significant"] in (True, False)


def test_same_seed_same_interval_and_different_images_are_refused():
    gt, predictions = synthetic_split(30, recall=0.6, seed=1)
    assert bootstrap_interval(gt, predictions, resamples=50) == bootstrap_interval(gt, predictions, resamples=50)
    assert (resample_indices(30, 5, seed=0) == resample_indices(30, 5, seed=0)).all()
    other_gt, other_predictions = synthetic_split(30, recall=0.6, seed=1, first_id=100)
    with pytest.raises(ValueError, match="different images"):
        compare_scores({"a": image_scores(gt, predictions), "b": image_scores(other_gt, other_predictions)})
