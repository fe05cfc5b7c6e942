"""What the published segmentation layouts (StreetHazards, CamVid, Cityscapes, ADE20K, VOC) share:
split-name aliases, and reading (image, mask) pairs through a value table the layout states.

Each layout module exposes `NAME`, `detect(root)`, `list_splits(root)` and
`read(root, split, ignore_index=None)`; `ignore_index` is the label void pixels become (None:
the layout's own convention), the raw void values themselves are stated by the layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from visiondoctor.data.formats.masks import build_index, valid_values_of
from visiondoctor.data.formats.splits import match_split
from visiondoctor.data.seg_samples import DataError, Problem, SegmentationIndex

def resolve_split(root: Path, split: str, available: list[str], layout: str) -> str:
    """`split` as `available` names it (the aliases of visiondoctor.data.formats.splits), or DataError
    listing what there is."""
    name = match_split(split, available)
    if name is not None:
        return name
    raise DataError(f"{root}: no {layout} split {split!r}; available: {available or 'none'}")


def check_ignore_index(ignore_index: int, num_labels: int, layout: str) -> None:
    """The ignore index must fit an 8-bit mask and must not be one of the labels."""
    if not 0 <= ignore_index <= 255:
        raise DataError(f"ignore index {ignore_index} must be within 0..255 (8-bit masks)")
    if ignore_index < num_labels:
        raise DataError(f"ignore index {ignore_index} is also a {layout} label (labels 0..{num_labels - 1})")


def read_pairs(
    root: Path,
    source: Path,
    pairs: list[tuple[Path, Path | None]],
    class_names: list[str],
    value_to_label: Mapping[int, int],
    void_values: tuple[int, ...],
    *,
    ignore_index: int,
    layout: str,
    evidence: str,
    anomaly_labels: tuple[int, ...] = (),
    extra_problems: list[Problem] | None = None,
    check_masks: bool = True,
) -> SegmentationIndex:
    """Read pairs whose masks hold the values of `value_to_label` (raw value -> label) or a void
    value (-> `ignore_index`); any other value refuses its mask. No file is rewritten: the table
    becomes the index's lookup table."""
    check_ignore_index(ignore_index, len(class_names), layout)
    lut = [ignore_index] * 256
    for value, label in value_to_label.items():
        lut[value] = label
    return build_index(
        root, source, pairs, class_names, valid_values_of([*value_to_label, *void_values]),
        ignore_index=ignore_index, value_to_label=tuple(lut), anomaly_labels=anomaly_labels,
        extra_problems=extra_problems, check_masks=check_masks, void_values=tuple(void_values),
        void_source="layout", void_evidence=evidence,
    )
