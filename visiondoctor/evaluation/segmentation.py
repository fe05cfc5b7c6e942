"""Closed-set segmentation metrics from one confusion matrix over the whole split.

mIoU is computed from intersections and unions POOLED over every evaluated pixel (a
K x K confusion matrix accumulated image by image with `torch.bincount`; memory K^2,
whatever the split size). The mean of per-image mIoUs is a different, noisier number
(the seed quoted it from 10 images as if it were the dataset figure): it is reported
beside the pooled figure, with its spread, never instead of it.

metrics.json keys (segmentation):
    miou, pixel_accuracy, mean_class_accuracy      pooled over the split, fractions in [0, 1]
    per_class: {name: {"iou", "accuracy", "pixels"}}  iou/accuracy null when the class has no
                                                   ground-truth or predicted pixel
    per_image_miou: {"mean", "std", "min", "max", "n"}  distribution of per-image mIoU (classes
                                                   present in that image's GT or prediction)
    num_images, total_images, evaluated_pixels, ignored_pixels, excluded_pixels
    excluded_labels: labels left out of the closed-set metric (anomaly classes)
    subset: {"evaluated_images": n, "total_images": N}   only when a subset was evaluated
    confusion_matrix: K x K counts, rows = ground truth, columns = prediction
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch


def iou_from_confusion(conf: torch.Tensor, skip: Sequence[int] = ()) -> torch.Tensor:
    """Per-class IoU (NaN where the class has neither GT nor predicted pixels, and for `skip`)."""
    conf = conf.to(torch.float64)
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, math.nan))
    for label in skip:
        if 0 <= label < len(iou):
            iou[label] = math.nan
    return iou


class ConfusionMatrix:
    """Streaming confusion matrix plus the per-image mIoU distribution.

    Pixels whose label is `ignore_index` are not counted; labels in `exclude_labels`
    (anomaly classes the model has no output for) are counted separately and left out.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, exclude_labels: Sequence[int] = ()):
        self.k = num_classes
        self.ignore_index = ignore_index
        self.exclude = torch.tensor(sorted(set(exclude_labels)), dtype=torch.long)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.per_image: list[float] = []
        self.ignored = 0
        self.excluded = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (H, W) or (N, H, W) integer label maps of equal shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if pred.dim() == 2:
            pred, target = pred[None], target[None]
        pred, target = pred.detach().to("cpu", torch.long), target.detach().to("cpu", torch.long)
        for p, t in zip(pred, target):
            ignored = t == self.ignore_index
            excluded = torch.isin(t, self.exclude) & ~ignored
            valid = ~ignored & ~excluded
            out_of_range = valid & ((t < 0) | (t >= self.k))
            if out_of_range.any():
                raise ValueError(f"target labels {sorted(set(t[out_of_range].tolist()))[:8]} are outside "
                                 f"0..{self.k - 1} and are neither ignored nor excluded")
            if ((p < 0) | (p >= self.k)).any():
                raise ValueError(f"predicted labels outside 0..{self.k - 1}")
            self.ignored += int(ignored.sum())
            self.excluded += int(excluded.sum())
            conf = torch.bincount(t[valid] * self.k + p[valid], minlength=self.k * self.k).view(self.k, self.k)
            self.matrix += conf
            if valid.any():
                self.per_image.append(float(torch.nanmean(iou_from_confusion(conf, self.exclude.tolist()))))

    def compute(self, class_names: Sequence[str] | None = None, total_images: int | None = None) -> dict[str, Any]:
        names = list(class_names or [str(i) for i in range(self.k)])[: self.k]
        conf = self.matrix.to(torch.float64)
        excluded_labels = [int(x) for x in self.exclude.tolist()]
        iou = iou_from_confusion(self.matrix, excluded_labels)
        gt = conf.sum(1)
        acc = torch.where(gt > 0, conf.diag() / gt.clamp(min=1), torch.full_like(gt, math.nan))
        total = float(conf.sum())
        per_image = torch.tensor(self.per_image, dtype=torch.float64)
        evaluated = len(self.per_image)
        out: dict[str, Any] = {
            "miou": _nan_to_none(torch.nanmean(iou)),
            "pixel_accuracy": float(conf.diag().sum() / total) if total else None,
            "mean_class_accuracy": _nan_to_none(torch.nanmean(acc)),
            "per_class": {
                name: {"iou": _nan_to_none(iou[i]), "accuracy": _nan_to_none(acc[i]), "pixels": int(gt[i])}
                for i, name in enumerate(names) if i not in excluded_labels
            },
            "per_image_miou": _distribution(per_image),
            "num_images": evaluated,
            "total_images": total_images if total_images is not None else evaluated,
            "evaluated_pixels": int(total),
            "ignored_pixels": self.ignored,
            "excluded_pixels": self.excluded,
            "excluded_labels": excluded_labels,
            "confusion_matrix": self.matrix.tolist(),
        }
        if total_images is not None and evaluated < total_images:
            out["subset"] = {"evaluated_images": evaluated, "total_images": total_images}
        return out


def _distribution(values: torch.Tensor) -> dict[str, Any]:
    if values.numel() == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std(unbiased=False)),
            "min": float(values.min()), "max": float(values.max()), "n": int(values.numel())}


def _nan_to_none(x: torch.Tensor | float) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v
