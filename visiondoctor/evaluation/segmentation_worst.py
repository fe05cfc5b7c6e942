"""The k images with the lowest per-image mIoU of a segmentation split, kept while it is evaluated.

Memory is bounded: at most k entries, each a thumbnail (longest side `size` px) of the
prediction, the ground truth and, when given, the image. The per-image mIoU is the one
ConfusionMatrix computes for its per-image distribution (metrics.json "per_image_miou"), so
the report's worst images are the bottom of that distribution:

    cm = ConfusionMatrix(k, ignore_index, exclude_labels=anomaly_labels)
    worst = WorstImages(k=8)
    for i, logits, mask in iterate_logits(...):
        worst.observe(cm, logits.argmax(1)[0].cpu(), mask, i, file_name, image=lambda: load_rgb(path))
    write_worst_images(run, worst, class_names, ignore_index)

Run-directory files (write_worst_images), loaded with np.load(..., allow_pickle=False):
    segmentation_worst.npz   for each kept image j (0 = worst): pred_<j>, gt_<j> (int16 label
                             maps, thumbnail size; ignored pixels keep ignore_index) and, when
                             the image was given, image_<j> (uint8 H x W x 3, same size)
    segmentation_worst.json  {"images": [{"rank": j, "index", "file_name", "miou", "height",
                             "width" (original size), "has_image"}], "class_names", "ignore_index",
                             "excluded_labels", "images_evaluated", "k", "thumbnail_size"}
"""
from __future__ import annotations

import heapq
import io
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from visiondoctor.evaluation.segmentation import ConfusionMatrix
from visiondoctor.rundir import RunDir, write_bytes_atomic, write_json_atomic

NPZ_FILE = "segmentation_worst.npz"
JSON_FILE = "segmentation_worst.json"
THUMBNAIL = 160  # px, longest side


@dataclass(order=True)
class WorstImage:
    """One kept image; ordered so that the heap's first entry is the best of the kept (evicted first)."""

    sort_key: tuple[float, int] = field(repr=False)  # (-mIoU, -arrival): highest mIoU, then latest, first
    index: int = field(compare=False)
    file_name: str = field(compare=False)
    miou: float = field(compare=False)
    shape: tuple[int, int] = field(compare=False)
    pred: np.ndarray = field(compare=False, repr=False)
    gt: np.ndarray = field(compare=False, repr=False)
    image: np.ndarray | None = field(compare=False, repr=False, default=None)


class WorstImages:
    """Streaming keeper of the k lowest per-image mIoUs (ties: the first seen stays)."""

    def __init__(self, k: int = 8, size: int = THUMBNAIL):
        if k < 1 or size < 8:
            raise ValueError(f"WorstImages needs k >= 1 and size >= 8, got k={k}, size={size}")
        self.k, self.size = k, size
        self._heap: list[WorstImage] = []
        self._arrivals = itertools.count()
        self.images_evaluated = 0

    def update(self, miou: float, index: int, file_name: str, pred: torch.Tensor | np.ndarray,
               target: torch.Tensor | np.ndarray, image: Any = None) -> bool:
        """Offer one image; True when it is kept. `image` (H x W x 3 uint8 or 3 x H x W, or a
        callable returning one) is read only when the image is kept."""
        self.images_evaluated += 1
        key = (-float(miou), -next(self._arrivals))
        if len(self._heap) >= self.k and key <= self._heap[0].sort_key:
            return False
        target_t = torch.as_tensor(target)
        if tuple(torch.as_tensor(pred).shape) != tuple(target_t.shape) or target_t.dim() != 2:
            raise ValueError(f"image {index} ({file_name}): prediction {tuple(torch.as_tensor(pred).shape)} and "
                             f"target {tuple(target_t.shape)} must be equal (H, W) label maps")
        h, w = target_t.shape
        size = thumbnail_size(h, w, self.size)
        entry = WorstImage(key, int(index), str(file_name), float(miou), (int(h), int(w)),
                           _labels_to(pred, size), _labels_to(target, size), _rgb_to(image, size))
        if len(self._heap) >= self.k:
            heapq.heapreplace(self._heap, entry)
        else:
            heapq.heappush(self._heap, entry)
        return True

    def observe(self, cm: ConfusionMatrix, pred: torch.Tensor, target: torch.Tensor, index: int, file_name: str,
                image: Any = None) -> float | None:
        """cm.update(pred, target), then offer the image with the per-image mIoU cm just computed.
        Returns that mIoU, or None when the image had no evaluated pixel (cm records none then)."""
        before = len(cm.per_image)
        cm.update(pred, target)
        if len(cm.per_image) == before:
            return None
        miou = cm.per_image[-1]
        if np.isnan(miou):
            return None
        self.update(miou, index, file_name, pred, target, image)
        return miou

    def worst_first(self) -> list[WorstImage]:
        """The kept images, lowest mIoU first."""
        return sorted(self._heap, reverse=True)


def thumbnail_size(h: int, w: int, longest: int) -> tuple[int, int]:
    """(h, w) scaled so the longest side is at most `longest` (never enlarged)."""
    scale = min(1.0, longest / max(h, w, 1))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _labels_to(labels: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.as_tensor(labels).to(torch.float32)[None, None]
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="nearest")  # labels: never blended
    return t[0, 0].to(torch.int16).numpy()


def _rgb_to(image: Any, size: tuple[int, int]) -> np.ndarray | None:
    if callable(image):
        image = image()
    if image is None:
        return None
    t = torch.as_tensor(np.asarray(image))
    if t.dim() != 3:
        raise ValueError(f"image must be H x W x 3 or 3 x H x W, got shape {tuple(t.shape)}")
    if t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
        t = t.permute(1, 2, 0)
    t = t[..., :3].expand(*t.shape[:2], 3) if t.shape[-1] == 1 else t[..., :3]
    if t.dtype.is_floating_point and float(t.max()) <= 1.0:
        t = t * 255  # a [0, 1] float image
    t = t.to(torch.float32).permute(2, 0, 1)[None]
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def write_worst_images(run: RunDir | Path, worst: WorstImages, class_names: Sequence[str] = (),
                       ignore_index: int = 255, excluded_labels: Sequence[int] = ()) -> tuple[Path, Path]:
    """Write segmentation_worst.npz (plain arrays) and segmentation_worst.json; return their paths."""
    folder = run.path if isinstance(run, RunDir) else Path(run)
    kept = worst.worst_first()
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for j, e in enumerate(kept):
        arrays[f"pred_{j}"], arrays[f"gt_{j}"] = e.pred, e.gt
        if e.image is not None:
            arrays[f"image_{j}"] = e.image
        entries.append({"rank": j, "index": e.index, "file_name": e.file_name, "miou": e.miou,
                        "height": e.shape[0], "width": e.shape[1], "has_image": e.image is not None})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    npz = write_bytes_atomic(folder / NPZ_FILE, buf.getvalue())
    summary = {"images": entries, "class_names": [str(n) for n in class_names], "ignore_index": int(ignore_index),
               "excluded_labels": [int(x) for x in excluded_labels], "images_evaluated": worst.images_evaluated,
               "k": worst.k, "thumbnail_size": worst.size}
    return npz, write_json_atomic(folder / JSON_FILE, summary)
