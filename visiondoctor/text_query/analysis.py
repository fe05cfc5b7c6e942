"""The seed's first-priority check, automated: are the boxes emitted at locations that training
never regressed worse than those at training positives, and do the scores know it?

For each evaluated image the training assigner (assign.py, the model's own predicted boxes and
the ground truth) marks the (query, location) pairs that would be positives if the image were
a training image. Every detection remembers its location, so detections split into
`positive` (emitted where training supervised the box) and `rest`. For both: how many, their
IoU with the best same-class ground truth, their scores, and the score-IoU rank correlation.
Two populations are measured: the `candidates` (every location above the score threshold,
before NMS: what the seed's inference emits) and the final `detections` (after NMS and top-k).

The score-IoU consistency of the final detections uses evaluation/consistency.py, the same
code behind the doctor's `consistency.score-iou` finding.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from visiondoctor.data.dataset import DetectionDataset, collate_detection
from visiondoctor.data.formats.coco import to_coco_dict
from visiondoctor.data.samples import CategoryMap, DetectionIndex
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.evaluation.coco import evaluate_detections
from visiondoctor.evaluation.consistency import spearman
from visiondoctor.evaluation.detections import coco_result
from visiondoctor.models.text_query.assign import assign_positives
from visiondoctor.models.text_query.encoder import normalise_query
from visiondoctor.models.text_query.model import TextQueryDetector
from visiondoctor.text_query.data import QueryGroup
from visiondoctor.text_query.inference import detect, forward_raw

HIST_EDGES = np.linspace(0.0, 1.0, 11)
GOOD_IOU = 0.5


def group_stats(ious: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Count, IoU summary and histogram, mean score and score-IoU Spearman of one population."""
    n = len(ious)
    return {
        "n": n,
        "mean_iou": float(ious.mean()) if n else None,
        "median_iou": float(np.median(ious)) if n else None,
        "share_iou_ge_0.5": float((ious >= GOOD_IOU).mean()) if n else None,
        "mean_score": float(scores.mean()) if n else None,
        "spearman": spearman(scores, ious),
        "iou_histogram": {"bins": HIST_EDGES.tolist(), "counts": np.histogram(ious, HIST_EDGES)[0].tolist()},
    }


def _split(ious: list, scores: list, positive: list) -> dict[str, Any]:
    iou, score, pos = (np.concatenate(x) if x else np.zeros(0) for x in (ious, scores, positive))
    pos = pos.astype(bool)
    return {"positive": group_stats(iou[pos], score[pos]), "rest": group_stats(iou[~pos], score[~pos])}


