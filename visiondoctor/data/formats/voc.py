"""Pascal VOC XML: one `<annotation>` file per image, read into a DetectionIndex.

Layouts: `Annotations/*.xml` + `JPEGImages/` (+ `ImageSets/Main/<split>.txt`), or XML files
beside their images in one folder.

Decisions:
- Category ids are 1..N over the class names sorted alphabetically (VOC has no ids).
- Image ids are 1..N in file order (sorted XML names, or the split file's order); annotation
  ids 1..M in reading order.
- VOC pixel coordinates are 1-based and inclusive; a box becomes xyxy `[xmin - 1, ymin - 1,
  xmax, ymax]`, so a box covering the whole image is `[0, 0, width, height]`.
- `<difficult>1</difficult>` becomes `iscrowd = 1`: COCO evaluation then neither rewards nor
  penalises detections of it, which is how VOC's own evaluation treats difficult objects.
- The image's real size (from its header; the displayed size, EXIF orientation applied) wins
  over `<size>`, which exports often get wrong.
XML is parsed with the standard library; its expat (>= 2.4) refuses entity-expansion bombs,
and ElementTree never fetches external entities.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats._checks import ProblemLog, as_int, check_box, finish_index
from visiondoctor.data.formats.splits import pick_split, read_split_list
from visiondoctor.data.images import IMAGE_EXTENSIONS, image_size, resolve_image_path, rotation_hint
from visiondoctor.data.samples import Category, DataError, DetectionIndex, DetectionRecord


@dataclass
class _Parsed:
    record: DetectionRecord
    names: list[str] = field(default_factory=list)


def read_voc(root: str | Path, split: str | None = None) -> DetectionIndex:
    """Read a VOC folder; with `split`, only the images listed in `ImageSets/Main/<split>.txt`."""
    root = Path(root).absolute()
    ann_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    img_dir = root / "JPEGImages" if (root / "JPEGImages").is_dir() else ann_dir
    log = ProblemLog(root)
    xml_files = _xml_files(root, ann_dir, split, log)
    if not xml_files:
        raise DataError(f"{ann_dir}: no VOC annotation (.xml) files" + (f" for split {split!r}" if split else ""), log.problems)

    parsed: list[_Parsed] = []
    first_with_file: dict[Path, str] = {}
    objects_in_source = 0
    for xml_path in xml_files:
        element = _parse(xml_path, log)
        if element is None:
            continue
        objects_in_source += len(element.findall("object"))
        item = _read_xml(element, xml_path, img_dir, log)
        if item is None:
            continue
        if item.record.path in first_with_file:
            log.info(xml_path.name, f"same image as {first_with_file[item.record.path]}", "duplicate_file", xml_path)
        first_with_file.setdefault(item.record.path, xml_path.name)
        parsed.append(item)

    names = sorted({n for item in parsed for n in item.names})
    ids = {name: i + 1 for i, name in enumerate(names)}
    categories = [Category(ids[n], n) for n in names]
    records, next_ann = [], 1
    for image_id, item in enumerate(parsed, start=1):
        item.record.image_id = image_id
        item.record.category_ids = [ids[n] for n in item.names]
        item.record.annotation_ids = list(range(next_ann, next_ann + len(item.names)))
        next_ann += len(item.names)
        records.append(item.record)
    return finish_index(img_dir, root, categories, records, log, objects_in_source)


def voc_splits(root: str | Path) -> list[str]:
    """Names of the split lists in ImageSets/Main (per-class lists such as `cat_train.txt` skipped)."""
    folder = Path(root) / "ImageSets" / "Main"
    if not folder.is_dir():
        return []
    return sorted(f.stem for f in folder.glob("*.txt") if f.is_file() and _is_split_list(f))


def _is_split_list(path: Path) -> bool:
    """A split list has one id per line; a per-class list has 'id flag' pairs."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    return len(line.split()) == 1
    except OSError:
        return False
    return True


def _xml_files(root: Path, ann_dir: Path, split: str | None, log: ProblemLog) -> list[Path]:
    if split is None:
        return sorted(ann_dir.glob("*.xml"))
    list_file = root / "ImageSets" / "Main" / f"{split}.txt"
    files = []
    for n, name in read_split_list(list_file, voc_splits(root)):
        try:
            xml_path = resolve_image_path(ann_dir, name + ".xml", str(list_file), f"line {n}")
        except DataError as error:
            log.extend(error, f"line {n}", "path_escape", list_file)
            continue
        if not os.path.isfile(xml_path):  # os.path: a too-long name is "missing", not an OSError
            log.refuse(f"line {n}", f"{xml_path.name} is listed but does not exist", "missing_annotation", list_file)
            continue
        files.append(xml_path)
    return files


