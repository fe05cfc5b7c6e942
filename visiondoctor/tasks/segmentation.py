"""Semantic segmentation as a task: masks -> model -> Trainer -> whole-split metrics -> report,
and anomaly segmentation on a trained run.

Public entry points (the CLI calls them):
    train(cfg, resume=False) -> RunDir                     `visiondoctor train --task segmentation`
    evaluate_run(run_dir, split="val", max_images=0) -> metrics      `visiondoctor eval`
    run_anomaly(run_dir, methods, anomaly_class=None) -> results     `visiondoctor anomaly`

The loss is cross-entropy on `out` plus, when the model has an auxiliary head, cross-entropy
on `aux`; the components are returned separately ("out", "aux") and weighted by
`train.loss_weights` (aux defaults to 0.4, written into the run's config.yaml). Anomaly
labels (StreetHazards 13, or `--anomaly-class K`) are mapped to the ignore index in
training, so the model never learns them.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from visiondoctor.config import Config, load_config, save_config
from visiondoctor.data.formats.masks import load_mask_array, read_mask_folder
from visiondoctor.data.formats.streethazards import is_streethazards, read_streethazards
from visiondoctor.data.images import load_rgb
from visiondoctor.data.seg_samples import DataError, SegmentationIndex
from visiondoctor.evaluation.segmentation import ConfusionMatrix
from visiondoctor.models.registry import create_model, get_entry
from visiondoctor.rundir import RunDir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "deeplabv3plus_resnet18_lite"
AUX_WEIGHT = 0.4
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ----- data ------------------------------------------------------------------------------------

@dataclass
class SegmentationData:
    train: SegmentationIndex
    val: SegmentationIndex
    test: SegmentationIndex | None
    root: Path

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def split(self, name: str) -> SegmentationIndex:
        index = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if index is None:
            raise FileNotFoundError(f"{self.root}: no {name!r} split")
        return index


def _synthetic_root(cfg: Config) -> Path:
    from visiondoctor.data.synth import generate
    from visiondoctor.tasks.detection import synth_root  # one cache naming rule for every generator

    root = synth_root(cfg)
    if not (root / "streets.json").exists():
        generate(cfg.data.synth, root, num_images=cfg.data.synth_images or None, seed=cfg.train.seed,
                 **cfg.data.synth_options)
    return root


def read_split(root: Path, fmt: str, split: str, ignore_index: int) -> SegmentationIndex:
    """One split of a mask dataset: `streethazards` (also the synthetic streets) or `masks`."""
    if fmt == "auto":
        fmt = "streethazards" if is_streethazards(root) else "masks"
    if fmt == "streethazards":
        return read_streethazards(root, split, ignore_index=ignore_index)
    if fmt == "masks":
        return read_mask_folder(root, split, ignore_index=ignore_index)
    raise DataError(f"data.format={fmt!r} is not a segmentation format; use masks, streethazards or auto")


def load_data(cfg: Config, anomaly_class: int | None = None) -> SegmentationData:
    """Read train / val (/ test) with one label space. `anomaly_class` holds a known class out: it
    joins the dataset's own anomaly labels (never trained on, positives of anomaly metrics)."""
    if cfg.data.path:
        root = Path(cfg.data.path)
    elif cfg.data.synth:
        root = _synthetic_root(cfg)
    else:
        raise ValueError("no data: give data.path=DIR (image/mask folders or StreetHazards) or data.synth=streets")
    splits: dict[str, SegmentationIndex | None] = {}
    for name, split in (("train", cfg.data.train_split), ("val", cfg.data.val_split), ("test", cfg.data.test_split)):
        try:
            splits[name] = read_split(root, cfg.data.format, split, cfg.data.ignore_index)
        except DataError as exc:
            if name != "test":
                raise
            log.warning("no usable test split (anomaly scoring needs one): %s", str(exc).splitlines()[0])
            splits[name] = None
    if anomaly_class is not None:  # held out in addition to the dataset's own anomaly class, if any
        splits = {k: v.with_anomaly_labels((*v.anomaly_labels, anomaly_class)) if v is not None else None
                  for k, v in splits.items()}
    for index in splits.values():
        if index is None:
            continue
        if index.class_names != splits["train"].class_names:
            raise DataError(f"{index.source}: class names differ from the training split's")
        log.info("%s", index.summary())
        for problem in index.problems:
            log.warning("%s", problem)
    return SegmentationData(splits["train"], splits["val"], splits["test"], root)


