"""Deterministic synthetic detection data: geometric shapes on textured backgrounds.

Writes `<out>/<split>/_annotations.coco.json` beside the images of each split (the same
layout as a Roboflow COCO export), so the data goes through the same reader as real data,
plus `<out>/generation_summary.json` (counts per split and class, box-size histogram,
occlusion counts, the parameters).

Conventions, decided once:
- Boxes are the **visible extent** of each object (as in COCO, where boxes enclose the
  visible pixels): the tight box around the pixels the object still covers after the
  objects drawn later were painted over it. Each annotation also carries
  `visible_fraction` (visible pixels / pixels of the unoccluded shape).
- Objects are painted in order; a later object hides an earlier one. A placement that would
  leave an earlier object less than `min_visible` visible is retried (`max_place_tries`
  times; the later half of the tries give up the deliberate overlap); if every try fails the last one is kept and the hidden objects are **dropped**
  from the annotations, and counted (`occluded_dropped` in the summary). Nothing is dropped
  without a count.
- Category ids start at 1, in the order of `classes`; image and annotation ids start at 1.
- Determinism: every image has its own random generator seeded from (seed, split, index),
  so the same arguments give byte-identical files.

Hand-written because no maintained library generates detection data with controlled
occlusion and size distribution; drawing is PIL's ImageDraw, textures are numpy.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from visiondoctor.data.synth import (
    box_annotation,
    boxes_per_class,
    register_generator,
    write_coco_split,
)

SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross", "hexagon", "ellipse")
DEFAULT_CLASSES = ("circle", "square", "triangle", "star", "cross")
BACKGROUND_KINDS = ("plain", "gradient", "stripes", "noise", "checker")
SPLITS = ("train", "val", "test")
SUMMARY_FILE = "generation_summary.json"
SIZE_BINS = (0, 16, 32, 64, 96, 128, 256, 100000)  # box side sqrt(w*h), px; 32/96 are COCO's small/medium/large limits

#: Named sets of arguments for `generate_shapes` (the CLI's `--preset`).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {"num_train": 96, "num_val": 24, "num_test": 24, "image_size": 160, "max_size": 72},
}

_CIRCLE_VERTICES = 48
_UNIT_CIRCLE = [(math.cos(2 * math.pi * i / _CIRCLE_VERTICES), math.sin(2 * math.pi * i / _CIRCLE_VERTICES))
                for i in range(_CIRCLE_VERTICES)]


def _regular(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
    return [(radius * math.cos(math.radians(start_deg + 360 * i / n)),
             radius * math.sin(math.radians(start_deg + 360 * i / n))) for i in range(n)]


def _unit_shape(name: str) -> list[tuple[float, float]]:
    """Vertices of a shape whose unrotated extent is about 1 (centred at 0)."""
    if name == "circle":
        return [(0.5 * x, 0.5 * y) for x, y in _UNIT_CIRCLE]
    if name == "ellipse":
        return [(0.5 * x, 0.28 * y) for x, y in _UNIT_CIRCLE]
    if name == "square":
        return [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    if name == "triangle":
        return _regular(3, 0.55, -90)
    if name == "hexagon":
        return _regular(6, 0.5, 0)
    if name == "star":
        outer, inner = _regular(5, 0.55, -90), _regular(5, 0.22, -54)
        return [p for pair in zip(outer, inner) for p in pair]
    if name == "cross":
        a, b = 0.5, 0.17
        return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPE_NAMES)}")


@dataclass
class _Placed:
    """One object placed on the canvas (its anti-aliased coverage and where it lies)."""

    class_index: int
    colour: np.ndarray  # (3,) float
    alpha: np.ndarray  # (h, w) float coverage in [0, 1]
    x0: int
    y0: int
    full_pixels: int  # pixels with coverage >= 0.5 before anything occludes it


def _background(rng: np.random.Generator, size: int, kinds: Sequence[str], contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """A textured background (H, W, 3 float) and its two base colours (for object contrast)."""
    c1 = rng.uniform(0, 255, 3)
    c2 = np.clip(c1 + rng.uniform(-contrast, contrast, 3), 0, 255)
    kind = kinds[int(rng.integers(len(kinds)))]
    xx = np.arange(size, dtype=np.float32)[None, :]
    yy = np.arange(size, dtype=np.float32)[:, None]
    theta = rng.uniform(0, math.pi)
    along = xx * np.float32(math.cos(theta)) + yy * np.float32(math.sin(theta))
    if kind == "plain":
        t = np.zeros((1, 1), np.float32)
    elif kind == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    elif kind == "stripes":
        period = rng.uniform(6, 40)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * along / period + rng.uniform(0, 2 * math.pi))
    elif kind == "noise":
        cells = int(rng.integers(3, 12))
        coarse = (rng.uniform(0, 255, (cells, cells))).astype(np.uint8)
        t = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    elif kind == "checker":
        cell = int(rng.integers(6, 33))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    else:
        raise ValueError(f"unknown background kind {kind!r}; known: {', '.join(BACKGROUND_KINDS)}")
    t = np.broadcast_to(t, (size, size))[..., None]
    image = c1.astype(np.float32) + t * (c2 - c1).astype(np.float32)
    return image, np.stack([c1, c2])


def _object_colour(rng: np.random.Generator, background: np.ndarray, min_contrast: float) -> np.ndarray:
    """A random colour at least `min_contrast` (RGB distance) from both background colours, when one exists."""
    best, best_d = None, -1.0
    for _ in range(32):
        c = rng.uniform(0, 255, 3)
        d = float(np.min(np.linalg.norm(background - c, axis=1)))
        if d >= min_contrast:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _rasterise(vertices: np.ndarray, supersample: int) -> tuple[np.ndarray, int, int]:
    """Anti-aliased coverage of a polygon given in image coordinates: (alpha, x0, y0)."""
    x0, y0 = int(math.floor(vertices[:, 0].min())), int(math.floor(vertices[:, 1].min()))
    x1, y1 = int(math.ceil(vertices[:, 0].max())), int(math.ceil(vertices[:, 1].max()))
    w, h = max(x1 - x0, 1), max(y1 - y0, 1)
    canvas = Image.new("L", (w * supersample, h * supersample), 0)
    local = [((x - x0) * supersample, (y - y0) * supersample) for x, y in vertices]
    ImageDraw.Draw(canvas).polygon(local, fill=255)
    alpha = canvas.resize((w, h), Image.BOX) if supersample > 1 else canvas
    return np.asarray(alpha, np.float32) / 255.0, x0, y0


def _sample_size(rng: np.random.Generator, min_size: float, max_size: float, small_size: float, small_fraction: float) -> float:
    """Object extent: `small_fraction` of objects uniform in [min_size, small_size], the rest log-uniform above."""
    if min_size < small_size and rng.uniform() < small_fraction:
        return float(rng.uniform(min_size, small_size))
    lo = max(min_size, small_size) if small_fraction > 0 else min_size
    return float(math.exp(rng.uniform(math.log(lo), math.log(max(max_size, lo)))))


def _paste(labels: np.ndarray, obj: _Placed, index: int) -> None:
    """Mark the pixels the object covers (coverage >= 0.5) as `index`, clipped to the image."""
    h, w = obj.alpha.shape
    H, W = labels.shape
    ys, xs = slice(max(obj.y0, 0), min(obj.y0 + h, H)), slice(max(obj.x0, 0), min(obj.x0 + w, W))
    local = obj.alpha[ys.start - obj.y0: ys.stop - obj.y0, xs.start - obj.x0: xs.stop - obj.x0] >= 0.5
    labels[ys, xs][local] = index


def _make_image(rng: np.random.Generator, p: "_Params") -> tuple[np.ndarray, list[dict], dict[str, int]]:
    """One image (uint8 HxWx3) and its objects: class index, visible box, visible fraction."""
    size = p.image_size
    image, bg_colours = _background(rng, size, p.background_kinds, p.background_contrast)
    labels = np.zeros((size, size), np.uint8)
    placed: list[_Placed] = []
    stats = {"placement_retries": 0, "occluded_dropped": 0, "occluded_kept": 0}
    n_objects = int(rng.integers(p.min_objects, p.max_objects + 1))
    for _ in range(n_objects):
        class_index = int(rng.integers(len(p.classes)))
        extent = _sample_size(rng, p.min_size, p.max_size, p.small_size, p.small_fraction)
        aspect = 1.0 + rng.uniform(-p.aspect_jitter, p.aspect_jitter)
        angle = rng.uniform(0, 2 * math.pi) if p.rotate else 0.0
        unit = np.asarray(_unit_shape(p.classes[class_index]), np.float64) * extent
        unit[:, 0] *= aspect
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        shape = unit @ rot.T
        span = float((shape.max(axis=0) - shape.min(axis=0)).max())
        if span > 0.95 * size:  # a rotated large shape must still fit inside the image
            shape *= 0.95 * size / span
        lo, hi = shape.min(axis=0), shape.max(axis=0)
        colour = _object_colour(rng, bg_colours, p.min_contrast)
        occlude = bool(placed) and rng.uniform() < p.occlusion_prob
        candidate = None
        for attempt in range(max(p.max_place_tries, 1)):
            if occlude and attempt < (p.max_place_tries + 1) // 2:
                # Overlap a previous object on purpose: centre at a random point of its box's rim region.
                target = placed[int(rng.integers(len(placed)))]
                th, tw = target.alpha.shape
                centre = np.array([target.x0 + tw * rng.uniform(-0.1, 1.1), target.y0 + th * rng.uniform(-0.1, 1.1)])
            else:
                centre = rng.uniform(0, 1, 2) * (size - (hi - lo)) - lo
            centre = np.clip(centre, -lo, size - hi)  # keep the whole shape inside the image
            alpha, x0, y0 = _rasterise(shape + centre, p.supersample)
            candidate = _Placed(class_index, colour, alpha, x0, y0, int((alpha >= 0.5).sum()))
            trial = labels.copy()
            _paste(trial, candidate, len(placed) + 1)
            visible = np.bincount(trial.ravel(), minlength=len(placed) + 2)
            if all(visible[i + 1] >= p.min_visible * max(o.full_pixels, 1) for i, o in enumerate(placed)):
                break
            stats["placement_retries"] += 1
        if candidate.full_pixels == 0:
            continue  # a shape below one pixel cannot happen with min_size >= 2, but never annotate an invisible one
        _paste(labels, candidate, len(placed) + 1)
        placed.append(candidate)

    for obj in placed:  # paint in order: later objects cover earlier ones
        h, w = obj.alpha.shape
        region = image[obj.y0: obj.y0 + h, obj.x0: obj.x0 + w]
        a = obj.alpha[: region.shape[0], : region.shape[1], None]
        region += a * (obj.colour.astype(np.float32) - region)
    if p.noise_std > 0:
        image += p.noise_std * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    objects = []
    for i, obj in enumerate(placed, start=1):
        ys, xs = np.nonzero(labels == i)
        fraction = len(ys) / max(obj.full_pixels, 1)
        if fraction < p.min_visible:
            stats["occluded_dropped"] += 1
            continue
        if fraction < 0.999:
            stats["occluded_kept"] += 1
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        objects.append({"class_index": obj.class_index, "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "visible_fraction": round(min(fraction, 1.0), 4)})
    return pixels, objects, stats


@dataclass(frozen=True)
class _Params:
    image_size: int
    classes: tuple[str, ...]
    min_objects: int
    max_objects: int
    min_size: float
    max_size: float
    small_size: float
    small_fraction: float
    aspect_jitter: float
    rotate: bool
    occlusion_prob: float
    min_visible: float
    max_place_tries: int
    background_kinds: tuple[str, ...]
    background_contrast: float
    min_contrast: float
    noise_std: float
    supersample: int


@register_generator("shapes", marker="train/_annotations.coco.json")
def generate_shapes(
    out_dir: Path | str,
    num_train: int = 1500,
    num_val: int = 250,
    num_test: int = 250,
    image_size: int = 256,
    seed: int = 0,
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    min_objects: int = 1,
    max_objects: int = 6,
    min_size: float = 12,
    max_size: float = 120,
    small_size: float = 16,
    small_fraction: float = 0.1,
    aspect_jitter: float = 0.15,
    rotate: bool = True,
    occlusion_prob: float = 0.3,
    min_visible: float = 0.3,
    max_place_tries: int = 8,
    background_kinds: Sequence[str] = BACKGROUND_KINDS,
    background_contrast: float = 60,
    min_contrast: float = 100,
    noise_std: float = 6.0,
    supersample: int = 4,
    image_format: str = "jpg",
    jpeg_quality: int = 90,
) -> dict[str, Path]:
    """Write the train/val/test splits of the shapes dataset under `out_dir`; return split -> annotation file.

    Sizes are object extents in pixels before rotation: `small_fraction` of the objects are
    drawn in [min_size, small_size] (small objects), the rest log-uniform in [small_size, max_size].
    Splits with 0 images are not written. See the module docstring for box and occlusion conventions.
    """
    classes = tuple(classes)
    for name in classes:
        _unit_shape(name)  # raises on an unknown name
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"classes must be distinct and non-empty, got {classes}")
    if not 1 <= min_objects <= max_objects or max_objects > 250:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 250, got {min_objects}, {max_objects}")
    if not 2 <= min_size <= max_size:
        raise ValueError(f"need 2 <= min_size <= max_size, got {min_size}, {max_size}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    for kind in background_kinds:
        if kind not in BACKGROUND_KINDS:
            raise ValueError(f"unknown background kind {kind!r}; known: {', '.join(BACKGROUND_KINDS)}")
    params = _Params(image_size, classes, min_objects, max_objects, float(min_size), float(max_size), float(small_size),
                     float(small_fraction), float(aspect_jitter), bool(rotate), float(occlusion_prob), float(min_visible),
                     int(max_place_tries), tuple(background_kinds), float(background_contrast), float(min_contrast),
                     float(noise_std), int(supersample))
    out_dir = Path(out_dir)
    counts = dict(zip(SPLITS, (num_train, num_val, num_test)))
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(classes)]
    written: dict[str, Path] = {}
    summary_splits: dict[str, Any] = {}
    for split_index, split in enumerate(SPLITS):
        if counts[split] <= 0:
            continue
        split_dir = out_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        totals = {"placement_retries": 0, "occluded_dropped": 0, "occluded_kept": 0}
        sides: list[float] = []
        for i in range(counts[split]):
            rng = np.random.default_rng([seed, split_index, i])
            pixels, objects, stats = _make_image(rng, params)
            for key in totals:
                totals[key] += stats[key]
            image_id = i + 1
            file_name = f"{split}_{i:06d}.{image_format}"
            picture = Image.fromarray(pixels, "RGB")
            if image_format == "jpg":
                picture.save(split_dir / file_name, "JPEG", quality=jpeg_quality)
            else:
                picture.save(split_dir / file_name, "PNG")
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            for obj in objects:
                _, _, w, h = obj["bbox"]
                sides.append(math.sqrt(w * h))
                annotations.append(box_annotation(len(annotations) + 1, image_id, obj["class_index"], obj["bbox"],
                                                  visible_fraction=obj["visible_fraction"]))
        written[split] = write_coco_split(split_dir, "shapes", seed, split, categories, images, annotations)
        per_class = boxes_per_class(annotations, classes)
        hist, _ = np.histogram(sides, bins=SIZE_BINS)
        summary_splits[split] = {"images": len(images), "boxes": len(annotations), "per_class": per_class,
                                 "size_histogram": hist.tolist(), **totals}
    summary = {
        "generator": "shapes",
        "seed": seed,
        "box_convention": "visible extent (COCO xywh, pixels); objects below min_visible visible are dropped and counted",
        "size_bins": list(SIZE_BINS),
        "occluded_dropped": sum(s["occluded_dropped"] for s in summary_splits.values()),
        "splits": summary_splits,
        "params": {"num_train": num_train, "num_val": num_val, "num_test": num_test, "image_format": image_format,
                   "jpeg_quality": jpeg_quality, **{k: (list(v) if isinstance(v, tuple) else v)
                                                    for k, v in params.__dict__.items()}},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return written
