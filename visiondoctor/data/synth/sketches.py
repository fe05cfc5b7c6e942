"""Deterministic synthetic sketches for class-incremental detection.

Stroke drawings (houses, fish, keys, ...) with per-point jitter, random rotation, aspect and
stroke width, several per image, on white canvases (128 x 128 by default) — the look of
Quick-Draw sketches, generated so every box is known exactly. Written as:

    <out>/train|val|test/_annotations.coco.json  (+ PNG images; Roboflow-like COCO layout)
    <out>/phases.json                            the class-incremental split (see below)
    <out>/generation_summary.json                counts per split / class, the parameters

Conventions, decided once:
- A box is the tight box around the ink of its object (strokes are opaque ink, not filled
  areas, so objects do not hide each other; placements overlapping an earlier box by more
  than `max_overlap` IoU are retried, and objects that find no place are not drawn and are
  counted as `unplaced` in the summary).
- Category ids start at 1 in the order of `classes`; phase p owns the next
  `phase_sizes[p]` classes of that order. Image and annotation ids start at 1.
- Training images are phase-pure: an image of phase p shows only classes of phase p, and every
  class of phase p gets exactly `instances_per_class[p]` instances (the few-shot later phases
  of the seed's setting: 15-20 per class). Validation and test images mix every class, as
  the test world of incremental detection does (unseen classes are simply not evaluated).
- Determinism: each image has its own generator seeded from (seed, split, phase, index).

phases.json: {"format": "visiondoctor-phases/1", "num_phases": P, "phases": [{"phase": p,
"category_ids": [...], "classes": [...], "train_image_ids": [...], "instances_per_class":
{name: n}, "images_per_class": {name: n}}, ...]}. `visiondoctor.incremental.phases.load_phases`
reads it (and a user's own file, where `train_image_ids` may be omitted).

Hand-written because no maintained library draws labelled sketches offline; drawing is
PIL's ImageDraw.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from visiondoctor.data.synth import (
    box_annotation,
    boxes_per_class,
    register_generator,
    write_coco_split,
)

PHASES_FILE = "phases.json"
SUMMARY_FILE = "generation_summary.json"
PHASES_FORMAT = "visiondoctor-phases/1"

Stroke = list[tuple[float, float]]


# ----- the drawings: strokes in a unit frame (x right, y down), normalised to extent 1 below --------------------

def _arc(cx: float, cy: float, rx: float, ry: float, t0: float = 0.0, t1: float = 360.0, n: int = 24) -> Stroke:
    """Points of an elliptic arc from angle t0 to t1 (degrees; 90 = down since y points down)."""
    steps = max(3, int(n * abs(t1 - t0) / 360) + 1)
    return [(cx + rx * math.cos(math.radians(t)), cy + ry * math.sin(math.radians(t)))
            for t in np.linspace(t0, t1, steps)]


def _closed(points: Sequence[tuple[float, float]]) -> Stroke:
    return list(points) + [points[0]]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Stroke:
    return _closed([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _star() -> list[Stroke]:
    pts = []
    for i in range(10):
        r = 0.5 if i % 2 == 0 else 0.2
        t = math.radians(-90 + 36 * i)
        pts.append((r * math.cos(t), r * math.sin(t)))
    return [_closed(pts)]


def _heart() -> list[Stroke]:
    pts = []
    for t in np.linspace(0, 2 * math.pi, 40):
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x / 34, y / 34))
    return [pts]


def _sun() -> list[Stroke]:
    rays = [[(0.33 * math.cos(t), 0.33 * math.sin(t)), (0.5 * math.cos(t), 0.5 * math.sin(t))]
            for t in np.linspace(0, 2 * math.pi, 9)[:-1]]
    return [_arc(0, 0, 0.24, 0.24)] + rays


def _flower() -> list[Stroke]:
    petals = [_arc(0.28 * math.cos(t), 0.28 * math.sin(t) - 0.1, 0.13, 0.13, n=14)
              for t in np.linspace(0, 2 * math.pi, 7)[:-1]]
    return [_arc(0, -0.1, 0.12, 0.12, n=14), [(0, 0.3), (0, 0.5)]] + petals


def _spiral() -> list[Stroke]:
    t = np.linspace(0, 3 * 2 * math.pi, 70)
    r = 0.5 * t / t[-1]
    return [list(zip((r * np.cos(t)).tolist(), (r * np.sin(t)).tolist()))]


def _ladder() -> list[Stroke]:
    return [[(-0.22, -0.5), (-0.22, 0.5)], [(0.22, -0.5), (0.22, 0.5)]] + [
        [(-0.22, y), (0.22, y)] for y in (-0.32, -0.1, 0.12, 0.34)]


DRAWINGS: dict[str, Callable[[], list[Stroke]]] = {
    "circle": lambda: [_arc(0, 0, 0.5, 0.5, n=32)],
    "square": lambda: [_rect(-0.5, -0.5, 0.5, 0.5)],
    "triangle": lambda: [_closed([(0, -0.5), (0.5, 0.45), (-0.5, 0.45)])],
    "star": _star,
    "house": lambda: [_rect(-0.38, -0.05, 0.38, 0.5), _closed([(-0.5, -0.05), (0, -0.5), (0.5, -0.05)]),
                      [(-0.1, 0.5), (-0.1, 0.2), (0.1, 0.2), (0.1, 0.5)]],
    "tree": lambda: [[(-0.08, 0.5), (-0.08, 0.15)], [(0.08, 0.5), (0.08, 0.15)], _arc(0, -0.15, 0.36, 0.33)],
    "sun": _sun,
    "cloud": lambda: [_arc(-0.27, 0.06, 0.2, 0.2, 90, 290), _arc(0, -0.08, 0.28, 0.26, 200, 340),
                      _arc(0.27, 0.06, 0.2, 0.2, 250, 450), [(0.27, 0.26), (-0.27, 0.26)]],
    "fish": lambda: [_arc(-0.1, 0, 0.36, 0.22), _closed([(0.24, 0), (0.5, -0.22), (0.5, 0.22)]),
                     _arc(-0.3, -0.05, 0.03, 0.03, n=8)],
    "smiley": lambda: [_arc(0, 0, 0.5, 0.5, n=32), _arc(-0.17, -0.15, 0.05, 0.05, n=8),
                       _arc(0.17, -0.15, 0.05, 0.05, n=8), _arc(0, 0.02, 0.28, 0.26, 20, 160)],
    "arrow": lambda: [[(-0.5, 0), (0.5, 0)], [(0.24, -0.22), (0.5, 0), (0.24, 0.22)]],
    "heart": _heart,
    "moon": lambda: [_arc(0, 0, 0.5, 0.5, 60, 300), _arc(0.25, 0, 0.433, 0.433, 270, 90)],
    "envelope": lambda: [_rect(-0.5, -0.32, 0.5, 0.32), [(-0.5, -0.32), (0, 0.08), (0.5, -0.32)]],
    "umbrella": lambda: [_arc(0, 0, 0.5, 0.42, 180, 360), [(-0.5, 0), (0.5, 0)], [(0, 0), (0, 0.42)],
                         _arc(-0.09, 0.42, 0.09, 0.09, 0, 180, n=12)],
    "cup": lambda: [[(-0.3, -0.4), (-0.24, 0.4), (0.24, 0.4), (0.3, -0.4)], [(-0.3, -0.4), (0.3, -0.4)],
                    _arc(0.3, 0, 0.17, 0.18, -90, 90)],
    "key": lambda: [_arc(-0.32, 0, 0.17, 0.17, n=16), [(-0.15, 0), (0.5, 0)], [(0.34, 0), (0.34, 0.15)],
                    [(0.45, 0), (0.45, 0.12)]],
    "flower": _flower,
    "lightning": lambda: [_closed([(0.1, -0.5), (-0.25, 0.05), (0.02, 0.05), (-0.15, 0.5), (0.3, -0.1),
                                   (0.02, -0.1), (0.2, -0.5)])],
    "spiral": _spiral,
    "ladder": _ladder,
    "mountain": lambda: [[(-0.5, 0.4), (-0.2, -0.3), (0, 0.05), (0.2, -0.45), (0.5, 0.4)], [(-0.5, 0.4), (0.5, 0.4)]],
    "car": lambda: [_closed([(-0.5, 0.1), (-0.5, -0.1), (-0.25, -0.1), (-0.15, -0.35), (0.2, -0.35), (0.3, -0.1),
                             (0.5, -0.1), (0.5, 0.1)]), _arc(-0.27, 0.18, 0.13, 0.13, n=14),
                    _arc(0.27, 0.18, 0.13, 0.13, n=14)],
    "boat": lambda: [_closed([(-0.5, 0.15), (0.5, 0.15), (0.35, 0.4), (-0.35, 0.4)]), [(0, 0.15), (0, -0.5)],
                     _closed([(0, -0.45), (0.35, 0.05), (0, 0.05)])],
}
SKETCH_CLASSES: tuple[str, ...] = tuple(DRAWINGS)

#: Named sets of arguments for `generate_sketches` (the CLI's `--preset`).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {"classes": SKETCH_CLASSES[:20], "phase_sizes": (8, 4, 4, 4), "instances_per_class": (24, 16, 16, 16),
              "num_val": 40, "num_test": 40},
}


def _normalised(name: str) -> list[np.ndarray]:
    """The class's strokes scaled so the longer side of their extent is 1, centred at 0."""
    strokes = [np.asarray(s, np.float64) for s in DRAWINGS[name]()]
    pts = np.concatenate(strokes)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre, extent = (lo + hi) / 2, float((hi - lo).max())
    return [(s - centre) / extent for s in strokes]


