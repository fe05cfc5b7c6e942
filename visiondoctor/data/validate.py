"""`data validate` and `data convert`: what a dataset holds and what was wrong with it.

The readers already judged every record; this module counts their verdicts (by kind and
action), adds the numbers a user checks before training (boxes per class, box sizes, empty
classes, images without boxes) and formats them for the terminal.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiondoctor.data.formats import load_detection
from visiondoctor.data.formats.coco import write_coco
from visiondoctor.data.samples import DetectionIndex, Problem

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
