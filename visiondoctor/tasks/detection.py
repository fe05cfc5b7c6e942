"""Object detection as a task: data -> model -> Trainer -> evaluation files -> report.

Everything a run produces goes into its RunDir; `evaluate_run` and the report read only that.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from visiondoctor.config import Config, load_config, save_config
from visiondoctor.data.dataset import DetectionDataset, collate_detection
from visiondoctor.data.samples import CategoryMap, DetectionIndex
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.doctor.findings import Finding
from visiondoctor.engine import distributed as dist_utils
from visiondoctor.engine.checkpoint import load_latest
from visiondoctor.engine.trainer import Trainer, resolve_device
from visiondoctor.models.registry import create_model, get_entry
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.diagnosis import RunDiagnosis, data_findings

log = logging.getLogger(__name__)

@dataclass
class DetectionData:
    train: DetectionIndex
    val: DetectionIndex
    test: DetectionIndex | None
    category_map: CategoryMap
    root: Path


def synth_root(cfg: Config) -> Path:
    """Generated data is cached under the output folder, keyed by generator, arguments and seed."""
    import hashlib
    import json

    options = json.dumps(cfg.data.synth_options, sort_keys=True)
    key = hashlib.sha1(options.encode()).hexdigest()[:8]
    n = cfg.data.synth_images or 0
    return Path(cfg.output_dir) / "_data" / f"{cfg.data.synth}_n{n}_seed{cfg.train.seed}_{key}"


def ensure_synthetic(cfg: Config) -> Path:
    root = synth_root(cfg)
    if not (root / "train" / "_annotations.coco.json").exists() and dist_utils.is_main():
        from visiondoctor.data.synth import generate

        generate(cfg.data.synth, root, num_images=cfg.data.synth_images or None, seed=cfg.train.seed,
                 **cfg.data.synth_options)
    dist_utils.barrier()
    return root


def _load_split(path: Path, fmt: str, split: str) -> DetectionIndex:
    from visiondoctor.data.formats import list_splits, load_detection, match_split

    available = list_splits(path, fmt)
    if available and match_split(split, available) is None:
        raise FileNotFoundError(f"{path}: no split {split!r}; available: {', '.join(available)}")
    return load_detection(path, fmt, split if available else None)


def load_data(cfg: Config, background: bool = True) -> DetectionData:
    root = Path(cfg.data.path) if cfg.data.path else ensure_synthetic(cfg) if cfg.data.synth else None
    if root is None:
        raise ValueError("no data: give data.path=DIR (COCO / VOC / YOLO) or data.synth=shapes")
    train = _load_split(root, cfg.data.format, cfg.data.train_split)
    val = _load_split(root, cfg.data.format, cfg.data.val_split)
    try:
        test = _load_split(root, cfg.data.format, cfg.data.test_split)
    except FileNotFoundError:
        test = None
    from visiondoctor.data.validate import problems_by_action

    for name, index in (("train", train), ("val", val), ("test", test)):
        if index is not None and index.problems:
            log.warning("%s split (%s): %s (details: visiondoctor data validate)", name, index.source, ", ".join(
                f"{n} {action}" for action, n in problems_by_action(index.problems).items() if n))
            for problem in [p for p in index.problems if p.action != "info"][:5]:
                log.warning("  %s", problem)
    return DetectionData(train, val, test, CategoryMap.from_categories(train.categories, background), root)


def build_model(cfg: Config, category_map: CategoryMap) -> nn.Module:
    return create_model(cfg.model.name, num_classes=category_map.num_classes, image_size=cfg.model.image_size,
                        pretrained=cfg.model.pretrained, pretrained_backbone=cfg.model.pretrained_backbone,
                        **cfg.model.kwargs)


@torch.no_grad()
def predict(model: nn.Module, index: DetectionIndex, category_map: CategoryMap, device: torch.device,
            batch_size: int = 8, score_threshold: float = 0.0, image_ids: set[int] | None = None) -> list[dict]:
    """COCO results (xywh, dataset category ids) for every image of `index` (or `image_ids`)."""
    records = [r for r in index.records if image_ids is None or r.image_id in image_ids]
    subset = DetectionIndex(index.root, index.source, index.categories, records)
    loader = DataLoader(DetectionDataset(subset, category_map, detection_transforms(train=False)),
                        batch_size=batch_size, collate_fn=collate_detection)
    model.eval()
    results: list[dict] = []
    for images, targets in loader:
        outputs = model([im.to(device) for im in images])
        for target, out in zip(targets, outputs):
            for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                if score < score_threshold or label < category_map.offset:
                    continue
                x1, y1, x2, y2 = box
                results.append({"image_id": int(target["image_id"]),
                                "category_id": category_map.to_dataset_id(int(label)),
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "score": round(float(score), 5)})
    return results


def sample_image_ids(index: DetectionIndex, max_images: int, seed: int) -> set[int] | None:
    """The evaluated subset (None = the whole split), drawn by the evaluation's own sampler."""
    from visiondoctor.evaluation.coco import sample_images

    if max_images <= 0 or max_images >= len(index.records):
        return None
    return set(sample_images([r.image_id for r in index.records], max_images, seed))


