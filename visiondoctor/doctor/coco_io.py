"""torchvision-style targets and detections -> COCO ground truth and results, so the project's
evaluation modules (faster-coco-eval AP, score-IoU consistency, TIDE) judge the doctor's probes.

Labels are used as category ids; images are numbered in the order given.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from visiondoctor.evaluation.detections import detections_to_coco


def coco_from_batches(targets: Sequence[dict], outputs: Sequence[dict], image_sizes: Sequence[tuple[int, int]],
                      min_score: float = 0.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(COCO ground-truth dict, COCO results list) for images 0..N-1."""
    images, annotations, results = [], [], []
    labels: set[int] = set()
    for i, (t, (h, w)) in enumerate(zip(targets, image_sizes)):
        images.append({"id": i, "width": int(w), "height": int(h)})
        for box, label in zip(torch.as_tensor(t["boxes"]).reshape(-1, 4).tolist(), torch.as_tensor(t["labels"]).reshape(-1).tolist()):
            x1, y1, x2, y2 = box
            labels.add(int(label))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    for i, out in enumerate(outputs):
        dets = detections_to_coco(out, i, score_threshold=min_score, rounded=False)
        labels.update(d["category_id"] for d in dets)
        results += dets
    categories = [{"id": c, "name": f"class {c}"} for c in sorted(labels)]
    return {"images": images, "annotations": annotations, "categories": categories}, results
