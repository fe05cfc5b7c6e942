"""Find a detector's priors (anchors, default boxes) by measurement, whatever holds them.

Priors are the box sets a detector's forward uses that depend neither on the image nor on the
weights: a registered buffer, a plain tensor attribute, the output of an anchor module or of a helper
function called in forward all qualify. `discover_priors` runs three eval forwards — on the images,
on images of the same size but different content, and on the images with the trainable weights
nudged — records every [N, 4] tensor that flows through an op (inputs and outputs, seen at the
dispatcher) and is not computed from the images' values (data flow is followed op by op), and keeps
those identical in all three that look like a set of boxes covering the image: the priors, in the
frame of the image the first convolution sees (or normalised to it). Both tests matter at
initialisation: a network trained from scratch can start out all but blind to its input, so that its
decoded boxes and detections too come out the same for any image.

What priors are made of is then measured too: the grid their centres tile (spacing, extent), their
sizes, and whether they are a point grid (one prior per cell, as large as the cell: anchor-free
detectors such as FCOS keep one for their centre sampling; IoU coverage does not apply to them).
"""
from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from visiondoctor.doctor import hooks

MIN_PRIORS = 8  # fewer than this is a constant (clip bounds, a mean), not a prior set
MAX_PRIORS = 2_000_000
WEIGHT_NUDGE = 0.01  # relative change of each trainable weight tensor in the third forward


# Ops whose output depends on an input's shape, dtype or device only, never on its values.
_METADATA_ONLY = {torch.ops.aten.zeros_like, torch.ops.aten.ones_like, torch.ops.aten.empty_like,
                  torch.ops.aten.full_like, torch.ops.aten.new_zeros, torch.ops.aten.new_ones,
                  torch.ops.aten.new_empty, torch.ops.aten.new_full}


class _BoxTensorRecorder(TorchDispatchMode):
    """Every floating tensor shaped [..., N, 4] that an op reads or writes, in call order (detached copies),
    leaving out those computed from the images' content: everything an op derives from a `sources` tensor, or
    from a tensor so derived, is content (decoded detections are; priors, built from sizes alone, are not)."""

    def __init__(self, sources: Sequence[torch.Tensor] | torch.Tensor = ()) -> None:
        super().__init__()
        self.tensors: list[torch.Tensor] = []
        self._seen: set[int] = set()
        self._content: dict[int, weakref.ref] = {}  # id -> ref (tensors compare elementwise: no WeakSet)
        for t in ([sources] if isinstance(sources, torch.Tensor) else sources):
            self._mark(t)

    def _mark(self, t: torch.Tensor) -> None:
        key = id(t)
        self._content[key] = weakref.ref(t, lambda _ref, key=key: self._content.pop(key, None))

    def _is_content(self, t: torch.Tensor) -> bool:
        ref = self._content.get(id(t))
        return ref is not None and ref() is t

    def _keep(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2 or t.shape[-1] != 4:
            return
        rows = t.numel() // 4
        if rows < MIN_PRIORS or rows > MAX_PRIORS or id(t) in self._seen or self._is_content(t):
            return
        self._seen.add(id(t))
        self.tensors.append(t.detach().reshape(-1, 4).float().cpu().clone())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in pytree.tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if func.overloadpacket not in _METADATA_ONLY and any(self._is_content(t) for t in inputs):
            for t in (*outputs, *_written(func, args, kwargs or {})):  # in-place: the buffer written is content
                while isinstance(t, torch.Tensor):
                    self._mark(t)
                    t = t._base  # a view written to changes its base too
        for t in (*inputs, *outputs):
            self._keep(t)
        return out


@dataclass
class PriorLevel:
    """Priors of one (width, height) shape: the grid their centres lie on."""

    size: tuple[float, float]  # w, h in the frame
    count: int
    grid: tuple[int, int]  # distinct centre positions (columns, rows)
    spacing: tuple[float, float]  # median distance between neighbouring centres (x, y)
    extent: tuple[float, float]  # grid count x spacing: the span the grid tiles


@dataclass
class Priors:
    boxes: torch.Tensor  # [N, 4] xyxy in the frame
    frame_hw: tuple[int, int]  # the image size the priors live in (the first convolution's input)
    source_format: str  # "xyxy" | "cxcywh", and "normalised" when given in 0..1
    levels: list[PriorLevel] = field(default_factory=list)

    @property
    def point_grid(self) -> bool:
        """One square prior per cell, as large as the cell: centre points (anchor-free), not boxes to match by IoU."""
        return bool(self.levels) and all(
            abs(lv.size[0] - lv.spacing[0]) <= 0.15 * lv.spacing[0] and abs(lv.size[1] - lv.spacing[1]) <= 0.15 * lv.spacing[1]
            for lv in self.levels) and len({lv.spacing for lv in self.levels}) == len(self.levels)


def _as_xyxy(t: torch.Tensor, frame_hw: tuple[int, int]) -> tuple[torch.Tensor, str] | None:
    """The tensor as xyxy boxes in the frame, if it plausibly is a box set covering that frame."""
    h, w = frame_hw
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    normalised = bool(t.abs().max() <= 1.5)
    candidates = []
    xyxy = t * scale if normalised else t
    candidates.append((xyxy, "xyxy"))
    cxcywh = torch.cat([t[:, :2] - t[:, 2:] / 2, t[:, :2] + t[:, 2:] / 2], 1)
    candidates.append((cxcywh * scale if normalised else cxcywh, "cxcywh"))
    for boxes, name in candidates:
        wh = boxes[:, 2:] - boxes[:, :2]
        if not bool(torch.isfinite(boxes).all()) or float((wh > 0).all(1).float().mean()) < 0.99:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centres[:, 0] >= -0.1 * w) & (centres[:, 0] <= 1.1 * w) & (centres[:, 1] >= -0.1 * h)
                  & (centres[:, 1] <= 1.1 * h)).float().mean()
        spread_x = float(centres[:, 0].max() - centres[:, 0].min())
        if inside >= 0.2 and spread_x >= 0.25 * w:  # centres spread over the image (a wrong stride may put most outside)
            return boxes, name + (", normalised" if normalised else "")
    return None


