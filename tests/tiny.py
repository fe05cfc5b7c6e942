"""Tiny, fast models and data for tests: a real torchvision SSD on a 3-layer backbone, and
images with coloured squares whose boxes are known exactly."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())  # stride 8
        self.down = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())  # stride 16

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c3 = self.stem(x)
        return OrderedDict([("0", c3), ("1", self.down(c3))])


def tiny_ssd(num_classes: int = 3, size: int = 64) -> SSD:
    anchors = DefaultBoxGenerator([[2], [2]], min_ratio=0.2, max_ratio=0.7)
    head = SSDHead([32, 32], anchors.num_anchors_per_location(), num_classes)
    return SSD(TinyBackbone(), anchors, (size, size), num_classes, head=head,
               image_mean=[0.5] * 3, image_std=[0.5] * 3, score_thresh=0.01, detections_per_img=20)


class SquaresDataset(Dataset):
    """Deterministic images with 1-2 coloured squares; class = colour (red 1, green 2)."""

    def __init__(self, n: int = 16, size: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            image = torch.full((3, size, size), 0.3)
            boxes, labels = [], []
            for _ in range(1 + i % 2):
                s = int(torch.randint(12, 28, (1,), generator=g))
                x, y = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
                label = 1 + int(torch.randint(0, 2, (1,), generator=g))
                image[:, y:y + s, x:x + s] = 0.0
                image[label - 1, y:y + s, x:x + s] = 1.0
                boxes.append([x, y, x + s, y + s])
                labels.append(label)
            self.items.append((image, {"boxes": torch.tensor(boxes, dtype=torch.float32),
                                       "labels": torch.tensor(labels), "image_id": i}))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]
