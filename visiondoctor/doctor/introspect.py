"""Where things live in torchvision-style models: classification heads, dense heads, box coders.

This is the only module that knows torchvision's internal layout (SSD/SSDLite, RetinaNet,
FCOS, Faster/Mask R-CNN, DeepLabV3/FCN/LRASPP). Everything it returns is a place to hook;
the numbers themselves are always measured from what those modules output.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.fcos import FCOS, FCOSClassificationHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.retinanet import (
    RetinaNet,
    RetinaNetClassificationHead,
)
from torchvision.models.detection.ssd import SSD, SSDScoringHead

AUX_NAME = re.compile(r"(^|\.)aux", re.IGNORECASE)


@dataclass
class HeadRef:
    """A module whose output carries one score per class; `classes_of(output)` reads the measured count."""

    name: str
    module: nn.Module
    role: str  # "main" | "aux" | "mask" | "rpn"
    classes_of: Callable[[Any], int | None]


def _last_dim(out: Any) -> int | None:
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() >= 2 else None


def _first_of_tuple(out: Any) -> int | None:
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return int(out[0].shape[-1])
    return None


def _channels(out: Any) -> int | None:
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 4 else None


def classification_heads(model: nn.Module) -> list[HeadRef]:
    """Every classification head of a torchvision detector or segmenter, auxiliary ones included,
    and for other models any top-level child named like an auxiliary head."""
    heads: list[HeadRef] = []
    for name, m in model.named_modules():
        if isinstance(m, SSDScoringHead) and "regression" not in name and m.num_columns != 4:
            heads.append(HeadRef(name, m, "main", _last_dim))
        elif isinstance(m, (RetinaNetClassificationHead, FCOSClassificationHead)):
            heads.append(HeadRef(name, m, "main", _last_dim))
        elif isinstance(m, FastRCNNPredictor) or (hasattr(m, "cls_score") and hasattr(m, "bbox_pred")):
            heads.append(HeadRef(name, m, "main", _first_of_tuple))
        elif isinstance(m, MaskRCNNPredictor):
            heads.append(HeadRef(name, m, "mask", _channels))
    known = {h.name for h in heads}
    for name, child in model.named_children():
        if name in known:
            continue
        if name == "classifier" or AUX_NAME.search(name):
            heads.append(HeadRef(name, child, "aux" if AUX_NAME.search(name) else "main", _channels))
    return heads


@dataclass
class DenseParts:
    """A one-stage torchvision detector: head output keys, how scores are made, its box coder."""

    head_name: str
    softmax: bool  # SSD: softmax with background at index 0; RetinaNet/FCOS: sigmoid per class
    box_coder: Any
    centerness: bool  # FCOS multiplies the class score by the centerness


def dense_parts(model: nn.Module) -> DenseParts | None:
    if isinstance(model, SSD):
        return DenseParts("head", True, model.box_coder, False)
    if isinstance(model, RetinaNet):
        return DenseParts("head", False, model.box_coder, False)
    if isinstance(model, FCOS):
        return DenseParts("head", False, model.box_coder, True)
    return None


def is_anchor_free(model: nn.Module) -> bool:
    """FCOS keeps an AnchorGenerator only for its point grid; its anchors are not matched by IoU."""
    return isinstance(model, FCOS)


def coder_clip(box_coder: Any) -> float | None:
    """The largest log-scale dw/dh a torchvision BoxCoder decodes before clamping (log(1000/16) by default)."""
    clip = getattr(box_coder, "bbox_xform_clip", None)
    return float(clip) if clip is not None else None


def coder_weights(box_coder: Any) -> tuple[float, float, float, float] | None:
    w = getattr(box_coder, "weights", None)
    return tuple(float(x) for x in w) if w is not None and len(w) == 4 else None  # type: ignore[return-value]


def top_level(name: str, depth: int = 1) -> str:
    parts = name.split(".")
    return ".".join(parts[:depth]) if parts and parts[0] else "(root)"
