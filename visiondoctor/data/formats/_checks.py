"""Checks shared by every detection reader: numbers, boxes against the image, the final verdict.

One place decides what "slightly outside" means and when a whole file is unusable, so COCO,
VOC and YOLO input is judged by the same rules.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

from visiondoctor.data.images import image_size
from visiondoctor.data.samples import Category, DataError, DetectionIndex, DetectionRecord, Problem, ProblemAction

# A box may stick out of the image by this much and still be clipped (repaired) rather than
# refused: max(SLACK_PX, SLACK_FRACTION * image side). Exports round to whole pixels and some
# tools write x2 = width, so 1-2 px is common; anything more means wrong coordinates.
SLACK_PX = 2.0
SLACK_FRACTION = 0.02
# Clipping by less than this is float noise (x + w computed as 416.0000001), not a repair.
_NOISE_PX = 1e-3

# No real image is wider or taller than this; a bigger width/height in a file is a typo or junk.
MAX_SIDE = 1 << 20
_FLOAT_MAX = 1.7976931348623157e308

Box = tuple[float, float, float, float]


class ProblemLog:
    """Collects Problems for one source; every reader reports through it."""

    def __init__(self, file: str | Path):
        self.file = str(file)
        self.problems: list[Problem] = []

    def add(self, record: str, message: str, action: ProblemAction, kind: str, file: str | Path | None = None) -> None:
        self.problems.append(Problem(str(file) if file is not None else self.file, record, message, action, kind))

    def refuse(self, record: str, message: str, kind: str, file: str | Path | None = None) -> None:
        self.add(record, message, "refused", kind, file)

    def repair(self, record: str, message: str, kind: str, file: str | Path | None = None) -> None:
        self.add(record, message, "repaired", kind, file)

    def info(self, record: str, message: str, kind: str, file: str | Path | None = None) -> None:
        self.add(record, message, "info", kind, file)

    def extend(self, error: DataError, record: str, kind: str, file: str | Path | None = None) -> None:
        """Keep the problems a DataError carries, or its message as one refusal when it carries none."""
        if error.problems:
            self.problems.extend(error.problems)
        else:
            self.refuse(record, str(error), kind, file)


def read_image_size(path: Path, log: ProblemLog, record: str, file: str | Path | None = None) -> tuple[int, int] | None:
    """The image's real (width, height) from its header, or None after recording a refusal."""
    try:
        return image_size(path)
    except DataError as error:
        log.extend(error, record, "unreadable_image" if os.path.exists(path) else "missing_image", file)
        return None


def is_number(value: Any) -> bool:
    """A finite number that converts to float; bools are not numbers here (True would read as 1)."""
    kind = type(value)
    if kind is float:  # fast paths: readers call this for every coordinate
        return math.isfinite(value)
    if kind is int:
        return -_FLOAT_MAX <= value <= _FLOAT_MAX
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return abs(value) <= _FLOAT_MAX  # math.isfinite(10**400) raises OverflowError
    return math.isfinite(value)


def as_id(value: Any) -> int | None:
    """An id: an integer that fits in int64 (the evaluation code and torch tensors hold ids as int64)."""
    number = as_int(value)
    return number if number is not None and -(2**63) <= number < 2**63 else None


def valid_side(value: Any) -> int | None:
    """An image width or height: an integer in 1..MAX_SIDE, else None."""
    side = as_int(value)
    return side if side is not None and 0 < side <= MAX_SIDE else None


def as_int(value: Any) -> int | None:
    """An integer, or an integral float such as 416.0; None for anything else."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def show(value: Any, limit: int = 60) -> str:
    """repr() cut to a readable length, for messages quoting bad input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_box(
    box: Box, width: int, height: int, log: ProblemLog, record: str, shown: str | Callable[[], str],
    file: str | Path | None = None,
) -> Box | None:
    """Judge an absolute xyxy box against a width x height image.

    Returns the (possibly clipped) box, or None after recording why it was refused: zero or
    negative size, non-finite values, or lying outside the image by more than the slack.
    `shown` is the box as the source wrote it (or a function making that text, called only when
    there is something to report), so the message quotes the user's own numbers.
    """
    x1, y1, x2, y2 = box
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
        log.refuse(record, f"{_text(shown)} has a non-finite coordinate", "wrong_type", file)
        return None
    if x2 <= x1 or y2 <= y1:
        log.refuse(record, f"{_text(shown)} has zero or negative width/height", "empty_box", file)
        return None
    if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
        return box  # the common case, kept fast: readers call this for every box
    slack_x = max(SLACK_PX, SLACK_FRACTION * width)
    slack_y = max(SLACK_PX, SLACK_FRACTION * height)
    outside = max(-x1 / slack_x, -y1 / slack_y, (x2 - width) / slack_x, (y2 - height) / slack_y)
    if outside > 1.0:
        log.refuse(
            record,
            f"{_text(shown)} lies outside the {width}x{height} image by more than {slack_x:.0f}x{slack_y:.0f} px",
            "box_outside",
            file,
        )
        return None
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        log.refuse(record, f"{_text(shown)} has no area inside the {width}x{height} image", "box_outside", file)
        return None
    if max(-x1, -y1, x2 - width, y2 - height) > _NOISE_PX:
        log.repair(
            record,
            f"{_text(shown)} sticks out of the {width}x{height} image; clipped to xyxy "
            f"[{clipped[0]:g}, {clipped[1]:g}, {clipped[2]:g}, {clipped[3]:g}]",
            "box_clipped",
            file,
        )
    return clipped


def _text(shown: str | Callable[[], str]) -> str:
    return shown() if callable(shown) else shown


def finish_index(
    root: Path,
    source: Path,
    categories: list[Category],
    records: list[DetectionRecord],
    log: ProblemLog,
    boxes_in_source: int,
) -> DetectionIndex:
    """Build the index, or raise DataError when the source is unusable as a whole.

    Unusable: no image survived, or the source had boxes and every one was refused (training on
    such a file would silently learn nothing). Categories without boxes are noted as info.
    """
    if not records:
        raise DataError(f"{source}: no usable images", log.problems)
    kept = sum(len(r.boxes) for r in records)
    if boxes_in_source > 0 and kept == 0:
        raise DataError(f"{source}: none of the {boxes_in_source} boxes is usable", log.problems)
    index = DetectionIndex(root=root, source=source, categories=categories, records=records, problems=log.problems)
    for category in index.empty_categories():
        log.info(f"category {category.id}", f"category {category.name!r} has no boxes in this split", "empty_category")
    return index
