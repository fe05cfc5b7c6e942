"""Detection statistics, the TIDE-style error split and score-IoU consistency on hand-made cases."""
from __future__ import annotations

import json

import numpy as np
import pytest

from visiondoctor.evaluation.coco import evaluate_detections
from visiondoctor.evaluation.consistency import score_iou_consistency, spearman
from visiondoctor.evaluation.detection_stats import detection_statistics
from visiondoctor.evaluation.errors import average_precision, tide_errors

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]


def det(image_id: int, cat: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def coco(boxes: list[tuple[int, int, list[float]]], images: int = 1, size: int = 300) -> dict:
    """GT dict from (image_id, category_id, xywh) triples."""
    return {"images": [{"id": i + 1, "width": size, "height": size} for i in range(images)],
            "categories": CATEGORIES,
            "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for k, (i, c, b) in enumerate(boxes)]}


# ------------------------------------------------------------------ detection statistics

def test_detection_statistics_hand_made():
    images = [{"id": 1, "width": 100, "height": 80}, {"id": 2, "width": 100, "height": 80}, {"id": 3, "width": 50, "height": 50}]
    preds = [
        det(1, 1, [10, 10, 20, 20], 0.9),
        det(1, 1, [90, 10, 20, 20], 0.3),  # crosses the right border (x1 = 110 > 100)
        det(1, 2, [10, 10, 20, 20], 0.1),
        det(2, 1, [-5, 0, 20, 20], 0.6),  # crosses the left border
        det(2, 1, [0, 0, 100.3, 80], 0.04),  # 0.3 px over: within the tolerance
        det(2, 2, [200, 200, 10, 10], 0.55),  # fully outside
    ]
    s = detection_statistics(preds, images)
    assert s["num_images"] == 3 and s["num_detections"] == 6
    assert s["per_image"]["0.05"] == {"mean": 5 / 3, "median": 2.0, "max": 3, "zero_share": pytest.approx(1 / 3)}
    assert s["per_image"]["0.25"] == {"mean": 4 / 3, "median": 2.0, "max": 2, "zero_share": pytest.approx(1 / 3)}
    assert s["per_image"]["0.5"] == {"mean": 1.0, "median": 1.0, "max": 2, "zero_share": pytest.approx(1 / 3)}
    assert s["outside_image_count"] == 3 and s["outside_image_share"] == pytest.approx(0.5)
    assert s["fully_outside_count"] == 1 and s["degenerate_count"] == 0
    hist = s["score_histogram"]
    assert len(hist["bins"]) == len(hist["counts"]) + 1 == 21 and sum(hist["counts"]) == 6
    assert hist["counts"][0] == 1 and hist["counts"][2] == 1 and hist["counts"][18] == 1  # 0.04, 0.1, 0.9
    assert s["score_max"] == 0.9 and s["score_min"] == 0.04
    json.dumps(s, allow_nan=False)


def test_detection_statistics_without_predictions():
    s = detection_statistics([], [{"id": 7, "width": 10, "height": 10}])
    assert s["per_image"]["0.5"] == {"mean": 0.0, "median": 0.0, "max": 0, "zero_share": 1.0}
    assert s["outside_image_share"] == 0.0 and s["score_mean"] is None


# ------------------------------------------------------------------ TIDE-style errors

# One image, 300x300. Ground truth: A, C, D, E circles (class 1), B a square (class 2).
A, B, C, D, E = [10, 10, 40, 40], [150, 10, 40, 40], [250, 100, 30, 30], [10, 150, 40, 40], [150, 150, 40, 40]
TIDE_GT = coco([(1, 1, A), (1, 2, B), (1, 1, C), (1, 1, D), (1, 1, E)])
TIDE_PREDS = [
    det(1, 1, A, 0.9),  # true positive
    det(1, 1, [12, 12, 40, 40], 0.8),  # duplicate of A (IoU 0.82, A already matched)
    det(1, 2, D, 0.7),  # classification: on D, but says square
    det(1, 2, [170, 10, 40, 40], 0.6),  # localisation: square, IoU 1/3 with B
    det(1, 1, [150, 30, 40, 40], 0.5),  # both: circle, IoU 1/3 with the square B
    det(1, 1, [250, 250, 30, 30], 0.4),  # background
    det(1, 1, E, 0.3),  # true positive, ranked below three false positives
]  # C is never detected: missed


def test_tide_puts_each_error_in_its_bucket():
    t = tide_errors(TIDE_GT, TIDE_PREDS)
    assert t["counts"] == {"classification": 1, "localisation": 1, "both": 1, "duplicate": 1, "background": 1, "missed": 1}
    assert t["true_positives"] == 2 and t["num_gt"] == 5 and t["num_detections"] == 7
    circle, square = t["per_class"]["circle"], t["per_class"]["square"]
    assert (circle["duplicate"], circle["both"], circle["background"], circle["missed"]) == (1, 1, 1, 1)
    assert (square["classification"], square["localisation"]) == (1, 1)  # counted at the predicted class


def test_tide_delta_ap_by_hand():
    # Base: circle dets .9T .8F .5F .4F .3T over 4 GT -> precision 1 up to recall .25 (26 of COCO's
    # 101 recall points), 2/5 up to .5 (25 points): AP 36/101. Square: two false positives, AP 0.
    t = tide_errors(TIDE_GT, TIDE_PREDS)
    assert t["map50"] == pytest.approx(36 / 101 / 2)
    assert t["map50"] == pytest.approx(evaluate_detections(TIDE_GT, TIDE_PREDS)["map50"], abs=1e-12)
    dap = t["dap"]
    # Removing one of the three false positives above E lifts its precision to 2/4: AP 38.5/101.
    for kind in ("duplicate", "both", "background"):
        assert dap[kind] == pytest.approx(2.5 / 101 / 2)
    # Classification fix: the .7 detection becomes the circle D: .9T .8F .7T .5F .4F .3T, precision
    # 1 / 2/3 / 1/2 over recall .25 / .5 / .75 -> (26 + 25*2/3 + 25/2)/101.
    assert dap["classification"] == pytest.approx(((26 + 25 * 2 / 3 + 12.5) / 101 - 36 / 101) / 2)
    # Localisation fix: the square detection .6 becomes B's true positive after one FP: AP 0.5.
    assert dap["localisation"] == pytest.approx(0.25)
    # Missed fix: circle GT 4 -> 3: precision 1 to recall 1/3 (34 points), 0.4 to 2/3 (33 points).
    assert dap["missed"] == pytest.approx(((34 + 33 * 0.4) / 101 - 36 / 101) / 2)
    assert t["oracle"]["false_positives"] > max(dap[k] for k in ("duplicate", "both", "background"))
    assert t["per_class_dap"]["square"]["localisation"] == pytest.approx(0.5)


def test_tide_perfect_and_empty():
    gt = coco([(1, 1, A), (1, 2, B)])
    perfect = tide_errors(gt, [det(1, 1, A, 0.9), det(1, 2, B, 0.8)])
    assert perfect["map50"] == 1.0 and all(v == 0 for v in perfect["counts"].values())
    assert all(v == 0 for v in perfect["dap"].values())
    nothing = tide_errors(gt, [])
    assert nothing["map50"] == 0.0 and nothing["counts"]["missed"] == 2
    assert nothing["dap"]["missed"] == 0.0  # TIDE's convention: a class with no GT left has AP 0
    assert nothing["oracle"]["false_negatives"] == 0.0


def test_average_precision_matches_coco_on_a_small_case():
    # One TP then one FP then one TP over 2 GT: precision 1 to recall .5, 2/3 to 1.
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx(
        (51 + 50 * 2 / 3) / 101)
    assert average_precision(np.array([]), np.array([], bool), 3) == 0.0


# ------------------------------------------------------------------ score-IoU consistency

def test_spearman_defined_only_on_enough_varying_finite_pairs():
    x = np.array([0.1, 0.5, 0.3, 0.9])
    assert spearman(x, x ** 2) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.ones(4)) is None and spearman(x[:2], x[:2]) is None
    assert spearman(np.append(x, np.nan), np.append(x, 1.0)) == pytest.approx(1.0)


def test_score_iou_consistency_perfectly_ordered():
    gt = coco([(1, 1, [100, 100, 50, 50])])
    # The further the box is shifted, the lower its IoU and its score.
    preds = [det(1, 1, [100 + s, 100, 50, 50], 0.9 - s / 50) for s in (0, 5, 10, 20, 30, 40)]
    c = score_iou_consistency(gt, preds)
    assert c["n"] == 6 and c["spearman"] == pytest.approx(1.0)
    assert c["high_score_low_iou"]["count"] == 0
    reversed_scores = [{**p, "score": 0.1 + s / 100} for p, s in zip(preds, (0, 5, 10, 20, 30, 40))]
    assert score_iou_consistency(gt, reversed_scores)["spearman"] == pytest.approx(-1.0)


def test_score_iou_consistency_high_score_low_iou_population():
    gt = coco([(1, 1, [10, 10, 40, 40]), (1, 2, [100, 100, 40, 40])])
    preds = [
        det(1, 1, [10, 10, 40, 40], 0.95),  # IoU 1
        det(1, 1, [200, 200, 40, 40], 0.9),  # confident on nothing: IoU 0
        det(1, 1, [100, 100, 40, 40], 0.8),  # on the square but says circle: same-class IoU 0
        det(1, 2, [100, 100, 40, 40], 0.3),  # IoU 1, low score
        det(1, 2, [0, 0, 5, 5], 0.01),  # below min_score: not counted
    ]
    c = score_iou_consistency(gt, preds, min_score=0.05)
    assert c["n"] == 4
    h = c["high_score_low_iou"]
    assert h["count"] == 2 and h["share_of_high_score"] == pytest.approx(2 / 3) and h["share_of_all"] == 0.5
    assert c["high_score_low_iou_share"] == pytest.approx(2 / 3)
    assert sorted(c["pairs"]["iou"]) == [0.0, 0.0, 1.0, 1.0] and len(c["pairs"]["score"]) == 4
    assert sum(c["iou_histogram"]["counts"]) == 4 and np.array(c["joint_histogram"]["counts"]).sum() == 4
    assert c["per_class"]["circle"]["n"] == 3 and c["per_class"]["square"]["n"] == 1
    json.dumps(c, allow_nan=False)


def test_tide_matching_agrees_with_coco_ap50_on_shapes(tmp_path):
    from test_evaluation_coco import noisy_predictions

    from visiondoctor.data.synth.shapes import generate_shapes

    gt = json.loads(generate_shapes(tmp_path, num_train=0, num_val=16, num_test=0, image_size=128, max_size=64,
                                    seed=2)["val"].read_text())
    preds = noisy_predictions(gt, 7)
    t = tide_errors(gt, preds)
    assert t["map50"] == pytest.approx(evaluate_detections(gt, preds)["map50"], abs=1e-9)
    assert sum(t["counts"][k] for k in ("classification", "localisation", "both", "duplicate", "background")) \
        + t["true_positives"] == t["num_detections"] == len(preds)
    assert all(v >= -1e-12 for v in t["dap"].values())
    c = score_iou_consistency(gt, preds, min_score=0.0)
    assert c["n"] == len(preds) and -1 <= c["spearman"] <= 1
