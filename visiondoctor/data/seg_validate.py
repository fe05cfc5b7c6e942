"""What a segmentation dataset holds and what was wrong with it, per split (the segmentation
counterpart of data/validate.py).

The readers already judged every image and mask; this module counts their verdicts, adds what
a user checks before training — pixels per class, classes without pixels, the void value and
how it was determined, mask values that are neither a class nor void — lists the problems by
file, and optionally looks for images shared between splits (data/overlap.py).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from visiondoctor.data.overlap import SharedImage, find_shared_images
from visiondoctor.data.samples import Problem
from visiondoctor.data.seg_samples import SegmentationIndex


@dataclass
class SplitValidation:
    """One split's numbers."""

    split: str
    source: str
    images_found: int
    usable: int
    classes: list[dict[str, Any]]  # label, name, pixels, share (of class pixels), anomaly
    empty_classes: list[str]
    ignore_index: int
    void_values: list[int]
    void_source: str
    void_evidence: str
    void_pixels: int
    mask_pixels: int  # every pixel of the usable masks
    outside_values: dict[int, int]  # raw value -> pixels, in masks refused for holding it
    problem_counts: dict[str, dict[str, int]]  # kind -> action -> count
    problems_by_file: dict[str, list[str]]  # file -> "record: message [action]", the first files only
    files_with_problems: int

    @property
    def refused_images(self) -> int:
        return self.images_found - self.usable

    def count(self, action: str) -> int:
        return sum(by_action.get(action, 0) for by_action in self.problem_counts.values())


@dataclass
class SegmentationValidation:
    """Every split's numbers, and the images shared between splits (None when not looked for)."""

    splits: list[SplitValidation]
    shared: list[SharedImage] | None = None

    @property
    def refused(self) -> int:
        return sum(s.count("refused") for s in self.splits)

    @property
    def ok(self) -> bool:
        """True when nothing was refused and no image is shared between splits."""
        return self.refused == 0 and not self.shared

    def to_dict(self) -> dict[str, Any]:
        return {
            "splits": [asdict(s) | {"refused_images": s.refused_images} for s in self.splits],
            "shared": None if self.shared is None else [
                {"kind": s.kind, "split_a": s.split_a, "path_a": str(s.path_a), "split_b": s.split_b,
                 "path_b": str(s.path_b), "distance": s.distance} for s in self.shared],
            "refused": self.refused, "ok": self.ok,
        }


def validate_segmentation(
    indexes: SegmentationIndex | Mapping[str, SegmentationIndex],
    *,
    shared_images: bool = False,
    files_shown: int = 10,
) -> SegmentationValidation:
    """Summarise one index or a {split: index} mapping; with `shared_images`, also look for images
    found in two splits (reads every image once: seconds per thousand images)."""
    splits = {"": indexes} if isinstance(indexes, SegmentationIndex) else dict(indexes)
    report = SegmentationValidation([_split(name, index, files_shown) for name, index in splits.items()])
    if shared_images:
        report.shared = find_shared_images({name or str(index.source): [r.path for r in index.records]
                                            for name, index in splits.items()})
    return report


def _split(name: str, index: SegmentationIndex, files_shown: int) -> SplitValidation:
    per_label = index.pixels_per_label()
    class_pixels = sum(n for label, n in per_label.items() if label < len(index.class_names))
    classes = [{"label": i, "name": n, "pixels": per_label.get(i, 0),
                "share": per_label.get(i, 0) / class_pixels if class_pixels else 0.0,
                "anomaly": i in index.anomaly_labels} for i, n in enumerate(index.class_names)]
    counts: dict[str, Counter] = {}
    for problem in index.problems:
        counts.setdefault(problem.kind, Counter())[problem.action] += 1
    by_file = _by_file(index.problems)
    values = index.value_pixels
    return SplitValidation(
        split=name, source=str(index.source), images_found=index.total_files, usable=len(index.records),
        classes=classes, empty_classes=[c["name"] for c in classes if not c["pixels"]] if values else [],
        ignore_index=index.ignore_index, void_values=list(index.void_values), void_source=index.void_source,
        void_evidence=index.void_evidence,
        void_pixels=sum(values[v] for v in index.void_values if v < len(values)), mask_pixels=sum(values),
        outside_values=dict(index.outside_values),
        problem_counts={kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())},
        problems_by_file=dict(list(by_file.items())[:files_shown]), files_with_problems=len(by_file),
    )


