"""Dataset formats: one registry for detection and segmentation alike.

Each format module in this package registers a `DatasetFormat` (detect, read, list splits and,
where it exists, write); `load_detection` / `load_segmentation` find the format a path holds
(`format="auto"`) and read one split of it. A new format is one new module here that calls
`register_format`, nothing else to edit.

Detection layouts: COCO (a .json file, `<split>/_annotations.coco.json` as Roboflow exports it,
`annotations/instances_<split>.json`), Pascal VOC (`Annotations/` or XML beside the images),
YOLO (`data.yaml` / `classes.txt` / `labels/`). Segmentation: image/mask folders and
StreetHazards (see each module). Split names "val", "valid" and "validation" stand for one another.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiondoctor.data.formats.splits import match_split, pick_split
from visiondoctor.data.samples import DataError, DetectionIndex
from visiondoctor.data.seg_samples import SegmentationIndex
from visiondoctor.registry import Registry

__all__ = ["DatasetFormat", "FORMATS", "register_format", "load_detection", "load_segmentation", "detect_format",
           "list_splits", "match_split", "pick_split", "formats_for"]


@dataclass(frozen=True)
class DatasetFormat:
    """How one on-disk format is recognised, listed, read and (optionally) written.

    read(path, split) -> DetectionIndex for detection formats; read(path, split, ignore_index)
    -> SegmentationIndex for segmentation formats. `priority`: auto-detection tries lower first.
    `looks_for`: what `detect` looks at, for the message when nothing is recognised."""

    name: str
    task: str  # "detection" | "segmentation"
    detect: Callable[[Path], bool]
    read: Callable[..., Any]
    list_splits: Callable[[Path], list[str]]
    looks_for: str
    write: Callable[..., Any] | None = None
    priority: int = 50


FORMATS: Registry[DatasetFormat] = Registry("dataset format", "visiondoctor.data.formats")


def register_format(fmt: DatasetFormat) -> DatasetFormat:
    return FORMATS.add(fmt.name, fmt)


def formats_for(task: str) -> list[DatasetFormat]:
    """The formats of a task in auto-detection order."""
    return sorted((f for f in FORMATS.values() if f.task == task), key=lambda f: f.priority)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not os.path.exists(path):  # os.path: False (not OSError) for names too long or otherwise invalid
        raise DataError(f"{path}: no such file or folder")
    return path


def _named(path: Path, name: str, task: str) -> DatasetFormat:
    known = formats_for(task)
    fmt = next((f for f in known if f.name == name), None)
    if fmt is None:
        raise DataError(f"{path}: unknown {task} format {name!r}; supported: {', '.join(f.name for f in known)} or auto")
    return fmt


def detect_format(path: Path, task: str = "detection") -> str:
    """The format a file or folder holds, or DataError saying what was looked for."""
    path = Path(path)
    candidates = formats_for(task)
    for fmt in candidates:
        if fmt.detect(path):
            return fmt.name
    if path.is_file():
        raise DataError(f"{path}: cannot tell the format of a {path.suffix.lower() or 'suffix-less'} file; give an "
                        f"annotation file of a known format ({', '.join(f.name for f in candidates)}) or a dataset folder")
    raise DataError(f"{path}: no {task} dataset recognised. Looked for " + "; ".join(f.looks_for for f in candidates))


def _resolve(path: str | Path, format: str, task: str) -> tuple[Path, DatasetFormat]:
    path = _existing(path)
    return path, _named(path, detect_format(path, task) if format == "auto" else format, task)


def load_detection(path: str | Path, format: str = "auto", split: str | None = None) -> DetectionIndex:
    """Read a detection dataset (file or folder) of `format` ("auto" to detect it), one split of it."""
    path, fmt = _resolve(path, format, "detection")
    return fmt.read(path, split)


def load_segmentation(path: str | Path, format: str = "auto", split: str | None = None,
                      ignore_index: int | None = None) -> SegmentationIndex:
    """Read one split of a segmentation dataset of `format` ("auto" to detect it); void pixels become
    `ignore_index` (None: the layout's own void value, or the one found in the masks)."""
    path, fmt = _resolve(path, format, "segmentation")
    return fmt.read(path, split, ignore_index)


def list_splits(path: str | Path, format: str = "auto", task: str = "detection") -> list[str]:
    """Split names a dataset offers (sorted); [] for a single-split file or flat folder."""
    path, fmt = _resolve(path, format, task)
    return [] if path.is_file() else fmt.list_splits(path)
