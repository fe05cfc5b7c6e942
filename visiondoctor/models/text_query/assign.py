"""Which (query, location) pairs are positives, and what box quality each location should predict.

Positive assignment follows the seed detector: for each ground-truth box, the location whose
predicted box (for the box's query) overlaps it most, and every location within `radius`
cells of it. Two changes, each fixing a defect of the seed:
- Only locations whose centre lies inside the ground-truth box can be positive: the box is
  regressed as distances (left, top, right, bottom) from the location centre, which cannot
  reach a box that does not contain the centre.
- When no predicted box reaches `iou_threshold` (always true at the start of training), the
  seed gave the object no positive at all; here the location nearest the box centre takes
  its place, so every object is learnt from the first step.
A location claimed by two boxes of the same query goes to the smaller box (as in FCOS).

`quality_targets` is the supervision that makes inference agree with training: the IoU each
positive's box actually achieves, and (by default) 0 wherever training did not regress the
box, so the score can no longer be high where the box was never learnt (see loss.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_area, box_iou


@dataclass
class Assignment:
    positive: torch.Tensor  # (Q, HW) bool
    matched: torch.Tensor  # (Q, HW) long: index of the ground-truth box, -1 where negative
    anchor: torch.Tensor  # (N,) long: the location each ground-truth box was centred on


def location_centres(height: int, width: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """(H*W, 2) pixel (x, y) centres of the feature-map cells, row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def assign_positives(pred_boxes: torch.Tensor, centres: torch.Tensor, grid: tuple[int, int],
                     gt_boxes: torch.Tensor, gt_labels: torch.Tensor, radius: float = 1.5,
                     iou_threshold: float = 0.3) -> Assignment:
    """Positives for one image.

    pred_boxes (Q, HW, 4) xyxy pixels (detached), centres (HW, 2), grid (H, W),
    gt_boxes (N, 4) xyxy pixels, gt_labels (N,) query indices in [0, Q).
    """
    num_queries, num_locations = pred_boxes.shape[:2]
    height, width = grid
    device = pred_boxes.device
    positive = torch.zeros(num_queries, num_locations, dtype=torch.bool, device=device)
    matched = torch.full((num_queries, num_locations), -1, dtype=torch.long, device=device)
    claim_area = torch.full((num_queries, num_locations), float("inf"), device=device)
    anchors = torch.full((len(gt_boxes),), -1, dtype=torch.long, device=device)
    if len(gt_boxes) == 0:
        return Assignment(positive, matched, anchors)
    rows = torch.arange(num_locations, device=device) // width
    cols = torch.arange(num_locations, device=device) % width
    areas = box_area(gt_boxes)
    for g, (box, label) in enumerate(zip(gt_boxes, gt_labels.tolist())):
        inside = ((centres[:, 0] > box[0]) & (centres[:, 0] < box[2])
                  & (centres[:, 1] > box[1]) & (centres[:, 1] < box[3]))
        centre = (box[:2] + box[2:]) / 2
        distance = (centres - centre).pow(2).sum(1)
        if inside.any():
            nearest = int(torch.where(inside, distance, torch.full_like(distance, float("inf"))).argmin())
        else:  # a box smaller than a cell, between centres: its nearest location is its only candidate
            nearest = int(distance.argmin())
            inside = torch.zeros_like(inside)
            inside[nearest] = True
        ious = box_iou(pred_boxes[label], box[None])[:, 0]
        ious = torch.where(inside, ious, torch.full_like(ious, -1.0))
        best = int(ious.argmax())
        anchor = best if float(ious[best]) >= iou_threshold else nearest
        anchors[g] = anchor
        near = ((rows - rows[anchor]).abs() <= radius) & ((cols - cols[anchor]).abs() <= radius) & inside
        take = near & (areas[g] < claim_area[label])
        positive[label] |= take
        matched[label] = torch.where(take, torch.full_like(matched[label], g), matched[label])
        claim_area[label] = torch.where(take, areas[g], claim_area[label])
    return Assignment(positive, matched, anchors)


QUALITY_TARGETS = ("positives", "any_class", "same_class")


def quality_targets(pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                    assignment: Assignment, mode: str = "positives") -> torch.Tensor:
    """(Q, HW) box-quality targets for one image. At a positive: the IoU of its predicted box with
    the matched ground truth. Elsewhere, by `mode`:
    - `positives`: 0. The score is then high only where training regressed the box and the box
      came out well, which is exactly what the seed's inference lacked;
    - `any_class`: the best IoU of the location's box with any ground-truth box (quality as
      "fits an object", the class left to the similarity);
    - `same_class`: the best IoU with a ground-truth box of the query's class (0 when none).
    """
    if mode not in QUALITY_TARGETS:
        raise ValueError(f"quality target {mode!r}: expected one of {', '.join(QUALITY_TARGETS)}")
    num_queries, num_locations = pred_boxes.shape[:2]
    if len(gt_boxes) == 0:
        return pred_boxes.new_zeros(num_queries, num_locations)
    ious = box_iou(pred_boxes.reshape(-1, 4), gt_boxes).reshape(num_queries, num_locations, len(gt_boxes))
    if mode == "positives":
        elsewhere = ious.new_zeros(num_queries, num_locations)
    elif mode == "same_class":
        query_ids = torch.arange(num_queries, device=pred_boxes.device)
        same = (gt_labels[None, :] == query_ids[:, None])[:, None, :]  # (Q, 1, N)
        elsewhere = torch.where(same, ious, torch.zeros_like(ious)).amax(dim=2)
    else:
        elsewhere = ious.amax(dim=2)
    matched_iou = ious.gather(2, assignment.matched.clamp(min=0)[..., None])[..., 0]
    return torch.where(assignment.positive, matched_iou, elsewhere)
