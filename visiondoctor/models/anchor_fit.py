"""Anchors fitted to a dataset's boxes, judged on the grid the model really uses.

The quality of a set of anchors is its best possible recall (BPR): the fraction of
ground-truth boxes that at least one anchor overlaps at IoU >= a threshold — the same measure
the doctor's `anchors.coverage` check reports. It is computed with torchvision's own
AnchorGenerator on the feature-map sizes measured from the backbone, so grid offsets and
strides count, not just box shapes.

`fit_anchors` starts from the data (sizes at evenly spaced quantiles of sqrt(w*h), aspect
ratios by 1-D k-means on log(h/w)) and then improves that start by a coordinate search on
the real BPR (each size and ratio scaled up or down while the BPR, then the mean best IoU,
improves) — the best-possible-recall search of YOLOv5's autoanchor, done here on a
torchvision anchor grid. Hand-written because no maintained library fits torchvision
AnchorGenerator parameters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

SEARCH_FACTORS = (0.8, 0.9, 1.1, 1.25)


@dataclass(frozen=True)
class AnchorFit:
    """Fitted AnchorGenerator arguments and how well they (and the starting anchors) reach the boxes."""

    sizes: tuple[tuple[float, ...], ...]  # per feature level
    aspect_ratios: tuple[tuple[float, ...], ...]  # per feature level (h / w, torchvision's convention)
    bpr: float
    mean_best_iou: float
    iou_threshold: float
    num_boxes: int
    baseline_bpr: float | None = None  # of the anchors given as `baseline`, when any

    def to_dict(self) -> dict:
        return asdict(self)


def anchor_quality(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                   feature_hw: Sequence[tuple[int, int]], image_hw: tuple[int, int], boxes: torch.Tensor,
                   iou_threshold: float = 0.5) -> tuple[float, float]:
    """(BPR, mean best IoU) of the anchors torchvision generates for these feature maps, over `boxes`
    ([N, 4] xyxy in the model's input frame of size `image_hw`)."""
    if boxes.numel() == 0:
        return float("nan"), float("nan")
    best = best_anchor_iou(sizes, aspect_ratios, feature_hw, image_hw, boxes)
    return float((best >= iou_threshold).float().mean()), float(best.mean())


def best_anchor_iou(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                    feature_hw: Sequence[tuple[int, int]], image_hw: tuple[int, int], boxes: torch.Tensor) -> torch.Tensor:
    """For each box, the highest IoU any anchor of the grid reaches ([N]).

    Same anchors as torchvision's AnchorGenerator (its own rounded cell anchors, shifted by
    multiples of stride = image // feature size), but only the grid position nearest to the
    box centre is tried for each anchor shape: for axis-aligned boxes of fixed size the IoU only
    falls as the centres move apart along either axis, so the nearest position is the best one.
    That makes the search O(boxes x shapes) instead of O(boxes x anchors)."""
    generator = AnchorGenerator(tuple(tuple(float(s) for s in lv) for lv in sizes),
                                tuple(tuple(float(r) for r in lv) for lv in aspect_ratios))
    boxes = boxes.float().reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    best = torch.zeros(boxes.shape[0])
    for base, (h, w) in zip(generator.cell_anchors, feature_hw):
        stride = torch.tensor([image_hw[1] // w, image_hw[0] // h], dtype=torch.float32)
        limit = torch.tensor([w - 1, h - 1], dtype=torch.float32)
        for anchor in base.float():
            offset = (anchor[:2] + anchor[2:]) / 2
            cell = torch.minimum(torch.clamp(torch.round((centre - offset) / stride), min=0), limit)
            shifted = anchor.repeat(boxes.shape[0], 1) + (cell * stride).repeat(1, 2)
            lt = torch.maximum(boxes[:, :2], shifted[:, :2])
            rb = torch.minimum(boxes[:, 2:], shifted[:, 2:])
            inter = (rb - lt).clamp(min=0).prod(dim=1)
            union = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1) + (shifted[:, 2:] - shifted[:, :2]).prod(dim=1) - inter
            best = torch.maximum(best, inter / union.clamp(min=1e-9))
    return best


def grid_anchors(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 feature_hw: Sequence[tuple[int, int]], image_hw: tuple[int, int]) -> torch.Tensor:
    """Every anchor of one image, exactly as torchvision's AnchorGenerator places them."""
    generator = AnchorGenerator(tuple(tuple(float(s) for s in lv) for lv in sizes),
                                tuple(tuple(float(r) for r in lv) for lv in aspect_ratios))
    images = ImageList(torch.zeros(1, 3, *image_hw), [tuple(image_hw)])
    features = [torch.zeros(1, 1, h, w) for h, w in feature_hw]
    return generator(images, features)[0]


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 50) -> np.ndarray:
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        new = np.array([values[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def initial_anchors(boxes: torch.Tensor, num_levels: int, sizes_per_level: int,
                    num_ratios: int) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """Sizes at evenly spaced quantiles of sqrt(w*h) (smallest on the finest level), ratios by k-means on log(h/w)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3).double().numpy()
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    k = num_levels * sizes_per_level
    qs = np.quantile(side, (np.arange(k) + 0.5) / k)
    sizes = tuple(tuple(round(float(v), 2) for v in qs[i * sizes_per_level:(i + 1) * sizes_per_level])
                  for i in range(num_levels))
    ratios = np.exp(_kmeans_1d(np.log(wh[:, 1] / wh[:, 0]), num_ratios))
    return sizes, tuple(tuple(round(float(r), 3) for r in ratios) for _ in range(num_levels))


def fit_anchors(boxes: torch.Tensor, image_hw: tuple[int, int], feature_hw: Sequence[tuple[int, int]],
                sizes_per_level: int = 2, num_ratios: int = 3, iou_threshold: float = 0.5, max_rounds: int = 6,
                baseline: tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]] | None = None) -> AnchorFit:
    """Fit AnchorGenerator sizes and ratios to `boxes` ([N, 4] xyxy, model input frame) on the measured
    feature-map sizes `feature_hw` (finest first). The same ratios are used on every level, because
    torchvision's RPNHead predicts the same number of anchors per location on every level."""
    boxes = boxes.reshape(-1, 4).float()
    if boxes.shape[0] == 0:
        raise ValueError("fit_anchors: no boxes to fit anchors to")
    levels = len(feature_hw)
    sizes, ratios = initial_anchors(boxes, levels, sizes_per_level, num_ratios)
    flat_sizes = [s for lv in sizes for s in lv]
    flat_ratios = list(ratios[0])

    def score(fs: list[float], fr: list[float]) -> tuple[float, float]:
        per_level = [fs[i * sizes_per_level:(i + 1) * sizes_per_level] for i in range(levels)]
        return anchor_quality(per_level, [fr] * levels, feature_hw, image_hw, boxes, iou_threshold)

    best = score(flat_sizes, flat_ratios)
    for _ in range(max_rounds):
        improved = False
        for values in (flat_sizes, flat_ratios):
            for i in range(len(values)):
                for factor in SEARCH_FACTORS:
                    trial = list(values)
                    trial[i] = values[i] * factor
                    result = score(trial, flat_ratios) if values is flat_sizes else score(flat_sizes, trial)
                    if result > best:  # BPR first, mean best IoU breaks ties
                        best, values[i], improved = result, trial[i], True
        if not improved:
            break
    flat_sizes.sort()
    fitted_sizes = tuple(tuple(round(s, 2) for s in flat_sizes[i * sizes_per_level:(i + 1) * sizes_per_level])
                         for i in range(levels))
    fitted_ratios = tuple(tuple(round(r, 3) for r in sorted(flat_ratios)) for _ in range(levels))
    bpr, mean_iou = anchor_quality(fitted_sizes, fitted_ratios, feature_hw, image_hw, boxes, iou_threshold)
    baseline_bpr = None
    if baseline is not None:
        baseline_bpr = round(anchor_quality(baseline[0], baseline[1], feature_hw, image_hw, boxes, iou_threshold)[0], 4)
    return AnchorFit(fitted_sizes, fitted_ratios, round(bpr, 4), round(mean_iou, 4), iou_threshold,
                     int(boxes.shape[0]), baseline_bpr)


def boxes_in_input_frame(records: Sequence, image_size: int) -> torch.Tensor:
    """All boxes of DetectionRecords ([N, 4] xyxy) scaled as a GeneralizedRCNNTransform with
    min_size = max_size = image_size scales their images (longer side to image_size)."""
    out = []
    for r in records:
        if r.boxes:
            scale = image_size / max(r.width, r.height)
            out.append(torch.tensor(r.boxes, dtype=torch.float32) * scale)
    return torch.cat(out) if out else torch.zeros(0, 4)
