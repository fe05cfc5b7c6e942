"""How the doctor talks to a model: torchvision conventions for detection and segmentation.

Detection: train-mode `model(images, targets)` returns a dict of named losses; eval-mode
`model(images)` returns a list of `{boxes, scores, labels}`. Segmentation: `model(images)`
returns logits or a dict with `out` (and optionally `aux`); the loss is the user's
`loss_fn(outputs, targets)` or cross-entropy on `out` + 0.4 x cross-entropy on `aux`
(the weighting DeepLabV3's reference training uses).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visiondoctor.models.contract import ModelContractError, split_segmentation_outputs

__all__ = ["LossFn", "ModelIO", "ModelContractError", "check_detections", "split_segmentation_outputs", "stack_images",
           "stack_masks", "image_sizes", "total_loss", "AUX_WEIGHT"]

LossFn = Callable[[Any, Any], "torch.Tensor | Mapping[str, torch.Tensor]"]
AUX_WEIGHT = 0.4


@dataclass
class ModelIO:
    task: str = "detection"  # "detection" | "segmentation"
    loss_fn: LossFn | None = None
    ignore_index: int = 255  # segmentation only

    def __post_init__(self) -> None:
        if self.task not in ("detection", "segmentation"):
            raise ValueError(f"task must be 'detection' or 'segmentation', got {self.task!r}")

    def losses(self, model: nn.Module, images: Any, targets: Any) -> dict[str, torch.Tensor]:
        """Named loss components of one training forward (model must be in train mode)."""
        if self.task == "detection":
            out = model(list(images), list(targets)) if self.loss_fn is None else self.loss_fn(model(list(images)), targets)
            return _as_loss_dict(out, "model(images, targets)" if self.loss_fn is None else "loss_fn")
        outputs = model(stack_images(images))
        if self.loss_fn is not None:
            return _as_loss_dict(self.loss_fn(outputs, stack_masks(targets)), "loss_fn")
        masks = stack_masks(targets)
        main, aux = split_segmentation_outputs(outputs)
        losses = {"loss_out": F.cross_entropy(main, masks, ignore_index=self.ignore_index)}
        if aux is not None:
            losses["loss_aux"] = AUX_WEIGHT * F.cross_entropy(aux, masks, ignore_index=self.ignore_index)
        return losses

    def predict(self, model: nn.Module, images: Any) -> Any:
        """Eval-mode outputs (caller sets eval mode and no_grad)."""
        if self.task == "detection":
            out = model(list(images))
            if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list):  # scripted-style (losses, dets)
                out = out[1]
            check_detections(out, len(list(images)))
            return out
        return model(stack_images(images))


def check_detections(out: Any, num_images: int) -> None:
    """The eval-mode contract of a detector: one {boxes [N, 4], scores [N], labels [N]} per image."""
    def fail(what: str) -> ModelContractError:
        return ModelContractError(f"eval-mode detection output must be a list with one dict per image of boxes [N, 4], "
                                  f"scores [N], labels [N]; got {what}")

    if not isinstance(out, list):
        raise fail(f"a {type(out).__name__}" + (f" of {len(out)} items" if isinstance(out, (tuple, Mapping)) else ""))
    if len(out) != num_images:
        raise fail(f"a list of {len(out)} items for {num_images} images")
    for i, d in enumerate(out):
        if not isinstance(d, Mapping) or not {"boxes", "scores", "labels"} <= set(d):
            raise fail(f"item {i}: {type(d).__name__}" + (f" with keys {sorted(d)}" if isinstance(d, Mapping) else ""))
        boxes, scores, labels = (torch.as_tensor(d[k]) for k in ("boxes", "scores", "labels"))
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.dim() != 1 or labels.dim() != 1 \
                or not (len(boxes) == len(scores) == len(labels)):
            raise fail(f"item {i}: boxes {tuple(boxes.shape)}, scores {tuple(scores.shape)}, labels {tuple(labels.shape)}")


def total_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return sum(losses.values(), torch.zeros(()))  # type: ignore[arg-type]


def _as_loss_dict(out: Any, what: str) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        if out.dim() != 0:
            out = out.mean()
        return {"loss": out}
    if isinstance(out, Mapping) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
        return {str(k): (v if v.dim() == 0 else v.mean()) for k, v in out.items()}
    raise ModelContractError(f"{what} must return a loss tensor or a dict of loss tensors in train mode, got {type(out).__name__}")


def stack_images(images: Any) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images if images.dim() == 4 else images.unsqueeze(0)
    return torch.stack(list(images))


def stack_masks(targets: Any) -> torch.Tensor:
    if isinstance(targets, torch.Tensor):
        return targets.long()
    items = [t["masks"] if isinstance(t, Mapping) else t for t in targets]
    return torch.stack([torch.as_tensor(t) for t in items]).long()


def image_sizes(images: Sequence[torch.Tensor] | torch.Tensor) -> list[tuple[int, int]]:
    return [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
