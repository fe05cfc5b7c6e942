"""The overfit-one-batch probe: a healthy pipeline drives one small batch to near-zero loss (and
near-perfect AP on that batch) in a bounded number of steps; a broken one cannot.

It trains a deep copy of the model (the caller's model is untouched) with Adam on a single
batch. It is a probe with a fixed batch, not a training loop: no data loading, schedule,
checkpoints or callbacks (the engine's Trainer does real training).

Before the batch is scored in eval mode, the BatchNorm running statistics are re-estimated on
that batch: with the small momentum of MobileNet-style networks (0.01-0.03) they lag far behind
the weights after a hundred steps, and the eval-mode outputs would judge the lag, not the fit.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from visiondoctor.doctor.checks.outputs import box_statistics
from visiondoctor.doctor.coco_io import coco_from_batches
from visiondoctor.doctor.model_io import (
    ModelIO,
    image_sizes,
    split_segmentation_outputs,
    stack_masks,
    total_loss,
)
from visiondoctor.doctor.probe import model_device, to_device
from visiondoctor.evaluation.coco import evaluate_detections

LOSS_RATIO_PASS = 0.1  # "near zero": a tenth of the starting loss
STILL_FALLING = 0.8  # last quarter's median loss below 80 % of the quarter before: not converged, not stuck
AP50_PASS = 0.9
PIXEL_ACCURACY_PASS = 0.95


@dataclass
class OverfitResult:
    steps: int
    initial_loss: float
    final_loss: float
    best_loss: float
    score: float | None  # detection: AP50 on the batch; segmentation: pixel accuracy
    score_name: str
    passed: bool
    history: list[float] = field(default_factory=list)
    boxes: dict[str, Any] = field(default_factory=dict)  # detection: what the fitted model's boxes are
    images: int = 0
    outputs: list[dict[str, torch.Tensor]] = field(default_factory=list)  # detection: the fitted model's detections
    targets: list[dict[str, torch.Tensor]] = field(default_factory=list)
    image_hw: list[tuple[int, int]] = field(default_factory=list)

    @property
    def loss_ratio(self) -> float:
        return self.best_loss / self.initial_loss if self.initial_loss > 0 else float("nan")

    @property
    def still_falling(self) -> bool:
        """The loss was still dropping clearly when the step budget ran out (inconclusive, not stuck)."""
        q = len(self.history) // 4
        if q < 3:
            return False
        last, before = sorted(self.history[-q:])[q // 2], sorted(self.history[-2 * q:-q])[q // 2]
        return last < STILL_FALLING * before


def overfit_one_batch(model: nn.Module, images: Any, targets: Any, io: ModelIO | None = None, steps: int = 150,
                      lr: float = 1e-3, check_every: int = 25) -> OverfitResult:
    """Fit a copy of `model` to one batch for at most `steps` Adam steps; stop early once the loss is below
    LOSS_RATIO_PASS of its start and the batch is predicted (almost) perfectly."""
    io = io or ModelIO("detection")
    probe = copy.deepcopy(model)
    device = model_device(probe)
    images, targets = to_device(images, targets, device)
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    history: list[float] = []
    score: float | None = None
    step = 0
    for step in range(1, steps + 1):
        probe.train()
        losses = io.losses(probe, images, targets)
        loss = total_loss(losses)
        history.append(float(loss.detach()))
        if not torch.isfinite(loss):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if history[-1] <= LOSS_RATIO_PASS * history[0] and (step % check_every == 0 or step == steps):
            score = batch_score(probe, io, images, targets)
            if _score_passes(io, score):
                break
    score, out = _score(probe, io, images, targets)
    best = min(history) if history else float("nan")
    ratio_ok = bool(history) and history[0] > 0 and best <= LOSS_RATIO_PASS * history[0]
    detection = io.task == "detection"
    boxes = box_statistics(out, image_sizes(images), targets) if detection else {}
    return OverfitResult(step, history[0] if history else float("nan"), history[-1] if history else float("nan"), best,
                         score, "ap50" if detection else "pixel_accuracy",
                         ratio_ok or _score_passes(io, score), history, boxes, len(list(images)),
                         [{k: v.detach().cpu() for k, v in o.items()} for o in out] if detection else [],
                         [{k: torch.as_tensor(t[k]).detach().cpu() for k in ("boxes", "labels")} for t in targets] if detection else [],
                         image_sizes(images))


def _score_passes(io: ModelIO, score: float | None) -> bool:
    if score is None:
        return False
    return score >= (AP50_PASS if io.task == "detection" else PIXEL_ACCURACY_PASS)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, io: ModelIO, images: Any, targets: Any, passes: int = 3) -> None:
    """Set every BatchNorm's running statistics to those of this batch (cumulative average over `passes`
    training forwards), so eval mode reflects the weights as they are now."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    try:
        for _ in range(passes):
            io.losses(model, images, targets)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


@torch.no_grad()
def batch_score(model: nn.Module, io: ModelIO, images: Any, targets: Any) -> float | None:
    """AP50 of the model's detections on the batch itself (faster-coco-eval), or pixel accuracy; scored in eval
    mode after re-estimating BatchNorm statistics on the batch (on `model`, which the probe owns)."""
    return _score(model, io, images, targets)[0]


@torch.no_grad()
def _score(model: nn.Module, io: ModelIO, images: Any, targets: Any) -> tuple[float | None, Any]:
    recalibrate_batchnorm(model, io, images, targets)
    model.eval()
    try:
        out = io.predict(model, images)
    finally:
        model.train()
    return _score_outputs(io, out, images, targets), out


def _score_outputs(io: ModelIO, out: Any, images: Any, targets: Any) -> float | None:
    if io.task == "detection":
        gt, dets = coco_from_batches(targets, out, image_sizes(images))
        if not gt["annotations"]:
            return None
        return evaluate_detections(gt, dets)["map50"]
    main, _ = split_segmentation_outputs(out)
    masks = stack_masks(targets).to(main.device)
    valid = masks != io.ignore_index
    return float((main.argmax(1)[valid] == masks[valid]).float().mean()) if valid.any() else None
