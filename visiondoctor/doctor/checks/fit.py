"""What the overfit-one-batch probe (visiondoctor.doctor.overfit) says: whether the pipeline can fit one
batch, and what a model that fits its targets but misses the objects implies about its targets."""
from __future__ import annotations

from collections.abc import Callable

import torch

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.checks.outputs import INVERTED_ERROR, SIZE_ERROR
from visiondoctor.doctor.coco_io import coco_from_batches
from visiondoctor.doctor.overfit import (
    AP50_PASS,
    LOSS_RATIO_PASS,
    PIXEL_ACCURACY_PASS,
    OverfitResult,
)
from visiondoctor.evaluation.coco import evaluate_detections
from visiondoctor.findings import Finding

OVERFIT = FindingDoc(
    "fit.overfit-one-batch", "the pipeline cannot overfit one small batch",
    "a copy of the model trained with Adam on one batch: the loss against its start, and AP50 (pixel accuracy) on "
    "that same batch in eval mode with BatchNorm statistics re-estimated on it",
    severity=f"error when the loss stalls above {LOSS_RATIO_PASS:.0%} of its start and the batch is not predicted; "
             "info (inconclusive) when the loss was still falling when the step budget ran out")
# The model fitted its own targets (loss below 30 % of its start), yet on the very batch it fitted it finds fewer
# than 60 % of the objects at IoU 0.5 (a model whose targets are on the objects predicts that batch almost
# perfectly: the probe's own pass bar is AP50 0.9).
TARGETS_ELSEWHERE_LOSS = 0.3
TARGETS_ELSEWHERE_AP = 0.6
DISPLACED_AP = 0.5  # the fitted detections match the objects this well once the objects are moved systematically
DISPLACED_GAIN = 0.25  # and this much better than where the objects are


def _swap_xy(b: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return b[:, [1, 0, 3, 2]]


def _mirror_x(b: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)


def _mirror_y(b: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], 1)


# systematic displacements a target assignment makes (x and y swapped in an index, a flipped axis)
DISPLACEMENTS: dict[str, Callable[[torch.Tensor, int, int], torch.Tensor]] = {
    "x and y swapped": _swap_xy, "mirrored left-right": _mirror_x, "mirrored top-bottom": _mirror_y,
    "rotated half a turn": lambda b, h, w: _mirror_y(_mirror_x(b, h, w), h, w),
}


def displaced_fit(result: OverfitResult) -> tuple[str, float, float] | None:
    """(displacement, AP50 against the displaced objects, AP50 against the objects) when the fitted model's detections
    match the objects far better after a systematic displacement than where they are."""
    if not result.outputs or not result.targets:
        return None
    sizes = result.image_hw

    def ap50(targets: list[dict[str, torch.Tensor]]) -> float:
        gt, dets = coco_from_batches(targets, result.outputs, sizes)
        return evaluate_detections(gt, dets)["map50"] if gt["annotations"] else 0.0

    where = ap50(result.targets)
    best = max(((name, ap50([{**t, "boxes": move(t["boxes"].float(), h, w)} for t, (h, w) in zip(result.targets, sizes)]))
                for name, move in DISPLACEMENTS.items()), key=lambda x: x[1])
    if best[1] >= DISPLACED_AP and best[1] >= where + DISPLACED_GAIN:
        return best[0], best[1], where
    return None


