"""Controlled experiments on a model: change one thing in its inputs and measure how it responds.

Assignment: whether the training signal follows the objects. The boxes of a batch are moved to
other places of their images (reflected through the image centre, so sizes and labels stay) and
every loss component is computed with the true and with the moved boxes, under the same random
state. A component whose targets are assigned by overlap (or by any rule that looks at where the
boxes are) changes; one whose positives are drawn at random, handed out round-robin or put in fixed
slots gives exactly the same value. Nothing here reads a matcher or a class name: only the model's
train-mode contract (images, targets -> losses).

Void labels: whether a segmentation loss ignores the dataset's void pixels: the gradient the loss
sends to the model's output at those pixels (zero when it ignores them, whatever the loss is).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.ops import box_iou

from visiondoctor.doctor import hooks
from visiondoctor.doctor.model_io import ModelIO, stack_masks, total_loss


@dataclass
class AssignmentResponse:
    """Each loss component with the true boxes and with the boxes moved elsewhere in their images (same
    images, same random state, a few random states)."""

    boxes_moved: int
    repeats: int
    with_true_boxes: dict[str, float]  # component -> mean loss
    relative_change: dict[str, float]  # component -> mean |L(moved) - L(true)| / |L(true)|

    @property
    def invariant(self) -> list[str]:
        """Components that do not change at all when every box moves: their targets ignore where the objects are."""
        return [k for k, v in self.relative_change.items() if v <= INVARIANT and abs(self.with_true_boxes[k]) > 0]

    def to_evidence(self) -> dict[str, Any]:
        return {"boxes_moved": self.boxes_moved, "random_states": self.repeats,
                "loss_with_true_boxes": {k: round(v, 5) for k, v in self.with_true_boxes.items()},
                "relative_change_when_boxes_move": {k: float(f"{v:.3g}") for k, v in self.relative_change.items()}}


INVARIANT = 1e-6  # float noise: a component that changes less than this did not see the boxes move


def _reflected(boxes: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each box moved to a place of its image it does not overlap (point, horizontal or vertical reflection
    through the centre); returns (moved boxes, mask of the boxes that could be moved)."""
    h, w = hw
    moved = boxes.clone()
    ok = torch.zeros(len(boxes), dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        for cand in ([w - x2, h - y2, w - x1, h - y1], [w - x2, y1, w - x1, y2], [x1, h - y2, x2, h - y1]):
            c = torch.tensor([cand], dtype=boxes.dtype)
            if float(box_iou(c, boxes).max()) == 0.0:
                moved[i], ok[i] = c[0], True
                break
    return moved, ok


def assignment_response(model: torch.nn.Module, io: ModelIO, images: Sequence[torch.Tensor],
                        targets: Sequence[dict], repeats: int = 2, seed: int = 0) -> AssignmentResponse | None:
    """Every loss component with the true and with moved boxes, on a copy of the model (None when no box can be
    moved). A component whose targets follow the objects changes when they move; one whose positives are drawn at
    random, handed out round-robin or put in fixed slots does not change at all under the same random state."""
    probe = copy.deepcopy(model)
    probe.train()
    moved_targets, count = [], 0
    for im, t in zip(images, targets):
        boxes = torch.as_tensor(t["boxes"]).detach().float().reshape(-1, 4).cpu()
        moved, ok = _reflected(boxes, (int(im.shape[-2]), int(im.shape[-1])))
        count += int(ok.sum())
        moved_targets.append({**t, "boxes": moved.to(torch.as_tensor(t["boxes"]).device, torch.as_tensor(t["boxes"]).dtype)})
    if count == 0:
        return None
    true_sum: dict[str, float] = {}
    change: dict[str, float] = {}
    with hooks.preserved_state(probe), torch.no_grad():
        for r in range(repeats):
            torch.manual_seed(seed + r)
            with_true = io.losses(probe, images, targets)
            torch.manual_seed(seed + r)
            with_moved = io.losses(probe, images, moved_targets)
            for k, v in with_true.items():
                a, b = float(v), float(with_moved.get(k, torch.tensor(float("nan"))))
                true_sum[k] = true_sum.get(k, 0.0) + a / repeats
                change[k] = change.get(k, 0.0) + abs(b - a) / max(abs(a), 1e-12) / repeats
    return AssignmentResponse(count, repeats, true_sum, change)


@dataclass
class VoidResponse:
    """Whether a segmentation loss trains the void pixels: the gradient it sends to the model's outputs there."""

    void_value: int
    void_pixels: int
    void_gradient_share: float  # share of |d loss / d outputs| on void pixels (0 when the loss ignores them)
    void_pixel_share: float
    raised: str = ""  # the loss raised on the void value itself


def void_response(model: torch.nn.Module, io: ModelIO, images: Any, masks: Any, void_value: int,
                  seed: int = 0) -> VoidResponse | None:
    """The loss's gradient with respect to the model's main output, on the pixels whose mask value is
    `void_value` (None without void pixels, or when the output cannot be read)."""
    masks = stack_masks(masks)
    void = masks == void_value
    if not bool(void.any()):
        return None
    probe = copy.deepcopy(model)
    probe.train()
    captured: dict[str, torch.Tensor] = {}

    def keep(_m: torch.nn.Module, _args: tuple, out: Any) -> None:
        main = out if isinstance(out, torch.Tensor) else out.get("out") if isinstance(out, dict) else None
        if isinstance(main, torch.Tensor) and main.requires_grad:
            main.retain_grad()
            captured["out"] = main

    handle = probe.register_forward_hook(keep)
    share = float(void.float().mean())
    try:
        with hooks.preserved_state(probe):
            torch.manual_seed(seed)
            try:
                total_loss(io.losses(probe, images, masks)).backward()
            except Exception as exc:  # noqa: BLE001 - the loss raising on the void value is the finding itself
                return VoidResponse(void_value, int(void.sum()), float("nan"), share, f"{type(exc).__name__}: {exc}")
    finally:
        handle.remove()
    out = captured.get("out")
    if out is None or out.grad is None:
        return None
    grad = out.grad.detach().abs().sum(1)  # [N, h, w]
    if grad.shape[-2:] != void.shape[-2:]:
        grad = torch.nn.functional.interpolate(grad[:, None], size=void.shape[-2:], mode="nearest")[:, 0]
    total = float(grad.sum())
    return VoidResponse(void_value, int(void.sum()), float(grad[void.to(grad.device)].sum()) / total if total > 0 else 0.0,
                        share)