def _parse(xml_path: Path, log: ProblemLog) -> ET.Element | None:
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        log.refuse(xml_path.name, f"invalid XML ({exc})", "invalid_xml", xml_path)
        return None
    except (OSError, ValueError) as exc:  # unreadable file; ValueError: bad encoding declaration
        log.refuse(xml_path.name, f"cannot read ({type(exc).__name__}: {exc})", "invalid_xml", xml_path)
        return None
    root = tree.getroot()
    if root.tag != "annotation":
        log.refuse(xml_path.name, f"root element is <{root.tag}>, expected <annotation>", "invalid_xml", xml_path)
        return None
    return root


def _read_xml(root: ET.Element, xml_path: Path, img_dir: Path, log: ProblemLog) -> _Parsed | None:
    name = xml_path.name
    objects = root.findall("object")

    def refuse_image(message: str, kind: str) -> None:
        log.refuse(name, message, kind, xml_path)
        for k in range(len(objects)):
            log.refuse(f"{name} object {k + 1}", "its image was refused", "image_refused", xml_path)

    file_name = (root.findtext("filename") or "").strip() or _find_image(img_dir, xml_path.stem)
    if not file_name:
        refuse_image(f"no <filename> and no image named {xml_path.stem}.* in {img_dir}", "missing_key")
        return None
    try:
        path = resolve_image_path(img_dir, file_name, str(xml_path), name)
    except DataError as error:
        refuse_image(str(error.problems[0].message if error.problems else error), "path_escape")
        return None
    try:
        width, height = image_size(path)
    except DataError as error:
        refuse_image(str(error), "unreadable_image" if os.path.exists(path) else "missing_image")
        return None
    stated = (as_int(_number(root.findtext("size/width"))), as_int(_number(root.findtext("size/height"))))
    if None in stated:
        log.repair(name, f"<size> missing or not integers; using the image file's size {width}x{height}",
                   "bad_size", xml_path)
    elif stated != (width, height):
        log.repair(name, f"<size> {stated[0]}x{stated[1]} disagrees with the image file ({width}x{height}); "
                   "using the real size" + rotation_hint(path, stated), "size_mismatch", xml_path)

    record = DetectionRecord(image_id=-1, file_name=file_name, path=path, width=width, height=height)
    item = _Parsed(record)
    for k, obj in enumerate(objects, start=1):
        _read_object(obj, f"{name} object {k}", record, item, xml_path, log)
    return item


def _read_object(obj: ET.Element, where: str, record: DetectionRecord, item: _Parsed, xml_path: Path, log: ProblemLog) -> None:
    label = (obj.findtext("name") or "").strip()
    if not label:
        log.refuse(where, "<name> missing or empty", "missing_key", xml_path)
        return
    raw = [obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
    values = [_number(v) for v in raw]
    if any(v is None for v in values):
        log.refuse(where, f"<bndbox> needs numeric xmin, ymin, xmax, ymax; got {raw}", "wrong_type", xml_path)
        return
    xmin, ymin, xmax, ymax = values
    box = check_box((xmin - 1.0, ymin - 1.0, xmax, ymax), record.width, record.height, log, where,
                    f"{label!r} bndbox [{xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}]", xml_path)
    if box is None:
        return
    difficult_text = obj.findtext("difficult")
    difficult = as_int(_number(difficult_text)) if difficult_text is not None else 0
    if difficult not in (0, 1):
        log.repair(where, f"<difficult> must be 0 or 1, got {difficult_text!r}; using 0", "wrong_type", xml_path)
        difficult = 0
    item.names.append(label)
    record.boxes.append(box)
    record.iscrowd.append(difficult)
    record.areas.append((box[2] - box[0]) * (box[3] - box[1]))


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _find_image(img_dir: Path, stem: str) -> str:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (stem + ext, stem + ext.upper()):
            if os.path.isfile(img_dir / candidate):
                return candidate
    return ""


def is_voc(path: Path) -> bool:
    if path.is_file():
        return False
    return (path / "Annotations").is_dir() or (any(path.glob("*.xml")) and not (path / "labels").is_dir())


register_format(DatasetFormat(
    name="voc", task="detection", priority=20, detect=is_voc,
    read=lambda path, split: read_voc(path, split=pick_split(path, split, voc_splits(path), required=False)),
    list_splits=voc_splits, looks_for="a VOC Annotations/ folder or *.xml files"))
