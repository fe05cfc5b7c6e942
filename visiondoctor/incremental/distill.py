"""Distillation of old-class outputs: the previous phase's model (the teacher) tells the new one
what it used to answer for the old classes, so learning new classes does not overwrite them.

`RoIDistillation` is a Trainer `loss_fn`. It runs the student as usual (torchvision's four
losses), records the RoIs the student's box head sampled and the class logits it produced
for them, pools the teacher's own features at exactly those RoIs, and adds

    loss_distill = T^2 * KL(softmax(teacher[:, :K] / T) || softmax(student[:, :K] / T))

over the first K = 1 + old classes columns (background and the old classes; the new classes
have no teacher). The same RoIs for both models make the two distributions comparable; the
teacher never gets gradients. The weight of the term is `train.loss_weights["loss_distill"]`,
as for every other named loss.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


class RoIDistillation:
    """loss_fn(model, images, targets) -> {torchvision losses..., "loss_distill": ...} for a two-stage
    torchvision detector whose first `old_outputs` classifier columns the `teacher` also has."""

    def __init__(self, teacher: nn.Module, old_outputs: int, temperature: float = 2.0) -> None:
        if old_outputs < 2:
            raise ValueError(f"RoIDistillation: need background plus at least one old class, got {old_outputs} outputs")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.old_outputs = old_outputs
        self.temperature = temperature

    def __call__(self, model: nn.Module, images: Any, targets: Any) -> dict[str, torch.Tensor]:
        student = _unwrap(model)
        seen: dict[str, Any] = {}

        def rois(_m: nn.Module, args: tuple, _out: Any) -> None:
            seen["proposals"], seen["image_shapes"] = args[1], args[2]

        def logits(_m: nn.Module, _args: tuple, out: Any) -> None:
            seen["logits"] = out[0]

        handles = [student.roi_heads.box_roi_pool.register_forward_hook(rois),
                   student.roi_heads.box_predictor.register_forward_hook(logits)]
        try:
            losses = model(images, targets)
        finally:
            for h in handles:
                h.remove()
        if "logits" not in seen:
            raise RuntimeError("RoIDistillation: the student's box head did not run (is the model in train mode?)")
        losses["loss_distill"] = self.kl(seen["logits"], self.teacher_logits(images, seen["proposals"], seen["image_shapes"]))
        return losses

    @torch.no_grad()
    def teacher_logits(self, images: list[torch.Tensor], proposals: list[torch.Tensor],
                       image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """The teacher's class logits for the student's RoIs (same input transform, so the same frame)."""
        t = self.teacher
        image_list, _ = t.transform(images)
        features = t.backbone(image_list.tensors)
        pooled = t.roi_heads.box_roi_pool(features, proposals, image_shapes)
        return t.roi_heads.box_predictor(t.roi_heads.box_head(pooled))[0]

    def kl(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        k, temp = self.old_outputs, self.temperature
        s = F.log_softmax(student_logits[:, :k].float() / temp, dim=-1)
        t = F.log_softmax(teacher_logits[:, :k].float() / temp, dim=-1)
        return F.kl_div(s, t, log_target=True, reduction="batchmean") * temp * temp
