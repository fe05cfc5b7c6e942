"""Tiny, CPU-fast building blocks for the bug zoo: in-memory data with exactly known boxes and
masks, a small convolutional backbone, and torchvision SSD / Faster R-CNN built on it.

The zoo needs batches in memory in milliseconds, so it does not go through the on-disk
synthetic generators (visiondoctor.data.synth), which exist to exercise the real readers.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.detection.anchor_utils import (
    AnchorGenerator,
    DefaultBoxGenerator,
)
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.ops import MultiScaleRoIAlign

COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.2, 1.0]])


def squares(n: int, size: int = 64, min_side: int = 12, max_side: int = 28, max_objects: int = 2, classes: int = 2,
            seed: int = 0) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Images with 1..max_objects non-overlapping coloured squares on a noisy grey background; label = colour (1-based)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = 0.45 + 0.05 * torch.randn(3, size, size, generator=g)
        boxes: list[list[float]] = []
        labels: list[int] = []
        for _ in range(1 + i % max_objects):
            for _attempt in range(20):
                s = int(torch.randint(min_side, max_side + 1, (1,), generator=g))
                x, y = (int(v) for v in torch.randint(0, size - s + 1, (2,), generator=g))
                if all(x + s <= b[0] or b[2] <= x or y + s <= b[1] or b[3] <= y for b in boxes):
                    break
            else:
                continue
            label = 1 + int(torch.randint(0, classes, (1,), generator=g))
            image[:, y:y + s, x:x + s] = COLOURS[label - 1].view(3, 1, 1)
            boxes.append([float(x), float(y), float(x + s), float(y + s)])
            labels.append(label)
        items.append((image.clamp(0, 1), {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                          "labels": torch.tensor(labels, dtype=torch.int64), "image_id": i}))
    return items


def masks_from_squares(items: list[tuple[torch.Tensor, dict[str, Any]]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Segmentation pairs: class index per pixel (0 background, label inside each square)."""
    out = []
    for image, t in items:
        mask = torch.zeros(image.shape[-2:], dtype=torch.int64)
        for (x1, y1, x2, y2), label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            mask[int(y1):int(y2), int(x1):int(x2)] = label
        out.append((image, mask))
    return out


class ListDataset(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def batch(items: list) -> tuple[list[torch.Tensor], list[Any]]:
    images, targets = zip(*items)
    return list(images), list(targets)


def conv_block(cin: int, cout: int, stride: int, norm: type[nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """Conv stages of stride 2 each; returns the maps after the stages listed in `outputs` (1-based),
    e.g. outputs=(3, 4) -> strides 8 and 16. `out_channels` is what torchvision heads read."""

    def __init__(self, stages: int = 4, channels: int = 32, outputs: tuple[int, ...] = (3, 4),
                 norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        widths = [16] + [channels] * (stages - 1)
        self.stages = nn.ModuleList(conv_block(3 if i == 0 else widths[i - 1], widths[i], 2, norm) for i in range(stages))
        self.outputs = outputs
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i in self.outputs:
                feats[str(len(feats))] = x
        return feats


def tiny_ssd(num_classes: int = 3, size: int = 64, backbone: nn.Module | None = None) -> nn.Module:
    """torchvision's SSD on TinyBackbone (strides 8 and 16): IoU matching, hard-negative mining, BoxCoder."""
    backbone = backbone or TinyBackbone()
    anchors = DefaultBoxGenerator([[2], [2]], scales=[0.25, 0.4, 0.6])  # 16-30 px boxes for 12-28 px squares at 64 px
    head = SSDHead([backbone.out_channels] * 2, anchors.num_anchors_per_location(), num_classes)
    return SSD(backbone, anchors, (size, size), num_classes, head=head, image_mean=[0.5] * 3, image_std=[0.25] * 3,
               score_thresh=0.01, detections_per_img=50, topk_candidates=100)


def tiny_faster_rcnn(num_classes: int = 3, size: int = 128, stride_stages: int = 3, anchor_sizes: tuple[int, ...] = (16, 32, 64),
                     box_roi_pool: nn.Module | None = None) -> nn.Module:
    """torchvision's Faster R-CNN on one TinyBackbone map of stride 2**stride_stages, anchors of `anchor_sizes`."""
    backbone = TinyBackbone(stages=stride_stages, outputs=(stride_stages,))
    anchors = AnchorGenerator(sizes=(anchor_sizes,), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = box_roi_pool or MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    return FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=anchors, box_roi_pool=pool,
                      min_size=size, max_size=size, image_mean=[0.5] * 3, image_std=[0.25] * 3,
                      rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
                      rpn_post_nms_top_n_test=50, box_batch_size_per_image=64, representation_size=64)
