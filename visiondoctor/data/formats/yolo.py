"""YOLO txt labels: `class cx cy w h` per line, fractions of the image size.

Layouts: `images/<split>/` + `labels/<split>/` (Ultralytics), `<split>/images/` +
`<split>/labels/` (Roboflow YOLO export), or flat `images/` + `labels/`; the label of
`images/<split>/a/b.jpg` is `labels/<split>/a/b.txt`. Class names come from `data.yaml`
(`names` as a list or an {index: name} mapping) or `classes.txt`, one name per line.

Decisions:
- The dataset category id *is* the YOLO class index (0-based), so predictions written back in
  dataset ids use the same numbers as the label files; CategoryMap shifts them for background.
- Fractions are of the displayed image (EXIF orientation applied, see data/images.py), which is
  how Ultralytics reads them too.
- Without a names file the classes are those seen in the labels, named `class_<i>` (noted).
- An image without a label file has no objects (the YOLO convention), noted once as info; a
  label file without an image is refused with its lines.
- A line with more than 5 values and an odd count is a polygon (`class x1 y1 x2 y2 ...`,
  Ultralytics' segment format); its bounding box is used.
- `data.yaml` paths (`train:`, `val:`, `path:`) are not followed: they may point anywhere,
  and the folder layout above already says where each split is.
"""
from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import yaml

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats._checks import ProblemLog, as_int, check_box, finish_index
from visiondoctor.data.formats.coco import write_coco
from visiondoctor.data.formats.splits import pick_split, subdirs
from visiondoctor.data.images import IMAGE_EXTENSIONS, image_size
from visiondoctor.data.samples import Category, CategoryMap, DataError, DetectionIndex, DetectionRecord

NAME_FILES = ("data.yaml", "data.yml", "classes.txt")
MAX_CLASS = 100_000  # far beyond any real label set; a bigger "class" is junk, not a class


def read_yolo(root: str | Path, split: str | None = None) -> DetectionIndex:
    """Read one split of a YOLO dataset folder (all of a flat `images/` + `labels/` when split is None)."""
    root = Path(root).absolute()
    img_dir, label_dir = _split_dirs(root, split)
    log = ProblemLog(label_dir)
    names = _class_names(root)
    images = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    labelled_stems = {p.relative_to(img_dir).with_suffix("") for p in images}

    records: list[DetectionRecord] = []
    seen_classes: set[int] = set()
    lines_in_source = 0
    unlabelled: list[str] = []
    for path in images:
        rel = path.relative_to(img_dir)
        label_file = label_dir / rel.with_suffix(".txt")
        lines = _label_lines(label_file, log)
        if lines is None:
            log.refuse(rel.as_posix(), f"its label file {label_file.name} is unreadable", "image_refused", path)
            continue
        lines_in_source += len(lines)
        try:
            width, height = image_size(path)
        except DataError as error:
            log.refuse(rel.as_posix(), str(error), "unreadable_image", path)
            for n, _ in lines:
                log.refuse(f"line {n}", "its image was refused", "image_refused", label_file)
            continue
        if not label_file.exists():
            unlabelled.append(rel.as_posix())
        record = DetectionRecord(image_id=len(records) + 1, file_name=rel.as_posix(), path=path, width=width, height=height)
        for n, text in lines:
            _read_line(text, f"line {n}", label_file, record, names, seen_classes, log)
        records.append(record)

    for label_file in sorted(label_dir.rglob("*.txt")) if label_dir.is_dir() else []:
        if label_file.relative_to(label_dir).with_suffix("") not in labelled_stems and label_file.name != "classes.txt":
            lines = _label_lines(label_file, log) or []
            lines_in_source += len(lines)
            for n, _ in lines:
                log.refuse(f"line {n}", f"label file has no image in {img_dir}", "orphan_label", label_file)
    if unlabelled:
        log.info(f"{len(unlabelled)} images", f"no label file, taken as images without objects: {unlabelled[:5]}"
                 + (" ..." if len(unlabelled) > 5 else ""), "no_label_file")

    if names is None:
        names = {c: f"class_{c}" for c in sorted(seen_classes)}
        log.info("classes", f"no {' / '.join(NAME_FILES)} in {root}; class names made up from the indices seen",
                 "missing_names")
    categories = [Category(cid, name) for cid, name in sorted(names.items())]
    next_ann = 1
    for record in records:
        record.annotation_ids = list(range(next_ann, next_ann + len(record.boxes)))
        next_ann += len(record.boxes)
    return finish_index(img_dir, label_dir, categories, records, log, lines_in_source)


