"""Semantic segmentation as a task of the run pipeline (visiondoctor.tasks.pipeline): image/mask
data, logits or `{out, aux}` models, whole-split metrics from one confusion matrix.

The loss is cross-entropy on `out` plus, when the model has an auxiliary head, cross-entropy on
`aux`; the components are returned separately ("out", "aux") and weighted by
`train.loss_weights` (aux defaults to 0.4, written into the run's config.yaml). Anomaly labels
(StreetHazards 13, or the `anomaly_class` option) are mapped to the ignore index in training, so
the model never learns them. Options: `loss_file` (path.py:fn(outputs, masks) -> loss or
{name: loss}), `anomaly_class` (a known class held out as the anomaly).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from visiondoctor.config import Config, ModelConfig
from visiondoctor.data.images import load_rgb
from visiondoctor.data.seg_samples import SegmentationIndex
from visiondoctor.data.segmentation import (
    SegmentationData,
    SegmentationDataset,
    collate_segmentation,
    held_out_class,
    load_segmentation_data,
    segmentation_transforms,
)
from visiondoctor.doctor.diagnose import load_loss
from visiondoctor.engine.progress import track
from visiondoctor.evaluation.coco import sample_images
from visiondoctor.evaluation.segmentation import ConfusionMatrix
from visiondoctor.evaluation.segmentation_worst import WorstImages, write_worst_images
from visiondoctor.models.contract import split_segmentation_outputs
from visiondoctor.models.registry import create_model
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.pipeline import Datasets, Task, register_task

log = logging.getLogger(__name__)

DEFAULT_MODEL = "deeplabv3plus_resnet18_lite"
AUX_WEIGHT = 0.4


@register_task
class SegmentationTask(Task):
    name = "segmentation"
    contract = "segmentation"
    primary_metric = "miou"

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("loss_file", "anomaly_class")

    def prepare_config(self, cfg: Config) -> Config:
        """task: segmentation, its default model when the config names the detection default, and the
        auxiliary loss weight (0.4 unless set)."""
        name = cfg.model.name
        if name == ModelConfig().name:
            log.info("model.name not set for segmentation: using %s", DEFAULT_MODEL)
            name = DEFAULT_MODEL
        weights = dict(cfg.train.loss_weights)
        weights.setdefault("aux", AUX_WEIGHT)
        return replace(cfg, task="segmentation", model=replace(cfg.model, name=name),
                       train=replace(cfg.train, loss_weights=weights))

    def load_data(self, cfg: Config, categories: dict[str, Any] | None = None) -> SegmentationData:
        held_out = held_out_class(categories) if categories else self.options.get("anomaly_class")
        return load_segmentation_data(cfg, held_out)

    def num_classes(self, categories: dict[str, Any]) -> int:
        return int(categories["num_classes"])

    def build_model(self, cfg: Config, categories: dict[str, Any], run: RunDir | None) -> nn.Module:
        return create_model(cfg.model.name, num_classes=self.num_classes(categories), image_size=cfg.model.image_size,
                            pretrained=cfg.model.pretrained, pretrained_backbone=cfg.model.pretrained_backbone,
                            **cfg.model.kwargs)

    def datasets(self, cfg: Config, data: SegmentationData) -> Datasets:
        size, aug = cfg.model.image_size, cfg.train.augment
        return Datasets(
            train=SegmentationDataset(data.train, segmentation_transforms(True, size, aug), train_labels=True),
            # validation losses need images and masks of one size; without a size, only the metrics
            val=SegmentationDataset(data.val, segmentation_transforms(False, size), train_labels=True) if size > 0 else None,
            probe=SegmentationDataset(data.train, segmentation_transforms(False, size), train_labels=True),
            collate=collate_segmentation)

    def loss_fn(self, cfg: Config, data: SegmentationData) -> Callable[[nn.Module, Any, Any], dict[str, torch.Tensor]]:
        """CE(out) + CE(aux) ignoring the dataset's void label, or the user's --loss-file."""
        loss_file = self.options.get("loss_file")
        return load_loss_file(loss_file) if loss_file else SegmentationLoss(data.train.ignore_index)

    def evaluate(self, model: nn.Module, data: SegmentationData, split: str, cfg: Config, device: torch.device,
                 run: RunDir | None = None) -> dict[str, Any]:
        index = data.split(split)
        worst = WorstImages() if run is not None else None
        metrics = evaluate_model(model, index, cfg, device, worst)
        if run is not None:
            metrics["split"] = split
            run.write_json("metrics.json", metrics)
            write_worst_images(run, worst, index.class_names, index.ignore_index, index.anomaly_labels)
        return metrics


class SegmentationLoss:
    """`loss_fn(model, images, targets) -> {"out": CE(out), "aux": CE(aux)}` for the Trainer.

    Components are unweighted; the Trainer applies `train.loss_weights` (aux: 0.4 by default).
    An auxiliary head whose class count differs from the main head's is refused: it would
    otherwise train silently against another label space (the seed's 21-output aux head).
    """

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        main, aux = split_segmentation_outputs(model(images))
        return self.from_outputs({"out": main} if aux is None else {"out": main, "aux": aux}, targets)

    def from_outputs(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = targets.long()
        losses = {"out": F.cross_entropy(outputs["out"], targets, ignore_index=self.ignore_index)}
        aux = outputs.get("aux")
        if aux is not None:
            if aux.shape[1] != outputs["out"].shape[1]:
                raise ValueError(
                    f"the auxiliary head outputs {aux.shape[1]} classes but the main head {outputs['out'].shape[1]}: "
                    "set num_classes on the aux classifier too (e.g. model.aux_classifier[-1] = "
                    f"nn.Conv2d(in_channels, {outputs['out'].shape[1]}, 1)) or build it with aux_loss=False")
            losses["aux"] = F.cross_entropy(aux, targets, ignore_index=self.ignore_index)
        return losses


def load_loss_file(spec: str) -> Callable[[nn.Module, Any, Any], dict[str, torch.Tensor]]:
    """`path.py:fn` -> a Trainer loss. `fn(outputs, targets)` returns a loss tensor or a dict of
    named loss tensors (the doctor's --loss-file format, loaded by the doctor's loader)."""
    fn = load_loss(spec)

    def loss(model: nn.Module, images: Any, targets: Any) -> dict[str, torch.Tensor]:
        out = fn(model(images), targets)
        if isinstance(out, torch.Tensor):
            return {"user": out}
        if isinstance(out, dict) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
            return {str(k): v for k, v in out.items()}
        raise TypeError(f"{spec} must return a loss tensor or a dict of loss tensors, got {type(out).__name__}")

    return loss


def logits_at(model: nn.Module, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Main-head logits, bilinearly resized to the mask's (H, W) when the input was resized."""
    logits, _ = split_segmentation_outputs(model(images))
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits


def iterate_logits(model: nn.Module, dataset: SegmentationDataset, device: torch.device, batch_size: int,
                   indices: Sequence[int] | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (dataset index, logits (1, C, H, W) at mask resolution, mask (H, W)) over the dataset."""
    subset = Subset(dataset, list(indices)) if indices is not None else dataset
    order = list(indices) if indices is not None else list(range(len(dataset)))
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=collate_segmentation)
    position = 0
    model.eval()
    with torch.no_grad():
        for images, masks in track(loader, f"evaluating {len(order)} images", total=len(loader)):
            images = images.to(device)
            if isinstance(masks, torch.Tensor):
                batch_logits = logits_at(model, images, tuple(masks.shape[-2:]))
                for j in range(len(images)):
                    yield order[position], batch_logits[j:j + 1], masks[j]
                    position += 1
            else:
                for j, mask in enumerate(masks):
                    yield order[position], logits_at(model, images[j:j + 1], tuple(mask.shape[-2:])), mask
                    position += 1


def sample_indices(n: int, max_images: int, seed: int) -> list[int] | None:
    """The evaluated subset of a split of n images (None = all), drawn by the evaluation's own sampler."""
    if max_images <= 0 or max_images >= n:
        return None
    return sample_images(list(range(n)), max_images, seed)


def evaluate_model(model: nn.Module, index: SegmentationIndex, cfg: Config, device: torch.device,
                   worst: WorstImages | None = None) -> dict[str, Any]:
    """Whole-split metrics (a seeded subset only with eval.max_images, recorded as such); `worst`
    keeps the images with the lowest per-image mIoU on the way (for the report's gallery)."""
    dataset = SegmentationDataset(index, segmentation_transforms(False, cfg.model.image_size), resize_mask=False)
    indices = sample_indices(len(dataset), cfg.eval.max_images, cfg.train.seed)
    cm = ConfusionMatrix(index.num_classes, index.ignore_index, exclude_labels=index.anomaly_labels)
    for i, logits, mask in iterate_logits(model, dataset, device, cfg.train.batch_size, indices):
        pred = logits.argmax(1)[0].cpu()
        if worst is None:
            cm.update(pred, mask)
        else:
            path = index.records[i].path
            worst.observe(cm, pred, mask, i, path.name, image=lambda p=path: load_rgb(p))
    metrics = cm.compute(index.class_names, total_images=len(dataset))
    metrics["split_source"] = str(index.source)
    return metrics
