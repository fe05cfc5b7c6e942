"""Cityscapes, fine annotations, as extracted from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       (label ids 0..33)
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  (optional: train ids)

Training uses the 19 "train ids" of cityscapesScripts' labels.py. `_labelIds.png` masks go through
the id -> train id table below (the 15 ids without a train id, such as "unlabeled", "ego vehicle",
"parking" or "guard rail", are void); when *every* image of the split also has the
`_labelTrainIds.png` that cityscapesScripts' createTrainIdLabelImgs writes, those are read
instead (0..18, void 255). One table serves a whole split, so a split where only some images
have train-id masks reads the label-id masks throughout. Void becomes `ignore_index` (None: 255).
The public test annotations are placeholders without class labels: that split reads as all void.
"""
from __future__ import annotations

from pathlib import Path

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats._seglayout import read_pairs, resolve_split
from visiondoctor.data.formats.splits import subdirs
from visiondoctor.data.seg_samples import DataError, SegmentationIndex

NAME = "cityscapes"
TRAIN_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle"]
# label id -> train id (cityscapesScripts labels.py); every other id of 0..33 is void.
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NUM_LABEL_IDS = 34  # ids 0..33 (license plate, id -1, never appears in the PNGs)
VOID_LABEL_IDS = tuple(i for i in range(NUM_LABEL_IDS) if i not in LABEL_ID_TO_TRAIN_ID)
TRAIN_ID_VOID = 255
DEFAULT_IGNORE = 255

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


def detect(root: Path) -> bool:
    """True when `root` has both `leftImg8bit/` and `gtFine/` (names only)."""
    return (Path(root) / "leftImg8bit").is_dir() and (Path(root) / "gtFine").is_dir()


def list_splits(root: Path) -> list[str]:
    """Split folders present under both leftImg8bit/ and gtFine/ (train, val, test)."""
    root = Path(root)
    return [d.name for d in subdirs(root / "leftImg8bit") if (root / "gtFine" / d.name).is_dir()]


def read(root: Path, split: str, ignore_index: int | None = None) -> SegmentationIndex:
    """One split, as the 19 train ids; void becomes `ignore_index` (None: 255)."""
    root = Path(root).resolve()
    split = resolve_split(root, split, list_splits(root), NAME)
    images_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    images = sorted(p for p in images_dir.rglob(f"*{IMAGE_SUFFIX}") if p.is_file())
    if not images:
        raise DataError(f"{images_dir}: no *{IMAGE_SUFFIX} images (Cityscapes layout: "
                        f"leftImg8bit/{split}/<city>/<name>{IMAGE_SUFFIX})")

    def mask(image: Path, suffix: str) -> Path:
        rel = image.relative_to(images_dir)
        return gt_dir / rel.parent / (image.name[: -len(IMAGE_SUFFIX)] + suffix)

    ignore = DEFAULT_IGNORE if ignore_index is None else ignore_index
    if all(mask(image, TRAIN_IDS_SUFFIX).is_file() for image in images):
        pairs = [(image, mask(image, TRAIN_IDS_SUFFIX)) for image in images]
        return read_pairs(root, images_dir, pairs, list(TRAIN_NAMES), {v: v for v in range(len(TRAIN_NAMES))},
                          (TRAIN_ID_VOID,), ignore_index=ignore, layout=NAME,
                          evidence="Cityscapes *_gtFine_labelTrainIds.png hold train ids 0..18 and 255 for void")
    pairs = [(image, mask(image, LABEL_IDS_SUFFIX)) for image in images]
    return read_pairs(root, images_dir, pairs, list(TRAIN_NAMES), LABEL_ID_TO_TRAIN_ID, VOID_LABEL_IDS,
                      ignore_index=ignore, layout=NAME,
                      evidence="Cityscapes *_gtFine_labelIds.png hold label ids 0..33; the 15 ids without a "
                               "train id (cityscapesScripts labels.py) are void")


register_format(DatasetFormat(name=NAME, task="segmentation", priority=20, detect=detect, read=read,
                              list_splits=list_splits, looks_for="Cityscapes leftImg8bit/ + gtFine/"))