def yolo_splits(root: str | Path) -> list[str]:
    """Splits of a YOLO folder: sub-folders of `images/`, or folders holding `images/` + `labels/`."""
    root = Path(root)
    found = set()
    if (root / "images").is_dir():
        found |= {d.name for d in (root / "images").iterdir() if d.is_dir()}
    found |= {d.name for d in root.iterdir() if d.is_dir() and (d / "images").is_dir() and (d / "labels").is_dir()}
    return sorted(found)


def _split_dirs(root: Path, split: str | None) -> tuple[Path, Path]:
    if split is None:
        candidates = [(root / "images", root / "labels")]
    else:
        candidates = [(root / "images" / split, root / "labels" / split), (root / split / "images", root / split / "labels")]
    for img_dir, label_dir in candidates:
        if img_dir.is_dir():
            return img_dir, label_dir
    tried = ", ".join(str(c[0]) for c in candidates)
    raise DataError(f"{root}: no YOLO image folder ({tried}); splits found: {yolo_splits(root)}")


def _class_names(root: Path) -> dict[int, str] | None:
    """{class index: name} from data.yaml / classes.txt, or None when neither exists."""
    for file in NAME_FILES:
        path = root / file
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None
        if file == "classes.txt":
            names = [line.strip() for line in text.splitlines() if line.strip()]
            return dict(enumerate(names))
        return _yaml_names(path, text)
    return None


