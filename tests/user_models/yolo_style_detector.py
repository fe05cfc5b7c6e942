"""A user's own single-scale anchor detector (YOLO-v2 style) with its own anchor module, its own
IoU matcher and its own loss; only torchvision.ops helpers (box_iou, nms) come from a library."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou


class GridAnchors(nn.Module):
    """Anchors of the given sizes centred on every cell of a feature map (pixels, xyxy)."""

    def __init__(self, sizes=(12.0, 20.0, 28.0), stride=8):
        super().__init__()
        self.sizes = sizes
        self.stride = stride

    def forward(self, feature):
        h, w = feature.shape[-2:]
        ys = (torch.arange(h, device=feature.device) + 0.5) * self.stride
        xs = (torch.arange(w, device=feature.device) + 0.5) * self.stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2)
        half = torch.tensor(self.sizes, device=feature.device).view(1, -1, 1) / 2
        return torch.cat([centres - half, centres + half], -1).reshape(-1, 4)


class IoUMatcher:
    """Anchors with IoU >= threshold are positives for their best box, plus each box's best anchor."""

    def __init__(self, threshold=0.5):
        self.threshold = threshold

    def __call__(self, iou):
        best, idx = iou.max(0)
        matches = torch.where(best >= self.threshold, idx, torch.full_like(idx, -1))
        matches[iou.argmax(1)] = torch.arange(iou.shape[0], device=iou.device)
        return matches


class TinyYolo(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.LeakyReLU(0.1),
            nn.Conv2d(32, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.LeakyReLU(0.1),
        )
        self.anchors = GridAnchors()
        self.matcher = IoUMatcher()
        self.num_anchors = len(self.anchors.sizes)
        self.pred = nn.Conv2d(32, self.num_anchors * (5 + num_classes - 1), 1)

    def forward(self, images, targets=None):
        x = torch.stack(list(images))
        f = self.body((x - 0.5) / 0.25)
        anchors = self.anchors(f)
        b = x.shape[0]
        p = self.pred(f).permute(0, 2, 3, 1).reshape(b, -1, 5 + self.num_classes - 1)
        boxes = self.decode(p[..., :4], anchors)
        if self.training:
            return self.loss(p, boxes, anchors, targets)
        scores = torch.sigmoid(p[..., 4:5]) * torch.sigmoid(p[..., 5:])
        out = []
        for i in range(b):
            s, label = scores[i].max(-1)
            keep = s > 0.05
            kept = batched_nms(boxes[i][keep], s[keep], label[keep], 0.5)[:50]
            out.append({"boxes": boxes[i][keep][kept], "scores": s[keep][kept], "labels": label[keep][kept] + 1})
        return out

    @staticmethod
    def decode(d, anchors):
        wh = anchors[:, 2:] - anchors[:, :2]
        ctr = anchors[:, :2] + wh / 2 + d[..., :2] * wh
        size = wh * torch.exp(d[..., 2:].clamp(max=4))
        return torch.cat([ctr - size / 2, ctr + size / 2], -1)

    def loss(self, p, boxes, anchors, targets):
        obj_target = torch.zeros_like(p[..., 4])
        cls_losses, box_losses = [], []
        for i, t in enumerate(targets):
            if t["boxes"].numel() == 0:
                continue
            matches = self.matcher(box_iou(t["boxes"], anchors))
            pos = matches >= 0
            obj_target[i, pos] = 1.0
            labels = F.one_hot(t["labels"][matches[pos]] - 1, self.num_classes - 1).float()
            cls_losses.append(F.binary_cross_entropy_with_logits(p[i, pos, 5:], labels, reduction="sum"))
            box_losses.append(F.l1_loss(boxes[i, pos], t["boxes"][matches[pos]], reduction="sum") / 16)
        n = max(1.0, float(obj_target.sum()))
        return {
            "objectness": F.binary_cross_entropy_with_logits(p[..., 4], obj_target, reduction="sum") / n,
            "classes": sum(cls_losses) / n,
            "boxes": sum(box_losses) / n,
        }


def build(num_classes=3):
    return TinyYolo(num_classes)
