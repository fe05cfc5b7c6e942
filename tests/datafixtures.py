"""Tiny detection datasets written on the fly (no binary fixtures in the repository)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_image(path: Path, width: int = 64, height: int = 48, mode: str = "RGB") -> Path:
    """A small real image file of `mode`, with a gradient so decoding errors would show."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = (np.arange(width * height).reshape(height, width) % 251).astype(np.uint8)
    if mode == "I;16":
        Image.fromarray((ramp.astype(np.uint16) * 257)).save(path)
    elif mode == "L":
        Image.fromarray(ramp).save(path)
    else:
        Image.fromarray(np.stack([ramp] * 3, axis=-1)).convert(mode).save(path)
    return path


def coco_dict(sizes: list[tuple[int, int]] = ((64, 48), (80, 60))) -> dict[str, Any]:
    """A valid COCO dict: one image per size, two boxes each, categories 1 'circle' and 2 'square'."""
    images, annotations = [], []
    for i, (w, h) in enumerate(sizes):
        images.append({"id": i + 1, "file_name": f"img{i + 1}.png", "width": w, "height": h})
        annotations.append({"id": 2 * i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 3, 10, 12],
                            "area": 120, "iscrowd": 0})
        annotations.append({"id": 2 * i + 2, "image_id": i + 1, "category_id": 2, "bbox": [20, 10, 15, 20],
                            "area": 300, "iscrowd": 0})
    categories = [{"id": 1, "name": "circle", "supercategory": "shape"},
                  {"id": 2, "name": "square", "supercategory": "shape"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco_dataset(folder: Path, data: dict[str, Any] | None = None, name: str = "_annotations.coco.json") -> Path:
    """Write `data` (default `coco_dict()`) and a real image for every entry whose size is known."""
    data = coco_dict() if data is None else data
    folder.mkdir(parents=True, exist_ok=True)
    for image in data.get("images", []):
        try:
            write_image(folder / image["file_name"], int(image["width"]), int(image["height"]))
        except (KeyError, TypeError, ValueError, OSError):
            pass
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def voc_xml(filename: str, width: int, height: int, objects: list[tuple]) -> str:
    """One VOC annotation; objects are (name, xmin, ymin, xmax, ymax[, difficult])."""
    parts = [f"<annotation><folder>x</folder><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, x1, y1, x2, y2, *rest in objects:
        difficult = rest[0] if rest else 0
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                     f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


VOC_IMAGES = {
    "a": (64, 48, [("dog", 1, 1, 64, 48), ("cat", 10, 5, 20, 25, 1)]),
    "b": (80, 60, [("cat", 30, 20, 50, 40)]),
}


def write_voc_dataset(root: Path, images: dict | None = None, flat: bool = False,
                      splits: dict[str, list[str]] | None = None) -> Path:
    """Annotations/ + JPEGImages/ (+ ImageSets/Main/<split>.txt), or XML beside images when `flat`."""
    images = VOC_IMAGES if images is None else images
    ann_dir = root if flat else root / "Annotations"
    img_dir = root if flat else root / "JPEGImages"
    ann_dir.mkdir(parents=True, exist_ok=True)
    for stem, (w, h, objects) in images.items():
        write_image(img_dir / f"{stem}.png", w, h)
        (ann_dir / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", w, h, objects))
    for split, stems in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


YOLO_IMAGES = {
    "a": (64, 48, ["0 0.5 0.5 0.25 0.5", "1 0.1 0.2 0.1 0.2"]),
    "b": (80, 60, ["1 0.5 0.5 1.0 1.0"]),
}


def write_yolo_dataset(root: Path, split: str | None = "train", images: dict | None = None,
                       names: Any = ("circle", "square"), names_file: str | None = "data.yaml",
                       roboflow: bool = False) -> Path:
    """images/<split>/ + labels/<split>/ (or <split>/images + <split>/labels when `roboflow`)."""
    images = YOLO_IMAGES if images is None else images
    if split is None:
        img_dir, label_dir = root / "images", root / "labels"
    elif roboflow:
        img_dir, label_dir = root / split / "images", root / split / "labels"
    else:
        img_dir, label_dir = root / "images" / split, root / "labels" / split
    label_dir.mkdir(parents=True, exist_ok=True)
    for stem, (w, h, lines) in images.items():
        write_image(img_dir / f"{stem}.png", w, h)
        if lines is not None:
            (label_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    if names_file == "data.yaml":
        import yaml

        (root / "data.yaml").write_text(yaml.safe_dump({"names": names if isinstance(names, dict) else list(names)}))
    elif names_file == "classes.txt":
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root
