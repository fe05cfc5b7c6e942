"""LabelMe JSON: one `<image>.json` per image (what the LabelMe annotation tool saves), read as boxes.

Layouts: the JSON files beside their images in one folder, or one such folder per split
(`train/`, `val/` or `valid/`, `test/`). A file holds `imagePath` (relative to the file), and
`shapes`: [{"label", "points", "shape_type"}].

Decisions:
- rectangle: the box spanned by its two corners (either order); polygon: the polygon's bounding box;
  circle (centre, a point on the circle): the circle's bounding box. A point, line or linestrip has
  no area to detect: refused, named by file and shape.
- Category ids are 1..N over the label names sorted alphabetically (LabelMe has no ids); image ids
  1..N in file-name order. The image's own size (its header, EXIF orientation applied) wins over
  `imageWidth`/`imageHeight`. `imageData` (an embedded copy of the image) is not read: the image file is.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats._checks import ProblemLog, check_box, finish_index
from visiondoctor.data.formats.splits import match_split, pick_split, subdirs
from visiondoctor.data.images import image_size, resolve_image_path, rotation_hint
from visiondoctor.data.samples import Category, DataError, DetectionIndex, DetectionRecord

AREA_SHAPES = ("rectangle", "polygon", "circle")


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def _is_labelme_file(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("shapes"), list) and "imagePath" in data


def _holds_labelme(folder: Path) -> bool:
    files = _json_files(folder)
    return bool(files) and _is_labelme_file(files[0])


def labelme_splits(root: str | Path) -> list[str]:
    """The split folders (train, val/valid, test ...) that hold LabelMe files."""
    return sorted(p.name for p in subdirs(Path(root))
                  if match_split(p.name, ["train", "val", "test"]) and _holds_labelme(p))


def is_labelme(path: Path) -> bool:
    return path.is_dir() and (_holds_labelme(path) or bool(labelme_splits(path)))


def read_labelme(root: str | Path, split: str | None = None) -> DetectionIndex:
    """Read a LabelMe folder, or its `split` folder when the dataset has splits."""
    root = Path(root).absolute()
    name = pick_split(root, split, labelme_splits(root), required=False)
    folder = root / name if name else root
    files = _json_files(folder)
    if not files:
        raise DataError(f"{folder}: no LabelMe .json files")
    log = ProblemLog(folder)
    records: list[DetectionRecord] = []
    labels: list[list[str]] = []
    shapes_in_source = 0
    for path in files:
        data = _load(path, log)
        if data is None:
            continue
        shapes_in_source += len(data["shapes"])
        parsed = _read_file(data, path, folder, log)
        if parsed is not None:
            records.append(parsed[0])
            labels.append(parsed[1])
    names = sorted({n for names in labels for n in names})
    ids = {n: i + 1 for i, n in enumerate(names)}
    next_ann = 1
    for image_id, (record, names_of) in enumerate(zip(records, labels), start=1):
        record.image_id = image_id
        record.category_ids = [ids[n] for n in names_of]
        record.annotation_ids = list(range(next_ann, next_ann + len(names_of)))
        next_ann += len(names_of)
    return finish_index(folder, folder, [Category(ids[n], n) for n in names], records, log, shapes_in_source)


def _load(path: Path, log: ProblemLog) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        log.refuse(path.name, f"cannot read as JSON ({exc.__class__.__name__}: {exc})", "invalid_json", path)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        log.refuse(path.name, "not a LabelMe file: no 'shapes' list", "missing_key", path)
        return None
    return data


def _read_file(data: dict[str, Any], path: Path, folder: Path,
               log: ProblemLog) -> tuple[DetectionRecord, list[str]] | None:
    shapes = data["shapes"]

    def refuse_image(message: str, kind: str) -> None:
        log.refuse(path.name, message, kind, path)
        for k in range(len(shapes)):
            log.refuse(f"{path.name} shape {k + 1}", "its image was refused", "image_refused", path)

    file_name = data.get("imagePath")
    if not isinstance(file_name, str) or not file_name.strip():
        refuse_image("no imagePath (an embedded imageData alone is not read)", "missing_key")
        return None
    try:  # Windows tools write backslashes
        image = resolve_image_path(folder, file_name.replace("\\", "/"), str(path), path.name)
    except DataError as error:
        refuse_image(str(error.problems[0].message if error.problems else error), "path_escape")
        return None
    try:
        width, height = image_size(image)
    except DataError as error:
        refuse_image(str(error), "unreadable_image" if os.path.exists(image) else "missing_image")
        return None
    stated = (data.get("imageWidth"), data.get("imageHeight"))
    if None not in stated and tuple(stated) != (width, height):
        log.repair(path.name, f"imageWidth x imageHeight {stated[0]}x{stated[1]} disagrees with the image file "
                   f"({width}x{height}); using the real size" + rotation_hint(image, stated), "size_mismatch", path)
    record = DetectionRecord(image_id=-1, file_name=file_name, path=image, width=width, height=height)
    names: list[str] = []
    for k, shape in enumerate(shapes, start=1):
        where = f"{path.name} shape {k}"
        box = _shape_box(shape, where, path, log)
        if box is None:
            continue
        box = check_box(box, width, height, log, where, f"{shape['label']!r} {shape.get('shape_type')} "
                        f"{shape['points']}", path)
        if box is None:
            continue
        names.append(shape["label"])
        record.boxes.append(box)
        record.iscrowd.append(0)
        record.areas.append((box[2] - box[0]) * (box[3] - box[1]))
    return record, names


def _shape_box(shape: Any, where: str, path: Path, log: ProblemLog) -> tuple[float, float, float, float] | None:
    """The box a shape spans, or None after recording why it has none."""
    if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or not shape["label"].strip():
        log.refuse(where, "a shape needs a non-empty 'label'", "missing_key", path)
        return None
    kind = shape.get("shape_type") or "polygon"  # LabelMe's default when the key is absent
    points = shape.get("points")
    valid = isinstance(points, list) and points and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in p)
        for p in points)
    if not valid:
        log.refuse(where, f"'points' must be a list of [x, y] numbers; got {points!r}"[:200], "wrong_type", path)
        return None
    if kind not in AREA_SHAPES:
        log.refuse(where, f"a {kind} has no area to detect (rectangle, polygon and circle are read)", "not_a_box", path)
        return None
    if kind == "circle":
        if len(points) != 2:
            log.refuse(where, f"a circle needs 2 points (centre, one on the circle); got {len(points)}", "wrong_type", path)
            return None
        (cx, cy), (px, py) = points
        r = math.hypot(px - cx, py - cy)
        return (cx - r, cy - r, cx + r, cy + r)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


register_format(DatasetFormat(
    name="labelme", task="detection", priority=25, detect=is_labelme, read=read_labelme,
    list_splits=labelme_splits, looks_for="LabelMe <image>.json files beside the images (or in split folders)"))
