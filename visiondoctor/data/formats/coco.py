"""COCO detection JSON: read into a DetectionIndex, checking every record; write back out.

Decisions (each tested in tests/test_data_bad_input.py):
- Duplicate *image* ids refuse the whole file (DataError): annotations point at images by id,
  so with two images under one id no box can be attributed safely.
- Duplicate or missing *annotation* ids are repaired: the first annotation keeps its id, later
  ones get fresh ids (max id + 1, ...) in file order. Ids name boxes only; nothing is lost.
- Duplicate category ids with the same name are merged (repaired); with different names the
  file is refused, since boxes of that id could be either class.
- `width`/`height` are checked against the real file header when `check_images` is on (the
  displayed size: EXIF orientation applied, see data/images.py); the real size wins (repaired). Missing or unreadable images refuse that image and its boxes.
- `area` is kept when it is a positive number (COCO's size buckets use it), else w*h.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rich import get_console
from rich.progress import track

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats._checks import (
    MAX_SIDE,
    ProblemLog,
    as_id,
    as_int,
    check_box,
    finish_index,
    is_number,
    read_image_size,
    show,
    valid_side,
)
from visiondoctor.data.formats.splits import pick_split, subdirs
from visiondoctor.data.images import resolve_image_path, rotation_hint
from visiondoctor.data.samples import Category, DataError, DetectionIndex, DetectionRecord
from visiondoctor.rundir import write_json_atomic

HEADER_PROGRESS_MIN = 1000  # images from which reading their headers shows a progress bar


def read_coco(annotation_file: str | Path, images_root: str | Path | None = None, check_images: bool = True) -> DetectionIndex:
    """Read a COCO instances file. Image file names are relative to `images_root`
    (default: see `default_images_root`). With `check_images`, each image header is read
    (not its pixels) to confirm the file exists and to get its real size."""
    source = Path(annotation_file)
    data = load_json_object(source)
    root = Path(images_root).absolute() if images_root is not None else default_images_root(source.absolute())
    log = ProblemLog(source)
    categories = _read_categories(data, source, log)
    records, refused_images = _read_images(data, source, root, check_images, log)
    boxes_in_source = _read_annotations(data, source, records, refused_images, {c.id for c in categories}, log)
    return finish_index(root, source, categories, list(records.values()), log, boxes_in_source)


def default_images_root(annotation_file: Path) -> Path:
    """Where image file names are relative to: the JSON's own folder (Roboflow export), except
    for the COCO layout `annotations/instances_<split>.json`, whose images are in `<split>/`
    or `images/<split>/` beside the `annotations` folder."""
    folder = annotation_file.parent
    if folder.name == "annotations" and annotation_file.stem.startswith("instances_"):
        split = annotation_file.stem[len("instances_"):]
        for candidate in (folder.parent / split, folder.parent / "images" / split, folder.parent / "images"):
            if candidate.is_dir():
                return candidate
        return folder.parent
    return folder


def load_json_object(path: Path) -> dict[str, Any]:
    """Parse a JSON file that must hold an object; any failure is a DataError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a COCO JSON file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # e.g. integers too long to convert, absurd nesting
        raise DataError(f"{path}: invalid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is a JSON {type(data).__name__}, expected an object with 'images'")
    return data


def _key_kind(entry: dict, key: str) -> str:
    return "missing_key" if key not in entry else "wrong_type"