def segmentation_transforms(train: bool, image_size: int, augment: str = "default") -> v2.Transform:
    """Joint image/mask transforms (the mask is a tv_tensors.Mask, so geometric steps use nearest
    neighbour on it and photometric steps leave it alone). Training images and masks are brought
    to `image_size` x `image_size`; evaluation resizes the image only: predictions are scored
    against the mask at its own resolution. `image_size` <= 0 keeps the native size."""
    size = (image_size, image_size) if image_size > 0 else None
    steps: list[v2.Transform] = []
    if train and augment == "default" and size:
        steps += [v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.75, 1.333), antialias=True)]
    elif size:
        steps += [v2.Resize(size, antialias=True)]
    if train and augment in ("default", "light"):
        steps += [v2.RandomHorizontalFlip(p=0.5)]
    if train and augment == "default":
        steps += [v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)]
    elif train and augment not in ("light", "none"):
        raise ValueError(f"train.augment={augment!r}: expected default, light or none")
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
              v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


class SegmentationDataset(Dataset):
    """(normalised image, label mask). Mask values go through the index's lookup table; with
    `train_labels`, anomaly labels become the ignore index so the loss never sees them."""

    def __init__(self, index: SegmentationIndex, transforms: Callable | None, train_labels: bool = False,
                 resize_mask: bool = True):
        self.index = index
        self.transforms = transforms
        self.resize_mask = resize_mask
        lut = index.lut().astype(np.int64)
        if train_labels:
            for label in index.anomaly_labels:
                lut[lut == label] = index.ignore_index
        self.lut = lut

    def __len__(self) -> int:
        return len(self.index.records)

    def load_mask(self, i: int) -> torch.Tensor:
        raw, _ = load_mask_array(self.index.records[i].mask_path)
        return torch.from_numpy(self.lut[raw])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.index.records[i]
        image = tv_tensors.Image(load_rgb(record.path))
        mask = self.load_mask(i)
        if self.transforms is None:
            return image.as_subclass(torch.Tensor), mask
        if self.resize_mask:
            image, mask = self.transforms(image, tv_tensors.Mask(mask))
        else:
            image = self.transforms(image)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def collate_segmentation(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, Any]:
    """Images stacked; masks stacked when they share a size, else a list (native-size evaluation)."""
    images = torch.stack([b[0] for b in batch])
    masks = [b[1] for b in batch]
    if all(m.shape == masks[0].shape for m in masks):
        return images, torch.stack(masks)
    return images, masks


# ----- model, loss ----------------------------------------------------------------------------

def model_name(cfg: Config) -> str:
    """The configured model, or the segmentation default when the config still names the detection default."""
    from visiondoctor.config import ModelConfig

    name = cfg.model.name
    if name == ModelConfig().name and get_entry(name).task != "segmentation":
        log.info("model.name not set for segmentation: using %s", DEFAULT_MODEL)
        return DEFAULT_MODEL
    if get_entry(name).task != "segmentation":
        from visiondoctor.models.registry import available_models

        raise ValueError(f"model {name!r} is a {get_entry(name).task} model; segmentation models: "
                         f"{', '.join(available_models('segmentation'))}")
    return name


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    return create_model(cfg.model.name, num_classes=num_classes, image_size=cfg.model.image_size,
                        pretrained=cfg.model.pretrained, pretrained_backbone=cfg.model.pretrained_backbone,
                        **cfg.model.kwargs)


def split_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """torchvision convention: logits, or {"out": logits, "aux": logits}."""
    if isinstance(outputs, torch.Tensor):
        return {"out": outputs}
    if isinstance(outputs, dict) and "out" in outputs:
        return outputs
    raise TypeError(f"a segmentation model must return logits or a dict with 'out', got {type(outputs).__name__}")


class SegmentationLoss:
    """`loss_fn(model, images, targets) -> {"out": CE(out), "aux": CE(aux)}` for the Trainer.

    Components are unweighted; the Trainer applies `train.loss_weights` (aux: 0.4 by default).
    An auxiliary head whose class count differs from the main head's is refused: it would
    otherwise train silently against another label space (the seed's 21-output aux head).
    """

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = split_outputs(model(images))
        return self.from_outputs(outputs, targets)

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
    from visiondoctor.doctor.diagnose import load_loss

    fn = load_loss(spec)

    def loss(model: nn.Module, images: Any, targets: Any) -> dict[str, torch.Tensor]:
        out = fn(model(images), targets)
        if isinstance(out, torch.Tensor):
            return {"user": out}
        if isinstance(out, dict) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
            return {str(k): v for k, v in out.items()}
        raise TypeError(f"{spec} must return a loss tensor or a dict of loss tensors, got {type(out).__name__}")

    return loss


