"""The class-incremental plan: which classes each phase adds, which images teach them, and the
small exemplar memory of old-class images that is replayed in later phases.

A phases file (written by the sketches generator, or by hand for a user's COCO dataset)::

    {"phases": [{"category_ids": [1, 2, 3]}, {"category_ids": [4, 5], "train_image_ids": [...]}, ...]}

`category_ids` are the dataset's own ids; `train_image_ids` (optional) names the training images
of the phase — without it, a phase trains on every training image that holds one of its
classes. Either way a phase's images keep only the annotations of the phase's own classes
(the class-incremental protocol: old classes are not labelled in new data), and the number of
annotations so removed is counted, never silently lost.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from visiondoctor.data.samples import CategoryMap, DataError, DetectionIndex, DetectionRecord, Problem


@dataclass(frozen=True)
class Phase:
    index: int
    category_ids: tuple[int, ...]
    train_image_ids: tuple[int, ...] | None = None  # None: every image holding one of the phase's classes


def load_phases(path: str | Path, categories: Iterable[int] | None = None) -> list[Phase]:
    """Read a phases file; with `categories` (the dataset's ids) check every id exists and no class
    is taught twice. Raises DataError naming the file and the phase."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the phases file: {exc}") from None
    entries = data.get("phases") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected {{'phases': [{{'category_ids': [...]}}, ...]}} with at least one phase")
    problems: list[Problem] = []
    phases: list[Phase] = []
    seen: dict[int, int] = {}
    known = set(categories) if categories is not None else None
    for i, entry in enumerate(entries):
        where = f"phase {i}"
        ids = entry.get("category_ids") if isinstance(entry, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(c, int) for c in ids):
            problems.append(Problem(str(path), where, "category_ids must be a non-empty list of integers", "refused"))
            continue
        for c in ids:
            if c in seen:
                problems.append(Problem(str(path), where, f"category {c} is already taught in phase {seen[c]}", "refused"))
            elif known is not None and c not in known:
                problems.append(Problem(str(path), where, f"category {c} is not in the dataset (ids {sorted(known)})",
                                        "refused"))
            seen.setdefault(c, i)
        images = entry.get("train_image_ids")
        if images is not None and not (isinstance(images, list) and all(isinstance(v, int) for v in images)):
            problems.append(Problem(str(path), where, "train_image_ids must be a list of integers", "refused"))
            images = None
        phases.append(Phase(i, tuple(ids), tuple(images) if images is not None else None))
    if problems:
        raise DataError(f"{path}: unusable phases file", problems)
    return phases


def seen_category_map(index: DetectionIndex, phases: Sequence[Phase], upto: int) -> CategoryMap:
    """Labels of every class taught in phases 0..upto, in teaching order, so a class keeps its label
    (and its classifier row) in every later phase; label 0 is background."""
    names = {c.id: c.name for c in index.categories}
    ids = tuple(c for p in phases[: upto + 1] for c in p.category_ids)
    return CategoryMap(ids, tuple(names[c] for c in ids), background=True)


def restrict(index: DetectionIndex, category_ids: Iterable[int], image_ids: Iterable[int] | None = None,
             keep_empty: bool = False) -> tuple[DetectionIndex, int]:
    """The index limited to `image_ids` (all when None) and to annotations of `category_ids`.
    Images left without annotations are dropped unless `keep_empty`. Returns (index, annotations removed)."""
    keep_cats = set(category_ids)
    keep_images = set(image_ids) if image_ids is not None else None
    records: list[DetectionRecord] = []
    removed = 0
    for r in index.records:
        if keep_images is not None and r.image_id not in keep_images:
            continue
        rows = [i for i, c in enumerate(r.category_ids) if c in keep_cats]
        removed += len(r.category_ids) - len(rows)
        if not rows and not keep_empty:
            continue
        records.append(dataclasses.replace(
            r, boxes=[r.boxes[i] for i in rows], category_ids=[r.category_ids[i] for i in rows],
            annotation_ids=[r.annotation_ids[i] for i in rows] if r.annotation_ids else [],
            iscrowd=[r.iscrowd[i] for i in rows] if r.iscrowd else [],
            areas=[r.areas[i] for i in rows] if r.areas else []))
    categories = [c for c in index.categories if c.id in keep_cats]
    return DetectionIndex(index.root, index.source, categories, records, list(index.problems)), removed


def phase_training_index(index: DetectionIndex, phase: Phase) -> tuple[DetectionIndex, int]:
    """The images that teach `phase`, with only its own classes annotated."""
    image_ids = phase.train_image_ids
    if image_ids is None:
        wanted = set(phase.category_ids)
        image_ids = [r.image_id for r in index.records if wanted & set(r.category_ids)]
    found = {r.image_id for r in index.records}
    missing = sorted(set(image_ids) - found)
    if missing:
        raise DataError(f"{index.source}: phase {phase.index} names training images that are not in the split: "
                        f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return restrict(index, phase.category_ids, image_ids)


def select_exemplars(index: DetectionIndex, category_ids: Sequence[int], per_class: int, seed: int = 0) -> list[int]:
    """Image ids of the exemplar memory for `category_ids`: for each class, the `per_class` images
    showing it most often (seeded tie-break), an image counted once however many classes it serves."""
    rng = np.random.default_rng(seed)
    classes_of = {r.image_id: set(r.category_ids) for r in index.records}
    chosen: list[int] = []
    for c in category_ids:
        candidates = [(r.category_ids.count(c), float(rng.uniform()), r.image_id) for r in index.records
                      if c in r.category_ids and r.image_id not in chosen]
        candidates.sort(key=lambda t: (-t[0], t[1]))
        have = sum(1 for image_id in chosen if c in classes_of[image_id])
        chosen += [image_id for _, _, image_id in candidates[: max(0, per_class - have)]]
    return chosen


def merge(indexes: Sequence[DetectionIndex]) -> DetectionIndex:
    """One index over several (same root): records concatenated, categories united."""
    first = indexes[0]
    categories: dict[int, Any] = {}
    for ix in indexes:
        for c in ix.categories:
            categories.setdefault(c.id, c)
    return DetectionIndex(first.root, first.source, [categories[k] for k in sorted(categories)],
                          [r for ix in indexes for r in ix.records], list(first.problems))
