"""CamVid as the SegNet tutorial ships it (Brostow et al.'s 11-class version)::

    root/train/0001TP_006690.png   root/trainannot/0001TP_006690.png
    root/val/...                   root/valannot/...
    root/test/...                  root/testannot/...

(the `train.txt` / `val.txt` / `test.txt` lists beside them say the same; the folders are
walked instead). Images and annotations are paired by file stem. Annotations are 8-bit PNGs
holding 0..10 for the 11 classes and 11 for "Unlabelled", the layout's void: it becomes
`ignore_index`, 11 by default (the SegNet convention), so labels and void values need no table.
"""
from __future__ import annotations

from pathlib import Path

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats._seglayout import read_pairs, resolve_split
from visiondoctor.data.formats.masks import pair_by_stem
from visiondoctor.data.seg_samples import SegmentationIndex

NAME = "camvid"
CLASS_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
               "Pedestrian", "Bicyclist"]
VOID_VALUE = 11
SPLITS = ("train", "val", "test")


def detect(root: Path) -> bool:
    """True when `root` has `<split>/` beside `<split>annot/` for train, val or test (names only)."""
    return bool(list_splits(root))


def list_splits(root: Path) -> list[str]:
    """Of train / val / test, those with both an image and an `annot` folder."""
    root = Path(root)
    return [s for s in SPLITS if (root / s).is_dir() and (root / f"{s}annot").is_dir()]


def read(root: Path, split: str, ignore_index: int | None = None) -> SegmentationIndex:
    """One split; void (11) becomes `ignore_index` (None: 11)."""
    root = Path(root).resolve()
    split = resolve_split(root, split, list_splits(root), NAME)
    pairs, problems = pair_by_stem(root / split, root / f"{split}annot")
    return read_pairs(
        root, root / split, pairs, list(CLASS_NAMES), {v: v for v in range(len(CLASS_NAMES))}, (VOID_VALUE,),
        ignore_index=VOID_VALUE if ignore_index is None else ignore_index, layout=NAME, extra_problems=problems,
        evidence="CamVid (SegNet layout) annotations hold 0..10 for the 11 classes and 11 for Unlabelled",
    )


register_format(DatasetFormat(name=NAME, task="segmentation", priority=40, detect=detect, read=read,
                              list_splits=list_splits, looks_for="CamVid <split>/ beside <split>annot/"))
