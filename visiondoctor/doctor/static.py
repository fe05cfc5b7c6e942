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


def smallest_anchor_stride(obs: Observation) -> float | None:
    strides = [rec.image_hw[1] / w for rec in obs.anchors if rec.image_hw for _, w, _ in rec.levels]
    return min(strides) if strides else None


def static_checks(model: nn.Module, images: Any, targets: Any, *, task: str = "detection", num_classes: int | None = None,
                  loss_fn: LossFn | None = None, background_label: bool | None = None,
                  optimizer: torch.optim.Optimizer | None = None) -> tuple[list[Finding], Observation | None]:
    """One set of probe forwards, then every probe-stage check. Returns (findings, observation)."""
    findings: list[Finding] = []
    if background_label is None and task == "detection":
        background_label = uses_background_label(model)
    io = ModelIO(task, loss_fn)
    try:
        obs = run_probes(model, io, images, targets)
    except Exception as exc:  # noqa: BLE001
        return [check_failed("probe.run_probes", exc)], None
    for name, failure in obs.failures.items():
        findings.append(check_failed(f"probe.{name}", RuntimeError(failure)))
    detection = task == "detection"
    findings += run_stage(
        "probe", model=model, obs=obs, io=io, images=images, num_classes=num_classes, optimizer=optimizer, task=task,
        targets=targets if detection else None, image_sizes=image_sizes(images) if detection else None,
        background_label=bool(background_label), min_size=(smallest_anchor_stride(obs) or 8.0) if detection else None)
    return sort_findings(dedupe(findings)), obs
