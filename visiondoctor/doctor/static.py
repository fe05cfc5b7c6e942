"""Static and probe checks: everything the doctor can say before training, in seconds."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from visiondoctor.doctor.checks import amp, anchors, batchnorm, data, gradients, heads, roi
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.model_io import LossFn, ModelIO, image_sizes
from visiondoctor.doctor.probe import Observation, run_probes
from visiondoctor.doctor.runner import check_failed, dedupe, run_check, sort_findings


def uses_background_label(model: nn.Module) -> bool | None:
    """True for torchvision detectors (label 0 is background); None when the model does not say."""
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    if isinstance(model, (GeneralizedRCNN, RetinaNet, SSD, FCOS)):
        return True
    flag = getattr(model, "background_label", None)
    return bool(flag) if flag is not None else None


def _named(fn: Callable[..., list[Finding]], *args: Any, **kwargs: Any) -> Callable[[], list[Finding]]:
    """Bind arguments but keep the check's own name for `check.failed` findings."""
    bound = functools.partial(fn, *args, **kwargs)
    functools.update_wrapper(bound, fn)
    return bound


def smallest_anchor_stride(obs: Observation) -> float | None:
    strides = [rec.image_hw[1] / w for rec in obs.anchors if rec.image_hw for _, w, _ in rec.levels]
    return min(strides) if strides else None


def static_checks(model: nn.Module, images: Any, targets: Any, *, task: str = "detection", num_classes: int | None = None,
                  loss_fn: LossFn | None = None, background_label: bool | None = None,
                  optimizer: torch.optim.Optimizer | None = None) -> tuple[list[Finding], Observation | None]:
    """Data checks on the batch, one set of probe forwards, every structural check. Returns (findings, observation)."""
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
    if task == "detection":
        min_size = smallest_anchor_stride(obs) or 8.0
        findings += run_check(_named(data.check_targets, targets, image_sizes(images), bool(background_label), min_size))
    checks = [
        _named(anchors.check_anchor_coverage, model, obs),
        _named(anchors.check_anchor_strides, model, obs),
        _named(anchors.check_matched_positives, obs),
        _named(heads.check_head_classes, model, obs, num_classes),
        _named(heads.check_class_specific_regression, model, num_classes),
        _named(gradients.check_no_gradient, obs),
        _named(gradients.check_optimizer, model, optimizer),
        _named(batchnorm.check_frozen_batchnorm, obs),
        _named(roi.check_roi_scale, obs),
        _named(amp.check_autocast_coverage, obs),
    ]
    for check in checks:
        findings += run_check(check)
    return sort_findings(dedupe(findings)), obs
