"""A detection dataset as a run uses it: the train / val / test splits read with one label space,
and the summary a run records (data_summary.json)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiondoctor.config import Config
from visiondoctor.data.formats import list_splits, load_detection, match_split
from visiondoctor.data.samples import CategoryMap, DetectionIndex
from visiondoctor.data.synth import ensure_synthetic
from visiondoctor.data.validate import problems_by_action

log = logging.getLogger(__name__)


@dataclass
class DetectionData:
    train: DetectionIndex
    val: DetectionIndex
    test: DetectionIndex | None
    category_map: CategoryMap
    root: Path

    def split(self, name: str) -> DetectionIndex:
        index = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if index is None:
            raise FileNotFoundError(f"{self.root}: no {name!r} split")
        return index

    def categories(self) -> dict[str, Any]:
        """categories.json: dataset ids <-> training labels."""
        return self.category_map.to_dict()

    def summary(self) -> dict[str, Any]:
        """data_summary.json: per split images, boxes, boxes per class, box sizes, problems by action."""
        splits = {}
        for name, index in (("train", self.train), ("val", self.val), ("test", self.test)):
            if index is None:
                continue
            per_class = {c.name: n for c, n in zip(index.categories, (index.boxes_per_category().get(c.id, 0)
                                                                       for c in index.categories))}
            sizes = [[round(b[2] - b[0], 1), round(b[3] - b[1], 1)] for r in index.records for b in r.boxes]
            problems: dict[str, int] = {}
            for p in index.problems:
                problems[p.action] = problems.get(p.action, 0) + 1
            splits[name] = {"images": len(index.records), "boxes": index.num_boxes, "per_class": per_class,
                            "box_sizes": sizes, "problems": problems, "source": str(index.source)}
        return {"splits": splits, "categories": [c.name for c in self.train.categories],
                "empty_categories": [c.name for c in self.train.empty_categories()], "root": str(self.root)}


def dataset_root(cfg: Config) -> Path:
    """data.path, or the config's synthetic dataset (generated on first use)."""
    if cfg.data.path:
        return Path(cfg.data.path)
    if cfg.data.synth:
        return ensure_synthetic(cfg)
    raise ValueError("no data: give data.path=DIR (COCO / VOC / YOLO, or image/mask folders) or data.synth=NAME")


def _load_split(path: Path, fmt: str, split: str) -> DetectionIndex:
    available = list_splits(path, fmt)
    if available and match_split(split, available) is None:
        raise FileNotFoundError(f"{path}: no split {split!r}; available: {', '.join(available)}")
    return load_detection(path, fmt, split if available else None)


def load_detection_data(cfg: Config, background: bool = True) -> DetectionData:
    """train / val (/ test when present) of the config's dataset; labels from the training split's categories."""
    root = dataset_root(cfg)
    train = _load_split(root, cfg.data.format, cfg.data.train_split)
    val = _load_split(root, cfg.data.format, cfg.data.val_split)
    try:
        test = _load_split(root, cfg.data.format, cfg.data.test_split)
    except FileNotFoundError:
        test = None
    for name, index in (("train", train), ("val", val), ("test", test)):
        if index is not None and index.problems:
            log.warning("%s split (%s): %s (details: visiondoctor data validate)", name, index.source, ", ".join(
                f"{n} {action}" for action, n in problems_by_action(index.problems).items() if n))
            for problem in [p for p in index.problems if p.action != "info"][:5]:
                log.warning("  %s", problem)
    return DetectionData(train, val, test, CategoryMap.from_categories(train.categories, background), root)
