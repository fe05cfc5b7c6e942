"""Static and probe checks: everything the doctor can say before training, in seconds."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD

from visiondoctor.doctor.checks import run_stage
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.model_io import LossFn, ModelIO, image_sizes
from visiondoctor.doctor.probe import Observation, run_probes
from visiondoctor.doctor.runner import check_failed, dedupe, sort_findings


def uses_background_label(model: nn.Module) -> bool | None:
    """True for torchvision detectors (label 0 is background); None when the model does not say."""
    if isinstance(model, (GeneralizedRCNN, RetinaNet, SSD, FCOS)):
        return True
    flag = getattr(model, "background_label", None)
    return bool(flag) if flag is not None else None


def smallest_prior_stride_in_image(obs: Observation) -> float | None:
    """The finest prior grid's spacing, in the pixels of the images as given (the priors may live in a resized frame)."""
    priors = obs.priors
    if priors is None or not priors.levels or not obs.input_hw:
        return None
    spacing = min(lv.spacing[0] for lv in priors.levels if lv.spacing[0] > 0) if any(lv.spacing[0] > 0 for lv in priors.levels) else None
    if spacing is None:
        return None
    scale = sum(hw[1] for hw in obs.input_hw) / len(obs.input_hw) / priors.frame_hw[1]
    return spacing * scale


def static_checks(model: nn.Module, images: Any, targets: Any, *, task: str = "detection", num_classes: int | None = None,
                  loss_fn: LossFn | None = None, background_label: bool | None = None,
                  optimizer: torch.optim.Optimizer | None = None, ignore_index: int = 255,
                  void_value: int | None = None) -> tuple[list[Finding], Observation | None]:
    """One set of probe forwards and experiments, then every probe-stage check. Returns (findings, observation).
    `ignore_index`: the label the (default) segmentation loss ignores; `void_value`: the dataset's void value in
    the masks, for the void experiment (defaults to ignore_index)."""
    if background_label is None and task == "detection":
        background_label = uses_background_label(model)
    io = ModelIO(task, loss_fn, ignore_index)
    try:
        obs = run_probes(model, io, images, targets, void_value=ignore_index if void_value is None else void_value)
    except Exception as exc:  # noqa: BLE001
        return [check_failed("probe.run_probes", exc)], None
    detection = task == "detection"
    findings = run_stage(
        "probe", model=model, obs=obs, io=io, images=images, targets=targets, num_classes=num_classes,
        optimizer=optimizer, task=task, image_sizes=image_sizes(images) if detection else None,
        background_label=background_label, min_size=(smallest_prior_stride_in_image(obs) or 8.0) if detection else None)
    # a check that needed a failed pass says nothing new: the failure is a finding of its own
    findings = [f for f in findings if not (f.id == "check.failed" and f.evidence.get("exception") == "ProbePassFailed")]
    return sort_findings(dedupe(findings)), obs