# ----- one image ---------------------------------------------------------------------------------------------------

def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pose(rng: np.random.Generator, strokes: list[np.ndarray], p: dict[str, Any]) -> list[np.ndarray]:
    """Random size, aspect, rotation and hand jitter, in pixels, centred at 0."""
    size = rng.uniform(p["min_size"], p["max_size"])
    aspect = math.exp(rng.uniform(-p["aspect_jitter"], p["aspect_jitter"]))
    angle = math.radians(rng.uniform(-p["max_rotation"], p["max_rotation"]))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    scale = np.array([size * math.sqrt(aspect), size / math.sqrt(aspect)])
    out = []
    for s in strokes:
        wobble = rng.normal(0, p["jitter"], 2)  # each stroke slightly displaced as a whole ...
        noise = rng.normal(0, p["jitter"] / 2, s.shape)  # ... and each point a little
        out.append(((s + wobble + noise) * scale) @ rot.T)
    return out


def _make_image(rng: np.random.Generator, class_indices: list[int], shapes: list[list[np.ndarray]],
                p: dict[str, Any]) -> tuple[np.ndarray, list[dict], int]:
    """Draw the objects of `class_indices` (in order); returns pixels, objects and how many found no place."""
    size = p["image_size"]
    canvas = np.full((size, size), 255, np.uint8)
    boxes: list[list[float]] = []
    objects: list[dict] = []
    unplaced = 0
    for ci in class_indices:
        strokes = _pose(rng, shapes[ci], p)
        width = int(rng.integers(p["min_width"], p["max_width"] + 1))
        pts = np.concatenate(strokes)
        lo, hi = pts.min(axis=0) - width, pts.max(axis=0) + width
        placed = None
        for attempt in range(p["max_place_tries"]):
            if attempt and attempt % 5 == 0 and float((hi - lo).max()) > p["min_size"]:  # crowded: draw it smaller
                strokes = [s * 0.85 for s in strokes]
                pts = np.concatenate(strokes)
                lo, hi = pts.min(axis=0) - width, pts.max(axis=0) + width
            offset = rng.uniform(-lo, size - hi) if np.all(size - hi > -lo) else (size - (hi + lo)) / 2
            box = [lo[0] + offset[0], lo[1] + offset[1], hi[0] + offset[0], hi[1] + offset[1]]
            if all(_box_iou(box, b) <= p["max_overlap"] for b in boxes):
                placed = offset
                break
        if placed is None:
            unplaced += 1
            continue
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        for s in strokes:
            draw.line([tuple(q) for q in (s + placed).tolist()], fill=255, width=width, joint="curve")
        mask = np.asarray(layer) > 0
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            unplaced += 1
            continue
        ink = int(rng.integers(0, p["max_ink"] + 1))
        canvas[mask] = np.minimum(canvas[mask], ink)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        boxes.append([x0, y0, x1, y1])
        objects.append({"class_index": ci, "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return np.repeat(canvas[..., None], 3, axis=2), objects, unplaced


def _phase_images(rng: np.random.Generator, class_indices: Sequence[int], instances: int,
                  min_objects: int, max_objects: int) -> list[list[int]]:
    """Each class exactly `instances` times, in images of min..max objects of distinct classes
    (so a class is in exactly `instances` images); classes with more left to place go first."""
    left = {ci: instances for ci in class_indices}
    images: list[list[int]] = []
    while any(left.values()):
        open_classes = [ci for ci in class_indices if left[ci] > 0]
        n = min(int(rng.integers(min_objects, max_objects + 1)), len(open_classes))
        weights = np.array([left[ci] for ci in open_classes], np.float64)
        chosen = rng.choice(len(open_classes), size=n, replace=False, p=weights / weights.sum())
        image = [open_classes[i] for i in chosen]
        for ci in image:
            left[ci] -= 1
        images.append(image)
    return images


# ----- the dataset -------------------------------------------------------------------------------------------------

@register_generator("sketches", marker="train/_annotations.coco.json")
def generate_sketches(
    out_dir: str | Path,
    num_train: int | None = None,
    num_val: int = 120,
    num_test: int = 120,
    image_size: int = 128,
    seed: int = 0,
    *,
    classes: Sequence[str] = SKETCH_CLASSES,
    phase_sizes: Sequence[int] = (12, 4, 4, 4),
    instances_per_class: Sequence[int] = (48, 18, 18, 18),
    min_objects: int = 2,
    max_objects: int = 4,
    min_size: float = 20,
    max_size: float = 52,
    aspect_jitter: float = 0.2,
    max_rotation: float = 15,
    jitter: float = 0.025,
    min_width: int = 1,
    max_width: int = 3,
    max_ink: int = 70,
    max_overlap: float = 0.1,
    max_place_tries: int = 30,
    preset: str | None = None,
) -> dict[str, Path]:
    """Write train/val/test splits of sketches and `phases.json` under `out_dir`; return split -> annotation file.

    The training split is fixed by the phase plan (`phase_sizes` classes per phase, each with
    `instances_per_class[p]` instances); `num_train`, when given, rescales the instance counts
    so the training split has about that many images (the dispatcher's `num_images`). Object
    sizes are the longer side of the drawing in pixels before rotation."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown sketches preset {preset!r}; available: {', '.join(PRESETS)}")
        settings = PRESETS[preset]
        classes = settings.get("classes", classes)
        phase_sizes = settings.get("phase_sizes", phase_sizes)
        instances_per_class = settings.get("instances_per_class", instances_per_class)
        num_val, num_test = settings.get("num_val", num_val), settings.get("num_test", num_test)
    classes = tuple(classes)
    unknown = [c for c in classes if c not in DRAWINGS]
    if unknown:
        raise ValueError(f"unknown sketch class(es) {unknown}; known: {', '.join(SKETCH_CLASSES)}")
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"classes must be distinct and non-empty, got {classes}")
    phase_sizes, instances = [int(n) for n in phase_sizes], [int(n) for n in instances_per_class]
    if sum(phase_sizes) != len(classes) or min(phase_sizes, default=0) < 1:
        raise ValueError(f"phase_sizes {phase_sizes} must be positive and add up to the {len(classes)} classes")
    if len(instances) != len(phase_sizes) or min(instances) < 1:
        raise ValueError(f"instances_per_class {instances} needs one positive count per phase ({len(phase_sizes)})")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if not 4 <= min_size <= max_size < image_size:
        raise ValueError(f"need 4 <= min_size <= max_size < image_size, got {min_size}, {max_size}, {image_size}")
    if num_train:  # rescale the plan to about num_train training images, keeping the phases' proportions
        planned = sum(n * k for n, k in zip(phase_sizes, instances)) / ((min_objects + max_objects) / 2)
        instances = [max(1, round(k * num_train / planned)) for k in instances]
    params = {"image_size": int(image_size), "min_size": float(min_size), "max_size": float(max_size),
              "aspect_jitter": float(aspect_jitter), "max_rotation": float(max_rotation), "jitter": float(jitter),
              "min_width": int(min_width), "max_width": int(max_width), "max_ink": int(max_ink),
              "max_overlap": float(max_overlap), "max_place_tries": int(max_place_tries)}
    shapes = [_normalised(name) for name in classes]
    bounds = np.cumsum([0] + phase_sizes)
    phase_classes = [list(range(bounds[p], bounds[p + 1])) for p in range(len(phase_sizes))]
    out = Path(out_dir)
    categories = [{"id": i + 1, "name": name, "supercategory": "sketch"} for i, name in enumerate(classes)]

    # Training split: phase-pure images, planned per phase.
    plan: list[tuple[int, list[int]]] = []  # (phase, class indices of one image)
    for p, members in enumerate(phase_classes):
        rng = np.random.default_rng([seed, 0, p, 1_000_000])
        plan += [(p, image) for image in _phase_images(rng, members, instances[p], min_objects, max_objects)]

    def mixed(split_code: int, n: int) -> list[tuple[int, list[int]]]:  # val/test: objects of every class
        out = []
        for i in range(n):
            rng = np.random.default_rng([seed, split_code, 1_000_000, i])
            out.append((-1, rng.integers(0, len(classes), int(rng.integers(min_objects, max_objects + 1))).tolist()))
        return out

    written: dict[str, Path] = {}
    summary: dict[str, Any] = {}
    train_annotations: list[dict] = []
    train_ids_per_phase: list[list[int]] = [[] for _ in phase_sizes]
    for code, (split, images_plan) in enumerate((("train", plan), ("val", mixed(1, num_val)), ("test", mixed(2, num_test)))):
        if not images_plan:
            continue
        split_dir = out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        images, annotations, unplaced = [], [], 0
        for i, (phase, class_indices) in enumerate(images_plan):
            rng = np.random.default_rng([seed, code, phase + 1, i])
            pixels, objects, lost = _make_image(rng, class_indices, shapes, params)
            unplaced += lost
            image_id = i + 1
            file_name = f"{split}_{i:05d}.png"
            Image.fromarray(pixels, "RGB").save(split_dir / file_name, "PNG")
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            if phase >= 0:
                train_ids_per_phase[phase].append(image_id)
            for obj in objects:
                annotations.append(box_annotation(len(annotations) + 1, image_id, obj["class_index"], obj["bbox"]))
        written[split] = write_coco_split(split_dir, "sketches", seed, split, categories, images, annotations)
        per_class = boxes_per_class(annotations, classes)
        summary[split] = {"images": len(images), "boxes": len(annotations), "unplaced": unplaced, "per_class": per_class}
        if split == "train":
            train_annotations = annotations

    phases = []
    for p, members in enumerate(phase_classes):
        ids = set(train_ids_per_phase[p])
        inst = {classes[ci]: 0 for ci in members}
        imgs: dict[str, set[int]] = {classes[ci]: set() for ci in members}
        for a in train_annotations:
            if a["image_id"] in ids:
                name = classes[a["category_id"] - 1]
                inst[name] += 1
                imgs[name].add(a["image_id"])
        phases.append({"phase": p, "category_ids": [ci + 1 for ci in members], "classes": [classes[ci] for ci in members],
                       "train_image_ids": sorted(ids), "instances_per_class": inst,
                       "images_per_class": {k: len(v) for k, v in imgs.items()}})
    (out / PHASES_FILE).write_text(json.dumps({"format": PHASES_FORMAT, "num_phases": len(phases), "phases": phases},
                                              indent=1), encoding="utf-8")
    (out / SUMMARY_FILE).write_text(json.dumps({
        "generator": "sketches", "seed": seed, "splits": summary,
        "box_convention": "tight box around the object's ink (COCO xywh, pixels); unplaced objects are not drawn",
        "params": {**params, "classes": list(classes), "phase_sizes": phase_sizes, "instances_per_class": instances,
                   "min_objects": min_objects, "max_objects": max_objects, "num_val": num_val, "num_test": num_test},
    }, indent=2), encoding="utf-8")
    return written