def _list_field(data: dict, key: str, source: Path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        what = "missing" if key not in data else f"a {type(value).__name__}"
        raise DataError(f"{source}: '{key}' is {what}, expected a list")
    return value


def _read_categories(data: dict, source: Path, log: ProblemLog) -> list[Category]:
    by_id: dict[int, Category] = {}
    for i, entry in enumerate(_list_field(data, "categories", source)):
        if not isinstance(entry, dict):
            log.refuse(f"categories[{i}]", f"is a {type(entry).__name__}, expected an object", "wrong_type")
            continue
        cid = as_id(entry.get("id"))
        if cid is None:
            log.refuse(f"categories[{i}]", f"id missing or not a 64-bit integer ({show(entry.get('id'))})", _key_kind(entry, "id"))
            continue
        record = f"category id {cid}"
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            log.repair(record, f"name missing or not text ({show(name)}); named 'category_{cid}'", _key_kind(entry, "name"))
            name = f"category_{cid}"
        supercategory = entry.get("supercategory", "")
        category = Category(cid, name, supercategory if isinstance(supercategory, str) else str(supercategory))
        if cid in by_id:
            if by_id[cid].name != category.name:
                raise DataError(
                    f"{source}: category id {cid} is defined twice with different names "
                    f"({by_id[cid].name!r} and {category.name!r})",
                    log.problems,
                )
            log.repair(record, "defined twice with the same name; merged", "duplicate_id")
            continue
        by_id[cid] = category
    return sorted(by_id.values(), key=lambda c: c.id)


def _read_images(
    data: dict, source: Path, root: Path, check_images: bool, log: ProblemLog
) -> tuple[dict[int, DetectionRecord], set[int]]:
    entries = _list_field(data, "images", source)
    ids = [as_id(e.get("id")) if isinstance(e, dict) else None for e in entries]
    duplicates = sorted(i for i, n in Counter(i for i in ids if i is not None).items() if n > 1)
    if duplicates:
        for image_id in duplicates:
            log.refuse(f"image id {image_id}", "image id used by more than one image", "duplicate_id")
        raise DataError(
            f"{source}: duplicate image ids {duplicates[:10]}{' ...' if len(duplicates) > 10 else ''}; "
            "annotations cannot be attributed to an image",
            log.problems,
        )

    records: dict[int, DetectionRecord] = {}
    refused: set[int] = set()
    first_with_file: dict[Path, int] = {}
    # Reading every header of a large file takes a while: a transient bar says so, on a terminal or in a
    # notebook (on rich's console, which the CLI's logging shares and silences on non-main ranks).
    shown = check_images and len(entries) >= HEADER_PROGRESS_MIN and (get_console().is_terminal or get_console().is_jupyter)
    rows = track(enumerate(zip(entries, ids)), f"reading image headers ({source.name})", total=len(entries),
                 transient=True, disable=not shown)
    for i, (entry, image_id) in rows:
        if not isinstance(entry, dict):
            log.refuse(f"images[{i}]", f"is a {type(entry).__name__}, expected an object", "wrong_type")
            continue
        if image_id is None:
            log.refuse(f"images[{i}]", f"id missing or not a 64-bit integer ({show(entry.get('id'))})", _key_kind(entry, "id"))
            continue
        record = f"image id {image_id}"
        record_obj = _read_image(entry, record, root, source, check_images, log)
        if record_obj is None:
            refused.add(image_id)
            continue
        record_obj.image_id = image_id
        if record_obj.path in first_with_file:
            log.info(record, f"same file as image id {first_with_file[record_obj.path]}", "duplicate_file")
        first_with_file.setdefault(record_obj.path, image_id)
        records[image_id] = record_obj
    return records, refused


def _read_image(
    entry: dict, record: str, root: Path, source: Path, check_images: bool, log: ProblemLog
) -> DetectionRecord | None:
    file_name = entry.get("file_name")
    if not isinstance(file_name, str):
        log.refuse(record, f"file_name missing or not text ({show(file_name)})", _key_kind(entry, "file_name"))
        return None
    try:
        path = resolve_image_path(root, file_name, str(source), record)
    except DataError as error:
        log.extend(error, record, "path_escape")
        return None
    width, height = valid_side(entry.get("width")), valid_side(entry.get("height"))
    size_ok = width is not None and height is not None
    if check_images:
        real = read_image_size(path, log, record)
        if real is None:
            return None
        if not size_ok:
            log.repair(
                record,
                f"width/height missing or invalid ({show(entry.get('width'))} x {show(entry.get('height'))}); "
                f"using the file's real size {real[0]}x{real[1]}",
                "bad_size",
            )
        elif (width, height) != real:
            log.repair(
                record,
                f"width/height {width}x{height} disagree with the file {file_name!r} ({real[0]}x{real[1]}); using the real size"
                + rotation_hint(path, (width, height)),
                "size_mismatch",
            )
        width, height = real
    elif not size_ok:
        log.refuse(
            record,
            f"width/height missing or not integers in 1..{MAX_SIDE} ({show(entry.get('width'))} x {show(entry.get('height'))})",
            "bad_size",
        )
        return None
    return DetectionRecord(image_id=-1, file_name=file_name, path=path, width=width, height=height)


def _read_annotations(
    data: dict,
    source: Path,
    records: dict[int, DetectionRecord],
    refused_images: set[int],
    category_ids: set[int],
    log: ProblemLog,
) -> int:
    """Attach every usable annotation to its record; return how many annotations the file had."""
    if "annotations" not in data:
        log.info("file", "no 'annotations' list: every image is taken as having no objects", "missing_key")
        return 0
    entries = _list_field(data, "annotations", source)
    valid_ids = [as_id(e.get("id")) for e in entries if isinstance(e, dict)]
    next_id = max([i for i in valid_ids if i is not None], default=0) + 1
    used: set[int] = set()
    for j, entry in enumerate(entries):
        if not isinstance(entry, dict):
            log.refuse(f"annotations[{j}]", f"is a {type(entry).__name__}, expected an object", "wrong_type")
            continue
        ann_id = as_id(entry.get("id"))
        record = f"annotation id {ann_id}" if ann_id is not None else f"annotations[{j}]"
        kept = _read_annotation(entry, record, records, refused_images, category_ids, log)
        if kept is None:
            continue
        target, box, category_id, iscrowd, area = kept
        if ann_id is None or ann_id in used:
            why = "id missing or not a 64-bit integer" if ann_id is None else "duplicate annotation id"
            log.repair(record, f"{why}; assigned id {next_id}", "duplicate_id" if ann_id is not None else _key_kind(entry, "id"))
            ann_id, next_id = next_id, next_id + 1
        used.add(ann_id)
        target.boxes.append(box)
        target.category_ids.append(category_id)
        target.annotation_ids.append(ann_id)
        target.iscrowd.append(iscrowd)
        target.areas.append(area)
    return len(entries)


def _read_annotation(
    entry: dict,
    record: str,
    records: dict[int, DetectionRecord],
    refused_images: set[int],
    category_ids: set[int],
    log: ProblemLog,
) -> tuple[DetectionRecord, tuple[float, float, float, float], int, int, float] | None:
    image_id = as_id(entry.get("image_id"))
    if image_id is None:
        log.refuse(record, f"image_id missing or not a 64-bit integer ({show(entry.get('image_id'))})", _key_kind(entry, "image_id"))
        return None
    if image_id not in records:
        if image_id in refused_images:
            log.refuse(record, f"its image (image id {image_id}) was refused", "image_refused")
        else:
            log.refuse(record, f"unknown image id {image_id}", "unknown_image")
        return None
    category_id = as_id(entry.get("category_id"))
    if category_id is None:
        log.refuse(
            record, f"category_id missing or not a 64-bit integer ({show(entry.get('category_id'))})", _key_kind(entry, "category_id")
        )
        return None
    if category_id not in category_ids:
        log.refuse(record, f"unknown category id {category_id} (known: {sorted(category_ids)[:20]})", "unknown_category")
        return None
    bbox = entry.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        log.refuse(record, f"bbox must be 4 finite numbers [x, y, width, height], got {show(bbox)}", _key_kind(entry, "bbox"))
        return None
    target = records[image_id]
    x, y, w, h = (float(v) for v in bbox)
    box = check_box((x, y, x + w, y + h), target.width, target.height, log, record, lambda: f"bbox {show(bbox)}")
    if box is None:
        return None
    iscrowd = entry.get("iscrowd", 0)
    if isinstance(iscrowd, bool) or as_int(iscrowd) in (0, 1):
        iscrowd = int(iscrowd)
    else:
        log.repair(record, f"iscrowd must be 0 or 1, got {show(iscrowd)}; using 0", "wrong_type")
        iscrowd = 0
    area = entry.get("area")
    clipped = box != (x, y, x + w, y + h)
    if not (is_number(area) and area > 0) or clipped:
        if "area" in entry and not clipped:
            log.repair(record, f"area must be a positive number, got {show(area)}; using width*height", "wrong_type")
        area = (box[2] - box[0]) * (box[3] - box[1])
    return target, box, category_id, iscrowd, float(area)


def to_coco_dict(index: DetectionIndex, images_root: str | Path | None = None) -> dict[str, Any]:
    """The index as a COCO ground-truth dict (faster-coco-eval / pycocotools input).

    File names are the index's own (relative to `index.root`), or relative to `images_root`
    when given, which must contain every image.

    Annotation ids are kept when they are unique and positive, else renumbered 1..N:
    pycocotools' matcher stores the matched ground-truth *id* and treats 0 as "unmatched",
    so a box with id 0 (as in Roboflow exports) would count as a miss.
    """
    all_ids = [a for r in index.records for a in r.annotation_ids]
    num_boxes = index.num_boxes
    keep_ids = len(all_ids) == num_boxes and len(set(all_ids)) == num_boxes and all(a > 0 for a in all_ids)
    images, annotations = [], []
    next_id = 1
    for r in index.records:
        file_name = r.file_name if images_root is None else Path(r.path).relative_to(images_root).as_posix()
        images.append({"id": r.image_id, "file_name": file_name, "width": r.width, "height": r.height})
        for k, (x1, y1, x2, y2) in enumerate(r.boxes):
            ann_id = r.annotation_ids[k] if keep_ids else next_id
            next_id += 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": r.image_id,
                    "category_id": r.category_ids[k],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": r.areas[k] if k < len(r.areas) else (x2 - x1) * (y2 - y1),
                    "iscrowd": r.iscrowd[k] if k < len(r.iscrowd) else 0,
                }
            )
    categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in index.categories]
    info = {"description": f"written by visiondoctor from {index.source}"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def write_coco(index: DetectionIndex, path: str | Path, images_root: str | Path | None = None) -> Path:
    """Write the index as COCO JSON atomically. File names are relative to `images_root`
    (default `index.root`): read it back with `read_coco(path, images_root=...)` of the same folder."""
    return write_json_atomic(Path(path), to_coco_dict(index, images_root))


# ----- the format's registration: layouts, splits -------------------------------------------------

ROBOFLOW_COCO_FILE = "_annotations.coco.json"


def roboflow_splits(path: Path) -> list[str]:
    return [d.name for d in subdirs(path) if (d / ROBOFLOW_COCO_FILE).is_file()]


def coco_layout_splits(path: Path) -> list[str]:
    folder = path / "annotations"
    if not folder.is_dir():
        return []
    return sorted(f.stem[len("instances_"):] for f in folder.glob("instances_*.json") if f.is_file())


def coco_splits(path: Path) -> list[str]:
    return sorted(set(roboflow_splits(path)) | set(coco_layout_splits(path)))


def is_coco(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".json"
    return (path / ROBOFLOW_COCO_FILE).is_file() or bool(roboflow_splits(path)) or bool(coco_layout_splits(path))


def coco_file(path: Path, split: str | None) -> Path:
    """The annotation file of `split` in a COCO file or folder."""
    if path.is_file():
        return path
    if (path / ROBOFLOW_COCO_FILE).is_file() and not roboflow_splits(path):
        return path / ROBOFLOW_COCO_FILE
    name = pick_split(path, split, coco_splits(path))
    if name in roboflow_splits(path):
        return path / name / ROBOFLOW_COCO_FILE
    return path / "annotations" / f"instances_{name}.json"


register_format(DatasetFormat(
    name="coco", task="detection", priority=10, detect=is_coco,
    read=lambda path, split: read_coco(coco_file(path, split)), list_splits=coco_splits,
    looks_for=f"a COCO .json file, <split>/{ROBOFLOW_COCO_FILE} or annotations/instances_<split>.json",
    write=write_coco))
