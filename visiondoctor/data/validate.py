"""`data validate` and `data convert`: what a dataset holds and what was wrong with it.

The readers already judged every record; this module counts their verdicts (by kind and
action), adds the numbers a user checks before training (boxes per class, box sizes, empty
classes, images without boxes) and formats them for the terminal. `validate_dataset` does it for
every split of a detection or segmentation dataset (segmentation: data/seg_validate.py, with the
void value and where it came from) and lists the images found in two splits (data/overlap.py).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiondoctor.data.formats import (
    detect_format,
    formats_for,
    list_splits,
    load_detection,
    load_segmentation,
    match_split,
)
from visiondoctor.data.formats.coco import write_coco
from visiondoctor.data.formats.yolo import YoloWrite, write_yolo
from visiondoctor.data.overlap import SharedImage, find_shared_images
from visiondoctor.data.samples import DataError, DetectionIndex, Problem
from visiondoctor.data.seg_validate import (
    SegmentationValidation,
    format_segmentation_report,
    validate_segmentation,
)

# COCO's size buckets (area in px²), so the summary speaks the same language as map_small etc.
SMALL_AREA, LARGE_AREA = 32**2, 96**2


@dataclass
class ValidationReport:
    source: str
    num_images: int
    num_boxes: int
    categories: list[dict[str, Any]]  # id, name, boxes
    empty_categories: list[str]
    images_without_boxes: int
    problem_counts: dict[str, dict[str, int]]  # kind -> action -> count
    examples: dict[str, list[str]]  # kind -> a few formatted problems
    box_stats: dict[str, float] = field(default_factory=dict)

    def count(self, action: str) -> int:
        return sum(by_action.get(action, 0) for by_action in self.problem_counts.values())

    @property
    def refused(self) -> int:
        return self.count("refused")

    @property
    def repaired(self) -> int:
        return self.count("repaired")

    @property
    def ok(self) -> bool:
        """True when nothing had to be refused (repairs and info are fine)."""
        return self.refused == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "num_images": self.num_images, "num_boxes": self.num_boxes,
            "categories": self.categories, "empty_categories": self.empty_categories,
            "images_without_boxes": self.images_without_boxes, "problem_counts": self.problem_counts,
            "refused": self.refused, "repaired": self.repaired, "box_stats": self.box_stats,
            "examples": self.examples,
        }


def validate(index: DetectionIndex, examples_per_kind: int = 3) -> ValidationReport:
    """Summarise an index: problems counted by kind and action, per-class counts, box sizes."""
    counts: dict[str, Counter] = {}
    examples: dict[str, list[str]] = {}
    for problem in index.problems:
        counts.setdefault(problem.kind, Counter())[problem.action] += 1
        shown = examples.setdefault(problem.kind, [])
        if len(shown) < examples_per_kind:
            shown.append(str(problem))
    per_category = index.boxes_per_category()
    names = {c.id: c.name for c in index.categories}
    categories = [{"id": cid, "name": names.get(cid, f"<unlisted {cid}>"), "boxes": n} for cid, n in sorted(per_category.items())]
    return ValidationReport(
        source=str(index.source),
        num_images=len(index.records),
        num_boxes=index.num_boxes,
        categories=categories,
        empty_categories=[c.name for c in index.empty_categories()],
        images_without_boxes=sum(1 for r in index.records if not r.boxes),
        problem_counts={kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())},
        examples=examples,
        box_stats=_box_stats(index),
    )


def _box_stats(index: DetectionIndex) -> dict[str, float]:
    boxes = np.array([b for r in index.records for b in r.boxes], dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return {}
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h
    per_image = np.array([len(r.boxes) for r in index.records])
    return {
        "width_min": float(w.min()), "width_median": float(np.median(w)), "width_max": float(w.max()),
        "height_min": float(h.min()), "height_median": float(np.median(h)), "height_max": float(h.max()),
        "small": int((area < SMALL_AREA).sum()), "medium": int(((area >= SMALL_AREA) & (area < LARGE_AREA)).sum()),
        "large": int((area >= LARGE_AREA).sum()),
        "boxes_per_image_mean": float(per_image.mean()), "boxes_per_image_max": int(per_image.max()),
    }


def format_report(report: ValidationReport) -> str:
    """Plain text for the terminal: totals, classes, box sizes, then problems with examples."""
    lines = [f"{report.source}: {report.num_images} images, {report.num_boxes} boxes, "
             f"{report.images_without_boxes} images without boxes"]
    lines.append("classes:")
    for c in report.categories:
        lines.append(f"  {c['id']:>4}  {c['name']:<24} {c['boxes']:>7} boxes" + ("  (no boxes)" if c["boxes"] == 0 else ""))
    s = report.box_stats
    if s:
        lines.append(f"box width  px: min {s['width_min']:.1f}  median {s['width_median']:.1f}  max {s['width_max']:.1f}")
        lines.append(f"box height px: min {s['height_min']:.1f}  median {s['height_median']:.1f}  max {s['height_max']:.1f}")
        lines.append(f"COCO size buckets: small {s['small']}  medium {s['medium']}  large {s['large']};  "
                     f"boxes per image: mean {s['boxes_per_image_mean']:.1f}  max {s['boxes_per_image_max']}")
    if not report.problem_counts:
        lines.append("problems: none")
    else:
        lines.append(f"problems: {report.refused} refused, {report.repaired} repaired, {report.count('info')} info")
        for kind, by_action in report.problem_counts.items():
            lines.append(f"  {kind}: " + ", ".join(f"{n} {action}" for action, n in by_action.items()))
            lines.extend(f"      {example}" for example in report.examples.get(kind, []))
    return "\n".join(lines)


@dataclass(frozen=True)
class Conversion:
    out_path: Path
    images_root: Path  # the folder the written file names are relative to
    index: DetectionIndex

    @property
    def readable_in_place(self) -> bool:
        """True when file names are relative to the output's folder, so `read_coco(out_path)` works as is."""
        return self.images_root == self.out_path.parent


