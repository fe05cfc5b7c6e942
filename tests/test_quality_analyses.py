"""Detection confusion matrix, per-image detection quality and the worst segmented images, on
hand-made cases with known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from quality_runs import A, B, CATEGORIES, det, detection_case, segmentation_case
from visiondoctor.evaluation.detection_quality import (CONFUSION_FILE, PER_IMAGE_FILE, detection_confusion,
                                                       per_image_quality, write_detection_quality)
from visiondoctor.evaluation.errors import tide_errors
from visiondoctor.evaluation.segmentation import ConfusionMatrix
from visiondoctor.evaluation.segmentation_worst import WorstImages, write_worst_images

CIRCLE, SQUARE, BG = 0, 1, 2  # rows / columns of the two-class matrix


def one_image(boxes: list[tuple[int, list[float]]], crowd: tuple[int, ...] = ()) -> dict:
    return {"images": [{"id": 1, "file_name": "a.png", "width": 300, "height": 300}], "categories": CATEGORIES,
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": int(k in crowd)} for k, (c, b) in enumerate(boxes)]}


# ------------------------------------------------------------------ confusion matrix

def test_confusion_cells_of_each_kind_of_box():
    gt, preds = detection_case()
    c = detection_confusion(gt, preds, score_threshold=0.5)
    assert c["classes"] == ["circle", "square", "background"] and c["category_ids"] == [1, 2]
    m = np.asarray(c["matrix"])
    assert m[CIRCLE].tolist() == [2, 1, 4]  # two found; D taken for a square; C, E and image 4's two missed
    assert m[SQUARE].tolist() == [0, 0, 1]  # B: only a poorly placed square near it
    assert m[BG].tolist() == [2, 2, 0]  # duplicate + wrong-class-and-off circles; off square + lone square
    assert c["score_threshold"] == 0.5 and c["iou_threshold"] == 0.5 and c["num_images"] == 4
    json.dumps(c, allow_nan=False)


def test_confusion_wrong_class_box_in_its_cell_and_unmatched_prediction_in_background_row():
    gt = one_image([(1, A)])
    m = np.asarray(detection_confusion(gt, [det(1, 2, A, 0.9)], 0.5)["matrix"])
    assert m.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]  # a square on the circle A: (circle, square)
    m = np.asarray(detection_confusion(gt, [det(1, 1, A, 0.9), det(1, 2, [200, 200, 30, 30], 0.8)], 0.5)["matrix"])
    assert m.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]  # the square on nothing: background row
    m = np.asarray(detection_confusion(gt, [det(1, 1, A, 0.4)], 0.5)["matrix"])
    assert m.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]  # below the threshold: the circle is missed


def test_confusion_is_one_to_one_and_prefers_the_right_class():
    gt = one_image([(1, A)])
    # two wrong-class boxes on A: the higher-scored one takes it, the other is a false positive
    m = np.asarray(detection_confusion(gt, [det(1, 2, A, 0.9), det(1, 2, [11, 11, 40, 40], 0.8)], 0.5)["matrix"])
    assert m.tolist() == [[0, 1, 0], [0, 0, 0], [0, 1, 0]]
    # a right-class box found A even though a wrong-class box scored higher: the diagonal wins
    m = np.asarray(detection_confusion(gt, [det(1, 2, A, 0.9), det(1, 1, A, 0.8)], 0.5)["matrix"])
    assert m.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_confusion_ignores_crowd_boxes():
    gt = one_image([(1, A), (1, [150, 150, 80, 80])], crowd=(1,))
    m = np.asarray(detection_confusion(gt, [det(1, 1, [155, 155, 70, 70], 0.9)], 0.5)["matrix"])
    assert m.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]  # crowd neither a GT nor a false positive; A missed


def test_confusion_agrees_with_tide_counts_at_threshold_zero():
    gt, preds = detection_case()
    c = np.asarray(detection_confusion(gt, preds, 0.0)["matrix"])
    t = tide_errors(gt, preds)
    assert np.trace(c[:BG, :BG]) == t["true_positives"]
    assert c.sum() - c[:BG, BG].sum() == t["num_detections"]  # every prediction is in exactly one column


# ------------------------------------------------------------------ per-image quality

def test_per_image_worst_first_with_error_types():
    gt, preds = detection_case()
    q = per_image_quality(gt, preds, score_threshold=0.5, examples=2)
    order = [im["file_name"] for im in q["images"]]
    assert order == ["missed.png", "only_fp.png", "mixed.png", "perfect.png"]
    assert [im["f1"] for im in q["images"]] == [0.0, 0.0, pytest.approx(0.2), 1.0]
    missed, only_fp, mixed, perfect = q["images"]
    assert missed["counts"]["missed"] == 2 and missed["max_score"] == 0.2 and missed["num_predictions"] == 0
    assert only_fp["counts"]["background"] == 1 and only_fp["num_gt"] == 0
    assert mixed["counts"] == {"true_positive": 1, "classification": 1, "localisation": 1, "both": 1, "duplicate": 1,
                               "background": 0, "missed": 2}
    assert "predictions" in missed and "predictions" in only_fp and "predictions" not in mixed  # examples=2
    assert [b["type"] for b in only_fp["predictions"]] == ["background"]
    assert [b["type"] for b in missed["ground_truth"]] == ["missed", "missed"]
    full = per_image_quality(gt, preds, score_threshold=0.5)["images"][2]
    assert [b["type"] for b in full["predictions"]] == ["true_positive", "duplicate", "classification", "localisation", "both"]
    assert [b["type"] for b in full["ground_truth"]] == ["found", "localisation", "missed", "classification", "missed"]
    assert full["ground_truth"][1]["bbox"] == B
    json.dumps(q, allow_nan=False)


def test_per_image_empty_image_is_perfect():
    gt = {"images": [{"id": 1, "file_name": "empty.png"}], "categories": CATEGORIES, "annotations": []}
    q = per_image_quality(gt, [], 0.5)
    assert q["images"][0]["f1"] == 1.0 and q["images"][0]["max_score"] is None


def test_write_detection_quality(tmp_path):
    gt, preds = detection_case()
    paths = write_detection_quality(tmp_path, gt, preds, score_threshold=0.5)
    assert [p.name for p in paths] == [CONFUSION_FILE, PER_IMAGE_FILE]
    assert json.loads(paths[0].read_text()) == detection_confusion(gt, preds, 0.5)
    assert json.loads(paths[1].read_text()) == per_image_quality(gt, preds, 0.5)


# ------------------------------------------------------------------ worst segmented images

def test_worst_images_keeps_the_lowest_miou_of_the_split():
    cm, worst = ConfusionMatrix(3), WorstImages(k=2, size=32)
    loaded = []
    case = segmentation_case()
    for i, (name, pred, gt, image) in enumerate(reversed(case)):  # the worst arrives first
        worst.observe(cm, pred, gt, i, name, image=lambda image=image, name=name: loaded.append(name) or image)
    kept = worst.worst_first()
    assert [k.file_name for k in kept] == ["img_4.png", "img_3.png"]
    assert [k.miou for k in kept] == sorted(cm.per_image)[:2]
    assert kept[0].miou < kept[1].miou
    assert loaded == ["img_4.png", "img_3.png"]  # images are read only when kept
    assert kept[0].gt.shape == (24, 32) and kept[0].image.shape == (24, 32, 3)  # thumbnails, longest side 32
    assert worst.images_evaluated == 5


def test_worst_images_ties_keep_the_first_seen():
    worst = WorstImages(k=1, size=8)
    label = torch.zeros(4, 4, dtype=torch.long)
    assert worst.update(0.5, 0, "first.png", label, label)
    assert not worst.update(0.5, 1, "second.png", label, label)
    assert worst.update(0.4, 2, "third.png", label, label)
    assert [k.file_name for k in worst.worst_first()] == ["third.png"]


def test_worst_images_rejects_mismatched_maps():
    with pytest.raises(ValueError, match="bad.png"):
        WorstImages(k=1).update(0.1, 3, "bad.png", torch.zeros(4, 5), torch.zeros(4, 4))


def test_write_worst_images_is_plain_arrays(tmp_path):
    cm, worst = ConfusionMatrix(3), WorstImages(k=3, size=32)
    for i, (name, pred, gt, image) in enumerate(segmentation_case()):
        worst.observe(cm, pred, gt, i, name, image=image if i != 4 else None)
    npz, summary_path = write_worst_images(tmp_path, worst, ["road", "car", "sky"])
    summary = json.loads(summary_path.read_text())
    assert [e["file_name"] for e in summary["images"]] == ["img_4.png", "img_3.png", "img_2.png"]
    assert [e["rank"] for e in summary["images"]] == [0, 1, 2]
    assert summary["images"][0]["has_image"] is False and summary["images"][1]["has_image"] is True
    assert (summary["images"][0]["height"], summary["images"][0]["width"]) == (48, 64)
    with np.load(npz, allow_pickle=False) as data:
        assert sorted(data.files) == ["gt_0", "gt_1", "gt_2", "image_1", "image_2", "pred_0", "pred_1", "pred_2"]
        assert data["gt_0"].dtype == np.int16 and 255 in data["gt_0"]  # ignored pixels kept as such
        assert data["image_1"].dtype == np.uint8