def evaluate_model(model: nn.Module, index: DetectionIndex, category_map: CategoryMap, cfg: Config,
                   device: torch.device, run: RunDir | None = None) -> dict[str, Any]:
    """COCO metrics on the split (whole split unless eval.max_images), plus the statistics the
    report and the doctor need, written into `run` when given."""
    from visiondoctor.data.formats.coco import to_coco_dict
    from visiondoctor.evaluation.coco import coco_evaluation
    from visiondoctor.evaluation.detection_stats import detection_statistics

    ids = sample_image_ids(index, cfg.eval.max_images, cfg.train.seed)
    predictions = predict(model, index, category_map, device, cfg.train.batch_size, cfg.eval.score_threshold, ids)
    gt = {**to_coco_dict(index), "image_root": str(index.root)}
    if ids is not None:
        gt = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    evaluation = coco_evaluation(gt, predictions)
    metrics = evaluation.metrics
    if ids is not None:
        metrics["subset"] = {"evaluated_images": len(ids), "total_images": len(index.records)}
    if run is not None:
        run.write_json("predictions.json", predictions)
        run.write_json("gt.json", gt)
        run.write_json("metrics.json", metrics)
        run.write_json("pr_curves.json", evaluation.curves)
        run.write_json("detection_stats.json", detection_statistics(predictions, gt["images"]))
        _optional_analyses(run, gt, predictions)
    return metrics


def _optional_analyses(run: RunDir, gt: dict, predictions: list[dict]) -> None:
    from visiondoctor.evaluation.consistency import score_iou_consistency
    from visiondoctor.evaluation.errors import tide_errors

    run.write_json("consistency.json", score_iou_consistency(gt, predictions))
    run.write_json("errors.json", tide_errors(gt, predictions))


def data_summary(data: DetectionData) -> dict[str, Any]:
    splits = {}
    for name, index in (("train", data.train), ("val", data.val), ("test", data.test)):
        if index is None:
            continue
        per_class = {c.name: n for c, n in zip(index.categories, (index.boxes_per_category().get(c.id, 0)
                                                                   for c in index.categories))}
        sizes = [[round(b[2] - b[0], 1), round(b[3] - b[1], 1)] for r in index.records for b in r.boxes]
        problems: dict[str, int] = {}
        for p in index.problems:
            problems[p.action] = problems.get(p.action, 0) + 1
        splits[name] = {"images": len(index.records), "boxes": index.num_boxes, "per_class": per_class,
                        "box_sizes": sizes, "problems": problems, "source": str(index.source)}
    return {"splits": splits, "categories": [c.name for c in data.train.categories],
            "empty_categories": [c.name for c in data.train.empty_categories()], "root": str(data.root)}


