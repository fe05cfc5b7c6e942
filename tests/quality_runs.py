"""Small detection and segmentation run directories written by hand (tiny PNGs, JSON files made
with the evaluation functions), for the report's confusion matrices and worst-first galleries."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from visiondoctor.evaluation.detection_quality import write_detection_quality
from visiondoctor.evaluation.segmentation import ConfusionMatrix
from visiondoctor.evaluation.segmentation_worst import WorstImages, write_worst_images

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
# The TIDE case of test_evaluation_analyses.py: A, C, D, E circles, B a square, in a 300 px image.
A, B, C, D, E = [10, 10, 40, 40], [150, 10, 40, 40], [250, 100, 30, 30], [10, 150, 40, 40], [150, 150, 40, 40]


def det(image_id: int, cat: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def detection_case() -> tuple[dict, list[dict]]:
    """Four images whose order by F1 at score >= 0.5 is known:
    missed.png (F1 0, two boxes missed), only_fp.png (F1 0, one background box),
    mixed.png (F1 0.2: the TIDE case), perfect.png (F1 1)."""
    gt_boxes = [(1, 1, A), (2, 1, A), (2, 2, B), (2, 1, C), (2, 1, D), (2, 1, E), (4, 1, A), (4, 1, C)]
    gt = {"images": [{"id": i, "file_name": f, "width": 300, "height": 300}
                     for i, f in ((1, "perfect.png"), (2, "mixed.png"), (3, "only_fp.png"), (4, "missed.png"))],
          "categories": CATEGORIES,
          "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                          for k, (i, c, b) in enumerate(gt_boxes)]}
    predictions = [
        det(1, 1, A, 0.95),
        det(2, 1, A, 0.9),  # true positive
        det(2, 1, [12, 12, 40, 40], 0.8),  # duplicate
        det(2, 2, D, 0.7),  # wrong class on the circle D
        det(2, 2, [170, 10, 40, 40], 0.6),  # poor localisation of the square B
        det(2, 1, [150, 30, 40, 40], 0.5),  # wrong class and box off
        det(2, 1, [250, 250, 30, 30], 0.4),  # background, below the display threshold
        det(2, 1, E, 0.3),  # true positive, below the display threshold
        det(3, 2, [100, 100, 50, 50], 0.85),  # background
        det(4, 1, [200, 200, 20, 20], 0.2),  # below the threshold: both boxes of image 4 missed
    ]
    return gt, predictions


def _config(run: Path, task: str, data_path: Path) -> None:
    config = {"name": f"{task}-run", "task": task, "model": {"name": "tiny", "image_size": 64},
              "data": {"path": str(data_path)}, "eval": {"split": "val", "display_threshold": 0.5, "max_images": 0}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def make_detection_run(root: Path, write_quality: bool = True) -> Path:
    """config.yaml, gt.json (+ image_root), predictions.json, tiny PNGs, and (unless told not to)
    detection_confusion.json / detection_per_image.json from write_detection_quality."""
    run, images = root / "det_run", root / "det_images"
    (run / "plots").mkdir(parents=True)
    images.mkdir()
    _config(run, "detection", images)
    gt, predictions = detection_case()
    for k, im in enumerate(gt["images"]):
        Image.new("RGB", (300, 300), (40 + 50 * k, 90, 140)).save(images / im["file_name"])
    (run / "gt.json").write_text(json.dumps({**gt, "image_root": str(images)}))
    (run / "predictions.json").write_text(json.dumps(predictions))
    (run / "categories.json").write_text(json.dumps({"dataset_ids": [1, 2], "names": ["circle", "square"],
                                                     "background": True}))
    if write_quality:
        write_detection_quality(run, gt, predictions, score_threshold=0.5)
    return run


SEG_CLASSES = ["road", "car", "sky"]


def segmentation_case(n: int = 5, size: tuple[int, int] = (48, 64)) -> list[tuple[str, torch.Tensor, torch.Tensor, np.ndarray]]:
    """n images (file name, prediction, ground truth, RGB image); image i has its top 4*i rows
    predicted as "car" instead of what they are, so per-image mIoU falls with i."""
    h, w = size
    gt = torch.zeros(h, w, dtype=torch.long)
    gt[: h // 3] = 2
    gt[h // 2:, w // 2:] = 1
    gt[-2:] = 255  # ignored
    out = []
    for i in range(n):
        pred = gt.clone()
        pred[pred == 255] = 0
        pred[: 4 * i] = 1
        image = np.full((h, w, 3), 30 * i, np.uint8)
        out.append((f"img_{i}.png", pred, gt, image))
    return out


def make_segmentation_run(root: Path, k: int = 3) -> Path:
    """config.yaml, categories.json, metrics.json (ConfusionMatrix.compute) and the k worst images."""
    run = root / "seg_run"
    (run / "plots").mkdir(parents=True)
    _config(run, "segmentation", root)
    cm, worst = ConfusionMatrix(len(SEG_CLASSES)), WorstImages(k=k, size=32)
    for i, (name, pred, gt, image) in enumerate(segmentation_case()):
        worst.observe(cm, pred, gt, i, name, image=image)
    metrics = cm.compute(SEG_CLASSES)
    metrics["split"] = "val"
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "categories.json").write_text(json.dumps({"dataset_ids": [0, 1, 2], "names": SEG_CLASSES, "background": False,
                                                     "task": "segmentation", "ignore_index": 255}))
    write_worst_images(run, worst, SEG_CLASSES, ignore_index=255)
    return run