def convert(path: str | Path, format: str, split: str | None, out_path: str | Path) -> Conversion:
    """Read a dataset (any supported format) and write it as COCO JSON.

    File names are written relative to the output's folder when every image lies under it (the
    file then reads back as it is); otherwise relative to the dataset root, which the result
    names so the caller can tell the user.
    """
    index = load_detection(path, format, split)
    out = Path(out_path).absolute()
    images_root = out.parent if all(r.path.is_relative_to(out.parent) for r in index.records) else Path(index.root)
    write_coco(index, out, images_root=images_root)
    return Conversion(out, images_root, index)


def problems_by_action(problems: list[Problem]) -> dict[str, int]:
    """{"repaired": n, "refused": n, "info": n}: the one-line count a training log prints."""
    counts = Counter(p.action for p in problems)
    return {action: counts.get(action, 0) for action in ("repaired", "refused", "info")}


# ----- a whole dataset: every split, detection or segmentation, and the images the splits share -------------------

@dataclass
class DatasetValidation:
    """`data validate ROOT`: each split's report (detection or segmentation) and the images found in two splits."""

    root: str
    task: str  # detection | segmentation
    format: str
    detection: list[tuple[str, ValidationReport]] = field(default_factory=list)  # (split, report)
    segmentation: SegmentationValidation | None = None
    shared: list[SharedImage] | None = None  # None: one split only, nothing to compare

    @property
    def refused(self) -> int:
        """Records (boxes, images, masks) that reading refused: they would be lost in training."""
        seg = self.segmentation.refused if self.segmentation is not None else 0
        return sum(r.refused for _, r in self.detection) + seg


def validate_dataset(path: str | Path, format: str = "auto", split: str | None = None,
                     task: str = "auto") -> DatasetValidation:
    """Validate one split, or (split None) every split the dataset has and the images shared between them.
    `task` auto: the first of detection and segmentation whose layouts recognise the path and read it (a
    dataset folder can look like both: the generic image/mask reader accepts any folder)."""
    if not Path(path).exists():
        raise DataError(f"{path}: no such file or folder")
    tasks = [task] if task != "auto" else ["detection", "segmentation"]
    errors: list[DataError] = []
    for candidate in tasks:
        try:
            fmt = detect_format(Path(path), candidate) if format == "auto" else _named_format(path, format, candidate)
            return _validate_as(path, candidate, fmt, split)
        except DataError as exc:
            errors.append(exc)
    raise errors[0] if len(errors) == 1 else DataError(
        f"{errors[0]} (as detection data); as segmentation data: {errors[1]}")


def _named_format(path: str | Path, format: str, task: str) -> str:
    if format not in {f.name for f in formats_for(task)}:
        raise DataError(f"{path}: {format!r} is not a {task} format")
    return format


def _validate_as(path: str | Path, task: str, fmt: str, split: str | None) -> DatasetValidation:
    splits: list[str | None] = [split] if split else (_in_usual_order(list_splits(path, fmt, task)) or [None])
    report = DatasetValidation(str(path), task, fmt)
    if task == "segmentation":
        indexes = {s or "": load_segmentation(path, fmt, s) for s in splits}
        report.segmentation = validate_segmentation(indexes, shared_images=len(indexes) > 1)
        report.shared = report.segmentation.shared
        return report
    detection = {s or "": load_detection(path, fmt, s) for s in splits}
    report.detection = [(s, validate(index)) for s, index in detection.items()]
    if len(detection) > 1:
        report.shared = find_shared_images({s: [r.path for r in index.records] for s, index in detection.items()})
    return report


def _in_usual_order(splits: list[str]) -> list[str]:
    """train, then the validation split (any alias), then test, then the rest as listed."""
    rank = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}
    return sorted(splits, key=lambda s: (rank.get(s, 3), s))


def format_dataset_report(report: DatasetValidation) -> str:
    """Plain text for the terminal: each split's report, the images shared between splits, and the verdict."""
    lines = [f"{report.root}: {report.task} dataset ({report.format} layout)"]
    if report.segmentation is not None:
        lines.append(format_segmentation_report(report.segmentation))
    else:
        for split, split_report in report.detection:
            if split:
                lines.append(f"== {split} ==")
            lines.append(format_report(split_report))
        if report.shared is not None:  # the segmentation report's shared-images block, on its own
            lines.append(format_segmentation_report(SegmentationValidation([], report.shared)))
    lines.append(f"records that would be lost: {report.refused} (exit status 1)" if report.refused
                 else "no record would be lost")
    return "\n".join(lines)


def convert_to_yolo(path: str | Path, format: str, split: str | None, out: str | Path) -> list[YoloWrite]:
    """Every split of a dataset (or `split`) written under `out` in Ultralytics' layout by write_yolo,
    every split with the training split's class order; split folders named as YOLO tools expect them
    (Roboflow's `valid` -> `val`). A dataset without splits is written as `split` or `train`."""
    available = list_splits(path, format)
    if not available:
        index = load_detection(path, format, None)
        return [write_yolo(index, out, split or "train", index.categories)]
    train = match_split("train", available)
    categories = load_detection(path, format, train).categories if train else None
    written = []
    for name in [split] if split else available:
        index = load_detection(path, format, name)
        written.append(write_yolo(index, out, match_split(name, ["train", "val", "test"]) or name,
                                  categories if categories is not None else index.categories))
    return written
