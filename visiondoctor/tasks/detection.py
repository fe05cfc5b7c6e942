"""Object detection as a task of the run pipeline (visiondoctor.tasks.pipeline): COCO / VOC / YOLO
data, torchvision-contract detectors, COCO metrics and the evaluation files the report and the
doctor read (predictions.json, gt.json, metrics.json, pr_curves.json, detection_stats.json,
consistency.json, errors.json)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from visiondoctor.config import Config
from visiondoctor.data.dataset import DetectionDataset, collate_detection
from visiondoctor.data.detection import DetectionData, load_detection_data
from visiondoctor.data.formats.coco import to_coco_dict
from visiondoctor.data.loading import training_images
from visiondoctor.data.samples import CategoryMap, DetectionIndex
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.engine.progress import track
from visiondoctor.evaluation.coco import coco_evaluation, sample_images
from visiondoctor.evaluation.consistency import score_iou_consistency
from visiondoctor.evaluation.detection_quality import write_detection_quality
from visiondoctor.evaluation.detection_stats import detection_statistics
from visiondoctor.evaluation.detections import detections_to_coco
from visiondoctor.evaluation.errors import tide_errors
from visiondoctor.models.registry import create_model, get_entry
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.pipeline import Datasets, Task, register_task


@register_task
class DetectionTask(Task):
    name = "detection"
    contract = "detection"
    primary_metric = "map"

    def load_data(self, cfg: Config, categories: dict[str, Any] | None = None) -> DetectionData:
        background = bool(categories["background"]) if categories else get_entry(cfg.model.name).background_label
        return load_detection_data(cfg, background=background)

    def num_classes(self, categories: dict[str, Any]) -> int:
        return CategoryMap.from_dict(categories).num_classes

    def build_model(self, cfg: Config, categories: dict[str, Any], run: RunDir | None) -> nn.Module:
        return create_model(cfg.model.name, num_classes=self.num_classes(categories), image_size=cfg.model.image_size,
                            pretrained=cfg.model.pretrained, pretrained_backbone=cfg.model.pretrained_backbone,
                            **cfg.model.kwargs)

    def datasets(self, cfg: Config, data: DetectionData) -> Datasets:
        """Training, validation-loss and probe samples decoded near the model's input size (data.reduce,
        data.cache); the COCO evaluation (`predict`) reads the files at full size, in their boxes' frame."""
        cmap = data.category_map
        # The registry's detection models all resize their inputs to model.image_size (SSD: a square of
        # that side, the R-CNN family: the longer side); a text-query model never resizes.
        images = training_images(cfg, model_resizes=get_entry(cfg.model.name).task == "detection")
        if cfg.data.cache == "ram":  # before the loader's workers fork, so that they share one copy
            images.fill([r.path for index in (data.train, data.val) for r in index.records])
        return Datasets(train=DetectionDataset(data.train, cmap, detection_transforms(True, cfg.train.augment), images),
                        val=DetectionDataset(data.val, cmap, detection_transforms(False), images),
                        probe=DetectionDataset(data.train, cmap, detection_transforms(False), images),
                        collate=collate_detection)

    def data_context(self, data: DetectionData, categories: dict[str, Any]) -> dict[str, Any]:
        return {**super().data_context(data, categories), "index": data.train, "category_map": data.category_map,
                "background_label": bool(categories["background"])}

    def evaluate(self, model: nn.Module, data: DetectionData, split: str, cfg: Config, device: torch.device,
                 run: RunDir | None = None) -> dict[str, Any]:
        return evaluate_model(model, data.split(split), data.category_map, cfg, device, run, split)


@torch.no_grad()
def predict(model: nn.Module, index: DetectionIndex, category_map: CategoryMap, device: torch.device,
            batch_size: int = 8, score_threshold: float = 0.0, image_ids: set[int] | None = None) -> list[dict]:
    """COCO results (xywh, dataset category ids) for every image of `index` (or `image_ids`)."""
    records = [r for r in index.records if image_ids is None or r.image_id in image_ids]
    subset = DetectionIndex(index.root, index.source, index.categories, records)
    loader = DataLoader(DetectionDataset(subset, category_map, detection_transforms(train=False)),
                        batch_size=batch_size, collate_fn=collate_detection)

    def category_of(label: int) -> int | None:
        return None if label < category_map.offset else category_map.to_dataset_id(label)

    model.eval()
    results: list[dict] = []
    for images, targets in track(loader, f"predicting {len(records)} images", total=len(loader)):
        outputs = model([im.to(device) for im in images])
        for target, out in zip(targets, outputs):
            results += detections_to_coco(out, int(target["image_id"]), category_of, score_threshold)
    return results


def sample_image_ids(index: DetectionIndex, max_images: int, seed: int) -> set[int] | None:
    """The evaluated subset (None = the whole split), drawn by the evaluation's own sampler."""
    if max_images <= 0 or max_images >= len(index.records):
        return None
    return set(sample_images([r.image_id for r in index.records], max_images, seed))


def evaluate_model(model: nn.Module, index: DetectionIndex, category_map: CategoryMap, cfg: Config,
                   device: torch.device, run: RunDir | None = None, split: str | None = None) -> dict[str, Any]:
    """COCO metrics on the split (whole split unless eval.max_images), plus the statistics the
    report and the doctor need, written into `run` when given (metrics.json then names the `split`;
    the pipeline's evaluate_run gives each split its own file names)."""
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
        if split:
            metrics["split"] = split
        run.write_json("predictions.json", predictions)
        run.write_json("gt.json", gt)
        run.write_json("metrics.json", metrics)
        run.write_json("pr_curves.json", evaluation.curves)
        run.write_json("detection_stats.json", detection_statistics(predictions, gt["images"]))
        run.write_json("consistency.json", score_iou_consistency(gt, predictions))
        run.write_json("errors.json", tide_errors(gt, predictions))
        write_detection_quality(run, gt, predictions, score_threshold=cfg.eval.display_threshold)
    return metrics