# ----- inference and evaluation ------------------------------------------------------------------

def logits_at(model: nn.Module, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Main-head logits, bilinearly resized to the mask's (H, W) when the input was resized."""
    logits = split_outputs(model(images))["out"]
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits


def iterate_logits(model: nn.Module, dataset: SegmentationDataset, device: torch.device, batch_size: int,
                   indices: Sequence[int] | None = None):
    """Yield (dataset index, logits (1, C, H, W) at mask resolution, mask (H, W)) over the dataset."""
    subset = torch.utils.data.Subset(dataset, list(indices)) if indices is not None else dataset
    order = list(indices) if indices is not None else list(range(len(dataset)))
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=collate_segmentation)
    position = 0
    model.eval()
    with torch.no_grad():
        for images, masks in loader:
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
    if max_images <= 0 or max_images >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), max_images))


def evaluate_model(model: nn.Module, index: SegmentationIndex, cfg: Config, device: torch.device) -> dict[str, Any]:
    """Whole-split metrics (a seeded subset only with eval.max_images, recorded as such)."""
    dataset = SegmentationDataset(index, segmentation_transforms(False, cfg.model.image_size), resize_mask=False)
    indices = sample_indices(len(dataset), cfg.eval.max_images, cfg.train.seed)
    cm = ConfusionMatrix(index.num_classes, index.ignore_index, exclude_labels=index.anomaly_labels)
    for _, logits, mask in iterate_logits(model, dataset, device, cfg.train.batch_size, indices):
        cm.update(logits.argmax(1)[0].cpu(), mask)
    metrics = cm.compute(index.class_names, total_images=len(dataset))
    metrics["split_source"] = str(index.source)
    return metrics


# ----- run directory ---------------------------------------------------------------------------

def categories(index: SegmentationIndex) -> dict[str, Any]:
    """categories.json: CategoryMap-compatible keys plus the segmentation label conventions."""
    return {"dataset_ids": list(range(len(index.class_names))), "names": list(index.class_names),
            "background": False, "task": "segmentation", "num_classes": index.num_classes,
            "anomaly_labels": list(index.anomaly_labels), "ignore_index": index.ignore_index}


def data_summary(data: SegmentationData) -> dict[str, Any]:
    splits = {}
    for name in ("train", "val", "test"):
        index = getattr(data, name)
        if index is None:
            continue
        problems: dict[str, int] = {}
        for p in index.problems:
            problems[p.action] = problems.get(p.action, 0) + 1
        splits[name] = {"images": len(index.records), "total_files": index.total_files,
                        "per_class": index.pixels_per_class(), "unit": "pixels",
                        "ignored_pixels": index.pixels_per_label().get(index.ignore_index, 0), "problems": problems,
                        "source": str(index.source)}
    train_pixels = data.train.pixels_per_class()
    empty = [n for i, n in enumerate(data.class_names) if i in data.train.known_labels and not train_pixels.get(n)]
    return {"splits": splits, "categories": list(data.class_names), "empty_categories": empty,
            "anomaly_classes": [data.class_names[i] for i in data.train.anomaly_labels], "root": str(data.root)}


def _resolve(cfg: Config) -> Config:
    weights = dict(cfg.train.loss_weights)
    weights.setdefault("aux", AUX_WEIGHT)
    return replace(cfg, task="segmentation", model=replace(cfg.model, name=model_name(cfg)),
                   train=replace(cfg.train, loss_weights=weights))


