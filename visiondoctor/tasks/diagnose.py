"""`visiondoctor diagnose`: the whole doctor (visiondoctor.doctor.diagnose) on a config's data and on
the user's model (`--model-file path.py:factory`) or the config's registered one."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visiondoctor.config import load_config
from visiondoctor.data.dataset import DetectionDataset
from visiondoctor.data.detection import load_detection_data
from visiondoctor.data.segmentation import (
    SegmentationDataset,
    load_segmentation_data,
    segmentation_transforms,
)
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.doctor.diagnose import diagnose, load_factory, load_loss
from visiondoctor.doctor.findings import Finding
from visiondoctor.models.registry import create_model
from visiondoctor.tasks.diagnosis import data_findings
from visiondoctor.tasks.pipeline import prepare_data_files


def registry_factory(cfg: Any) -> Callable[..., nn.Module]:
    """The config's own model (model.name in the registry) as a factory taking num_classes."""

    def factory(num_classes: int) -> nn.Module:
        return create_model(cfg.model.name, num_classes=num_classes, image_size=cfg.model.image_size,
                            pretrained=cfg.model.pretrained, pretrained_backbone=cfg.model.pretrained_backbone,
                            **cfg.model.kwargs)

    return factory


def diagnose_cli(args: Any) -> list[Finding]:
    """What `visiondoctor diagnose --model-file x.py:factory [--loss-file y.py:fn]` calls.

    Reads from `args` (an argparse Namespace): model_file (None: the config's registered model), loss_file, config
    (YAML path or None), set (list of KEY=VALUE overrides or None), steps (int or None), output_dir / out (folder
    for the diagnosis; default runs/<name>-diagnosis). The data come from the config (data.path or data.synth) like
    `train`."""
    cfg = load_config(getattr(args, "config", None), getattr(args, "set", None) or [])
    factory = load_factory(args.model_file) if getattr(args, "model_file", None) else registry_factory(cfg)
    loss_fn = load_loss(args.loss_file) if getattr(args, "loss_file", None) else None
    steps = int(getattr(args, "steps", None) or 100)
    out = getattr(args, "output_dir", None) or getattr(args, "out", None) or str(Path(cfg.output_dir) / f"{cfg.name}-diagnosis")
    common = dict(steps=steps, batch_size=min(cfg.train.batch_size, 8), loss_fn=loss_fn, out_dir=out,
                  title=f"Diagnosis of {args.model_file}", seed=cfg.train.seed,
                  device="cuda" if cfg.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    prepare_data_files(cfg)
    if cfg.task == "segmentation":
        seg = load_segmentation_data(cfg)
        size = cfg.model.image_size
        # images and masks resized together (augment="none"), so the short run and its evaluation batch them
        train = SegmentationDataset(seg.train, segmentation_transforms(True, size, "none"), train_labels=True)
        val = SegmentationDataset(seg.val, segmentation_transforms(True, size, "none"), train_labels=True)
        return diagnose(factory, train, task="segmentation", val_data=val, num_classes=seg.num_classes, **common)
    det = load_detection_data(cfg, background=True)
    train = DetectionDataset(det.train, det.category_map, detection_transforms(False))
    val = DetectionDataset(det.val, det.category_map, detection_transforms(False))
    return diagnose(factory, train, task="detection", val_data=val, num_classes=det.category_map.num_classes,
                    background_label=True, extra_findings=data_findings(det.train, det.category_map, True), **common)
