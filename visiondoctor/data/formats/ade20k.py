"""ADE20K as the MIT Scene Parsing benchmark ships it (ADEChallengeData2016)::

    root/images/training/ADE_train_00000001.jpg      root/annotations/training/ADE_train_00000001.png
    root/images/validation/ADE_val_00000001.jpg      root/annotations/validation/ADE_val_00000001.png
    root/objectInfo150.csv (or .txt)  root/sceneCategories.txt   (optional)

Images and annotations are paired by file stem. Annotations are 8-bit PNGs holding 1..150 for
the 150 classes and 0 for "other" (void). Labels are 0..149 (value v -> label v - 1, through
the lookup table, no file rewritten); 0 becomes `ignore_index` (None: 255), which is what the
benchmark's own code and MMSegmentation's `reduce_zero_label` do.

Class names come from `objectInfo150.csv` (the benchmark repository's file, comma separated)
or `objectInfo150.txt` (the archive's, tab separated): its `Idx` and `Name` columns, the first
synonym of each name ("person;individual;..." -> "person"). Without either file the classes are
named `class_001` .. `class_150` after their ADE index (label i is index i + 1).
`sceneCategories.txt` (one scene name per image) is not needed for segmentation.
"""
from __future__ import annotations

import csv
from pathlib import Path

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats._seglayout import read_pairs, resolve_split
from visiondoctor.data.formats.masks import pair_by_stem
from visiondoctor.data.seg_samples import DataError, SegmentationIndex

NAME = "ade20k"
NUM_CLASSES = 150
VOID_VALUE = 0
DEFAULT_IGNORE = 255
SPLITS = ("training", "validation")
CLASS_FILES = ("objectInfo150.csv", "objectInfo150.txt")


def detect(root: Path) -> bool:
    """True when `root` has `images/training|validation/` beside `annotations/` of the same split (names only)."""
    return bool(list_splits(root))


def list_splits(root: Path) -> list[str]:
    """Of training / validation (read() also takes train / val), those with images and annotations."""
    root = Path(root)
    return [s for s in SPLITS if (root / "images" / s).is_dir() and (root / "annotations" / s).is_dir()]


def read(root: Path, split: str, ignore_index: int | None = None) -> SegmentationIndex:
    """One split as labels 0..149; value 0 (void) becomes `ignore_index` (None: 255)."""
    root = Path(root).resolve()
    split = resolve_split(root, split, list_splits(root), NAME)
    pairs, problems = pair_by_stem(root / "images" / split, root / "annotations" / split)
    return read_pairs(
        root, root / "images" / split, pairs, class_names(root), {v: v - 1 for v in range(1, NUM_CLASSES + 1)},
        (VOID_VALUE,), ignore_index=DEFAULT_IGNORE if ignore_index is None else ignore_index, layout=NAME,
        extra_problems=problems,
        evidence="ADE20K (SceneParsing) annotations hold 1..150 for the 150 classes and 0 for 'other'",
    )


def class_names(root: Path) -> list[str]:
    """The 150 names from objectInfo150.csv/.txt in `root`, else generic names."""
    for name in CLASS_FILES:
        if (root / name).is_file():
            return read_object_info(root / name)
    return [f"class_{i:03d}" for i in range(1, NUM_CLASSES + 1)]


def read_object_info(path: Path) -> list[str]:
    """Names by `Idx` (1..150) from an objectInfo150 table; DataError naming the file and line otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    lines = text.splitlines()
    delimiter = "\t" if lines and "\t" in lines[0] else ","
    rows = csv.reader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in next(rows, [])]
    if "idx" not in header or "name" not in header:
        raise DataError(f"{path}: line 1: expected a header with Idx and Name columns, got {header}")
    idx_col, name_col = header.index("idx"), header.index("name")
    names: dict[int, str] = {}
    for line_no, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            idx = int(row[idx_col])
            name = row[name_col].split(";")[0].strip()
        except (IndexError, ValueError):
            raise DataError(f"{path}: line {line_no}: expected Idx (a number) and Name, got {row}") from None
        if not 1 <= idx <= NUM_CLASSES or idx in names or not name:
            raise DataError(f"{path}: line {line_no}: Idx {idx} is out of 1..{NUM_CLASSES}, repeated, or unnamed")
        names[idx] = name
    if len(names) != NUM_CLASSES:
        raise DataError(f"{path}: lists {len(names)} classes; ADE20K SceneParsing has {NUM_CLASSES}")
    return [names[i] for i in range(1, NUM_CLASSES + 1)]


register_format(DatasetFormat(name=NAME, task="segmentation", priority=30, detect=detect, read=read,
                              list_splits=list_splits, looks_for="ADE20K (SceneParsing) images/training + annotations/training"))
