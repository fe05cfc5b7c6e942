"""The StreetHazards layout (Hendrycks et al., "Scaling Out-of-Distribution Detection for
Real-World Settings"), as extracted from its archives::

    root/train/images/training/<town>/<frame>.png     root/train/annotations/training/<town>/<frame>.png
    root/train/images/validation/<town>/<frame>.png   root/train/annotations/validation/<town>/<frame>.png
    root/test/images/test/<town>/<frame>.png          root/test/annotations/test/<town>/<frame>.png

(the archives also carry `train.odgt` / `validation.odgt` / `test.odgt` lists; the folders
say the same, so they are walked instead). Annotation PNGs hold 1..14; the reference code
subtracts one, so labels are 0..13 with 13 = anomaly. Label 13 appears in the test split
only: it is never trained on (ignored by the loss) and is the positive class of anomaly
metrics. A pixel value of 0 would become -1 in the reference code, i.e. ignored: here it
maps to the ignore index. A `classes.txt` in root (one name per line, label order) replaces
the default names — the synthetic `streets` generator writes one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats.masks import build_index, read_class_names
from visiondoctor.data.seg_samples import DataError, SegmentationIndex

CLASS_NAMES = [
    "unlabeled", "building", "fence", "other", "pedestrian", "pole", "road line",
    "road", "sidewalk", "vegetation", "car", "wall", "traffic sign", "anomaly",
]
ANOMALY_NAME = "anomaly"

# split name accepted -> (top folder, sub folder)
SPLITS = {
    "train": ("train", "training"), "training": ("train", "training"),
    "val": ("train", "validation"), "validation": ("train", "validation"),
    "test": ("test", "test"),
}


def is_streethazards(root: str | Path) -> bool:
    root = Path(root)
    return (root / "train" / "images" / "training").is_dir() or (root / "test" / "images" / "test").is_dir()


def shifted_lut(num_classes: int, ignore_index: int) -> tuple[int, ...]:
    """PNG value v in 1..num_classes -> label v-1; 0 and anything else -> ignore."""
    return tuple(v - 1 if 1 <= v <= num_classes else ignore_index for v in range(256))


def read_streethazards(root: str | Path, split: str = "train", *, ignore_index: int = 255,
                       check_masks: bool = True) -> SegmentationIndex:
    """Read one StreetHazards split (train / val / test) into a `SegmentationIndex`."""
    root = Path(root).resolve()
    if split not in SPLITS:
        raise DataError(f"{root}: unknown StreetHazards split {split!r}; use one of {sorted(SPLITS)}")
    top, sub = SPLITS[split]
    images_dir = root / top / "images" / sub
    ann_dir = root / top / "annotations" / sub
    for d in (images_dir, ann_dir):
        if not d.is_dir():
            raise DataError(f"{root}: missing folder {d.relative_to(root)} (StreetHazards layout: "
                            f"{top}/images/{sub}/<town>/*.png and {top}/annotations/{sub}/<town>/*.png)")
    names = read_class_names(root / "classes.txt") if (root / "classes.txt").is_file() else list(CLASS_NAMES)
    if len(names) >= ignore_index:
        raise DataError(f"ignore index {ignore_index} collides with {len(names)} labels")
    images = sorted(p for p in images_dir.rglob("*.png") if p.is_file())
    pairs = []
    for image in images:
        mask = ann_dir / image.relative_to(images_dir)
        pairs.append((image, mask if mask.is_file() else None))
    valid = np.zeros(256, dtype=bool)
    valid[: len(names) + 1] = True  # 0 (unused, -> ignore) and 1..len(names)
    anomaly = tuple(i for i, n in enumerate(names) if n == ANOMALY_NAME)
    return build_index(
        root, images_dir, pairs, names, valid, ignore_index=ignore_index,
        value_to_label=shifted_lut(len(names), ignore_index), anomaly_labels=anomaly, check_masks=check_masks,
    )


def streethazards_splits(root: Path) -> list[str]:
    return [name for name in ("train", "val", "test")
            if (Path(root) / SPLITS[name][0] / "images" / SPLITS[name][1]).is_dir()]


register_format(DatasetFormat(
    name="streethazards", task="segmentation", priority=10, detect=is_streethazards,
    read=lambda root, split, ignore_index=255: read_streethazards(root, split, ignore_index=ignore_index),
    list_splits=streethazards_splits, looks_for="StreetHazards train/images/training and test/images/test"))
