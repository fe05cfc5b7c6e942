"""What the overfit-one-batch probe (visiondoctor.doctor.overfit) says: whether the pipeline can fit one
batch, and what a model that fits its targets but misses the objects implies about its targets."""
from __future__ import annotations

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.checks.outputs import INVERTED_ERROR, SIZE_ERROR
from visiondoctor.doctor.overfit import (
    AP50_PASS,
    LOSS_RATIO_PASS,
    PIXEL_ACCURACY_PASS,
    OverfitResult,
)
from visiondoctor.findings import Finding

OVERFIT = FindingDoc(
    "fit.overfit-one-batch", "the pipeline cannot overfit one small batch",
    "a copy of the model trained with Adam on one batch: the loss against its start, and AP50 (pixel accuracy) on "
    "that same batch in eval mode with BatchNorm statistics re-estimated on it",
    severity=f"error when the loss stalls above {LOSS_RATIO_PASS:.0%} of its start and the batch is not predicted; "
             "info (inconclusive) when the loss was still falling when the step budget ran out")
TARGETS_ELSEWHERE_LOSS = 0.3  # the model fitted its own targets: the loss fell below 30 % of its start
TARGETS_ELSEWHERE_AP = 0.1


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
              f"detections on the same images find almost none of the objects (AP50 {result.score:.2f}): the targets "
              "it learns are not on the objects",
        evidence={"overfit_steps": result.steps, "loss_ratio": round(result.loss_ratio, 4), "ap50_on_that_batch": result.score,
                  **{k: b[k] for k in ("detections", "matched_objects", "size_ratio_median") if k in b}},
        cause="Training drives the loss down, so the model learns what its targets say; its boxes are valid and of the "
              "objects' size, yet they are not where the objects are. The targets are therefore placed elsewhere: "
              "grid cells computed with x and y swapped, a wrong stride or offset, or positives chosen without "
              "regard to the boxes.",
        fix="Check the target assignment on one image: the cells or priors made positive must overlap that image's "
            "boxes (draw them); compute cell indices as (row = y // stride, col = x // stride).",
        where="targets")]
