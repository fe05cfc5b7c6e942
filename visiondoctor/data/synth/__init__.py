"""Deterministic synthetic datasets, written to disk in real formats (so they go through the
same readers as user data). A generator registers itself with `@register_generator(name, marker)`
in its own module of this package; `generate(name, out, ...)` finds it by name.

Generated data used by a run is cached under `<output_dir>/_data/`, keyed by generator, size,
seed and options (`synthetic_root`), and generated once (`ensure_synthetic`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiondoctor.config import Config
from visiondoctor.registry import Registry


@dataclass(frozen=True)
class Generator:
    name: str
    fn: Callable[..., Any]
    marker: str  # a file the generator writes once the dataset is complete (relative to its folder)


GENERATORS: Registry[Generator] = Registry("synthetic dataset", "visiondoctor.data.synth")


def register_generator(name: str, marker: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        GENERATORS.add(name, Generator(name, fn, marker))
        return fn

    return wrap


ANNOTATION_FILE = "_annotations.coco.json"  # <split>/_annotations.coco.json: the layout of Roboflow's COCO export


def box_annotation(annotation_id: int, image_id: int, class_index: int, bbox: Sequence[float],
                   **extra: Any) -> dict[str, Any]:
    """One COCO annotation of a generated object: xywh `bbox`, category id = class index + 1."""
    x, y, w, h = bbox
    return {"id": annotation_id, "image_id": image_id, "category_id": class_index + 1, "bbox": [x, y, w, h],
            "area": w * h, "iscrowd": 0, "segmentation": [], **extra}


def write_coco_split(split_dir: Path, generator: str, seed: int, split: str, categories: list[dict[str, Any]],
                     images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> Path:
    """Write one generated split's COCO file; returns its path."""
    coco = {"info": {"description": f"visiondoctor synthetic {generator}", "seed": seed, "split": split},
            "licenses": [], "categories": categories, "images": images, "annotations": annotations}
    path = split_dir / ANNOTATION_FILE
    path.write_text(json.dumps(coco), encoding="utf-8")
    return path


def boxes_per_class(annotations: list[dict[str, Any]], classes: Sequence[str]) -> dict[str, int]:
    """{class name: boxes} over COCO annotations whose category id is class index + 1."""
    counts = {name: 0 for name in classes}
    for a in annotations:
        counts[classes[a["category_id"] - 1]] += 1
    return counts


def generate(name: str, out_dir: str | Path, num_images: int | None = None, seed: int = 0, **kwargs: Any) -> Any:
    """Generate dataset `name` into `out_dir`. `num_images` (train split size) scales the
    splits of generators that take `num_train`; the others use their defaults."""
    if name not in GENERATORS:
        raise ValueError(f"unknown synthetic dataset {name!r}; available: {', '.join(GENERATORS.names())}")
    if num_images:
        kwargs.setdefault("num_train", num_images)
    return GENERATORS.get(name).fn(Path(out_dir), seed=seed, **kwargs)


def synthetic_root(cfg: Config) -> Path:
    """Generated data is cached under the output folder, keyed by generator, arguments and seed."""
    options = json.dumps(cfg.data.synth_options, sort_keys=True)
    key = hashlib.sha1(options.encode()).hexdigest()[:8]
    n = cfg.data.synth_images or 0
    return Path(cfg.output_dir) / "_data" / f"{cfg.data.synth}_n{n}_seed{cfg.train.seed}_{key}"


def is_generated(cfg: Config) -> bool:
    return (synthetic_root(cfg) / GENERATORS.get(cfg.data.synth).marker).exists()


def ensure_synthetic(cfg: Config) -> Path:
    """The config's synthetic dataset, generated into its cache folder unless it is there already.
    (Under torchrun the pipeline lets rank 0 generate it while the others wait.)"""
    root = synthetic_root(cfg)
    if not is_generated(cfg):
        generate(cfg.data.synth, root, num_images=cfg.data.synth_images or None, seed=cfg.train.seed,
                 **cfg.data.synth_options)
    return root
