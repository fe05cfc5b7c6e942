"""Data across splits: evaluation images that are also training images.

An image in both the training split and an evaluation split is scored after the model has learnt it:
the metric measures memory. Exports that re-save or resize images hide such copies from a file-name
comparison, so the files are compared by content (data/overlap.py: same path, same bytes, or the same
picture re-encoded or resized).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from visiondoctor.data.overlap import find_shared_images
from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.findings import Finding

TRAIN = "train"
NEAR_LIMIT = 20_000  # images; above, only identical files are looked for (near duplicates need every image decoded)
MOSTLY_SHARED = 0.5  # more than half of an evaluation split in training: its metric is mostly memory
EXAMPLES = 10


@check("data", order=90, findings=[FindingDoc(
    "data.split-overlap", "evaluation images that are also training images",
    "the image files of every split compared by content: the same path, identical bytes, or the same picture "
    "re-encoded or resized (difference hash and thumbnail)",
    needs="nothing from the model (the dataset's image files)",
    severity=f"warning for any evaluation image found in training; error when more than {MOSTLY_SHARED:.0%} of an "
             "evaluation split is")])
def check_split_overlap(split_images: Mapping[str, Sequence[Path]]) -> list[Finding]:
    if TRAIN not in split_images or len(split_images) < 2:
        return []
    total = sum(len(paths) for paths in split_images.values())
    near = total <= NEAR_LIMIT
    shared = [s for s in find_shared_images(split_images, near=near) if TRAIN in (s.split_a, s.split_b)]
    if not shared:
        return []
    in_training: dict[str, set[Path]] = {}
    for s in shared:
        split, path = (s.split_b, s.path_b) if s.split_a == TRAIN else (s.split_a, s.path_a)
        in_training.setdefault(split, set()).add(path)
    shares = {split: len(paths) / max(1, len(split_images[split])) for split, paths in in_training.items()}
    worst = max(shares, key=shares.get)
    counted = ", ".join(f"{len(in_training[s])} of {len(split_images[s])} {s} images" for s in sorted(in_training))
    return [Finding(
        id="data.split-overlap", severity="error" if shares[worst] > MOSTLY_SHARED else "warning",
        title=f"{counted} are also in the training split: their metric measures memory, not generalisation",
        evidence={"shared_per_split": {s: len(p) for s, p in sorted(in_training.items())},
                  "share_per_split": {s: round(v, 4) for s, v in sorted(shares.items())},
                  "kinds": dict(Counter(s.kind for s in shared)), "near_duplicates_searched": near,
                  "examples": [str(s) for s in shared[:EXAMPLES]]},
        cause="The same picture (or a re-encoded or resized copy of it) was put in two splits, typically by an export "
              "that augmented before splitting or by splits drawn per frame from one video.",
        fix="Remove the shared images from the evaluation split (or re-split by source image / video); "
            "`visiondoctor data validate` lists every pair.",
        where=f"{worst} split")]
