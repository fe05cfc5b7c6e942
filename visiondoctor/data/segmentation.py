"""A segmentation dataset as a run uses it: the splits read with one label space, joint image/mask
transforms, the torch Dataset and its collate, and what a run records about the data
(categories.json, data_summary.json)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from visiondoctor.config import Config
from visiondoctor.data.detection import dataset_root
from visiondoctor.data.formats import load_segmentation
from visiondoctor.data.formats.masks import load_record_mask
from visiondoctor.data.images import load_rgb
from visiondoctor.data.seg_samples import DataError, SegmentationIndex

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class SegmentationData:
    train: SegmentationIndex
    val: SegmentationIndex
    test: SegmentationIndex | None
    root: Path

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def split(self, name: str) -> SegmentationIndex:
        index = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if index is None:
            raise FileNotFoundError(f"{self.root}: no {name!r} split")
        return index

    def categories(self) -> dict[str, Any]:
        """categories.json: CategoryMap-compatible keys plus the segmentation label conventions."""
        index = self.train
        return {"dataset_ids": list(range(len(index.class_names))), "names": list(index.class_names),
                "background": False, "task": "segmentation", "num_classes": index.num_classes,
                "anomaly_labels": list(index.anomaly_labels), "ignore_index": index.ignore_index}

    def summary(self) -> dict[str, Any]:
        """data_summary.json: per split images, pixels per class, ignored pixels, problems by action."""
        splits = {}
        for name in ("train", "val", "test"):
            index = getattr(self, name)
            if index is None:
                continue
            problems: dict[str, int] = {}
            for p in index.problems:
                problems[p.action] = problems.get(p.action, 0) + 1
            splits[name] = {"images": len(index.records), "total_files": index.total_files,
                            "per_class": index.pixels_per_class(), "unit": "pixels",
                            "ignored_pixels": index.pixels_per_label().get(index.ignore_index, 0), "problems": problems,
                            "source": str(index.source)}
        train_pixels = self.train.pixels_per_class()
        empty = [n for i, n in enumerate(self.class_names) if i in self.train.known_labels and not train_pixels.get(n)]
        return {"splits": splits, "categories": list(self.class_names), "empty_categories": empty,
                "anomaly_classes": [self.class_names[i] for i in self.train.anomaly_labels], "root": str(self.root)}


def held_out_class(categories: dict[str, Any]) -> int | None:
    """The known class a run held out with --anomaly-class (None when the dataset names its anomaly class)."""
    names = categories.get("names") or []
    held = [int(a) for a in categories.get("anomaly_labels") or [] if a < len(names) and names[a] != "anomaly"]
    return held[0] if held else None


def load_segmentation_data(cfg: Config, anomaly_class: int | None = None) -> SegmentationData:
    """Read train / val (/ test) with one label space. `anomaly_class` holds a known class out: it
    joins the dataset's own anomaly labels (never trained on, positives of anomaly metrics)."""
    root = dataset_root(cfg)
    splits: dict[str, SegmentationIndex | None] = {}
    for name, split in (("train", cfg.data.train_split), ("val", cfg.data.val_split), ("test", cfg.data.test_split)):
        try:
            splits[name] = load_segmentation(root, cfg.data.format, split, cfg.data.ignore_index)
        except DataError as exc:
            if name != "test":
                raise
            log.warning("no usable test split (anomaly scoring needs one): %s", str(exc).splitlines()[0])
            splits[name] = None
    if anomaly_class is not None:  # held out in addition to the dataset's own anomaly class, if any
        splits = {k: v.with_anomaly_labels((*v.anomaly_labels, anomaly_class)) if v is not None else None
                  for k, v in splits.items()}
    for index in splits.values():
        if index is None:
            continue
        if index.class_names != splits["train"].class_names:
            raise DataError(f"{index.source}: class names differ from the training split's")
        log.info("%s", index.summary())
        for problem in index.problems:
            log.warning("%s", problem)
    return SegmentationData(splits["train"], splits["val"], splits["test"], root)


def segmentation_transforms(train: bool, image_size: int, augment: str = "default") -> v2.Transform:
    """Joint image/mask transforms (the mask is a tv_tensors.Mask, so geometric steps use nearest
    neighbour on it and photometric steps leave it alone). Training images and masks are brought
    to `image_size` x `image_size`; evaluation resizes the image only: predictions are scored
    against the mask at its own resolution. `image_size` <= 0 keeps the native size."""
    size = (image_size, image_size) if image_size > 0 else None
    steps: list[v2.Transform] = []
    if train and augment == "default" and size:
        steps += [v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.75, 1.333), antialias=True)]
    elif size:
        steps += [v2.Resize(size, antialias=True)]
    if train and augment in ("default", "light"):
        steps += [v2.RandomHorizontalFlip(p=0.5)]
    if train and augment == "default":
        steps += [v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)]
    elif train and augment not in ("light", "none"):
        raise ValueError(f"train.augment={augment!r}: expected default, light or none")
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
              v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


class SegmentationDataset(Dataset):
    """(normalised image, label mask). Mask values go through the index's lookup table; with
    `train_labels`, anomaly labels become the ignore index so the loss never sees them."""

    def __init__(self, index: SegmentationIndex, transforms: Callable | None, train_labels: bool = False,
                 resize_mask: bool = True):
        self.index = index
        self.transforms = transforms
        self.resize_mask = resize_mask
        lut = index.lut().astype(np.int64)
        if train_labels:
            for label in index.anomaly_labels:
                lut[lut == label] = index.ignore_index
        self.lut = lut

    def __len__(self) -> int:
        return len(self.index.records)

    def load_mask(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.lut[load_record_mask(self.index.records[i])])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.index.records[i]
        image = tv_tensors.Image(load_rgb(record.path))
        mask = self.load_mask(i)
        if self.transforms is None:
            return image.as_subclass(torch.Tensor), mask
        if self.resize_mask:
            image, mask = self.transforms(image, tv_tensors.Mask(mask))
        else:
            image = self.transforms(image)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def collate_segmentation(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, Any]:
    """Images stacked; masks stacked when they share a size, else a list (native-size evaluation)."""
    images = torch.stack([b[0] for b in batch])
    masks = [b[1] for b in batch]
    if all(m.shape == masks[0].shape for m in masks):
        return images, torch.stack(masks)
    return images, masks