def train(cfg: Config, resume: bool = False) -> RunDir:
    """Train, evaluate on the validation split, diagnose, and write the report."""
    dist_utils.init()
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    run = RunDir.create(cfg.run_path) if dist_utils.is_main() else RunDir(cfg.run_path)
    entry = get_entry(cfg.model.name)
    data = load_data(cfg, background=entry.background_label)
    if dist_utils.is_main():
        save_config(cfg, run.config)
        run.write_json("categories.json", data.category_map.to_dict())
        run.write_json("data_summary.json", data_summary(data))
    model = build_model(cfg, data.category_map)
    device = resolve_device(cfg.train.device)

    train_set = DetectionDataset(data.train, data.category_map, detection_transforms(True, cfg.train.augment))
    val_set = DetectionDataset(data.val, data.category_map, detection_transforms(False))
    doctor = RunDiagnosis(model, cfg, data.category_map.num_classes, entry.background_label)
    doctor.before_training(model, DetectionDataset(data.train, data.category_map, detection_transforms(False)),
                           collate_detection, data_findings(data.train, data.category_map, entry.background_label))
    trainer = Trainer(
        model, train_set, cfg.train, collate_fn=collate_detection,
        evaluate_fn=lambda m: evaluate_model(m, data.val, data.category_map, cfg, device),
        val_set=val_set, primary_metric="map", callbacks=[doctor.monitor] if doctor.monitor else [],
        run_dir=run.path, workers=cfg.data.workers,
    )
    if resume and not trainer.resume():
        log.warning("--resume: no usable checkpoint in %s; starting from scratch", run.checkpoints)
    result = trainer.fit()
    if dist_utils.is_main():
        final = best_weights(run, trainer.eval_model, device)
        evaluate_model(final, data.val, data.category_map, cfg, device, run)
        doctor.after_evaluation(run, "map")
        run.write_json("train_result.json", {"steps": result.steps, "epochs": result.epochs_completed,
                                             "elapsed_s": round(result.elapsed_s, 1), "stopped_by": result.stopped_by,
                                             "callback_errors": trainer.state.extra.get("callback_errors", [])})
        build_report(run)
    dist_utils.barrier()
    return run


def best_weights(run: RunDir, model: nn.Module, device: torch.device) -> nn.Module:
    """The best checkpoint by validation mAP when one was saved; else the final weights."""
    found = load_latest(run.checkpoints / "best", map_location=device)
    if found is not None:
        model.load_state_dict(found[1]["model"])
    return model


def load_run_model(run: RunDir, device: torch.device) -> tuple[nn.Module, Config, CategoryMap]:
    cfg = load_config(run.config)
    category_map = CategoryMap.from_dict(run.read_json("categories.json"))
    model = build_model(replace(cfg, model=replace(cfg.model, pretrained=False, pretrained_backbone=False)),
                        category_map)
    found = load_latest(run.checkpoints / "best", map_location=device) or load_latest(run.checkpoints, device)
    if found is None:
        raise FileNotFoundError(f"{run.checkpoints}: no usable checkpoint")
    model.load_state_dict(found[1]["model"])
    return model.to(device).eval(), cfg, category_map


def evaluate_run(run_dir: str | Path, split: str = "val", max_images: int = 0) -> dict[str, Any]:
    """Re-evaluate a finished run on a split (the whole split unless max_images) and rebuild its report."""
    run = RunDir.open(run_dir)
    device = resolve_device("auto")
    model, cfg, category_map = load_run_model(run, device)
    cfg = replace(cfg, eval=replace(cfg.eval, max_images=max_images, split=split))
    data = load_data(cfg, background=category_map.background)
    index = {"train": data.train, "val": data.val, "test": data.test}.get(split)
    if index is None:
        raise FileNotFoundError(f"{data.root}: no {split!r} split to evaluate")
    metrics = evaluate_model(model, index, category_map, cfg, device, run)
    previous = [Finding.from_dict(f) for f in (run.read_json("diagnosis.json") if run.diagnosis_json.exists() else [])
                if not f["id"].startswith(("eval.", "fit.", "consistency."))]
    doctor = RunDiagnosis(model, replace(cfg, train=replace(cfg.train, monitors=False)), category_map.num_classes,
                          category_map.background)
    doctor.findings = previous  # training-time findings stay; evaluation findings are redone for this split
    doctor.after_evaluation(run, "map")
    build_report(run)
    return metrics


def build_report(run: RunDir) -> Path:
    from visiondoctor.report.html import build_report as _build

    return _build(run.path)


def read_history(run: RunDir) -> list[dict[str, Any]]:
    """history.csv as rows of numbers (and the split name)."""
    from visiondoctor.doctor.from_run import read_history as read_history_csv

    return read_history_csv(run.history)