def train(cfg: Config, resume: bool = False, loss_file: str | None = None, anomaly_class: int | None = None) -> RunDir:
    """Train on the train split, pick the best checkpoint by validation mIoU, evaluate the whole
    validation split, diagnose, and write the report."""
    from visiondoctor.engine.trainer import Trainer, resolve_device
    from visiondoctor.tasks.diagnosis import RunDiagnosis

    cfg = _resolve(cfg)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    run = RunDir.create(cfg.run_path)
    data = load_data(cfg, anomaly_class)
    save_config(cfg, run.config)
    run.write_json("categories.json", categories(data.train))
    run.write_json("data_summary.json", data_summary(data))
    model = build_model(cfg, data.num_classes)
    device = resolve_device(cfg.train.device)
    loss_fn = load_loss_file(loss_file) if loss_file else SegmentationLoss(cfg.data.ignore_index)

    size, aug = cfg.model.image_size, cfg.train.augment
    train_set = SegmentationDataset(data.train, segmentation_transforms(True, size, aug), train_labels=True)
    val_set = SegmentationDataset(data.val, segmentation_transforms(False, size), train_labels=True)
    doctor = RunDiagnosis(model, cfg, data.num_classes, background_label=False)
    probe_set = SegmentationDataset(data.train, segmentation_transforms(False, size), train_labels=True)
    doctor.before_training(model, probe_set, collate_segmentation)  # un-augmented training samples
    trainer = Trainer(
        model, train_set, cfg.train, collate_fn=collate_segmentation, loss_fn=loss_fn,
        evaluate_fn=lambda m: evaluate_model(m, data.val, cfg, device),
        val_set=val_set if size > 0 else None, primary_metric="miou",
        callbacks=[doctor.monitor] if doctor.monitor else [], run_dir=run.path, workers=cfg.data.workers,
    )
    if resume and not trainer.resume():
        log.warning("--resume: no usable checkpoint in %s; starting from scratch", run.checkpoints)
    result = trainer.fit()
    final = _best_weights(run, trainer.eval_model, device)
    metrics = evaluate_model(final, data.val, cfg, device)
    metrics["split"] = "val"
    run.write_json("metrics.json", metrics)
    doctor.after_evaluation(run, "miou")
    run.write_json("train_result.json", {"steps": result.steps, "epochs": result.epochs_completed,
                                         "elapsed_s": round(result.elapsed_s, 1), "stopped_by": result.stopped_by,
                                         "callback_errors": trainer.state.extra.get("callback_errors", [])})
    build_report_with_sections(run)
    return run


def _best_weights(run: RunDir, model: nn.Module, device: torch.device) -> nn.Module:
    from visiondoctor.engine.checkpoint import load_latest

    found = load_latest(run.checkpoints / "best", map_location=device)
    if found is not None:
        model.load_state_dict(found[1]["model"])
    return model.eval()


def load_run_model(run: RunDir, device: torch.device) -> tuple[nn.Module, Config, dict[str, Any]]:
    """The run's best (else newest) weights in the model its config describes."""
    from visiondoctor.engine.checkpoint import load_latest

    cfg = load_config(run.config)
    cats = run.read_json("categories.json")
    model = build_model(replace(cfg, model=replace(cfg.model, pretrained=False, pretrained_backbone=False)),
                        int(cats["num_classes"]))
    found = load_latest(run.checkpoints / "best", map_location=device) or load_latest(run.checkpoints, device)
    if found is None:
        raise FileNotFoundError(f"{run.checkpoints}: no usable checkpoint")
    model.load_state_dict(found[1]["model"])
    return model.to(device).eval(), cfg, cats


def evaluate_run(run_dir: str | Path, split: str = "val", max_images: int = 0) -> dict[str, Any]:
    """Re-evaluate a finished run on a split (whole split unless max_images), write metrics.json,
    re-run the diagnosis and rebuild the report."""
    from visiondoctor.doctor.findings import Finding
    from visiondoctor.engine.trainer import resolve_device
    from visiondoctor.tasks.diagnosis import RunDiagnosis

    run = RunDir.open(run_dir)
    device = resolve_device("auto")
    model, cfg, cats = load_run_model(run, device)
    cfg = replace(cfg, eval=replace(cfg.eval, max_images=max_images, split=split))
    data = load_data(cfg, held_out_class(cats))
    metrics = evaluate_model(model, data.split(split), cfg, device)
    metrics["split"] = split
    run.write_json("metrics.json", metrics)
    # training-time findings stay; the evaluation checks are redone for this split (as detection does)
    previous = [Finding.from_dict(f) for f in (run.read_json("diagnosis.json") if run.diagnosis_json.exists() else [])
                if not f["id"].startswith(("eval.", "fit."))]
    doctor = RunDiagnosis(model, replace(cfg, train=replace(cfg.train, monitors=False)), data.num_classes, False)
    doctor.findings = previous
    doctor.after_evaluation(run, "miou")
    build_report_with_sections(run)
    return metrics


def held_out_class(cats: dict[str, Any]) -> int | None:
    """The known class a run held out with --anomaly-class (None when the dataset names its anomaly class)."""
    names = cats.get("names") or []
    held = [int(a) for a in cats.get("anomaly_labels") or [] if a < len(names) and names[a] != "anomaly"]
    return held[0] if held else None


def build_report_with_sections(run: RunDir) -> None:
    from visiondoctor.report.html import build_report

    build_report(run.path)
