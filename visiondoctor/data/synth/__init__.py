"""Deterministic synthetic datasets, written to disk in real formats (so they go through the
same readers as user data). `generate(name, out, ...)` dispatches by name."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

GENERATORS = {
    "shapes": ("visiondoctor.data.synth.shapes", "generate_shapes"),
    "streets": ("visiondoctor.data.synth.streets", "generate_streets"),
    "sketches": ("visiondoctor.data.synth.sketches", "generate_sketches"),
}


def generate(name: str, out_dir: str | Path, num_images: int | None = None, seed: int = 0, **kwargs: Any) -> Any:
    """Generate dataset `name` into `out_dir`. `num_images` (train split size) scales the
    splits of generators that take `num_train`; the others use their defaults."""
    if name not in GENERATORS:
        raise ValueError(f"unknown synthetic dataset {name!r}; available: {', '.join(GENERATORS)}")
    module, fn = GENERATORS[name]
    generator = getattr(importlib.import_module(module), fn)
    if num_images:
        kwargs.setdefault("num_train", num_images)
    return generator(Path(out_dir), seed=seed, **kwargs)
