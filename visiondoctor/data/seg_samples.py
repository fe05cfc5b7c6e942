"""The internal representation of a semantic-segmentation split.

Every mask reader (image/mask folders, StreetHazards) produces a `SegmentationIndex`: the
usable `SegmentationRecord`s (an image and its label PNG), the class names, the ignore
index, the labels that are anomalies (never trained on; the positive class of anomaly
metrics), and the `Problem`s found while reading. Mask pixel values become labels
through `value_to_label`, a 256-entry lookup table applied when a mask is loaded, so a
format whose PNGs hold shifted values (StreetHazards: 1..14) needs no rewritten files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visiondoctor.data.samples import DataError, Problem

__all__ = ["SegmentationRecord", "SegmentationIndex", "identity_lut", "DataError", "Problem"]


def identity_lut(num_values: int, ignore_index: int) -> tuple[int, ...]:
    """Pixel value v -> label v for v < num_values; every other value -> `ignore_index`."""
    return tuple(v if v < num_values or v == ignore_index else ignore_index for v in range(256))


@dataclass
class SegmentationRecord:
    """One image and its label mask (absolute paths, confined to the dataset root)."""

    image_id: int
    file_name: str  # image path relative to the index root
    path: Path
    mask_path: Path
    width: int
    height: int


@dataclass
class SegmentationIndex:
    """A whole split: records, class names, label conventions, and what was wrong."""

    root: Path
    source: Path  # the folder (or list file) that was read
    class_names: list[str]  # label i -> name; anomaly labels included
    records: list[SegmentationRecord]
    ignore_index: int = 255
    anomaly_labels: tuple[int, ...] = ()
    value_to_label: tuple[int, ...] = ()  # 256 entries; empty = identity
    problems: list[Problem] = field(default_factory=list)
    total_files: int = 0  # images found, usable or not (so dropped ones are counted)
    value_pixels: list[int] = field(default_factory=list)  # raw mask value -> pixel count over usable records

    def pixels_per_label(self) -> dict[int, int]:
        """Pixel count per label (the ignore index included), from the counts gathered while reading."""
        lut = self.lut()
        out: dict[int, int] = {}
        for value, n in enumerate(self.value_pixels):
            if n:
                out[int(lut[value])] = out.get(int(lut[value]), 0) + int(n)
        return out

    def pixels_per_class(self) -> dict[str, int]:
        """Pixel count per class name (ignored pixels left out; see pixels_per_label)."""
        if not self.value_pixels:
            return {}
        per_label = self.pixels_per_label()
        return {name: per_label.get(i, 0) for i, name in enumerate(self.class_names)}

    @property
    def num_classes(self) -> int:
        """Model outputs: every label up to the last known (non-anomaly) one."""
        known = [i for i in range(len(self.class_names)) if i not in self.anomaly_labels]
        if not known:
            raise DataError(f"{self.source}: every class is an anomaly class; nothing to train on")
        return max(known) + 1

    @property
    def known_labels(self) -> list[int]:
        return [i for i in range(self.num_classes) if i not in self.anomaly_labels]

    @property
    def refused(self) -> list[Problem]:
        return [p for p in self.problems if p.action == "refused"]

    def lut(self) -> np.ndarray:
        """The pixel-value -> label table as a uint8 array (identity when none was set)."""
        if self.value_to_label:
            return np.asarray(self.value_to_label, dtype=np.uint8)
        return np.asarray(identity_lut(len(self.class_names), self.ignore_index), dtype=np.uint8)

    def with_anomaly_labels(self, labels: tuple[int, ...]) -> "SegmentationIndex":
        """The same split with other anomaly labels (e.g. a known class held out with --anomaly-class)."""
        for label in labels:
            if not 0 <= label < len(self.class_names):
                raise DataError(
                    f"{self.source}: anomaly class {label} is not a label of this dataset "
                    f"(labels 0..{len(self.class_names) - 1}: {', '.join(self.class_names)})"
                )
        return SegmentationIndex(
            self.root, self.source, list(self.class_names), self.records, self.ignore_index,
            tuple(sorted(set(labels))), self.value_to_label, list(self.problems), self.total_files,
            list(self.value_pixels),
        )

    def summary(self) -> str:
        dropped = self.total_files - len(self.records)
        return (
            f"{self.source}: {len(self.records)} usable images of {self.total_files} "
            f"({dropped} refused), {len(self.class_names)} classes, ignore index {self.ignore_index}"
            + (f", anomaly labels {list(self.anomaly_labels)}" if self.anomaly_labels else "")
        )
