"""Box-aware augmentation presets over torchvision.transforms.v2.

The models resize internally (their GeneralizedRCNNTransform), so presets only augment and
convert; boxes travel as tv_tensors.BoundingBoxes and are kept consistent by v2. The training
datasets decode images already reduced toward the model's input size (`data.reduce`,
visiondoctor.data.loading), so the augmentation works on about the pixels the model will see.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2


def detection_transforms(train: bool, augment: str = "default") -> v2.Transform:
    """`default`: photometric jitter, zoom-out, IoU crop and horizontal flip (the SSD recipe);
    `light`: flip and mild scale jitter; `none`: conversion only."""
    steps: list[v2.Transform] = []
    if train and augment == "default":
        steps += [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomApply([v2.RandomZoomOut(fill=114, side_range=(1.0, 2.0))], p=0.3),
            v2.RandomApply([v2.RandomIoUCrop()], p=0.3),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    elif train and augment == "light":
        steps += [v2.RandomHorizontalFlip(p=0.5), v2.RandomAffine(degrees=0, scale=(0.8, 1.2))]
    elif train and augment != "none":
        raise ValueError(f"train.augment={augment!r}: expected default, light or none")
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        # Crops can leave degenerate boxes; SanitizeBoundingBoxes removes them with their labels.
        v2.SanitizeBoundingBoxes(min_size=1.0),
    ]
    return v2.Compose(steps)
