"""The model contract every layer relies on (torchvision's conventions), in one place.

Detection: train mode `model(images, targets)` -> dict of named losses; eval mode `model(images)`
-> list of `{boxes, scores, labels}`. Segmentation: `model(images)` -> logits, or a dict with
`out` (and optionally `aux`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


class ModelContractError(TypeError):
    """The model does not follow the conventions the contract describes."""


def split_segmentation_outputs(outputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main logits, auxiliary logits or None) from a tensor or a dict with `out` / `aux`."""
    if isinstance(outputs, torch.Tensor):
        return outputs, None
    if isinstance(outputs, Mapping) and "out" in outputs:
        return outputs["out"], outputs.get("aux")
    raise ModelContractError(f"a segmentation model must return logits or a dict with 'out', got {type(outputs).__name__}")