def _by_file(problems: list[Problem]) -> dict[str, list[str]]:
    """Problems grouped by file, refused ones' files first."""
    rank = {"refused": 0, "repaired": 1, "info": 2}
    grouped: dict[str, list[Problem]] = {}
    for problem in problems:
        grouped.setdefault(problem.file, []).append(problem)
    ordered = sorted(grouped.items(), key=lambda item: min(rank.get(p.action, 3) for p in item[1]))
    return {file: [f"{p.record}: {p.message} [{p.action}]" for p in found] for file, found in ordered}


def format_segmentation_report(report: SegmentationValidation) -> str:
    """Plain text for the terminal: per split totals, void, classes, outside values, problems; then shared images."""
    lines: list[str] = []
    for s in report.splits:
        lines += _format_split(s)
    if report.shared is not None:
        lines.append(_shared_line(report.shared))
        lines.extend(f"  {shared}" for shared in report.shared[:20])
        if len(report.shared) > 20:
            lines.append(f"  ... and {len(report.shared) - 20} more")
    return "\n".join(lines)


def _format_split(s: SplitValidation) -> list[str]:
    head = f"{s.split}: " if s.split else ""
    lines = [f"{head}{s.source}: {s.usable} images usable of {s.images_found} ({s.refused_images} refused), "
             f"{len(s.classes)} classes"]
    if s.void_values:
        values = ", ".join(str(v) for v in s.void_values)
        share = f" ({100 * s.void_pixels / s.mask_pixels:.1f}% of mask pixels)" if s.mask_pixels else ""
        lines.append(f"void: value{'s' if len(s.void_values) > 1 else ''} {values} ({s.void_source}) -> ignore index "
                     f"{s.ignore_index}; {s.void_pixels} px{share}")
    else:
        lines.append(f"void: none ({s.void_source}); ignore index {s.ignore_index} (loss only)")
    if s.void_evidence:
        lines.append(f"  why: {s.void_evidence}")
    lines.append("classes:")
    for c in s.classes:
        note = "  (anomaly)" if c["anomaly"] else ""
        note += "  (no pixels)" if s.mask_pixels and not c["pixels"] else ""
        lines.append(f"  {c['label']:>4}  {c['name']:<24} {c['pixels']:>12} px  {100 * c['share']:5.1f}%{note}")
    if s.outside_values:
        shown = ", ".join(f"{v} ({n} px)" for v, n in list(s.outside_values.items())[:12])
        lines.append(f"values outside the classes and void (their masks refused): {shown}")
    if not s.problem_counts:
        lines.append("problems: none")
        return lines
    lines.append(f"problems: {s.count('refused')} refused, {s.count('repaired')} repaired, {s.count('info')} info")
    for kind, by_action in s.problem_counts.items():
        lines.append(f"  {kind}: " + ", ".join(f"{n} {action}" for action, n in by_action.items()))
    lines.append("problems by file:")
    for file, messages in s.problems_by_file.items():
        lines.append(f"  {file}")
        lines.extend(f"      {m}" for m in messages)
    if s.files_with_problems > len(s.problems_by_file):
        lines.append(f"  ... and {s.files_with_problems - len(s.problems_by_file)} more files")
    return lines


def _shared_line(shared: list[SharedImage]) -> str:
    if not shared:
        return "images shared between splits: none"
    kinds = Counter(s.kind for s in shared)
    return (f"images shared between splits: {len(shared)} pairs ("
            + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) + ")")