@check("probe", order=96, findings=[OVERFIT, "assignment.location-blind"])
def check_overfit(overfit: OverfitResult, num_images: int | None = None) -> list[Finding]:
    """fit.overfit-one-batch (error when the loss stalls; info when it was still falling: inconclusive), and the
    inference the probe allows: a model that fits its targets while its detections on the very same images miss the
    objects was trained towards targets that are not on the objects."""
    result = overfit
    if num_images is not None:
        result.images = num_images
    findings = _targets_elsewhere(result)
    if result.passed:
        return findings
    score = "n/a" if result.score is None else f"{result.score:.2f}"
    progress = (f"loss {result.initial_loss:.3g} -> {result.best_loss:.3g} ({result.loss_ratio:.0%} of the start) after "
                f"{result.steps} steps, {result.score_name} {score} on that same batch")
    evidence = {"steps": result.steps, "initial_loss": round(result.initial_loss, 5), "best_loss": round(result.best_loss, 5),
                "final_loss": round(result.final_loss, 5), "loss_ratio": round(result.loss_ratio, 4),
                result.score_name: result.score, "pass_if": f"loss below {LOSS_RATIO_PASS:.0%} of the start or "
                f"{result.score_name} >= {AP50_PASS if result.score_name == 'ap50' else PIXEL_ACCURACY_PASS}",
                "loss_every_10_steps": [round(v, 4) for v in result.history[::10]]}
    if result.still_falling:
        return findings + [Finding(
            id="fit.overfit-one-batch", severity="info",
            title=f"Inconclusive: one batch of {result.images} images was not overfitted within {result.steps} steps, but "
                  f"the loss was still falling: {progress}",
            evidence=evidence,
            cause="The model learns the batch, slowly (a loss summed over many locations, a small learning rate); the "
                  "probe's step budget ran out before it could decide.",
            fix="Nothing to fix from this alone; rerun the probe with more steps (diagnose(..., overfit_steps=...)) to decide.",
            where="pipeline")]
    return findings + [Finding(
        id="fit.overfit-one-batch", severity="error",
        title=f"The pipeline cannot overfit one batch of {result.images} images: {progress}",
        evidence=evidence,
        cause="A model that cannot memorise a handful of images has a broken pipeline, not too little data: targets "
              "that change every step (random assignment), labels that do not reach the loss, a loss that ignores "
              "the outputs it should train, or parameters the optimizer never sees.",
        fix="Fix the errors above first (assignment, heads, gradients); then confirm with this probe: it must pass "
            "before a long training run is worth starting.",
        where="pipeline")]


def _targets_elsewhere(result: OverfitResult) -> list[Finding]:
    displaced = displaced_fit(result) if result.score_name == "ap50" else None
    if displaced is not None:
        how, ap_moved, ap_here = displaced
        return [Finding(
            id="assignment.location-blind", severity="error",
            title=f"The model learns its targets {how}: fitted on one batch, its detections match the objects {how} "
                  f"(AP50 {ap_moved:.2f}) far better than where they are (AP50 {ap_here:.2f})",
            evidence={"overfit_steps": result.steps, "loss_ratio": round(result.loss_ratio, 4), "displacement": how,
                      "ap50_against_displaced_objects": round(ap_moved, 3), "ap50_against_the_objects": round(ap_here, 3)},
            cause=f"The targets are built at the wrong place: the cell or prior made positive for an object is the one "
                  f"{how} (an index read as (x, y) instead of (row, col), a flipped axis), so the model is taught to "
                  "fire where the objects are not.",
            fix="Compute the positive cell of a box as (row = y // stride, col = x // stride) and index the output "
                "with (row, col); draw the positives of one image over it to check.",
            where="targets")]
    b = result.boxes
    if result.score_name != "ap50" or result.score is None or not b.get("detections"):
        return []
    fitted = result.initial_loss > 0 and result.best_loss <= TARGETS_ELSEWHERE_LOSS * result.initial_loss
    boxes_sound = b.get("nonfinite_share", 0) == 0 and b.get("inverted_or_empty_share", 0) <= INVERTED_ERROR
    ratio = b.get("size_ratio_median")
    sizes_sound = ratio is None or 1 / SIZE_ERROR <= ratio <= SIZE_ERROR
    if not (fitted and result.score < TARGETS_ELSEWHERE_AP and boxes_sound and sizes_sound):
        return []
    return [Finding(
        id="assignment.location-blind", severity="error",
        title=f"The model fits its training targets (loss down to {result.loss_ratio:.0%} of the start) yet its "
              f"detections on the same images miss many of the objects (AP50 {result.score:.2f}): the targets it "
              "learns are not on the objects",
        evidence={"overfit_steps": result.steps, "loss_ratio": round(result.loss_ratio, 4), "ap50_on_that_batch": result.score,
                  **{k: b[k] for k in ("detections", "matched_objects", "size_ratio_median") if k in b}},
        cause="Training drives the loss down, so the model learns what its targets say; its boxes are valid and of the "
              "objects' size, yet they are not where the objects are. The targets are therefore placed elsewhere: "
              "grid cells computed with x and y swapped, a wrong stride or offset, or positives chosen without "
              "regard to the boxes.",
        fix="Check the target assignment on one image: the cells or priors made positive must overlap that image's "
            "boxes (draw them); compute cell indices as (row = y // stride, col = x // stride).",
        where="targets")]
