"""Data for the text-query detector: the shapes generator with class names as queries, and the
held-out query names for the open-vocabulary figures.

Training sees five classes under their own names. Held out, in three groups reported apart:
- `seen`: the training names themselves (the closed-set figure);
- `synonym`: other names for the training classes ("disk" for circle, "box" for square), never
  used in training;
- `unseen`: classes the training data never contains (hexagon, ellipse), under their names
  and synonyms, queried on images that contain them.
The names were fixed before any result was measured; they are not tuned.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiondoctor.data.synth.shapes import DEFAULT_CLASSES, SHAPE_NAMES, generate_shapes

TRAIN_CLASSES: tuple[str, ...] = DEFAULT_CLASSES
UNSEEN_CLASSES: tuple[str, ...] = tuple(n for n in SHAPE_NAMES if n not in DEFAULT_CLASSES)  # hexagon, ellipse
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disk", "ring"),
    "square": ("box", "rectangle"),
    "triangle": ("three-sided polygon",),
    "star": ("pentagram",),
    "cross": ("plus sign",),
    "hexagon": ("six-sided polygon",),
    "ellipse": ("oval",),
}
#: Generator settings for small (128 px) images: object extents scaled from the 256-px defaults.
SMALL_SHAPES: dict[str, Any] = {"image_size": 128, "min_size": 10, "max_size": 60, "small_size": 16,
                                "max_objects": 5}


@dataclass(frozen=True)
class QueryGroup:
    name: str  # seen | synonym | unseen
    description: str
    queries: dict[str, str]  # query text -> the class (category name) it should find


def query_groups(train_classes: tuple[str, ...] = TRAIN_CLASSES,
                 unseen_classes: tuple[str, ...] = UNSEEN_CLASSES) -> list[QueryGroup]:
    """The three groups of queries evaluated separately (see the module docstring)."""
    return [
        QueryGroup("seen", "the training class names", {c: c for c in train_classes}),
        QueryGroup("synonym", "other names for the training classes, never used in training",
                   {s: c for c in train_classes for s in SYNONYMS.get(c, ())}),
        QueryGroup("unseen", "classes absent from the training data, by name and synonym",
                   {q: c for c in unseen_classes for q in (c, *SYNONYMS.get(c, ()))}),
    ]


def generate_training_shapes(root: Path | str, num_train: int, num_val: int, seed: int = 0,
                             **options: Any) -> Path:
    """Train/val shapes with the training classes only (128 px unless `options` say otherwise)."""
    root = Path(root)
    if not (root / "train" / "_annotations.coco.json").exists():
        generate_shapes(root, num_train=num_train, num_val=num_val, num_test=0, seed=seed,
                        classes=TRAIN_CLASSES, **{**SMALL_SHAPES, **options})
    return root


def generate_open_vocabulary_shapes(root: Path | str, num_images: int, seed: int = 1, **options: Any) -> Path:
    """A test split in which every shape class, seen and unseen, occurs (same image settings)."""
    root = Path(root)
    if not (root / "test" / "_annotations.coco.json").exists():
        generate_shapes(root, num_train=0, num_val=0, num_test=num_images, seed=seed,
                        classes=TRAIN_CLASSES + UNSEEN_CLASSES, **{**SMALL_SHAPES, **options})
    return root
