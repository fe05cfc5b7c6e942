"""The internal representation every reader produces and every consumer reads.

A dataset file (COCO JSON, VOC XML, YOLO txt) becomes a `DetectionIndex`: a list of
`DetectionRecord` (one image and its boxes, in the dataset's own category ids), the
categories, and the `Problem`s found while reading. Training labels are derived once by
`CategoryMap`, which is saved with each run so predictions go back in dataset ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

ProblemAction = Literal["repaired", "refused", "info"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, named by file and record so a user can find it."""

    file: str
    record: str  # e.g. "image id 12", "annotation id 40", "line 3"
    message: str
    action: ProblemAction  # repaired (with a counted warning), refused (record unusable), info
    kind: str = "other"  # short stable tag for counting, e.g. "box_outside", "missing_image"

    def __str__(self) -> str:
        return f"{self.file}: {self.record}: {self.message} [{self.action}]"


class DataError(Exception):
    """Input that cannot be repaired. Carries every problem found, not just the first."""

    def __init__(self, message: str, problems: Iterable[Problem] = ()):
        self.problems = list(problems)
        detail = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(message + (f"\n{detail}{more}" if detail else ""))


@dataclass(frozen=True)
class Category:
    id: int  # the dataset's own id
    name: str
    supercategory: str = ""


@dataclass
class DetectionRecord:
    """One image: absolute path, size, and boxes in absolute xyxy pixels with dataset category ids."""

    image_id: int
    file_name: str  # relative to the index root, as written in the source file
    path: Path  # resolved absolute path, confined to the dataset root
    width: int
    height: int
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    annotation_ids: list[int] = field(default_factory=list)
    iscrowd: list[int] = field(default_factory=list)
    areas: list[float] = field(default_factory=list)


@dataclass
class DetectionIndex:
    """A whole split: records, categories, and what was wrong with the source."""

    root: Path  # folder the image file names are relative to
    source: Path  # the annotation file (or folder) that was read
    categories: list[Category]
    records: list[DetectionRecord]
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_boxes(self) -> int:
        return sum(len(r.boxes) for r in self.records)

    def boxes_per_category(self) -> dict[int, int]:
        counts = {c.id: 0 for c in self.categories}
        for r in self.records:
            for cid in r.category_ids:
                counts[cid] = counts.get(cid, 0) + 1
        return counts

    def empty_categories(self) -> list[Category]:
        counts = self.boxes_per_category()
        return [c for c in self.categories if counts.get(c.id, 0) == 0]


@dataclass(frozen=True)
class CategoryMap:
    """Dataset category ids <-> contiguous training labels.

    torchvision detectors reserve label 0 for background, so with `background=True` the
    first category gets label 1. Categories that never occur in the training split are
    kept by default (so label spaces agree across splits), but reported.
    """

    dataset_ids: tuple[int, ...]
    names: tuple[str, ...]
    background: bool = True

    @classmethod
    def from_categories(cls, categories: list[Category], background: bool = True) -> "CategoryMap":
        ordered = sorted(categories, key=lambda c: c.id)
        return cls(tuple(c.id for c in ordered), tuple(c.name for c in ordered), background)

    @property
    def offset(self) -> int:
        return 1 if self.background else 0

    @property
    def num_classes(self) -> int:
        """Number of model outputs, background included when the model needs it."""
        return len(self.dataset_ids) + self.offset

    def to_label(self, dataset_id: int) -> int:
        return self.dataset_ids.index(dataset_id) + self.offset

    def to_dataset_id(self, label: int) -> int:
        return self.dataset_ids[label - self.offset]

    def label_name(self, label: int) -> str:
        if self.background and label == 0:
            return "__background__"
        return self.names[label - self.offset]

    def to_dict(self) -> dict:
        return {"dataset_ids": list(self.dataset_ids), "names": list(self.names), "background": self.background}

    @classmethod
    def from_dict(cls, d: dict) -> "CategoryMap":
        return cls(tuple(d["dataset_ids"]), tuple(d["names"]), bool(d["background"]))