def _levels(boxes: torch.Tensor) -> list[PriorLevel]:
    wh = (boxes[:, 2:] - boxes[:, :2]).round(decimals=1)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    levels = []
    shapes, inverse = torch.unique(wh, dim=0, return_inverse=True)
    for k, (bw, bh) in enumerate(shapes.tolist()):
        c = centres[inverse == k]
        spans = []
        for axis in (0, 1):
            values = torch.unique(c[:, axis].round(decimals=2))
            gap = float(torch.diff(values).median()) if values.numel() > 1 else 0.0
            spans.append((int(values.numel()), gap))
        levels.append(PriorLevel((bw, bh), int(c.shape[0]), (spans[0][0], spans[1][0]), (spans[0][1], spans[1][1]),
                                 (spans[0][0] * spans[0][1], spans[1][0] * spans[1][1])))
    return levels


def _written(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensor arguments an op writes to (in-place and out= ops), from its schema."""
    written = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            written += [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]
    return written


def _perturbed(images: Sequence[torch.Tensor] | torch.Tensor) -> Any:
    """Images of the same sizes with other content (flipped and inverted), so image-dependent tensors differ."""
    if isinstance(images, torch.Tensor):
        return 1.0 - images.flip(-1)
    return [1.0 - im.flip(-1) for im in images]


def _record(model: nn.Module, predict: Any, images: Any) -> tuple[list[torch.Tensor], tuple[int, int] | None]:
    with torch.no_grad(), hooks.record_feature_maps(model) as feats, _BoxTensorRecorder(images) as rec:
        predict(model, images)
    return rec.tensors, feats.reference_hw


@contextmanager
def _nudged_weights(model: nn.Module, scale: float = WEIGHT_NUDGE) -> Iterator[None]:
    """The trainable weights moved by seeded noise of `scale` times each tensor's mean magnitude, restored after."""
    params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    saved = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for p in params:
                noise = torch.randn(p.shape, generator=generator).to(device=p.device, dtype=p.dtype)
                p.add_(noise * (float(p.abs().mean()) * scale + 1e-3))
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)


def discover_priors(model: nn.Module, predict: Any, images: Sequence[torch.Tensor] | torch.Tensor) -> Priors | None:
    """The model's priors (None when its forward uses none): `predict(model, images)` runs one eval forward."""
    with hooks.preserved_state(model):
        model.eval()
        first, frame = _record(model, predict, images)
        other_images, _ = _record(model, predict, _perturbed(images))
        with _nudged_weights(model):
            other_weights, _ = _record(model, predict, images)
    if frame is None:
        return None
    constant = [t for t in first if all(any(s.shape == t.shape and torch.equal(s, t) for s in other)
                                        for other in (other_images, other_weights))]
    found = [b for b in (_as_xyxy(t, frame) for t in constant) if b is not None and _tiles(b[0])]
    if not found:
        return None
    boxes, fmt = max(found, key=lambda b: b[0].shape[0])  # the concatenated set of every level, when there is one
    rows = {tuple(r) for r in boxes.round(decimals=2).tolist()}
    for other, _ in found:  # levels kept apart (never concatenated) are added once each
        extra = [r for r in other.round(decimals=2).tolist() if tuple(r) not in rows]
        if extra and len(extra) == other.shape[0]:
            boxes = torch.cat([boxes, other])
            rows |= {tuple(r) for r in extra}
    return Priors(boxes, frame, fmt, _levels(boxes))


def _tiles(boxes: torch.Tensor) -> bool:
    """A prior set lays each of its shapes on a grid: (almost) every box belongs to a shape whose centres form at
    least a 2 x 2 grid (a handful of base boxes around one point, a clip bound or a mean are not priors)."""
    on_grids = sum(lv.count for lv in _levels(boxes) if lv.grid[0] >= 2 and lv.grid[1] >= 2)
    return on_grids >= 0.9 * boxes.shape[0]


def boxes_in_frame(boxes: torch.Tensor, image_hw: tuple[int, int], frame_hw: tuple[int, int]) -> torch.Tensor:
    """Ground-truth boxes of an image of `image_hw` in the frame the priors live in (the image the first
    convolution sees: resized per axis to `frame_hw` when the model resizes internally)."""
    sy, sx = frame_hw[0] / image_hw[0], frame_hw[1] / image_hw[1]
    return boxes.float() * torch.tensor([sx, sy, sx, sy])
