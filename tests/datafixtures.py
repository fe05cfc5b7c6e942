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
