"""A dense grid detector written the way users write one (seed 004): one box and C confidences per
stride-8 cell, positives = cells whose centre lies in a box. `supervise_negatives=False` is the bug:
confidence and box losses only at positive cells, while inference reads every cell."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from visiondoctor.doctor.zoo.common import TinyBackbone

STRIDE = 8


class DenseGridDetector(nn.Module):
    def __init__(self, num_classes: int = 3, supervise_negatives: bool = True, score_thresh: float = 0.05,
                 detections_per_img: int = 50) -> None:
        super().__init__()
        self.num_classes = num_classes  # background included (label 0), torchvision convention
        self.supervise_negatives = supervise_negatives
        self.score_thresh = score_thresh
        self.detections_per_img = detections_per_img
        self.backbone = TinyBackbone(stages=3, outputs=(3,))
        self.cls = nn.Conv2d(32, num_classes - 1, 3, padding=1)
        self.box = nn.Conv2d(32, 4, 3, padding=1)
        nn.init.constant_(self.cls.bias, -2.0)
        nn.init.zeros_(self.box.bias)

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone((x - 0.5) / 0.25)["0"]
        cls = self.cls(feats)  # [B, C-1, H, W]
        ltrb = torch.exp(self.box(feats).clamp(max=4.0)) * STRIDE  # distances to the box sides, pixels
        _, _, h, w = feats.shape
        ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * STRIDE
        xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * STRIDE
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        boxes = torch.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]], dim=-1)  # [B, H, W, 4]
        return cls, boxes

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None) -> Any:
        x = torch.stack(list(images))
        cls, boxes = self._decode(x)
        if self.training:
            return self.loss(cls, boxes, targets or [])
        return self.postprocess(cls, boxes)

    def loss(self, cls: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        b, c, h, w = cls.shape
        ys = (torch.arange(h, device=cls.device) + 0.5) * STRIDE
        xs = (torch.arange(w, device=cls.device) + 0.5) * STRIDE
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        cls_target = torch.zeros_like(cls)
        pos = torch.zeros(b, h, w, dtype=torch.bool, device=cls.device)
        box_target = torch.zeros_like(boxes)
        for i, t in enumerate(targets):
            gt, labels = t["boxes"].to(cls.device), t["labels"].to(cls.device)
            if gt.numel() == 0:
                continue
            inside = ((cx[..., None] > gt[:, 0]) & (cx[..., None] < gt[:, 2]) & (cy[..., None] > gt[:, 1]) & (cy[..., None] < gt[:, 3]))
            area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).expand(h, w, -1)
            area = torch.where(inside, area, torch.full_like(area, float("inf")))
            best = area.argmin(-1)  # smallest box containing the cell centre
            cell_pos = inside.any(-1)
            pos[i] = cell_pos
            box_target[i] = gt[best]
            onehot = F.one_hot(labels[best] - 1, c).permute(2, 0, 1).to(cls.dtype)
            cls_target[i] = onehot * cell_pos
        num_pos = max(1, int(pos.sum()))
        if self.supervise_negatives:
            loss_cls = sigmoid_focal_loss(cls, cls_target, reduction="sum") / num_pos
        else:  # the bug: only the object's class at positive cells is supervised (target 1); nothing else is
            mask = cls_target > 0
            loss_cls = sigmoid_focal_loss(cls[mask], cls_target[mask], reduction="sum") / num_pos
        loss_box = generalized_box_iou_loss(boxes[pos], box_target[pos], reduction="sum") / num_pos if pos.any() else boxes.sum() * 0
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    @torch.no_grad()
    def postprocess(self, cls: torch.Tensor, boxes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for scores_i, boxes_i in zip(torch.sigmoid(cls), boxes):
            c = scores_i.shape[0]
            scores = scores_i.reshape(c, -1).t()  # [HW, C]
            flat_boxes = boxes_i.reshape(-1, 4)
            keep = scores > self.score_thresh
            idx, label = torch.nonzero(keep, as_tuple=True)
            s, bx = scores[idx, label], flat_boxes[idx]
            kept = batched_nms(bx, s, label, 0.5)[: self.detections_per_img]
            out.append({"boxes": bx[kept], "scores": s[kept], "labels": label[kept] + 1})
        return out
