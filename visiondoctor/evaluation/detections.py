"""Detections in torchvision's format (`{boxes xyxy, scores, labels}` per image) as COCO results
(`{image_id, category_id, bbox xywh, score}`): the one conversion every evaluation uses."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

COORD_DECIMALS = 2  # hundredths of a pixel: far below any IoU that matters, and compact JSON
SCORE_DECIMALS = 5


def coco_result(box: Sequence[float], score: float, image_id: int, category_id: int,
                rounded: bool = True) -> dict[str, Any]:
    """One detection (xyxy pixels) as a COCO result (xywh)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    bbox = [x1, y1, x2 - x1, y2 - y1]
    if rounded:
        return {"image_id": int(image_id), "category_id": int(category_id),
                "bbox": [round(v, COORD_DECIMALS) for v in bbox], "score": round(float(score), SCORE_DECIMALS)}
    return {"image_id": int(image_id), "category_id": int(category_id), "bbox": bbox, "score": float(score)}


def detections_to_coco(output: Mapping[str, torch.Tensor], image_id: int,
                       category_of: Callable[[int], int | None] = int, score_threshold: float = 0.0,
                       rounded: bool = True) -> list[dict[str, Any]]:
    """COCO results of one image's detections. `category_of(label)` gives the dataset category id of a
    model label, or None for a label that is not a category (a background label); detections scoring
    below `score_threshold` are left out."""
    results = []
    for box, score, label in zip(output["boxes"].tolist(), output["scores"].tolist(), output["labels"].tolist()):
        if score < score_threshold:
            continue
        category = category_of(int(label))
        if category is not None:
            results.append(coco_result(box, score, image_id, category, rounded))
    return results
