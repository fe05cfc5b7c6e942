"""What each phase is judged by: COCO AP on the old classes, on the new ones, on all seen ones,
and forgetting — how far each old class's AP fell since the phase that taught it.

COCO evaluation restricted to a set of classes = the ground truth and the predictions of those
classes only, evaluated by visiondoctor.evaluation.coco (faster-coco-eval). Images keep their
other objects unannotated, so a detection of an unseen or other-set class costs nothing here
(as in COCO, a class's AP only counts that class's detections).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from visiondoctor.evaluation.coco import evaluate_detections


def subset_metrics(gt: dict, predictions: list[dict], category_ids: Iterable[int]) -> dict[str, Any]:
    """COCO metrics over the classes `category_ids` only (every image of `gt` is evaluated)."""
    keep = set(category_ids)
    sub = {**gt, "categories": [c for c in gt["categories"] if c["id"] in keep],
           "annotations": [a for a in gt.get("annotations", []) if a["category_id"] in keep]}
    return evaluate_detections(sub, [p for p in predictions if p["category_id"] in keep])


def phase_metrics(gt: dict, predictions: list[dict], old_ids: Sequence[int], new_ids: Sequence[int]) -> dict[str, Any]:
    """{"old": metrics, "new": metrics, "all": metrics} for one phase (old empty in the first phase)."""
    out = {"new": subset_metrics(gt, predictions, new_ids), "all": subset_metrics(gt, predictions, [*old_ids, *new_ids])}
    out["old"] = subset_metrics(gt, predictions, old_ids) if old_ids else None
    return out


def forgetting(per_class_ap: Sequence[Mapping[str, float | None]], taught_in: Mapping[str, int], at: int) -> dict[str, Any]:
    """Forgetting after phase `at`: for each class taught before `at`, its AP right after the phase that
    taught it minus its AP now; the mean over those classes (None before any old class exists).
    `per_class_ap[p]` holds the per-class AP measured after phase p."""
    drops: dict[str, float] = {}
    for name, phase in taught_in.items():
        if phase >= at:
            continue
        before, now = per_class_ap[phase].get(name), per_class_ap[at].get(name)
        if before is None or now is None:
            continue  # no ground truth of that class in the evaluated images
        drops[name] = before - now
    mean = sum(drops.values()) / len(drops) if drops else None
    return {"mean": mean, "per_class": drops}
