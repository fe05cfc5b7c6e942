"""Detection dataset formats: find which one a path holds and read it into a DetectionIndex.

Layouts recognised by `load_detection(path, "auto", split)`:
- a `.json` file: COCO;
- a folder with `<split>/_annotations.coco.json` (Roboflow COCO export) or
  `annotations/instances_<split>.json` (COCO layout; images in `<split>/` or `images/<split>/`): COCO;
- a folder with `Annotations/` (Pascal VOC), or XML files beside the images: VOC;
- a folder with `data.yaml` / `classes.txt` / `labels/` (or `<split>/labels/`), or a `data.yaml` file: YOLO.
Split names "val", "valid" and "validation" stand for one another, so a config saying `val` reads
a Roboflow export's `valid/` folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from visiondoctor.data.samples import DataError, DetectionIndex

FORMATS: tuple[str, ...] = ("coco", "voc", "yolo")

ROBOFLOW_COCO_FILE = "_annotations.coco.json"
_SPLIT_ALIASES = ({"val", "valid", "validation"},)


def load_detection(path: str | Path, format: str = "auto", split: str | None = None) -> DetectionIndex:
    """Read a detection dataset (file or folder) of `format` ("auto" to detect it), one split of it."""
    path = Path(path)
    if not os.path.exists(path):  # os.path: False (not OSError) for names too long or otherwise invalid
        raise DataError(f"{path}: no such file or folder")
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown detection format {format!r}; supported: {', '.join(FORMATS)} or auto")
    if fmt == "coco":
        from visiondoctor.data.formats.coco import read_coco

        return read_coco(_coco_file(path, split))
    if fmt == "voc":
        from visiondoctor.data.formats.voc import read_voc

        return read_voc(path, split=_pick_split(path, split, list_splits(path, "voc"), required=False))
    from visiondoctor.data.formats.yolo import read_yolo

    root = path.parent if path.is_file() else path
    return read_yolo(root, _pick_split(root, split, list_splits(root, "yolo"), required=False))


def detect_format(path: Path) -> str:
    """The format a file or folder holds, or DataError saying what was looked for."""
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix in (".yaml", ".yml"):
            return "yolo"
        raise DataError(f"{path}: cannot tell the format of a {suffix or 'suffix-less'} file; give a COCO .json, "
                        "a YOLO data.yaml, or a dataset folder")
    if (path / ROBOFLOW_COCO_FILE).is_file() or _roboflow_splits(path) or _coco_layout_splits(path):
        return "coco"
    if (path / "Annotations").is_dir() or (any(path.glob("*.xml")) and not (path / "labels").is_dir()):
        return "voc"
    yolo_markers = ("data.yaml", "data.yml", "classes.txt", "labels")
    if any((path / m).exists() for m in yolo_markers) or any((d / "labels").is_dir() for d in _subdirs(path)):
        return "yolo"
    raise DataError(
        f"{path}: no detection dataset recognised. Looked for a COCO .json, <split>/{ROBOFLOW_COCO_FILE}, "
        "annotations/instances_<split>.json, a VOC Annotations/ folder or *.xml files, "
        "and a YOLO data.yaml, classes.txt or labels/ folder"
    )


def list_splits(path: str | Path, format: str = "auto") -> list[str]:
    """Split names a dataset folder offers (sorted); [] for a single-split file or flat folder."""
    path = Path(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    fmt = detect_format(path) if format == "auto" else format
    if path.is_file():
        return []
    if fmt == "coco":
        return sorted(set(_roboflow_splits(path)) | set(_coco_layout_splits(path)))
    if fmt == "voc":
        from visiondoctor.data.formats.voc import voc_splits

        return voc_splits(path)
    from visiondoctor.data.formats.yolo import yolo_splits

    return yolo_splits(path)


def match_split(split: str, available: list[str]) -> str | None:
    """`split` as it is named in `available` (val/valid/validation are aliases), or None."""
    if split in available:
        return split
    for group in _SPLIT_ALIASES:
        if split in group:
            for name in available:
                if name in group:
                    return name
    return None


def _pick_split(path: Path, split: str | None, available: list[str], required: bool = True) -> str | None:
    if split is None:
        if len(available) == 1:
            return available[0]
        if not available and not required:
            return None
        raise DataError(f"{path}: holds splits {available}; choose one (split=...)" if available
                        else f"{path}: no splits found")
    name = match_split(split, available)
    if name is None:
        if not available and not required:
            raise DataError(f"{path}: split {split!r} asked for, but this dataset has no splits")
        raise DataError(f"{path}: no split {split!r}; available: {available}")
    return name


def _coco_file(path: Path, split: str | None) -> Path:
    if path.is_file():
        return path
    if (path / ROBOFLOW_COCO_FILE).is_file() and not _roboflow_splits(path):
        return path / ROBOFLOW_COCO_FILE
    roboflow, layout = _roboflow_splits(path), _coco_layout_splits(path)
    name = _pick_split(path, split, sorted(set(roboflow) | set(layout)))
    if name in roboflow:
        return path / name / ROBOFLOW_COCO_FILE
    return path / "annotations" / f"instances_{name}.json"


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def _roboflow_splits(path: Path) -> list[str]:
    return [d.name for d in _subdirs(path) if (d / ROBOFLOW_COCO_FILE).is_file()]


def _coco_layout_splits(path: Path) -> list[str]:
    folder = path / "annotations"
    if not folder.is_dir():
        return []
    return sorted(f.stem[len("instances_"):] for f in folder.glob("instances_*.json") if f.is_file())
