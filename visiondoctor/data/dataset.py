"""A torch Dataset over a DetectionIndex: image tensor + torchvision-style target dict.

With an `images` loader that reduces (visiondoctor.data.image_cache.ReducedImages), images arrive
already near the model's input size and the boxes are scaled with them, before any augmentation:
a sample's frame is the reduced image, not the file's. Evaluation that scores boxes against the
files' ground truth uses a dataset without reduction (the default).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from visiondoctor.data.image_cache import ReducedImages
from visiondoctor.data.samples import CategoryMap, DetectionIndex


class DetectionDataset(Dataset):
    """Yields (image, target) with target = {boxes (XYXY pixels), labels (contiguous), image_id}.

    Labels come from the run's CategoryMap, so the label space is the same for every split.
    `images` decodes (and may reduce and cache) the files; default: full size, no cache.
    """

    def __init__(self, index: DetectionIndex, category_map: CategoryMap, transforms: Any = None,
                 images: ReducedImages | None = None):
        self.index = index
        self.category_map = category_map
        self.transforms = transforms
        self.images = images if images is not None else ReducedImages(None)

    def __len__(self) -> int:
        return len(self.index.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.index.records[i]
        pixels, (width, height) = self.images.load(record.path)
        image = tv_tensors.Image(pixels)
        h, w = image.shape[-2:]
        # Crowd regions (COCO iscrowd, VOC "difficult") are not training targets, as in torchvision's
        # reference; they stay in the ground truth, where COCO evaluation ignores them.
        keep = [i for i in range(len(record.boxes)) if not (record.iscrowd and record.iscrowd[i])]
        boxes = torch.tensor([record.boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4)
        if (w, h) != (width, height):  # reduced: boxes follow the image, each axis by its exact ratio
            boxes = boxes * torch.tensor([w / width, h / height, w / width, h / height])
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([self.category_map.to_label(record.category_ids[i]) for i in keep],
                                   dtype=torch.int64),
            "image_id": record.image_id,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "labels": target["labels"],
            "image_id": target["image_id"],
        }


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection models take lists: images differ in size and targets in box count."""
    images, targets = zip(*batch)
    return list(images), list(targets)