def _yaml_names(path: Path, text: str) -> dict[int, str]:
    try:
        data: Any = yaml.safe_load(text)
    # Besides YAMLError, PyYAML's constructors raise ValueError/TypeError/OverflowError on values
    # such as an impossible date, and RecursionError on absurd nesting.
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DataError(f"{path}: invalid YAML ({type(exc).__name__}: {exc})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        result = {}
        for key, value in names.items():
            index = _class_index(key)
            if index is None:
                raise DataError(f"{path}: 'names' key {key!r} is not a class index")
            result[index] = str(value)
        return result
    raise DataError(f"{path}: 'names' missing or not a list / mapping of class names")


def _label_lines(label_file: Path, log: ProblemLog) -> list[tuple[int, str]] | None:
    """(line number, text) of the non-empty lines; [] without a file; None (refused) when unreadable."""
    try:
        text = label_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        log.refuse(label_file.name, f"cannot read label file ({exc})", "invalid_label_file", label_file)
        return None
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _read_line(
    text: str, where: str, label_file: Path, record: DetectionRecord, names: dict[int, str] | None,
    seen_classes: set[int], log: ProblemLog,
) -> None:
    tokens = text.split()
    values = [_number(t) for t in tokens]
    polygon = len(tokens) > 5 and len(tokens) % 2 == 1
    if len(tokens) != 5 and not polygon:
        log.refuse(where, f"expected 'class cx cy w h' (5 values), got {len(tokens)}: {text.strip()[:60]!r}",
                   "wrong_type", label_file)
        return
    if any(v is None for v in values):
        log.refuse(where, f"non-numeric value in {text.strip()[:60]!r}", "wrong_type", label_file)
        return
    class_id = _class_index(values[0])
    if class_id is None:
        log.refuse(where, f"class {tokens[0]!r} is not a class index (0..{MAX_CLASS})", "wrong_type", label_file)
        return
    if names is not None and class_id not in names:
        log.refuse(where, f"unknown class {class_id} (names has {len(names)})", "unknown_category", label_file)
        return
    if polygon:
        xs, ys = values[1::2], values[2::2]
        fx1, fy1, fx2, fy2 = min(xs), min(ys), max(xs), max(ys)
    else:
        cx, cy, w, h = values[1:]
        fx1, fy1, fx2, fy2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    hint = " (values above 1: pixels instead of fractions of the image?)" if max(values[1:]) > 1.5 else ""
    box = check_box((fx1 * record.width, fy1 * record.height, fx2 * record.width, fy2 * record.height),
                    record.width, record.height, log, where, f"box {' '.join(tokens[1:5])}{hint}", label_file)
    if box is None:
        return
    seen_classes.add(class_id)
    record.boxes.append(box)
    record.category_ids.append(class_id)
    record.iscrowd.append(0)
    record.areas.append((box[2] - box[0]) * (box[3] - box[1]))


def _class_index(value: Any) -> int | None:
    """A class index 0..MAX_CLASS from a number or a decimal string, else None."""
    if isinstance(value, str):
        text = value.strip()
        value = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else None
    index = as_int(value)
    return index if index is not None and 0 <= index <= MAX_CLASS else None


def _number(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ----- writing -------------------------------------------------------------------------------
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class YoloWrite:
    """What `write_yolo` wrote for one split."""

    root: Path
    split: str
    data_yaml: Path
    images_dir: Path
    labels_dir: Path
    coco_gt: Path  # the split's ground truth as COCO JSON, file names relative to images_dir
    names: tuple[str, ...]  # YOLO class index -> name
    images: int
    boxes: int  # label lines written
    crowd_skipped: int  # crowd boxes: no YOLO equivalent, left out of the labels (kept in coco_gt)
    linked: int  # images hard-linked to their source
    copied: int  # images copied (hard link impossible, e.g. another file system)
    renamed: int  # images written under another name because theirs was taken


def write_yolo(
    index: DetectionIndex, root: str | Path, split: str, categories: Sequence[Category] | None = None
) -> YoloWrite:
    """Write one split of `index` as an Ultralytics-layout YOLO dataset under `root`.

    Writes `images/<split>/` (hard links to the source images, copies where a link is
    impossible; the source is never modified), `labels/<split>/<stem>.txt` (`class cx cy w h`,
    fractions of the image size), `data.yaml` (`path`, the splits written so far, `names`), and
    `gt_<split>.coco.json`: the split's ground truth in COCO form with the index's image and
    category ids and file names relative to `images/<split>/`, so predictions made on the
    written images map back to the same ids.

    - Class order: `categories` (give the *training* split's, so every split agrees; default
      the index's own), sorted by dataset id -> YOLO indices 0..K-1. Categories without boxes
      keep their index, so indices do not shift between splits or datasets.
    - Images are written flat under their own file name; when that stem is taken (two source
      folders with an `img.jpg`, or `a.jpg` and `a.png`, which would share a label file) the
      image is written as `<stem>_<image id><suffix>` and counted as renamed.
    - Crowd boxes have no YOLO form: they are skipped in the labels and counted.
    - A split folder that already holds files is refused rather than mixed or overwritten.
    """
    root = Path(root).absolute()
    if not _SPLIT_NAME.fullmatch(split):
        raise DataError(f"{split!r}: a split name must be a plain folder name (letters, digits, _ . -)")
    classes = sorted(categories if categories is not None else index.categories, key=lambda c: c.id)
    class_map = CategoryMap.from_categories(classes, background=False)
    images_dir, labels_dir = root / "images" / split, root / "labels" / split
    for folder in (images_dir, labels_dir):
        if folder.is_dir() and any(folder.iterdir()):
            raise DataError(f"{folder}: already holds files; write split {split!r} into a new folder")
    data_yaml = _merged_data_yaml(root, split, class_map.names)

    used: set[str] = set()
    counts = {"boxes": 0, "crowd_skipped": 0, "linked": 0, "copied": 0, "renamed": 0}
    # Every name and label line first, so bad input raises before anything is written.
    plan = [(r, _free_name(r, used, counts), _label_lines_of(r, class_map, index.source, counts))
            for r in index.records]
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    written: list[DetectionRecord] = []
    for record, name, lines in plan:
        counts["linked" if _link_or_copy(record.path, images_dir / name) else "copied"] += 1
        (labels_dir / f"{PurePosixPath(name).stem}.txt").write_text("".join(f"{line}\n" for line in lines),
                                                                   encoding="utf-8")
        written.append(replace(record, file_name=name, path=images_dir / name))
    gt_index = replace(index, root=images_dir, records=written, categories=classes)
    coco_gt = write_coco(gt_index, root / f"gt_{split}.coco.json")
    data_yaml_path = root / "data.yaml"
    data_yaml_path.write_text(yaml.safe_dump(data_yaml, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return YoloWrite(root, split, data_yaml_path, images_dir, labels_dir, coco_gt, class_map.names,
                     len(written), **counts)


def _merged_data_yaml(root: Path, split: str, names: tuple[str, ...]) -> dict[str, Any]:
    """data.yaml's content with `split` added to the splits already there; refuses a data.yaml
    written for other classes (its splits' labels would use other indices)."""
    path = root / "data.yaml"
    data: dict[str, Any] = {"path": str(root)}
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        existing = _yaml_names(path, text)
        if existing != dict(enumerate(names)):
            raise DataError(f"{path}: written for classes {list(existing.values())}, not {list(names)}; "
                            "write every split with the training split's categories")
        data.update({k: v for k, v in yaml.safe_load(text).items() if k not in ("path", "names")})
    data[split] = f"images/{split}"
    data["names"] = dict(enumerate(names))
    return data


def _free_name(record: DetectionRecord, used: set[str], counts: dict[str, int]) -> str:
    """The image's own file name, or `<stem>_<image id>[_k]<suffix>` when its stem is taken
    (compared without case: a label file is per stem, and some file systems ignore case)."""
    own = PurePosixPath(record.file_name.replace("\\", "/"))
    candidate, k = own, 0
    while candidate.stem.lower() in used:
        k += 1
        candidate = own.with_name(f"{own.stem}_{record.image_id}{'' if k == 1 else f'_{k}'}{own.suffix}")
    counts["renamed"] += candidate != own
    used.add(candidate.stem.lower())
    return candidate.name


def _label_lines_of(record: DetectionRecord, class_map: CategoryMap, source: Path, counts: dict[str, int]) -> list[str]:
    """`class cx cy w h` lines (fractions, 8 decimals: far below a pixel) of the record's non-crowd boxes."""
    lines = []
    for k, ((x1, y1, x2, y2), cid) in enumerate(zip(record.boxes, record.category_ids)):
        if k < len(record.iscrowd) and record.iscrowd[k]:
            counts["crowd_skipped"] += 1
            continue
        if cid not in class_map.dataset_ids:
            raise DataError(f"{source}: image {record.file_name!r} (id {record.image_id}): category {cid} is not "
                            f"among the classes {dict(zip(class_map.dataset_ids, class_map.names))}")
        w, h = record.width, record.height
        values = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
        lines.append(f"{class_map.to_label(cid)} " + " ".join(f"{v:.8f}" for v in values))
    counts["boxes"] += len(lines)
    return lines


def _link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link `source` to `target` (True), or copy it where linking is impossible (False)."""
    try:
        os.link(source, target)
        return True
    except OSError:
        shutil.copy2(source, target)
        return False


YOLO_MARKERS = ("data.yaml", "data.yml", "classes.txt", "labels")


def is_yolo(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in (".yaml", ".yml")
    return any((path / m).exists() for m in YOLO_MARKERS) or any((d / "labels").is_dir() for d in subdirs(path))


def _read(path: Path, split: str | None) -> DetectionIndex:
    root = path.parent if path.is_file() else path
    return read_yolo(root, pick_split(root, split, yolo_splits(root), required=False))


register_format(DatasetFormat(
    name="yolo", task="detection", priority=30, detect=is_yolo, read=_read, list_splits=yolo_splits,
    looks_for="a YOLO data.yaml, classes.txt or labels/ folder", write=write_yolo))
