"""Pascal VOC segmentation (VOC2007 / VOC2012 `VOCdevkit/VOC20xx` folders)::

    root/JPEGImages/2007_000032.jpg
    root/SegmentationClass/2007_000032.png
    root/ImageSets/Segmentation/train.txt  val.txt  trainval.txt   (one image id per line)

The split lists name the images; an id without its image or mask is refused. Masks are palette
PNGs whose palette *indices* are the labels 0..20 (background first, then the 20 VOC classes);
255 is the void border VOC draws around every object (and marks ambiguous regions with): it
becomes `ignore_index` (None: 255). Without `ImageSets/Segmentation/` there are no splits, and
any split asked for reads every mask in SegmentationClass/ (noted). The same folder may hold the
detection annotations (`Annotations/`, read by data/formats/voc.py): which one is read is the
task's choice, not this layout's.
"""
from __future__ import annotations

from pathlib import Path

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats._seglayout import read_pairs
from visiondoctor.data.formats.splits import read_split_list
from visiondoctor.data.images import resolve_image_path
from visiondoctor.data.seg_samples import DataError, Problem, SegmentationIndex

NAME = "voc_segmentation"
CLASS_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
VOID_VALUE = 255
DEFAULT_IGNORE = 255
LISTS = Path("ImageSets") / "Segmentation"


def detect(root: Path) -> bool:
    """True when `root` has `JPEGImages/` and `SegmentationClass/` (names only)."""
    return (Path(root) / "JPEGImages").is_dir() and (Path(root) / "SegmentationClass").is_dir()


def list_splits(root: Path) -> list[str]:
    """The split lists in ImageSets/Segmentation (train, val, trainval; test in the test release)."""
    folder = Path(root) / LISTS
    return sorted(f.stem for f in folder.glob("*.txt") if f.is_file()) if folder.is_dir() else []


def read(root: Path, split: str, ignore_index: int | None = None) -> SegmentationIndex:
    """The images `ImageSets/Segmentation/<split>.txt` lists; void (255) becomes `ignore_index` (None: 255)."""
    root = Path(root).resolve()
    images_dir, masks_dir = root / "JPEGImages", root / "SegmentationClass"
    problems: list[Problem] = []
    if (root / LISTS).is_dir():
        ids = _listed_ids(root, split)
    else:
        ids = [(f"mask {p.name}", p.stem) for p in sorted(masks_dir.glob("*.png")) if p.is_file()]
        problems.append(Problem(str(root), f"split {split!r}", f"no {LISTS} folder: every mask in "
                                "SegmentationClass/ is read", "info", "no_split_list"))
    pairs = []
    for record, image_id in ids:
        try:
            image = resolve_image_path(images_dir, image_id + ".jpg", str(root / LISTS), record)
            mask = resolve_image_path(masks_dir, image_id + ".png", str(root / LISTS), record)
        except DataError as error:
            problems.extend(error.problems)
            continue
        pairs.append((image, mask))
    if not pairs:
        raise DataError(f"{root}: split {split!r} lists no image", problems)
    return read_pairs(
        root, images_dir, pairs, list(CLASS_NAMES), {v: v for v in range(len(CLASS_NAMES))}, (VOID_VALUE,),
        ignore_index=DEFAULT_IGNORE if ignore_index is None else ignore_index, layout=NAME, extra_problems=problems,
        evidence="VOC SegmentationClass PNGs hold 0..20 (background + 20 classes) and 255 for the void border",
    )


def _listed_ids(root: Path, split: str) -> list[tuple[str, str]]:
    """(record, image id) for each line of the split list."""
    list_file = root / LISTS / f"{split}.txt"
    return [(f"{list_file.name} line {n}", name) for n, name in read_split_list(list_file, list_splits(root))]


register_format(DatasetFormat(name=NAME, task="segmentation", priority=50, detect=detect, read=read,
                              list_splits=list_splits, looks_for="Pascal VOC JPEGImages/ + SegmentationClass/"))