@torch.no_grad()
def positives_vs_rest(model: TextQueryDetector, index: DetectionIndex, category_map: CategoryMap,
                      device: torch.device, batch_size: int = 8, image_ids: set[int] | None = None) -> dict[str, Any]:
    """IoU and score of detections at would-be training positives versus everywhere else."""
    records = [r for r in index.records if image_ids is None or r.image_id in image_ids]
    subset = DetectionIndex(index.root, index.source, index.categories, records)
    loader = DataLoader(DetectionDataset(subset, category_map, detection_transforms(train=False)),
                        batch_size=batch_size, collate_fn=collate_detection)
    model.eval()
    cfg = model.loss_cfg
    collected: dict[str, tuple[list, list, list]] = {"candidates": ([], [], []), "detections": ([], [], [])}
    for images, targets in loader:
        images = [im.to(device) for im in images]
        out, sizes = forward_raw(model, images)
        scores = model.scores(out)
        finals = model.postprocess(out, sizes)
        for b, target in enumerate(targets):
            gt_boxes, gt_labels = target["boxes"].to(device), target["labels"].to(device)
            assignment = assign_positives(out["boxes"][b], out["centres"], out["grid"], gt_boxes, gt_labels,
                                          cfg.radius, cfg.iou_threshold)
            flat = scores[b].reshape(-1)
            keep = torch.nonzero(flat > model.score_threshold).squeeze(1)
            num_locations = scores.shape[2]
            candidate = {"labels": keep // num_locations, "locations": keep % num_locations, "scores": flat[keep]}
            candidate["boxes"] = out["boxes"][b, candidate["labels"], candidate["locations"]]
            for name, det in (("candidates", candidate), ("detections", finals[b])):
                iou = _best_same_class_iou(det["boxes"], det["labels"], gt_boxes, gt_labels)
                collected[name][0].append(iou.cpu().numpy())
                collected[name][1].append(det["scores"].cpu().numpy())
                collected[name][2].append(assignment.positive[det["labels"], det["locations"]].cpu().numpy())
    result = {name: _split(*lists) for name, lists in collected.items()}
    result.update({"images": len(records), "score_threshold": model.score_threshold, "radius": cfg.radius,
                   "iou_threshold": cfg.iou_threshold})
    return result


def _best_same_class_iou(boxes: torch.Tensor, labels: torch.Tensor, gt_boxes: torch.Tensor,
                         gt_labels: torch.Tensor) -> torch.Tensor:
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return boxes.new_zeros(len(boxes))
    iou = box_iou(boxes, gt_boxes.to(boxes.dtype))
    return torch.where(labels[:, None] == gt_labels[None, :], iou, torch.zeros_like(iou)).amax(dim=1)


@torch.no_grad()
def query_group_predictions(model: TextQueryDetector, index: DetectionIndex, embeddings: torch.Tensor,
                            queries: Sequence[str], category_ids: Sequence[int], device: torch.device,
                            batch_size: int = 8) -> dict[str, list[dict]]:
    """COCO results per query: each query's detections, labelled with the category it should find."""
    # Any category map will do for loading: the labels are not used, the boxes are.
    loader = DataLoader(DetectionDataset(index, CategoryMap.from_categories(index.categories, False),
                                         detection_transforms(train=False)),
                        batch_size=batch_size, collate_fn=collate_detection)
    per_query: dict[str, list[dict]] = {q: [] for q in queries}
    for images, targets in loader:
        results = detect(model, [im.to(device) for im in images], embeddings.to(device))
        for target, result in zip(targets, results):
            for box, score, label in zip(result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist()):
                per_query[queries[label]].append(coco_result(box, score, int(target["image_id"]), category_ids[label]))
    return per_query


def open_vocabulary(model: TextQueryDetector, index: DetectionIndex, groups: Sequence[QueryGroup],
                    embed: Any, device: torch.device, seen_names: Sequence[str]) -> dict[str, Any]:
    """AP of every query against the ground truth of the class it names, on `index`; the mean per
    group. `embed(queries) -> (N, D)` gives the embeddings (an EmbeddingCache.embed)."""
    gt = to_coco_dict(index)
    by_name = {c["name"]: c["id"] for c in gt["categories"]}
    seen = {normalise_query(n) for n in seen_names}
    out: dict[str, Any] = {"images": len(index.records), "groups": {}}
    for group in groups:
        usable = {q: c for q, c in group.queries.items() if c in by_name}
        if not usable:
            continue
        queries = list(usable)
        ids = [by_name[usable[q]] for q in queries]
        predictions = query_group_predictions(model, index, embed(queries), queries, ids, device)
        rows = {}
        for query, cid in zip(queries, ids):
            class_gt = {**gt, "categories": [c for c in gt["categories"] if c["id"] == cid],
                        "annotations": [a for a in gt["annotations"] if a["category_id"] == cid]}
            metrics = evaluate_detections(class_gt, predictions[query])
            rows[query] = {"class": usable[query], "seen_in_training": normalise_query(query) in seen,
                           "ap": metrics["map"], "ap50": metrics["map50"], "detections": len(predictions[query])}
        aps = [r["ap"] for r in rows.values() if r["ap"] is not None]
        ap50s = [r["ap50"] for r in rows.values() if r["ap50"] is not None]
        out["groups"][group.name] = {"description": group.description, "queries": rows,
                                     "map": float(np.mean(aps)) if aps else None,
                                     "map50": float(np.mean(ap50s)) if ap50s else None}
    return out
