"""When the model or its loss raises in a probe, the exception is the evidence of a finding that names
its likely cause; a failed probe is never reported as a clean model.

The cause is read from what the model was given and what it said: the largest target label (or
mask value) against the number of outputs the data needs, the loss's ignore value, and the
exception's own message. The exception type and message are kept as evidence.
"""
from __future__ import annotations

import re
import traceback
from typing import Any

import torch

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.model_io import ModelContractError, ModelIO, stack_masks
from visiondoctor.doctor.probe import Observation
from visiondoctor.findings import Finding

INDEX_ERROR = re.compile(r"out of bounds|out of range|index .* is out|class values must be smaller|"
                         r"device-side assert|assertion .*t >= 0 && t < n_classes", re.IGNORECASE)
VOID_GRADIENT = 1e-4  # of the output gradient on void pixels: above float noise, a loss that trains them
PASSES = {"train": "the training forward (model(images, targets) or the loss)", "eval": "the eval-mode forward",
          "autocast": "the training forward under autocast"}

MODEL_CONTRACT = FindingDoc(
    "model.contract", "the model's outputs or losses break the torchvision contract the pipeline relies on",
    "the type and shapes of what the model returns: train mode a dict of scalar losses (or the loss file's); eval "
    "mode one {boxes [N, 4], scores [N], labels [N]} per image (detection) or logits / {out, aux} (segmentation)",
    severity="error")
MODEL_RAISED = FindingDoc(
    "model.raised", "the model or its loss raised during a probe, for a reason the doctor cannot name more precisely",
    "the exception a probe forward or backward raised, with where it was raised", severity="error")
SEG_MASK_VALUES = FindingDoc(
    "seg.mask-values", "mask values the loss cannot take, or void pixels that reach the loss as a class",
    "the mask values of the probe batch against the model's outputs and the loss's ignore value; the loss's response "
    "when the void pixels are relabelled (a loss that ignores them does not change); a loss that raises on them",
    severity="error")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _evidence(name: str, exc: BaseException) -> dict[str, Any]:
    return {"probe": name, "exception": type(exc).__name__, "message": str(exc).strip()[:400], "raised_at": _where(exc)}


def _max_label(targets: Any) -> int | None:
    labels = [int(torch.as_tensor(t["labels"]).max()) for t in targets
              if isinstance(t, dict) and "labels" in t and torch.as_tensor(t["labels"]).numel()]
    return max(labels) if labels else None


def _mask_values(targets: Any) -> list[int]:
    try:
        return sorted(int(v) for v in torch.unique(stack_masks(targets)))
    except Exception:  # noqa: BLE001 - targets of another shape: nothing to read
        return []


def _explain(name: str, exc: BaseException, task: str, targets: Any, num_classes: int | None,
             io: ModelIO) -> Finding:
    evidence = _evidence(name, exc)
    message = str(exc)
    if isinstance(exc, ModelContractError):
        return Finding(
            id="model.contract", severity="error", title=f"The model does not follow the output contract: {message[:160]}",
            evidence=evidence,
            cause="The pipeline (evaluation, export, the doctor's probes) reads the model's outputs in torchvision's "
                  "format; this model returns something else, so its outputs cannot be evaluated.",
            fix="Return a dict of scalar losses in train mode and, in eval mode, a list with one dict of boxes [N, 4] "
                "(x1, y1, x2, y2 pixels), scores [N], labels [N] per image (segmentation: logits or {'out', 'aux'}).",
            where=PASSES.get(name, name))
    if INDEX_ERROR.search(message):
        if task == "segmentation":
            values = _mask_values(targets)
            beyond = [v for v in values if num_classes is not None and v >= num_classes and v != io.ignore_index]
            void = [v for v in values if v == io.ignore_index]
            evidence.update({"mask_values": values[:20], "model_outputs": num_classes, "loss_ignore_value": io.ignore_index})
            shown = beyond or void
            return Finding(
                id="seg.mask-values", severity="error",
                title=f"The loss raised on mask value{'s' if len(shown) > 1 else ''} {shown[:4]} that no output class has"
                      + (" (the void value)" if void and not beyond else ""),
                evidence=evidence,
                cause="A mask value outside 0..classes-1 reaches the loss as a class index: the dataset's void value "
                      "(often 255, or the layout's own) is not the loss's ignore value, or the masks hold values the "
                      "model has no output for.",
                fix=f"Make the loss ignore the void value (e.g. CrossEntropyLoss(ignore_index={void[0] if void else 255}), or "
                    "mask those pixels out before one_hot/Dice), and check data.ignore_index against the dataset "
                    "(visiondoctor data validate shows the void value).",
                where="loss")
        top = _max_label(targets)
        evidence.update({"largest_target_label": top, "num_classes_given": num_classes})
        return Finding(
            id="head.num-classes-mismatch", severity="error",
            title=f"The model raised on target label {top}: its classifier has no output for it"
                  + (" (background not counted in num_classes?)" if top is not None and num_classes is not None
                     and top == num_classes - 1 else ""),
            evidence=evidence,
            cause="A target label indexes past the classifier's outputs. With labels 1..C and 0 reserved for "
                  "background, a classifier must have C + 1 outputs; one built with C (the number of real classes) "
                  "crashes on label C, or silently drops the last class where the index is not checked.",
            fix="Build the classification layer with num_classes = real classes + 1 (background at 0), as the data's "
                "num_classes says; or map labels to 0..C-1 if the model has no background output.",
            where=PASSES.get(name, name))
    return Finding(
        id="model.raised", severity="error", title=f"{PASSES.get(name, name).capitalize()} raised {type(exc).__name__}: "
                                                   f"{message.strip().splitlines()[0][:160] if message.strip() else ''}",
        evidence=evidence,
        cause="The model or its loss fails on a batch of the data as it is given; training cannot start.",
        fix="Run one batch through model(images, targets) in a debugger at the place given in the evidence.",
        where=PASSES.get(name, name))


