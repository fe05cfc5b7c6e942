"""The overfit-one-batch probe: a healthy pipeline drives one small batch to near-zero loss (and
near-perfect AP on that batch) in a bounded number of steps; a broken one cannot.

It trains a deep copy of the model (the caller's model is untouched) with Adam on a single
batch. It is a probe with a fixed batch, not a training loop: no data loading, schedule,
checkpoints or callbacks (the engine's Trainer does real training).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from visiondoctor.doctor.coco_io import coco_from_batches
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.model_io import ModelIO, image_sizes, split_segmentation_outputs, stack_masks, total_loss
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
    if score is None or step % check_every:
        score = batch_score(probe, io, images, targets)
    best = min(history) if history else float("nan")
    ratio_ok = bool(history) and history[0] > 0 and best <= LOSS_RATIO_PASS * history[0]
    return OverfitResult(step, history[0] if history else float("nan"), history[-1] if history else float("nan"), best,
                         score, "ap50" if io.task == "detection" else "pixel_accuracy",
                         ratio_ok or _score_passes(io, score), history)


def _score_passes(io: ModelIO, score: float | None) -> bool:
    if score is None:
        return False
    return score >= (AP50_PASS if io.task == "detection" else PIXEL_ACCURACY_PASS)


@torch.no_grad()
def batch_score(model: nn.Module, io: ModelIO, images: Any, targets: Any) -> float | None:
    """AP50 of the model's detections on the batch itself (faster-coco-eval), or pixel accuracy."""
    model.eval()
    try:
        out = io.predict(model, images)
    finally:
        model.train()
    if io.task == "detection":
        gt, dets = coco_from_batches(targets, out, image_sizes(images))
        if not gt["annotations"]:
            return None
        return evaluate_detections(gt, dets)["map50"]
    main, _ = split_segmentation_outputs(out)
    masks = stack_masks(targets).to(main.device)
    valid = masks != io.ignore_index
    return float((main.argmax(1)[valid] == masks[valid]).float().mean()) if valid.any() else None


def check_overfit(result: OverfitResult, num_images: int) -> list[Finding]:
    """fit.overfit-one-batch: the pipeline could not fit one batch (error), or had not finished when the step
    budget ran out while its loss was still falling (warning: inconclusive)."""
    if result.passed:
        return []
    score = "n/a" if result.score is None else f"{result.score:.2f}"
    progress = (f"loss {result.initial_loss:.3g} -> {result.best_loss:.3g} ({result.loss_ratio:.0%} of the start) after "
                f"{result.steps} steps, {result.score_name} {score} on that same batch")
    if result.still_falling:
        return [Finding(
            id="fit.overfit-one-batch", severity="warning",
            title=f"One batch of {num_images} images was not overfitted within {result.steps} steps, but the loss was "
                  f"still falling: {progress}",
            evidence={"steps": result.steps, "initial_loss": round(result.initial_loss, 5), "best_loss": round(result.best_loss, 5),
                      result.score_name: result.score, "loss_every_10_steps": [round(v, 4) for v in result.history[::10]]},
            cause="Inconclusive: the model learns the batch, slowly (a loss summed over many locations, a small learning rate).",
            fix="Rerun the probe with more steps (diagnose(..., overfit_steps=...)); it must reach near-zero loss.",
            where="pipeline")]
    return [Finding(
        id="fit.overfit-one-batch", severity="error",
        title=f"The pipeline cannot overfit one batch of {num_images} images: {progress}",
        evidence={"steps": result.steps, "initial_loss": round(result.initial_loss, 5), "best_loss": round(result.best_loss, 5),
                  "final_loss": round(result.final_loss, 5), "loss_ratio": round(result.loss_ratio, 4),
                  result.score_name: result.score, "pass_if": f"loss below {LOSS_RATIO_PASS:.0%} of the start or "
                  f"{result.score_name} >= {AP50_PASS if result.score_name == 'ap50' else PIXEL_ACCURACY_PASS}",
                  "loss_every_10_steps": [round(v, 4) for v in result.history[::10]]},
        cause="A model that cannot memorise a handful of images has a broken pipeline, not too little data: targets "
              "that change every step (random assignment), labels that do not reach the loss, a loss that ignores "
              "the outputs it should train, or parameters the optimizer never sees.",
        fix="Fix the errors above first (assignment, heads, gradients); then confirm with this probe: it must pass "
            "before a long training run is worth starting.",
        where="pipeline")]
