"""Training losses of the text-query dense detector.

- `cls`: sigmoid focal loss (torchvision.ops.sigmoid_focal_loss) on the similarity (CAM) logit
  of every (query, location): target 1 at positives, 0 elsewhere (`cls_target="binary"`, the
  seed). With `cls_target="iou"` the target at a positive is the IoU its box achieves, trained
  with the quality focal loss below: the similarity itself becomes the IoU-aware score (the
  joint representation of Generalized Focal Loss / VarifocalNet).
- `box_l1` and `box_giou`: L1 on image-normalised xyxy and GIoU loss
  (torchvision.ops.generalized_box_iou_loss), at positives only, as in the seed.
- `quality` (consistent variant only): the box-quality logit of every (query, location) is
  trained, at every location, to the IoU its own predicted box achieves at a positive and to 0
  elsewhere (assign.quality_targets; other targets for the negatives selectable), so the score
  used at inference is low wherever the box is bad or was never regressed. The loss is binary cross-entropy with the soft IoU target, modulated by
  |sigmoid(logit) - target|^beta so the many easy zero-IoU locations do not swamp it (the
  "quality focal loss" of Generalized Focal Loss; torchvision has no such op, so it is the
  two lines below).
Every loss is summed and divided by the number of positives in the batch (as FCOS), so the
variants differ only in these targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from visiondoctor.models.text_query.assign import assign_positives, quality_targets


@dataclass(frozen=True)
class LossConfig:
    radius: float = 1.5  # cells around the best location that are positives too (the seed's pos_radius)
    iou_threshold: float = 0.3  # the seed's pos_iou_threshold for the max-IoU location
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    quality_beta: float = 2.0
    train_quality: bool = True  # False: no box-quality branch supervision (seed, iou_aware)
    quality_target: str = "positives"  # elsewhere than positives: 0 | any_class / same_class IoU (assign.py)
    cls_target: str = "binary"  # binary (focal loss, the seed) | iou (quality focal loss to the positives' IoU)
    weight_cls: float = 1.0
    weight_l1: float = 5.0  # DETR's weights for L1 on normalised boxes and GIoU
    weight_giou: float = 2.0
    weight_quality: float = 1.0


def text_query_losses(outputs: dict[str, torch.Tensor], targets: list[dict], centres: torch.Tensor,
                      grid: tuple[int, int], canvas: tuple[int, int], cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Named losses for a batch. outputs: sim_logits (B, Q, HW), boxes (B, Q, HW, 4) xyxy pixels,
    quality_logits (B, Q, HW); targets: [{boxes (N, 4) xyxy, labels (N,) query indices}];
    canvas: (height, width) of the padded input, for normalising boxes."""
    sim, boxes, quality = outputs["sim_logits"], outputs["boxes"], outputs["quality_logits"]
    scale = boxes.new_tensor([canvas[1], canvas[0], canvas[1], canvas[0]])
    cls_targets = torch.zeros_like(sim)
    quality_target = torch.zeros_like(quality)
    pred_pos, gt_pos = [], []
    for b, target in enumerate(targets):
        gt_boxes = target["boxes"].to(boxes.dtype)
        gt_labels = target["labels"].long()
        if len(gt_labels) and (gt_labels.min() < 0 or gt_labels.max() >= sim.shape[1]):
            raise ValueError(f"image {target.get('image_id')}: label outside the {sim.shape[1]} training queries: "
                             f"{sorted(set(gt_labels.tolist()))}")
        detached = boxes[b].detach()
        assignment = assign_positives(detached, centres, grid, gt_boxes, gt_labels, cfg.radius, cfg.iou_threshold)
        if cfg.cls_target == "iou":
            cls_targets[b] = quality_targets(detached, gt_boxes, gt_labels, assignment, "positives")
        else:
            cls_targets[b] = assignment.positive.to(sim.dtype)
        if cfg.train_quality:
            quality_target[b] = quality_targets(detached, gt_boxes, gt_labels, assignment, cfg.quality_target)
        pred_pos.append(boxes[b][assignment.positive])
        gt_pos.append(gt_boxes[assignment.matched[assignment.positive]])
    pred_pos_t, gt_pos_t = torch.cat(pred_pos), torch.cat(gt_pos)
    num_pos = max(1, len(pred_pos_t))
    if cfg.cls_target == "iou":
        cls = quality_focal_loss(sim, cls_targets, cfg.quality_beta)
    else:
        cls = sigmoid_focal_loss(sim, cls_targets, cfg.focal_alpha, cfg.focal_gamma, reduction="sum")
    losses = {"cls": cfg.weight_cls * cls / num_pos}
    if len(pred_pos_t):
        losses["box_l1"] = cfg.weight_l1 * F.l1_loss(pred_pos_t / scale, gt_pos_t / scale, reduction="sum") / num_pos
        losses["box_giou"] = cfg.weight_giou * generalized_box_iou_loss(pred_pos_t, gt_pos_t, reduction="sum") / num_pos
    else:  # keep the graph (and the loss names) when a batch has no object
        losses["box_l1"] = boxes.sum() * 0.0
        losses["box_giou"] = boxes.sum() * 0.0
    if cfg.train_quality:
        losses["quality"] = cfg.weight_quality * quality_focal_loss(quality, quality_target, cfg.quality_beta) / num_pos
    return losses


def quality_focal_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """Summed BCE to soft targets, modulated by |sigmoid(logit) - target| ** beta (GFL's QFL)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (bce * (logits.sigmoid() - targets).abs().pow(beta)).sum()