@check("probe", order=1, findings=[MODEL_CONTRACT, MODEL_RAISED, SEG_MASK_VALUES, "head.num-classes-mismatch"])
def probe_failures(obs: Observation, targets: Any, io: ModelIO, task: str, num_classes: int | None = None) -> list[Finding]:
    """A finding for each probe pass that raised (the autocast pass only when the plain one worked: the same
    failure under autocast says nothing new)."""
    findings = []
    for name, exc in obs.errors.items():
        if name == "autocast" and "train" in obs.errors:
            continue
        if name in PASSES:
            findings.append(_explain(name, exc, task, targets, num_classes, io))
    return findings


@check("probe", order=2, findings=["seg.mask-values"])
def check_mask_values(obs: Observation, targets: Any, io: ModelIO, task: str, num_classes: int | None = None) -> list[Finding]:
    """seg.mask-values without a crash: mask values beyond the outputs that are not ignored, and void pixels that
    the loss takes as a class (measured: relabelling them changes the loss)."""
    if task != "segmentation" or "train" in obs.errors:
        return []
    findings = []
    classes = num_classes or (obs.seg_outputs.channels if obs.seg_outputs else None)
    values = _mask_values(targets)
    beyond = [v for v in values if classes is not None and v >= classes and v != io.ignore_index]
    if beyond:
        findings.append(Finding(
            id="seg.mask-values", severity="error",
            title=f"Masks hold values {beyond[:5]} beyond the {classes} output classes, and the loss does not ignore them",
            evidence={"mask_values": values[:20], "model_outputs": classes, "loss_ignore_value": io.ignore_index},
            cause="Pixels with these values are trained as classes the model does not have (or crash a loss that checks).",
            fix="Map them to the ignore value (the dataset's void), or give the model outputs for them.",
            where="targets"))
    void = obs.void
    if void is not None and void.raised:
        findings.append(Finding(
            id="seg.mask-values", severity="error",
            title=f"The loss raises on the void value {void.void_value} ({void.void_pixels} void pixels in the probe batch)",
            evidence={"void_value": void.void_value, "void_pixels": void.void_pixels, "exception": void.raised[:300]},
            cause="The loss turns every mask value into a class (one_hot, gather) and does not mask the void pixels out.",
            fix=f"Exclude pixels equal to {void.void_value} from the loss (ignore_index, or a mask before one_hot/Dice).",
            where="loss"))
    elif void is not None and void.void_gradient_share > VOID_GRADIENT:
        findings.append(Finding(
            id="seg.mask-values", severity="error",
            title=f"The void pixels (value {void.void_value}) are trained as a class: {void.void_gradient_share:.0%} of the "
                  f"loss's gradient falls on them ({void.void_pixel_share:.0%} of the pixels)",
            evidence={"void_value": void.void_value, "void_pixels": void.void_pixels,
                      "void_share_of_pixels": round(void.void_pixel_share, 4),
                      "void_share_of_output_gradient": round(void.void_gradient_share, 4)},
            cause="A loss that ignored the void value would send no gradient to the outputs at those pixels; this one "
                  "does, so unlabelled pixels (object borders, 'don't care' regions) are taught as some class.",
            fix=f"Ignore the value {void.void_value} in the loss (e.g. CrossEntropyLoss(ignore_index={void.void_value})); "
                "do not clamp or remap it into a class.",
            where="loss"))
    return findings
