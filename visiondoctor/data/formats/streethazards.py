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

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats._seglayout import read_pairs, resolve_split
from visiondoctor.data.formats.masks import read_class_names
from visiondoctor.data.seg_samples import DataError, SegmentationIndex

NAME = "streethazards"
CLASS_NAMES = [
    "unlabeled", "building", "fence", "other", "pedestrian", "pole", "road line",
    "road", "sidewalk", "vegetation", "car", "wall", "traffic sign", "anomaly",
]
ANOMALY_NAME = "anomaly"
DEFAULT_IGNORE = 255

# split name accepted -> (top folder, sub folder)
SPLITS = {
    "train": ("train", "training"), "training": ("train", "training"),
    "val": ("train", "validation"), "validation": ("train", "validation"),
    "test": ("test", "test"),
}
_CANONICAL = ("train", "val", "test")


def is_streethazards(root: str | Path) -> bool:
    root = Path(root)
    return (root / "train" / "images" / "training").is_dir() or (root / "test" / "images" / "test").is_dir()


def detect(root: Path) -> bool:
    """True when `root` has `train/images/training/` or `test/images/test/` (names only)."""
    return is_streethazards(root)


def list_splits(root: Path) -> list[str]:
    """"train", "val", "test": those whose image and annotation folders exist."""
    root = Path(root)
    return [s for s in _CANONICAL
            if (root / SPLITS[s][0] / "images" / SPLITS[s][1]).is_dir()
            and (root / SPLITS[s][0] / "annotations" / SPLITS[s][1]).is_dir()]


def read(root: Path, split: str, ignore_index: int | None = None) -> SegmentationIndex:
    """One split; PNG value 0 (the layout's void) becomes `ignore_index` (None: 255)."""
    split = resolve_split(Path(root), split, list(SPLITS), NAME) if split not in SPLITS else split
    return read_streethazards(root, split, ignore_index=DEFAULT_IGNORE if ignore_index is None else ignore_index)


def shifted_lut(num_classes: int, ignore_index: int) -> tuple[int, ...]:
    """PNG value v in 1..num_classes -> label v-1; 0 and anything else -> ignore."""
    return tuple(v - 1 if 1 <= v <= num_classes else ignore_index for v in range(256))


def read_streethazards(root: str | Path, split: str = "train", *, ignore_index: int = DEFAULT_IGNORE,
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
    images = sorted(p for p in images_dir.rglob("*.png") if p.is_file())
    pairs = [(image, ann_dir / image.relative_to(images_dir)) for image in images]
    anomaly = tuple(i for i, n in enumerate(names) if n == ANOMALY_NAME)
    return read_pairs(
        root, images_dir, pairs, names, {v: v - 1 for v in range(1, len(names) + 1)}, (0,),
        ignore_index=ignore_index, layout=NAME, anomaly_labels=anomaly, check_masks=check_masks,
        evidence="StreetHazards annotations hold labels 1..N; 0 is unlabelled (the reference code's -1)",
    )


register_format(DatasetFormat(name=NAME, task="segmentation", priority=10, detect=detect, read=read,
                              list_splits=list_splits, looks_for="StreetHazards train/images/training and test/images/test"))
