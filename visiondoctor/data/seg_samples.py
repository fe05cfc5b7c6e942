"""The internal representation of a semantic-segmentation split.

Every mask reader (image/mask folders, StreetHazards, CamVid, Cityscapes, ADE20K, VOC) produces a
`SegmentationIndex`: the usable `SegmentationRecord`s (an image and its label PNG), the class
names, the ignore index, the labels that are anomalies (never trained on; the positive class of
anomaly metrics), and the `Problem`s found while reading. Mask pixel values become labels
through `value_to_label`, a 256-entry lookup table applied when a mask is loaded, so a
format whose PNGs hold shifted values (StreetHazards: 1..14, ADE20K: 1..150) needs no rewritten
files. The raw values that mean "void" (mapped to the ignore index) are kept with how they were
determined (`void_source`): stated by the layout, found in the masks, or configured.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from visiondoctor.data.samples import DataError, Problem

__all__ = ["SegmentationRecord", "SegmentationIndex", "identity_lut", "DataError", "Problem", "VOID_SOURCES"]

# How the void values of an index were determined.
VOID_SOURCES = ("layout", "found in masks", "configured", "none")


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
    width: int  # of the displayed image (EXIF orientation applied; see data/images.py)
    height: int
    # EXIF orientation to apply to the mask when loading it: 1 (as stored) unless the mask was drawn
    # on the un-rotated pixels of an image that EXIF turns by 90 degrees (see data/formats/masks.py).
    mask_orientation: int = 1


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
    # raw value -> pixels of it touching another value (4-neighbours), over usable records: how thin its regions are
    value_edge_pixels: list[int] = field(default_factory=list)
    void_values: tuple[int, ...] = ()  # raw mask values meaning "void" (mapped to ignore_index)
    void_source: str = "configured"  # one of VOID_SOURCES
    void_evidence: str = ""  # why these values are void, in words
    # raw values that are neither a class nor void -> pixels, over readable masks (their masks were refused)
    outside_values: dict[int, int] = field(default_factory=dict)

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
        return replace(self, class_names=list(self.class_names), anomaly_labels=tuple(sorted(set(labels))),
                       problems=list(self.problems), value_pixels=list(self.value_pixels),
                       value_edge_pixels=list(self.value_edge_pixels), outside_values=dict(self.outside_values))

    def void_description(self) -> str:
        """E.g. "void value 255 (found in masks) -> ignore index 255"."""
        if not self.void_values:
            return f"no void value ({self.void_source}); ignore index {self.ignore_index}"
        values = ", ".join(str(v) for v in self.void_values)
        plural = "s" if len(self.void_values) > 1 else ""
        return f"void value{plural} {values} ({self.void_source}) -> ignore index {self.ignore_index}"

    def summary(self) -> str:
        dropped = self.total_files - len(self.records)
        return (
            f"{self.source}: {len(self.records)} usable images of {self.total_files} "
            f"({dropped} refused), {len(self.class_names)} classes, {self.void_description()}"
            + (f", anomaly labels {list(self.anomaly_labels)}" if self.anomaly_labels else "")
        )
