"""Detection cases of the zoo (seeds 000, 002, 004 and the issue's list)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.misc import FrozenBatchNorm2d

from visiondoctor.doctor.api import Doctor
from visiondoctor.doctor.checks.consistency import check_score_iou
from visiondoctor.doctor.coco_io import coco_from_batches
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.model_io import ModelIO
from visiondoctor.doctor.training import train_briefly
from visiondoctor.doctor.zoo.case import ZooCase, register
from visiondoctor.doctor.zoo.common import (
    ListDataset,
    batch,
    squares,
    tiny_faster_rcnn,
    tiny_ssd,
)
from visiondoctor.doctor.zoo.dense import DenseGridDetector


def _static(model: nn.Module, items: list, num_classes: int = 3) -> list[Finding]:
    images, targets = batch(items)
    doc = Doctor(model, task="detection", num_classes=num_classes)
    try:
        return doc.static_checks(images, targets)
    finally:
        doc.close()


# ----- seed 000: positives chosen at random -----------------------------------------------------

class RandomMatcher:
    """The seed's assignment: `positives_per_box` anchors drawn at random per ground-truth box, labelled
    round-robin, whatever they overlap. Called like torchvision's Matcher with the IoU matrix [G, N]."""

    def __init__(self, positives_per_box: int = 8) -> None:
        self.positives_per_box = positives_per_box

    def __call__(self, match_quality_matrix: torch.Tensor) -> torch.Tensor:
        g, n = match_quality_matrix.shape
        matches = torch.full((n,), -1, dtype=torch.int64, device=match_quality_matrix.device)
        chosen = torch.randperm(n, device=match_quality_matrix.device)[: g * self.positives_per_box]
        matches[chosen] = torch.arange(chosen.numel(), device=chosen.device) % max(g, 1)
        return matches


def _random_assignment(healthy: bool) -> list[Finding]:
    torch.manual_seed(0)
    model = tiny_ssd(num_classes=3)
    if not healthy:
        model.proposal_matcher = RandomMatcher()
    return _static(model, squares(4, seed=0))


register(ZooCase(
    "random-assignment", "000",
    "tiny SSD whose matcher assigns random anchors to each box (seed 000's training code)",
    "torchvision's SSDMatcher (IoU >= 0.5, plus the best anchor of each box)",
    "assignment.low-iou-positives", _random_assignment))


# ----- seed 002: anchors too large for 10-px objects ---------------------------------------------

def _anchors_too_large(healthy: bool) -> list[Finding]:
    torch.manual_seed(0)
    items = squares(6, size=128, min_side=10, max_side=12, max_objects=3, seed=1)
    if healthy:  # what anchors.coverage recommends: anchors near the box sizes on a finer (stride-4) map
        model = tiny_faster_rcnn(size=128, stride_stages=2, anchor_sizes=(10, 14))
    else:  # base size 16 at stride 8, scales 1/2/4
        model = tiny_faster_rcnn(size=128, stride_stages=3, anchor_sizes=(16, 32, 64))
    return _static(model, items)


register(ZooCase(
    "anchors-too-large", "002",
    "Faster R-CNN with anchors 16/32/64 px at stride 8 on 10-12 px objects",
    "anchors 10/14 px at stride 4 (the sizes of the boxes, as anchors.coverage suggests)",
    "anchors.coverage", _anchors_too_large))


# ----- seed 002: RoIAlign spatial_scale 1/8 on a stride-16 map -----------------------------------

class FixedScaleRoIAlign(MultiScaleRoIAlign):
    """A user's box pooler: roi_align on one feature map with a hard-coded spatial_scale (subclassing
    MultiScaleRoIAlign only because torchvision's FasterRCNN insists on that type)."""

    def __init__(self, spatial_scale: float, output_size: int = 7) -> None:
        super().__init__(["0"], output_size, sampling_ratio=2)
        self.spatial_scale = spatial_scale

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: Any) -> torch.Tensor:
        return roi_align(features["0"], proposals, output_size=self.output_size, spatial_scale=self.spatial_scale,
                         sampling_ratio=2)


def _roi_scale(healthy: bool) -> list[Finding]:
    torch.manual_seed(0)
    pool = FixedScaleRoIAlign(1 / 16 if healthy else 1 / 8)
    model = tiny_faster_rcnn(size=128, stride_stages=4, anchor_sizes=(16, 32, 64), box_roi_pool=pool)
    return _static(model, squares(4, size=128, min_side=16, max_side=40, seed=2))


register(ZooCase(
    "roi-scale", "002",
    "two-stage detector pooling RoIs with spatial_scale=1/8 from a stride-16 feature map",
    "spatial_scale=1/16, the measured feature-to-image ratio",
    "roi.scale-mismatch", _roi_scale))


# ----- seed 002: autocast around the detection head only -----------------------------------------

class AutocastHead(nn.Module):
    """Runs the wrapped head under autocast (bf16 on CPU, fp16 on CUDA) and hands float32 back."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        device = x[0].device.type
        with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16):
            out = self.head(x)
        return {k: v.float() for k, v in out.items()}


def _autocast_head_only(healthy: bool) -> list[Finding]:
    torch.manual_seed(0)
    model = tiny_ssd(num_classes=3)
    if not healthy:
        model.head = AutocastHead(model.head)
    return _static(model, squares(4, seed=3))


register(ZooCase(
    "autocast-head-only", "002",
    "SSD whose head alone runs under autocast; backbone and losses in fp32",
    "no autocast inside the model (the training loop wraps the whole forward and loss when AMP is on)",
    "amp.partial", _autocast_head_only))


# ----- seed 002: frozen layers whose BatchNorm keeps updating ------------------------------------

def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad = False


def _to_frozen_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _to_frozen_bn(child)


def _frozen_bn(healthy: bool) -> list[Finding]:
    torch.manual_seed(0)
    model = tiny_ssd(num_classes=3)
    early = model.backbone.stages[:2]
    if healthy:
        _to_frozen_bn(early)
    _freeze(early)
    return _static(model, squares(4, seed=4))


register(ZooCase(
    "frozen-bn", "002",
    "backbone stages 1-2 frozen with requires_grad=False but nn.BatchNorm2d left in train mode",
    "the same stages frozen with torchvision.ops.FrozenBatchNorm2d",
    "bn.frozen-but-updating", _frozen_bn))


# ----- seed 004: dense detector supervised only at positives -------------------------------------

def _positives_only(healthy: bool, steps: int = 150) -> list[Finding]:
    torch.manual_seed(0)
    model = DenseGridDetector(3, supervise_negatives=healthy)
    train_briefly(model, ListDataset(squares(32, seed=5)), ModelIO("detection"), steps=steps, batch_size=8, lr=3e-3)
    images, targets = batch(squares(16, seed=6))
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    gt, dets = coco_from_batches(targets, outputs, [tuple(im.shape[-2:]) for im in images])
    return check_score_iou(gt, dets)


register(ZooCase(
    "positives-only", "004",
    "dense grid detector whose confidence is trained only at positive cells (target 1), read at every cell",
    "focal loss on every cell and class (negatives pushed to 0), boxes at positives",
    "consistency.score-iou", _positives_only))
