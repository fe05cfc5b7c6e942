"""Anomaly segmentation on a trained segmentation run (`visiondoctor anomaly RUN`).

    run_anomaly(run_dir, methods=("msp", "maxlogit", "energy", "sml"), anomaly_class=None) -> results

Scores every pixel of the test split with each method, and writes into the run directory:
  anomaly.json           per method: AUROC / AUPR / FPR95 under both aggregations (per image
                         and pooled), ROC / PR curves, the ignore convention; plus closed-set
                         mIoU of the same split (anomaly pixels excluded) and the SML statistics.
  anomaly_examples.npz   a few images with ground truth, prediction and one map per method,
                         for the report's qualitative grid (plain arrays; loaded without pickle).
`anomaly_class` holds a known class out as the anomaly (the model should have been trained
with it held out too: `train(..., anomaly_class=K)`); by default the dataset's own anomaly
class is used (StreetHazards: 13).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from visiondoctor.data.images import load_rgb
from visiondoctor.data.segmentation import (
    SegmentationDataset,
    held_out_class,
    load_segmentation_data,
    segmentation_transforms,
)
from visiondoctor.engine.trainer import resolve_device
from visiondoctor.evaluation.anomaly import (
    METHODS,
    AnomalyEvaluator,
    SMLStats,
    SMLStatsAccumulator,
    anomaly_scores,
)
from visiondoctor.evaluation.segmentation import ConfusionMatrix
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.pipeline import build_report, load_run_model
from visiondoctor.tasks.segmentation import iterate_logits, sample_indices

log = logging.getLogger(__name__)
EXAMPLES = 6


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    names = [m.strip().lower() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown anomaly method(s) {unknown or names}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def fit_sml_stats(model: torch.nn.Module, dataset: SegmentationDataset, num_classes: int, device: torch.device,
                  batch_size: int, max_images: int = 0, seed: int = 0) -> SMLStats:
    """Per-class max-logit statistics on the TRAINING split (eval mode, no augmentation)."""
    acc = SMLStatsAccumulator(num_classes)
    for _, logits, _ in iterate_logits(model, dataset, device, batch_size,
                                       sample_indices(len(dataset), max_images, seed)):
        acc.update(logits)
    return acc.finalize()


def run_anomaly(run_dir: str | Path, methods: str | Sequence[str] = METHODS, anomaly_class: int | None = None,
                split: str = "test", max_images: int = 0, sml_train_images: int = 0,
                mantissa_bits: int = 16) -> dict[str, Any]:
    """Score `split` with each method and write anomaly.json (see the module docstring)."""
    methods = parse_methods(methods)
    run = RunDir.open(run_dir)
    device = resolve_device("auto")
    model, cfg, _ = load_run_model(run, device)
    cats = run.read_json("categories.json")
    trained_out = held_out_class(cats)
    if anomaly_class is not None and trained_out is not None and anomaly_class != trained_out:
        log.warning("the run held out class %d in training; scoring class %d as the anomaly", trained_out, anomaly_class)
    data = load_segmentation_data(cfg, anomaly_class if anomaly_class is not None else trained_out)
    index = data.split(split)
    if not index.anomaly_labels:
        raise ValueError(f"{index.source}: no anomaly class; name a known class with --anomaly-class K "
                         f"(labels: {', '.join(f'{i}={n}' for i, n in enumerate(index.class_names))})")
    num_classes = int(cats["num_classes"])
    if anomaly_class is not None and anomaly_class < num_classes and trained_out != anomaly_class:
        log.warning("class %d (%s) was trained on; it is scored as the anomaly anyway",
                    anomaly_class, index.class_names[anomaly_class])

    stats = None
    if "sml" in methods:
        train_set = SegmentationDataset(data.train, segmentation_transforms(False, cfg.model.image_size),
                                        train_labels=True, resize_mask=False)
        stats = fit_sml_stats(model, train_set, num_classes, device, cfg.train.batch_size, sml_train_images,
                              cfg.train.seed)

    dataset = SegmentationDataset(index, segmentation_transforms(False, cfg.model.image_size), resize_mask=False)
    indices = sample_indices(len(dataset), max_images, cfg.train.seed)
    evaluated = indices if indices is not None else list(range(len(dataset)))
    keep = set(evaluated[:: max(1, len(evaluated) // EXAMPLES)][:EXAMPLES])
    evaluator = AnomalyEvaluator(methods, index.anomaly_labels, index.ignore_index, mantissa_bits)
    cm = ConfusionMatrix(num_classes, index.ignore_index, exclude_labels=index.anomaly_labels)
    examples: dict[str, list[np.ndarray]] = {}
    for i, logits, mask in iterate_logits(model, dataset, device, cfg.train.batch_size, indices):
        scores = {m: s[0].cpu() for m, s in anomaly_scores(logits, methods, stats).items()}
        evaluator.update(scores, mask)
        pred = logits.argmax(1)[0].cpu()
        cm.update(pred, mask)
        if i in keep:
            _keep_example(examples, dataset, i, mask, pred, scores, methods)

    results = evaluator.result()
    results.update({
        "split": split, "source": str(index.source), "methods_order": methods,
        "class_names": list(index.class_names), "anomaly_classes": [index.class_names[a] for a in index.anomaly_labels],
        "segmentation": cm.compute(index.class_names, total_images=len(dataset)),
        "sml_stats": stats.to_dict() if stats is not None else None,
    })
    if indices is not None:
        results["subset"] = {"evaluated_images": len(indices), "total_images": len(dataset)}
    run.write_json("anomaly.json", results)
    if examples:
        _save_examples(run.path / "anomaly_examples.npz", examples, methods)
    build_report(run)
    return results


def _keep_example(examples: dict[str, list[np.ndarray]], dataset: SegmentationDataset, i: int, mask: torch.Tensor,
                  pred: torch.Tensor, scores: dict[str, torch.Tensor], methods: list[str]) -> None:
    image = load_rgb(dataset.index.records[i].path).permute(1, 2, 0).numpy()
    h, w = mask.shape
    if image.shape[:2] != (h, w):  # masks are the reference size
        image = np.asarray(torch.nn.functional.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear")[0]
            .permute(1, 2, 0).clamp(0, 255).byte())
    examples.setdefault("image", []).append(image.astype(np.uint8))
    examples.setdefault("gt", []).append(mask.numpy().astype(np.int16))
    examples.setdefault("pred", []).append(pred.numpy().astype(np.int16))
    examples.setdefault("index", []).append(np.asarray(i))
    for m in methods:
        examples.setdefault(f"score_{m}", []).append(scores[m].numpy().astype(np.float16))  # display only


def _save_examples(path: Path, examples: dict[str, list[np.ndarray]], methods: list[str]) -> None:
    shapes = {a.shape for a in examples["gt"]}
    if len(shapes) > 1:  # different sizes cannot be stacked: keep those of the first size
        first = examples["gt"][0].shape
        keep = [j for j, a in enumerate(examples["gt"]) if a.shape == first]
        examples = {k: [v[j] for j in keep] for k, v in examples.items()}
    arrays = {k: np.stack(v) for k, v in examples.items()}
    arrays["methods"] = np.asarray(methods)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
